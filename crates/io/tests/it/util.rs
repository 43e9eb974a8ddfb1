//! The harness side of the real-data tests: where the data is, and trials that skip visibly.

use std::path::{Path, PathBuf};

use libtest_mimic::{Completion, Trial};

/// The shared real data folder: `$DUOSEG_SHARED_DATA`, else `shared/data` beside the checkout.
pub fn shared_data_root() -> PathBuf {
    std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// A trial named `name` that runs `test` on the shared data folder when all of its sub-folders
/// `needs` exist; otherwise it is reported ignored, naming the first missing folder (also printed
/// to stderr as `skipped: ...`). A panic in `test` fails the trial.
pub fn with_data(name: &str, needs: &'static [&'static str], test: fn(&Path)) -> Trial {
    let label = name.to_string();
    Trial::ignorable_test(name, move || {
        let root = shared_data_root();
        if let Some(missing) = needs.iter().map(|sub| root.join(sub)).find(|p| !p.exists()) {
            let reason = format!("needs {}, not found", missing.display());
            eprintln!("skipped: {label}: {reason}");
            return Ok(Completion::ignored_with(reason));
        }
        test(&root);
        Ok(Completion::Completed)
    })
}
