//! Inference and evaluation: sliding-window prediction of prepared cases, the metrics report over the
//! test cases, and writing a finished run's summary, figures and predictions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use duoseg_metrics::{EvaluationReport, MetricDefinition};

use crate::config::{CheckpointChoice, EvalNets, TrainConfig};
use crate::learner::BestModel;
use duoseg_io::PreparedCase;

use crate::error::{Result, TrainError};
use crate::learner::Observer;
use crate::nets::Nets;
use crate::run::RunDir;

/// A test case's prediction, cropped back to the original geometry.
pub struct Prediction {
    /// Case name.
    pub name: String,
    /// Labels, original shape.
    pub labels: Vec<u8>,
    /// Probabilities `[K, original shape]`, when requested.
    pub probs: Option<Vec<f32>>,
}

/// Sliding-window prediction of one prepared case, on its prepared grid, then taken back to the
/// case's original geometry (labels, and probabilities when `keep_probs`): the padding removed, a
/// resampled case's probabilities resampled trilinearly to the source grid before the argmax, a
/// cropped case put back in place.
pub fn predict_case(
    cfg: &TrainConfig,
    nets: &Nets,
    case: &PreparedCase,
    device: &Device,
    keep_probs: bool,
) -> Result<Prediction> {
    let sw = cfg.sliding_window();
    let k = cfg.model.n_classes;
    let predictor = nets.predictor(device)?;
    let out = sw.probabilities(&case.image, case.shape, k, device, |x| {
        predictor.predict_probs(cfg.eval.nets, x)
    })?;
    let n = case.shape.iter().product::<usize>();
    let (mut labels, probs) = if case.resampled.is_some() {
        // nnU-Net's way back to the source grid: each class's probabilities resampled
        // trilinearly, then the argmax there (not the labels by nearest neighbour)
        let mut back = Vec::with_capacity(k * case.original_shape.iter().product::<usize>());
        for c in 0..k {
            back.extend(case.crop_back_linear(&out.probs[c * n..(c + 1) * n])?);
        }
        (
            crate::sliding::argmax_classes(&back, k),
            keep_probs.then_some(back),
        )
    } else {
        let mut labels = crate::sliding::argmax_classes(&out.probs, k);
        let mut probs = keep_probs.then_some(out.probs);
        if case.shape != case.original_shape {
            labels = case.crop_back(&labels)?;
            if let Some(p) = probs.as_mut() {
                let mut cropped = Vec::new();
                for c in 0..k {
                    cropped.extend(case.crop_back(&p[c * n..(c + 1) * n])?);
                }
                *p = cropped;
            }
        }
        (labels, probs)
    };
    if cfg.eval.largest_component {
        for c in 1..k as u8 {
            let mut mask: Vec<bool> = labels.iter().map(|&l| l == c).collect();
            duoseg_metrics::keep_largest_component(&mut mask, case.original_shape)
                .map_err(|e| TrainError::case(&case.name, e))?;
            for (l, m) in labels.iter_mut().zip(mask) {
                if *l == c && !m {
                    *l = 0;
                }
            }
        }
    }
    Ok(Prediction {
        name: case.name.clone(),
        labels,
        probs,
    })
}

/// Evaluates the nets on the test cases: the metrics crate's report, plus each prediction. `stop`
/// is polled before each case: once it is set (Ctrl-C), evaluation ends early with `None`.
pub fn evaluate(
    cfg: &TrainConfig,
    nets: &Nets,
    test: &[PreparedCase],
    device: &Device,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Option<(EvaluationReport, Vec<Prediction>)>> {
    let classes: Vec<u8> = (1..cfg.model.n_classes as u8).collect();
    let definition = MetricDefinition::default();
    let mut cases = BTreeMap::new();
    let mut preds = Vec::new();
    for (i, case) in test.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            observer.message(&format!(
                "evaluation stopped after {i} of {} cases",
                test.len()
            ));
            return Ok(None);
        }
        // on the source grid, against the label as read (a resampled case keeps it)
        let Some(gt) = case.original_label()? else {
            return Err(TrainError::case(&case.name, "a test case needs a label"));
        };
        let pred = predict_case(cfg, nets, case, device, false)?;
        let m = duoseg_metrics::evaluate_labels(
            &pred.labels,
            &gt,
            case.original_shape,
            case.source_spacing,
            &classes,
            &definition,
        )
        .map_err(|e| TrainError::case(&case.name, e))?;
        cases.insert(case.name.clone(), m);
        observer.message(&format!(
            "evaluated {}/{}: {}",
            i + 1,
            test.len(),
            case.name
        ));
        preds.push(pred);
    }
    Ok(Some((duoseg_metrics::summarize(definition, cases), preds)))
}

