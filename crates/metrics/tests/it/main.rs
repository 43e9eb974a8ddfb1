//! Integration tests of `duoseg-metrics` through its public API: medpy golden values (synthetic and
//! the SPEC's), metric properties, and one real LA label (`shared/data`, or `DUOSEG_SHARED_DATA`).
//!
//! One test binary with its own harness (`libtest-mimic`, `harness = false` in Cargo.toml) so that a
//! test whose data is absent is reported as ignored with the reason, instead of passing without
//! checking anything.

// Voxel checks index several arrays by one axis variable, as in the library.
#![allow(clippy::needless_range_loop)]

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Completion, Trial};

mod la;
mod medpy;
mod properties;

/// The shared real data folder: `$DUOSEG_SHARED_DATA`, else `shared/data` beside the checkout.
fn shared_data_root() -> PathBuf {
    std::env::var_os("DUOSEG_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// A trial that needs `needs` below the shared data folder: ignored, naming what is missing, when
/// it is absent.
fn with_data(name: &'static str, needs: &'static str, test: fn(&Path)) -> Trial {
    Trial::ignorable_test(name, move || {
        let root = shared_data_root();
        let dir = root.join(needs);
        if !dir.exists() {
            let reason = format!("needs {}, not found", dir.display());
            eprintln!("skipped: {name}: {reason}");
            return Ok(Completion::ignored_with(reason));
        }
        test(&root);
        Ok(Completion::Completed)
    })
}

/// A trial of a test that needs no data.
fn plain(name: &'static str, test: fn()) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        plain(
            "medpy::spec_golden_shifted_cube",
            medpy::spec_golden_shifted_cube,
        ),
        plain("medpy::spec_golden_spheres", medpy::spec_golden_spheres),
        plain(
            "medpy::spec_golden_touching_the_edge",
            medpy::spec_golden_touching_the_edge,
        ),
        plain(
            "medpy::binary_cases_match_medpy",
            medpy::binary_cases_match_medpy,
        ),
        plain("medpy::empty_rules", medpy::empty_rules),
        plain(
            "medpy::multiclass_case_matches_medpy",
            medpy::multiclass_case_matches_medpy,
        ),
        plain(
            "properties::dice_and_jaccard_are_symmetric",
            properties::dice_and_jaccard_are_symmetric,
        ),
        plain(
            "properties::hd95_of_a_mask_with_itself_is_zero",
            properties::hd95_of_a_mask_with_itself_is_zero,
        ),
        plain(
            "properties::distances_are_invariant_to_zero_padding_away_from_the_border",
            properties::distances_are_invariant_to_zero_padding_away_from_the_border,
        ),
        plain(
            "properties::padding_a_mask_on_the_border_removes_its_border_surface",
            properties::padding_a_mask_on_the_border_removes_its_border_surface,
        ),
        plain(
            "properties::largest_component_only_removes_prediction_voxels",
            properties::largest_component_only_removes_prediction_voxels,
        ),
        with_data(
            "la::la_label_matches_medpy",
            la::NEEDS,
            la::la_label_matches_medpy,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}
