//! Everything `duoseg train` does, in order: check and load the data, train (or resume), evaluate the
//! final model.

use std::path::Path;

use duoseg_metrics::EvaluationReport;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::evaluation::evaluate_run;
use crate::learner::{train, Finish, TrainOptions};

/// Loads the data `cfg` names (`data_root` overrides `cfg.data.root`), trains, and evaluates the final
/// model on the test cases. The report is `None` when the run was interrupted.
pub fn run_training(
    cfg: &TrainConfig,
    data_root: Option<&Path>,
    opts: TrainOptions,
) -> Result<(Finish, Option<EvaluationReport>)> {
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
    let data = crate::data::load(&cfg.data, data_root)?;
    observer.message(&format!(
        "{} labeled, {} unlabeled, {} test cases",
        data.labeled.len(),
        data.unlabeled.len(),
        data.test.len()
    ));
    let finish = train(
        cfg,
        &data,
        TrainOptions {
            run: run.clone(),
            device: device.clone(),
            resume,
            overwrite,
            stop,
            observer: &mut *observer,
        },
    )?;
    match finish {
        Finish::Completed => {
            observer.message("evaluating the final model on the test cases");
            let report = evaluate_run(&run, &data.test, &device, observer)?;
            Ok((finish, Some(report)))
        }
        Finish::Interrupted(_) => Ok((finish, None)),
    }
}
