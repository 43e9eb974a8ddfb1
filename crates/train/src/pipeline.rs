//! Everything `duoseg train` does, in order: check and load the data, train (or resume), evaluate the
//! final model.

use std::path::Path;
use std::sync::Arc;

use duoseg_metrics::EvaluationReport;

use crate::config::{CheckpointChoice, TrainConfig};
use crate::error::Result;
use crate::evaluation::evaluate_run;
use crate::learner::{train, Finish, TrainOptions};

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Trained to the last iteration and evaluated on the test cases.
    Evaluated(EvaluationReport),
    /// Stopped (Ctrl-C, SIGTERM) during training after this many iterations; a checkpoint was written.
    TrainingStopped(usize),
    /// Trained to the end (`final.safetensors` and the last checkpoint written), then stopped during
    /// evaluation; `--resume` evaluates it without training again.
    EvaluationStopped,
}

/// Loads the data `cfg` names (`data_root` overrides `cfg.data.root`), trains, and evaluates the final
/// model on the test cases.
pub fn run_training(
    cfg: &TrainConfig,
    data_root: Option<&Path>,
    opts: TrainOptions,
) -> Result<RunOutcome> {
    let TrainOptions {
        run,
        device,
        resume,
        overwrite,
        stop,
        observer,
    } = opts;
    // held through training and evaluation, so no other run writes into the folder meanwhile
    let _lock = run.lock()?;
    observer.message(&format!(
        "loading data for {} ({})",
        cfg.name,
        cfg.method.name()
    ));
    for warning in crate::data::check(&cfg.data, cfg.model.n_classes, data_root)? {
        observer.message(&warning);
    }
    let mut data = crate::data::load(&cfg.data, data_root)?;
    for note in &data.notes {
        observer.message(note);
    }
    // without data.spacing, the check above already named the cases far from the dataset's median
    if cfg.data.spacing.is_some() {
        for warning in data.spacing_warnings(cfg.data.spacing) {
            observer.message(&warning);
        }
    }
    if cfg.eval.checkpoint == CheckpointChoice::BestVal {
        data = data.carve_validation(cfg.eval.validation_cases)?;
        observer.message(&format!(
            "validation cases (eval.checkpoint = best_val, never trained on): {}",
            data.roles().validation.join(", ")
        ));
    }
    observer.message(&format!(
        "{} labeled, {} unlabeled, {} test cases",
        data.labeled.len(),
        data.unlabeled.len(),
        data.test.len()
    ));
    if let Some(warning) = data.check_patch(cfg.patch)? {
        observer.message(&warning);
    }
    // Host memory only: on a GPU the activations live in device memory, which candle cannot query.
    if device.is_cpu() {
        if let Some(available) = duoseg_io::fs::available_memory() {
            if let Some(warning) = crate::memory::check_fits(cfg, &data, available)? {
                observer.message(&warning);
            }
        }
    }
    let finish = train(
        cfg,
        &data,
        TrainOptions {
            run: run.clone(),
            device: device.clone(),
            resume,
            overwrite,
            stop: Arc::clone(&stop),
            observer: &mut *observer,
        },
    )?;
    match finish {
        Finish::Completed => {
            observer.message("evaluating the final model on the test cases");
            Ok(
                match evaluate_run(&run, &data.test, &device, observer, &stop)? {
                    Some(report) => RunOutcome::Evaluated(report),
                    None => RunOutcome::EvaluationStopped,
                },
            )
        }
        Finish::Interrupted(n) => Ok(RunOutcome::TrainingStopped(n)),
    }
}
