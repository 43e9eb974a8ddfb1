//! Deterministic procedural 3D phantoms for the built-in demo and the tests.
//!
//! Each case is a cube with one "organ" (an ellipsoid whose radius is deformed by a few random
//! low-frequency angular harmonics, label 1) among distractor structures of similar intensity
//! (tubes like vessels, and smaller round blobs, label 0), on a textured background, multiplied by a
//! smooth bias field, plus Gaussian noise, then z-scored. The organ is brighter than the distractors
//! by only a fraction of the noise level, so shape and context, not a threshold, separate them.
//! The same `(seed, index)` always gives the same case on every platform (ChaCha8 + f64 arithmetic).

use duoseg_models::standard_normal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhantomConfig {
    /// Volume shape (x, y, z).
    pub shape: [usize; 3],
    /// Labeled training cases.
    pub labeled: usize,
    /// Unlabeled training cases (their labels are generated but never used for training).
    pub unlabeled: usize,
    /// Held-out test cases.
    pub test: usize,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Standard deviation of the additive noise, relative to an organ intensity of 1.
    pub noise: f64,
}

/// One generated case: z-scored image and labels (0 background, 1 organ), C-order.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    /// Name, `phantom_<index>`.
    pub name: String,
    /// Shape (x, y, z).
    pub shape: [usize; 3],
    /// Z-scored intensities.
    pub image: Vec<f32>,
    /// Labels.
    pub label: Vec<u8>,
}

/// The demo dataset split into its three parts.
pub struct PhantomSet {
    /// Labeled training cases.
    pub labeled: Vec<PhantomCase>,
    /// Unlabeled training cases (labels present only for inspection).
    pub unlabeled: Vec<PhantomCase>,
    /// Test cases.
    pub test: Vec<PhantomCase>,
}

impl PhantomConfig {
    /// Generates all cases: indices `0..labeled` labeled, then unlabeled, then test.
    pub fn generate(&self) -> PhantomSet {
        let mut idx = 0;
        let mut take = |n: usize| -> Vec<PhantomCase> {
            let v = (idx..idx + n).map(|i| self.case(i)).collect();
            idx += n;
            v
        };
        let labeled = take(self.labeled);
        let unlabeled = take(self.unlabeled);
        let test = take(self.test);
        PhantomSet {
            labeled,
            unlabeled,
            test,
        }
    }

    /// Generates case `index` alone.
    pub fn case(&self, index: usize) -> PhantomCase {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
        let [nx, ny, nz] = self.shape;
        let n = nx * ny * nz;
        let s = [nx as f64, ny as f64, nz as f64];
        let minside = s.iter().cloned().fold(f64::INFINITY, f64::min);

        // organ: deformed ellipsoid near the centre
        let centre: [f64; 3] = std::array::from_fn(|a| s[a] * rng.random_range(0.4..0.6));
        let radii: [f64; 3] = std::array::from_fn(|_| minside * rng.random_range(0.17..0.26));
        let harmonics: Vec<([f64; 3], f64, f64)> = (0..4)
            .map(|_| {
                let dir = unit(&mut rng);
                (
                    dir,
                    rng.random_range(1.5..3.5),
                    rng.random_range(0.0..std::f64::consts::TAU),
                )
            })
            .collect();
        let amp = 0.12;

        // distractors: tubes (segments with a radius) and blobs, away from the organ centre
        let mut tubes = Vec::new();
        for _ in 0..rng.random_range(2..=3) {
            let a: [f64; 3] = std::array::from_fn(|k| s[k] * rng.random_range(0.05..0.95));
            let d = unit(&mut rng);
            let len = minside * rng.random_range(0.5..1.0);
            let b: [f64; 3] = std::array::from_fn(|k| a[k] + d[k] * len);
            tubes.push((
                a,
                b,
                minside * rng.random_range(0.04..0.07),
                rng.random_range(0.8..0.95),
            ));
        }
        let mut blobs = Vec::new();
        for _ in 0..rng.random_range(2..=4) {
            let c: [f64; 3] = std::array::from_fn(|k| s[k] * rng.random_range(0.1..0.9));
            blobs.push((
                c,
                minside * rng.random_range(0.06..0.11),
                rng.random_range(0.8..0.95),
            ));
        }

        // smooth fields: background texture and multiplicative bias
        let bg = SmoothField::new(&mut rng, 3, 2.0);
        let bias = SmoothField::new(&mut rng, 2, 1.0);

        let mut image = vec![0f64; n];
        let mut label = vec![0u8; n];
        for i in 0..nx {
            for j in 0..ny {
                for k in 0..nz {
                    let p = [i as f64 + 0.5, j as f64 + 0.5, k as f64 + 0.5];
                    let u = [p[0] / s[0], p[1] / s[1], p[2] / s[2]];
                    let v = (i * ny + j) * nz + k;
                    let mut val = 0.25 + 0.08 * bg.at(u);
                    // distractors first, the organ overwrites
                    for (a, b, r, int) in &tubes {
                        if seg_dist(p, *a, *b) < *r {
                            val = *int;
                        }
                    }
                    for (c, r, int) in &blobs {
                        if dist(p, *c) < *r {
                            val = *int;
                        }
                    }
                    let q: [f64; 3] = std::array::from_fn(|a| (p[a] - centre[a]) / radii[a]);
                    let rho = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
                    let dir = if rho > 0.0 {
                        [q[0] / rho, q[1] / rho, q[2] / rho]
                    } else {
                        [1.0, 0.0, 0.0]
                    };
                    let deform: f64 = harmonics
                        .iter()
                        .map(|(h, f, ph)| {
                            (f * (h[0] * dir[0] + h[1] * dir[1] + h[2] * dir[2]) + ph).sin()
                        })
                        .sum::<f64>()
                        * amp
                        / 2.0;
                    if rho <= 1.0 + deform {
                        val = 1.0 + 0.05 * bg.at([u[1], u[2], u[0]]);
                        label[v] = 1;
                    }
                    image[v] = val * (1.0 + 0.25 * bias.at(u));
                }
            }
        }
        for x in image.iter_mut() {
            *x += self.noise * standard_normal(&mut rng);
        }
        let mean = image.iter().sum::<f64>() / n as f64;
        let var = image.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let sd = var.sqrt().max(1e-8);
        PhantomCase {
            name: format!("phantom_{index:03}"),
            shape: self.shape,
            image: image.iter().map(|x| ((x - mean) / sd) as f32).collect(),
            label,
        }
    }
}

