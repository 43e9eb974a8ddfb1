//! Rust half of `cargo xtask bench io`: decode every LA case (image + label) of a dataset folder,
//! sequentially and with all cores (rayon; `RAYON_NUM_THREADS` caps it), after one warm-up pass so
//! that both sides read from the page cache. Prints one JSON object.
//!
//! Usage: bench_io <la2018 dir> [repeats]

use std::time::Instant;

use rayon::prelude::*;

/// Sum in f64 over eight independent accumulators: vectorised, like numpy's (pairwise) `sum`,
/// so that the checksum proving the decode does not cost as much as a sequential add chain.
fn checksum(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    acc.iter().sum::<f64>() + rest
}

fn decode(ds: &duoseg_io::Dataset, id: &str) -> Result<(f64, u64), duoseg_io::Error> {
    let s = ds.load(id)?;
    let sum = checksum(&s.image.data);
    let fg = s
        .label
        .map_or(0, |l| l.iter().filter(|&&v| v > 0).count() as u64);
    Ok((sum, fg))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let root = args
        .get(1)
        .ok_or("usage: bench_io <la2018 dir> [repeats]")?;
    let repeats: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(3);
    let ds = duoseg_io::Dataset::open(root)?;
    let ids = ds.ids();
    // Warm-up (page cache) and checksums.
    let sums: Vec<(f64, u64)> = ids
        .iter()
        .map(|id| decode(&ds, id))
        .collect::<Result<_, _>>()?;
    let checksum: f64 = sums.iter().map(|s| s.0).sum();
    let foreground: u64 = sums.iter().map(|s| s.1).sum();
    let mut seq = Vec::new();
    let mut par = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        for id in &ids {
            decode(&ds, id)?;
        }
        seq.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        ids.par_iter()
            .map(|id| decode(&ds, id))
            .collect::<Result<Vec<_>, _>>()?;
        par.push(t.elapsed().as_secs_f64());
    }
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let out = serde_json::json!({
        "cases": ids.len(),
        "threads": rayon::current_num_threads(),
        "sequential_s": min(&seq),
        "parallel_s": min(&par),
        "sequential_ms_per_case": 1e3 * min(&seq) / ids.len() as f64,
        "parallel_ms_per_case": 1e3 * min(&par) / ids.len() as f64,
        "image_sum": checksum,
        "label_foreground": foreground,
    });
    println!("{out}");
    Ok(())
}