/// After training: loads `final.safetensors`, evaluates on the test cases and writes `summary.json`,
/// `summary.md`, `figures/` (loss curves, overlays of the first `eval.figure_cases` test cases) and
/// `predictions/<case>.nii.gz`. Returns the report, or `None` when `stop` ended it early (then
/// nothing is written).
pub fn evaluate_run(
    run: &RunDir,
    test: &[PreparedCase],
    device: &Device,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Option<EvaluationReport>> {
    let (cfg, nets, model) = chosen_model(run, device)?;
    let Some((report, preds)) = evaluate(&cfg, &nets, test, device, observer, stop)? else {
        return Ok(None);
    };
    write_summary(run, &cfg, &report, &model)?;
    crate::run::LogWriter::append_to(&run.log())?
        .event(
            "evaluation",
            cfg.iterations,
            serde_json::json!({
                "checkpoint": model.get("checkpoint"),
                "model_iter": model.get("iteration"),
                "test_cases": test.len(),
                "mean_dice": report.mean_dice(),
            }),
        )
        .map_err(TrainError::file(run.log()))?;
    crate::figures::plot_log(run)?;
    std::fs::create_dir_all(run.predictions()).map_err(TrainError::file(run.predictions()))?;
    for (i, (case, pred)) in test.iter().zip(&preds).enumerate() {
        let shape = case.original_shape;
        let image = case.crop_back_linear(&case.image)?;
        if i < cfg.eval.figure_cases {
            let gt = case.original_label()?.unwrap_or_default();
            let p = run.figures().join(format!("{}.png", case.name));
            let affine = case.source.as_ref().map(|v| &v.affine);
            crate::figures::overlay_slices(
                &image,
                &gt,
                &pred.labels,
                shape,
                affine,
                &case.name,
                &p,
            )?;
        }
        let like = match &case.source {
            Some(v) => v.clone(),
            None => duoseg_io::Volume::from_data(shape, case.source_spacing, image)?,
        };
        let p = run.predictions().join(format!("{}.nii.gz", case.name));
        duoseg_io::write_labels(&p, shape, &pred.labels, &like)?;
    }
    Ok(Some(report))
}

/// The model a finished run is evaluated with, as its `eval.checkpoint` says: `final.safetensors`
/// (`last`) or `best.safetensors` (`best_val`); with the config and a description of the choice
/// for `summary.json` (`"model"`).
pub fn chosen_model(
    run: &RunDir,
    device: &Device,
) -> Result<(TrainConfig, Nets, serde_json::Value)> {
    let cfg = Nets::load_config(&run.final_weights())?;
    let (weights, model) = match cfg.eval.checkpoint {
        CheckpointChoice::Last => (
            run.final_weights(),
            serde_json::json!({ "checkpoint": "last", "iteration": cfg.iterations }),
        ),
        CheckpointChoice::BestVal => {
            let Some(best) = BestModel::read(run)? else {
                return Err(TrainError::RunFolder(format!(
                    "{}: eval.checkpoint is best_val but the run has no best.json",
                    run.root.display()
                )));
            };
            let validation: Vec<String> = std::fs::read_to_string(run.split())
                .ok()
                .and_then(|t| serde_json::from_str::<crate::data::CaseRoles>(&t).ok())
                .map(|r| r.validation)
                .unwrap_or_default();
            let model = serde_json::json!({
                "checkpoint": "best_val",
                "iteration": best.iteration,
                "val_dice": best.val_dice,
                "validation_cases": validation,
            });
            (run.best_weights(), model)
        }
    };
    let (_, nets) = Nets::load(&weights, device)?;
    Ok((cfg, nets, model))
}

/// `summary.json` (the report, plus `"model"`: which checkpoint was scored) and `summary.md`.
fn write_summary(
    run: &RunDir,
    cfg: &TrainConfig,
    report: &EvaluationReport,
    model: &serde_json::Value,
) -> Result<()> {
    let mut json = serde_json::to_value(report)
        .map_err(|e| TrainError::file(run.summary_json())(std::io::Error::other(e)))?;
    if let Some(o) = json.as_object_mut() {
        o.insert("model".into(), model.clone());
    }
    crate::run::write_json(&run.summary_json(), &json)?;
    let md =
        duoseg_metrics::summary_markdown(&cfg.name, &[(cfg.method.name().to_string(), report)]);
    Ok(crate::run::write_atomic(&run.summary_md(), md.as_bytes())?)
}

/// Evaluates a finished run's `final.safetensors` again on its test cases, optionally with other net(s)
/// than its config's `eval.nets` (e.g. to see which subnetwork carries the averaged result). Loads the
/// data the run's config names (or `data_root`); writes nothing. Returns the config used and the
/// report, or `None` when `stop` ended it early.
pub fn reevaluate_run(
    run: &RunDir,
    nets: Option<EvalNets>,
    data_root: Option<&Path>,
    device: &Device,
    observer: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Option<(TrainConfig, EvaluationReport)>> {
    let (mut cfg, loaded, _) = chosen_model(run, device)?;
    if let Some(n) = nets {
        cfg.eval.nets = n;
    }
    let data = crate::data::load(&cfg.data, data_root)?;
    for line in data
        .notes
        .iter()
        .chain(&data.spacing_warnings(cfg.data.spacing))
    {
        observer.message(line);
    }
    if data.test.is_empty() {
        return Err(TrainError::Dataset(format!(
            "{}: the run's split has no test case",
            run.config().display()
        )));
    }
    let report = evaluate(&cfg, &loaded, &data.test, device, observer, stop)?;
    Ok(report.map(|(report, _)| (cfg, report)))
}