/// Sum of a few random 3D cosines of low frequency, values roughly in [-1, 1].
struct SmoothField {
    waves: Vec<([f64; 3], f64, f64)>,
}

impl SmoothField {
    fn new(rng: &mut ChaCha8Rng, n: usize, max_freq: f64) -> Self {
        let waves = (0..n)
            .map(|_| {
                let d = unit(rng);
                let f = rng.random_range(0.5..max_freq) * std::f64::consts::TAU;
                (d, f, rng.random_range(0.0..std::f64::consts::TAU))
            })
            .collect();
        Self { waves }
    }

    fn at(&self, u: [f64; 3]) -> f64 {
        let n = self.waves.len().max(1) as f64;
        self.waves
            .iter()
            .map(|(d, f, ph)| (f * (d[0] * u[0] + d[1] * u[1] + d[2] * u[2]) + ph).cos())
            .sum::<f64>()
            / n.sqrt()
    }
}

fn unit(rng: &mut ChaCha8Rng) -> [f64; 3] {
    loop {
        let v: [f64; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if n > 0.1 && n <= 1.0 {
            return [v[0] / n, v[1] / n, v[2] / n];
        }
    }
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn seg_dist(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
    let l2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
    let t = if l2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    dist(p, [a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PhantomConfig {
        PhantomConfig {
            shape: [24, 28, 20],
            labeled: 2,
            unlabeled: 3,
            test: 1,
            seed: 7,
            noise: 0.15,
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        let c = cfg();
        let a = c.case(3);
        let b = c.case(3);
        assert_eq!(a.image, b.image);
        assert_eq!(a.label, b.label);
        assert_ne!(c.case(4).label, a.label);
        let set = c.generate();
        assert_eq!(
            (set.labeled.len(), set.unlabeled.len(), set.test.len()),
            (2, 3, 1)
        );
        assert_eq!(set.unlabeled[1].label, a.label);
    }

    #[test]
    fn plausible_cases() {
        let c = cfg();
        for i in 0..6 {
            let p = c.case(i);
            let n = p.image.len();
            assert_eq!(n, 24 * 28 * 20);
            let fg = p.label.iter().filter(|&&l| l == 1).count() as f64 / n as f64;
            assert!(
                (0.01..0.3).contains(&fg),
                "case {i}: foreground fraction {fg}"
            );
            let mean = p.image.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            assert!(mean.abs() < 1e-4);
            // the organ is brighter on average than the rest
            let m = |l: u8| {
                let v: Vec<f64> = p
                    .image
                    .iter()
                    .zip(&p.label)
                    .filter(|(_, &y)| y == l)
                    .map(|(&x, _)| x as f64)
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            assert!(m(1) > m(0) + 0.5, "case {i}");
        }
    }
}
