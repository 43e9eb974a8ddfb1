//! Inference and evaluation: sliding-window prediction of prepared cases, the metrics report over the
//! test cases, and writing a finished run's summary, figures and predictions.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use duoseg_metrics::{EvaluationReport, MetricDefinition};

use crate::config::{EvalNets, TrainConfig};
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

/// Sliding-window prediction of one prepared case (labels in the case's original geometry).
pub fn predict_case(
    cfg: &TrainConfig,
    nets: &Nets,
    case: &PreparedCase,
    device: &Device,
    keep_probs: bool,
) -> Result<Prediction> {
    let sw = cfg.sliding_window();
    let k = cfg.model.n_classes;
    let out = sw.probabilities(&case.image, case.shape, k, device, |x| {
        nets.predict_probs(cfg.eval.nets, x)
    })?;
    let n = case.shape.iter().product::<usize>();
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

/// Evaluates the nets on the test cases: the metrics crate's report, plus each prediction.
pub fn evaluate(
    cfg: &TrainConfig,
    nets: &Nets,
    test: &[PreparedCase],
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(EvaluationReport, Vec<Prediction>)> {
    let classes: Vec<u8> = (1..cfg.model.n_classes as u8).collect();
    let definition = MetricDefinition::default();
    let mut cases = BTreeMap::new();
    let mut preds = Vec::new();
    for (i, case) in test.iter().enumerate() {
        let Some(gt) = &case.label else {
            return Err(TrainError::case(&case.name, "a test case needs a label"));
        };
        let pred = predict_case(cfg, nets, case, device, false)?;
        let gt = case.crop_back(gt)?;
        let m = duoseg_metrics::evaluate_labels(
            &pred.labels,
            &gt,
            case.original_shape,
            case.spacing,
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
    Ok((duoseg_metrics::summarize(definition, cases), preds))
}

/// After training: loads `final.safetensors`, evaluates on the test cases and writes `summary.json`,
/// `summary.md`, `figures/` (loss curves, overlays of the first `eval.figure_cases` test cases) and
/// `predictions/<case>.nii.gz`. Returns the report.
pub fn evaluate_run(
    run: &RunDir,
    test: &[PreparedCase],
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<EvaluationReport> {
    let (cfg, nets) = Nets::load(&run.final_weights(), device)?;
    let (report, preds) = evaluate(&cfg, &nets, test, device, observer)?;
    write_summary(run, &cfg, &report)?;
    let records = crate::run::read_log(&run.log()).map_err(TrainError::file(run.log()))?;
    let fig = run.figures().join("losses.png");
    crate::figures::loss_curves(&records, &fig)?;
    std::fs::create_dir_all(run.predictions()).map_err(TrainError::file(run.predictions()))?;
    for (i, (case, pred)) in test.iter().zip(&preds).enumerate() {
        let shape = case.original_shape;
        let image = case.crop_back(&case.image)?;
        if i < cfg.eval.figure_cases {
            let gt = case.crop_back(case.label.as_deref().unwrap_or_default())?;
            let p = run.figures().join(format!("{}.png", case.name));
            crate::figures::overlay_slices(&image, &gt, &pred.labels, shape, &case.name, &p)?;
        }
        let like = match &case.source {
            Some(v) => v.clone(),
            None => duoseg_io::Volume::from_data(shape, case.spacing, image)?,
        };
        let p = run.predictions().join(format!("{}.nii.gz", case.name));
        duoseg_io::write_labels(&p, shape, &pred.labels, &like)?;
    }
    Ok(report)
}

/// `summary.json` and `summary.md` of a run.
fn write_summary(run: &RunDir, cfg: &TrainConfig, report: &EvaluationReport) -> Result<()> {
    crate::run::write_json(&run.summary_json(), report)?;
    let md =
        duoseg_metrics::summary_markdown(&cfg.name, &[(cfg.method.name().to_string(), report)]);
    Ok(crate::run::write_atomic(&run.summary_md(), md.as_bytes())?)
}

/// Evaluates a finished run's `final.safetensors` again on its test cases, optionally with other net(s)
/// than its config's `eval.nets` (e.g. to see which subnetwork carries the averaged result). Loads the
/// data the run's config names (or `data_root`); writes nothing. Returns the config used and the report.
pub fn reevaluate_run(
    run: &RunDir,
    nets: Option<EvalNets>,
    data_root: Option<&Path>,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(TrainConfig, EvaluationReport)> {
    let (mut cfg, loaded) = Nets::load(&run.final_weights(), device)?;
    if let Some(n) = nets {
        cfg.eval.nets = n;
    }
    let data = crate::data::load(&cfg.data, data_root)?;
    if data.test.is_empty() {
        return Err(TrainError::Dataset(format!(
            "{}: the run's split has no test case",
            run.config().display()
        )));
    }
    let (report, _) = evaluate(&cfg, &loaded, &data.test, device, observer)?;
    Ok((cfg, report))
}
