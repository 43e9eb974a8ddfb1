//! `duoseg folds DIR --k 5 --seed S`: seeded K-fold cross-validation splits of any dataset folder,
//! written as `folds.json` (the file `data.split = {"fold": {"fold": i}}` reads).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Write K-fold cross-validation splits of a dataset folder (folds.json).
///
/// Each labelled case is tested in exactly one fold; images without a label join every fold's
/// training cases as unlabeled data. The same seed gives the same folds on every machine.
///
/// Examples:
///   duoseg folds data/Dataset004_Hippocampus --k 5 --seed 0
///   duoseg folds mydata --k 3 --seed 1 --out mydata/folds-k3.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct FoldsArgs {
    /// Dataset folder (MSD / nnU-Net layout, UA-MT h5 layout, or images/ + labels/).
    dir: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file [default: DIR/folds.json].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    overwrite: bool,
}

/// Runs `duoseg folds`.
pub fn run(args: FoldsArgs) -> Result<crate::Outcome> {
    let ds = duoseg_io::Dataset::open(&args.dir)
        .with_context(|| format!("cannot open {}", args.dir.display()))?;
    let out = args.out.unwrap_or_else(|| args.dir.join("folds.json"));
    if out.exists() && !args.overwrite {
        bail!(
            "{} exists; give --overwrite to replace it, or --out another file",
            out.display()
        );
    }
    let folds = ds.make_folds(args.k, args.seed)?;
    duoseg_io::dataset::write_folds(&out, &folds, args.seed)?;
    for (i, f) in folds.iter().enumerate() {
        println!("fold {i}: {} train, {} test", f.train.len(), f.test.len());
    }
    eprintln!("wrote {}", out.display());
    Ok(crate::Outcome::Ok)
}
