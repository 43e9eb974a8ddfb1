//! Integration tests of `duoseg-io` through its public API on the real datasets of `shared/data`
//! (`DUOSEG_SHARED_DATA` names another folder).
//!
//! One test binary with its own harness (`libtest-mimic`, `harness = false` in Cargo.toml): a test
//! whose data folder is absent is reported as ignored, the missing folder as the reason (and
//! `skipped: ...` on stderr), instead of passing without checking anything. Unit tests live next to
//! the code they test, in `src/`.

// Voxel checks index several arrays by one axis variable, as in the library.
#![allow(clippy::needless_range_loop)]

mod datasets;
mod util;
mod volumes;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let mut trials = volumes::trials();
    trials.extend(datasets::trials());
    libtest_mimic::run(&args, trials).exit();
}
