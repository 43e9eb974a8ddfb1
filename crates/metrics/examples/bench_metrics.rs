//! Rust half of `cargo xtask bench metrics`: Dice + Jaccard + HD95 + ASD (voxel units, medpy
//! definitions) of real label maps against perturbed copies of themselves, timed per case.
//!
//! Usage: `cargo run --release -p duoseg-metrics --example bench_metrics -- LABEL_DIR REPEATS ID...`
//! Reads `LABEL_DIR/<ID>.nii.gz` with duoseg-io, takes class 1 as the reference mask, and for each
//! perturbation (`shift`: by 2 voxels along axes 0 and 1, zero fill; `erosion` / `dilation`: one
//! iteration with the 6-connected cross, outside = background, as scipy's defaults) times the four
//! metrics `REPEATS` times and keeps the median. Prints one JSON object on stdout. The Python half
//! (`xtask/src/bench/metrics.py`) builds the very same masks and checks them by count and index sum.

use std::path::PathBuf;
use std::time::Instant;

use duoseg_metrics::{HausdorffDefinition, SurfacePair};

/// The perturbations, by name.
const PERTURBATIONS: [&str; 3] = ["shift", "erosion", "dilation"];

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, repeats, ids @ ..] = args.as_slice() else {
        return Err("usage: bench_metrics LABEL_DIR REPEATS ID...".into());
    };
    let repeats: usize = repeats.parse()?;
    let dir = PathBuf::from(dir);
    let mut cases = Vec::new();
    for id in ids {
        let path = dir.join(format!("{id}.nii.gz"));
        let volume = duoseg_io::read_volume(&path)?;
        let labels = volume.to_labels()?;
        let shape = volume.shape;
        let gt: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        for name in PERTURBATIONS {
            let pred = perturb(&gt, shape, name);
            let mut times = Vec::with_capacity(repeats);
            let mut values = [0.0; 4];
            for _ in 0..repeats.max(1) {
                let start = Instant::now();
                values = four_metrics(&pred, &gt, shape)?;
                times.push(start.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            cases.push(format!(
                "{{\"case\": \"{id}\", \"perturbation\": \"{name}\", \"shape\": {shape:?}, \
                 \"pred\": {}, \"gt\": {}, \"seconds\": {}, \"dice\": {}, \"jaccard\": {}, \
                 \"hd95\": {}, \"asd\": {}}}",
                fingerprint(&pred),
                fingerprint(&gt),
                times[times.len() / 2],
                values[0],
                values[1],
                values[2],
                values[3]
            ));
        }
    }
    println!(
        "{{\"threads\": {}, \"repeats\": {repeats}, \"cases\": [{}]}}",
        rayon::current_num_threads(),
        cases.join(", ")
    );
    Ok(())
}

/// medpy's `dc`, `jc`, `hd95`, `asd` (no spacing), as the papers compute them.
fn four_metrics(
    pred: &[bool],
    gt: &[bool],
    shape: [usize; 3],
) -> Result<[f64; 4], Box<dyn std::error::Error>> {
    let pair = SurfacePair::new(pred, gt, shape)?;
    let d = pair
        .distances([1.0; 3])?
        .ok_or("an empty mask: HD95 and ASD are undefined")?;
    Ok([
        pair.dice(),
        pair.jaccard(),
        d.hausdorff(95.0, HausdorffDefinition::MedpyPooled),
        d.asd(),
    ])
}

/// Voxel count and sum of flat indices of a mask: `{"voxels": n, "index_sum": s}`.
fn fingerprint(mask: &[bool]) -> String {
    let (n, s) = mask
        .iter()
        .enumerate()
        .filter(|(_, &m)| m)
        .fold((0u64, 0u64), |(n, s), (i, _)| (n + 1, s + i as u64));
    format!("{{\"voxels\": {n}, \"index_sum\": {s}}}")
}

fn perturb(mask: &[bool], shape: [usize; 3], name: &str) -> Vec<bool> {
    let [n0, n1, n2] = shape;
    let at = |i: usize, j: usize, k: usize| mask[(i * n1 + j) * n2 + k];
    let mut out = vec![false; mask.len()];
    for i in 0..n0 {
        for j in 0..n1 {
            for k in 0..n2 {
                let neighbours = [
                    (i > 0).then(|| at(i - 1, j, k)),
                    (i + 1 < n0).then(|| at(i + 1, j, k)),
                    (j > 0).then(|| at(i, j - 1, k)),
                    (j + 1 < n1).then(|| at(i, j + 1, k)),
                    (k > 0).then(|| at(i, j, k - 1)),
                    (k + 1 < n2).then(|| at(i, j, k + 1)),
                ];
                out[(i * n1 + j) * n2 + k] = match name {
                    // out[i, j] = mask[i - 2, j + 2]
                    "shift" => i >= 2 && j + 2 < n1 && at(i - 2, j + 2, k),
                    "erosion" => at(i, j, k) && neighbours.iter().all(|n| *n == Some(true)),
                    _ => at(i, j, k) || neighbours.contains(&Some(true)),
                };
            }
        }
    }
    out
}
