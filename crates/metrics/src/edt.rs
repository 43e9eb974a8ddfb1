//! Exact Euclidean distance transform with anisotropic spacing.
//!
//! Separable, three passes, each parallel over lines with rayon:
//! 1. along axis 1: the 1D distance to the nearest site, two sweeps over the rows of each
//!    axis-0 slab (vectorised over the contiguous axis 2);
//! 2. along axis 2 (contiguous rows): the lower envelope of parabolas (Felzenszwalb &
//!    Huttenlocher, "Distance transforms of sampled functions", 2012);
//! 3. along axis 0: the lower envelope again, evaluated only where it is asked for (every voxel for
//!    [`edt`], the query voxels for the surface distances).
//!
//! The envelope compares parabola intersections as cross-multiplied fractions instead of dividing,
//! so in voxel units (integer squared distances) every comparison is exact, and the distances are
//! exactly scipy's. With other spacings they agree with scipy's to rounding (~1e-16 relative).

use rayon::prelude::*;

use crate::{check_len, check_spacing, Error};

/// Distance from every voxel to the nearest `false` voxel of `mask`, with voxel `spacing` (C order):
/// `scipy.ndimage.distance_transform_edt(mask, sampling=spacing)`. `false` voxels get 0; if the
/// mask has no `false` voxel, every distance is infinite.
pub fn edt(mask: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Result<Vec<f64>, Error> {
    check_len(mask.len(), shape)?;
    check_spacing(spacing)?;
    let sites: Vec<bool> = mask.iter().map(|m| !m).collect();
    let everywhere = vec![true; mask.len()];
    Ok(distances_at(&sites, &everywhere, shape, spacing))
}

/// Distances from the `query` voxels (in C order) to the nearest `site` voxel, both masks of
/// `shape`; infinite where there is no site. Caller checks lengths and spacing.
pub(crate) fn distances_at(
    sites: &[bool],
    query: &[bool],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    let n = n0 * n1 * n2;
    if n == 0 {
        return Vec::new();
    }
    let partial = squared_edt_axes_1_2(sites, shape, spacing);
    // The C-order rank of the first query voxel of each row (i, j), to put results in C order.
    let mut row_start: Vec<usize> = query
        .par_chunks(n2)
        .map(|row| row.iter().filter(|&&q| q).count())
        .collect();
    let mut total = 0;
    for r in row_start.iter_mut() {
        let count = *r;
        *r = total;
        total += count;
    }
    // Pass 3 along axis 0, one task per j: gather the [i][k] block, then one envelope per column k
    // that holds a query voxel.
    let s0 = spacing[0];
    let per_j: Vec<Vec<(usize, f64)>> = (0..n1)
        .into_par_iter()
        .map_init(
            || {
                let block = (vec![0.0f64; n0 * n2], vec![false; n0 * n2]);
                let column = (vec![0.0f64; n0], vec![false; n0]);
                (Envelope::with_capacity(n0), block, column)
            },
            |(env, (block, block_query), (line, column_query)), j| {
                let mut out = Vec::new();
                // Copy the [i][k] planes of this j (contiguous rows), then walk their columns.
                for i in 0..n0 {
                    let row = (i * n1 + j) * n2;
                    block[i * n2..(i + 1) * n2].copy_from_slice(&partial[row..row + n2]);
                    block_query[i * n2..(i + 1) * n2].copy_from_slice(&query[row..row + n2]);
                }
                // Rank of the next query voxel of each row (i, j), advanced as k grows.
                let mut next_rank: Vec<usize> = (0..n0).map(|i| row_start[i * n1 + j]).collect();
                for k in 0..n2 {
                    let mut any = false;
                    for (i, q) in column_query.iter_mut().enumerate() {
                        *q = block_query[i * n2 + k];
                        any |= *q;
                    }
                    if !any {
                        continue;
                    }
                    for (i, f) in line.iter_mut().enumerate() {
                        *f = block[i * n2 + k];
                    }
                    env.build(line, s0);
                    env.evaluate_where(column_query, s0, |i, d2| {
                        out.push((next_rank[i], d2.sqrt()));
                        next_rank[i] += 1;
                    });
                }
                out
            },
        )
        .collect();
    let mut result = vec![0.0f64; total];
    for (rank, d) in per_j.into_iter().flatten() {
        result[rank] = d;
    }
    result
}

/// Squared distances after the passes along axes 1 and 2 (C order, `shape`): for each voxel, the
/// smallest `(d1 s1)^2 + (d2 s2)^2` over the sites of its own axis-0 slab (infinite if none).
fn squared_edt_axes_1_2(sites: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [_, n1, n2] = shape;
    let mut out = vec![0.0f64; sites.len()];
    let (s1, s2) = (spacing[1], spacing[2]);
    out.par_chunks_mut(n1 * n2)
        .zip(sites.par_chunks(n1 * n2))
        .for_each_init(
            || (Envelope::with_capacity(n2), vec![0.0f64; n2]),
            |(env, scratch), (slab, slab_sites)| {
                // Pass 1 along axis 1: sweep the rows of the slab forward, then backward.
                let mut last = vec![f64::NEG_INFINITY; n2];
                for (j, (row, row_sites)) in slab
                    .chunks_exact_mut(n2)
                    .zip(slab_sites.chunks_exact(n2))
                    .enumerate()
                {
                    let pos = j as f64;
                    for ((l, &s), o) in last.iter_mut().zip(row_sites).zip(row.iter_mut()) {
                        if s {
                            *l = pos;
                        }
                        *o = pos - *l;
                    }
                }
                let mut next = last;
                next.fill(f64::INFINITY);
                for (j, (row, row_sites)) in slab
                    .chunks_exact_mut(n2)
                    .zip(slab_sites.chunks_exact(n2))
                    .enumerate()
                    .rev()
                {
                    let pos = j as f64;
                    for ((nx, &s), o) in next.iter_mut().zip(row_sites).zip(row.iter_mut()) {
                        if s {
                            *nx = pos;
                        }
                        let d = (*nx - pos).min(*o) * s1;
                        *o = d * d;
                    }
                }
                // Pass 2 along axis 2: the rows are contiguous.
                for row in slab.chunks_exact_mut(n2) {
                    if row.iter().all(|f| f.is_infinite()) {
                        continue;
                    }
                    scratch.copy_from_slice(row);
                    env.build(scratch, s2);
                    env.evaluate_all(row, s2);
                }
            },
        );
    out
}

/// One parabola `((x - pos) s)^2 + value` of a lower envelope, with the start of the range where
/// it is lowest as the fraction `num / den` (`den > 0`; `-inf / 1` for the first one).
#[derive(Debug, Clone, Copy)]
struct Parabola {
    pos: f64,
    value: f64,
    /// `value + s^2 pos^2`, the part of the intersection numerator that belongs to this parabola.
    h: f64,
    num: f64,
    den: f64,
}

/// The lower envelope of the parabolas of one line (Felzenszwalb & Huttenlocher), its buffer
/// reused across lines.
struct Envelope {
    parabolas: Vec<Parabola>,
}

impl Envelope {
    fn with_capacity(n: usize) -> Self {
        Self {
            parabolas: Vec::with_capacity(n),
        }
    }

    /// Builds the envelope of the finite values of `f` with grid spacing `s`.
    fn build(&mut self, f: &[f64], s: f64) {
        self.parabolas.clear();
        let w2 = s * s;
        for (q, &value) in f.iter().enumerate() {
            if !value.is_finite() {
                continue;
            }
            let pos = q as f64;
            let h = value + w2 * pos * pos;
            let mut start = (f64::NEG_INFINITY, 1.0);
            while let Some(top) = self.parabolas.last() {
                // The parabolas at `top.pos` and `pos` cross at num / den.
                let num = h - top.h;
                let den = 2.0 * w2 * (pos - top.pos);
                if num * top.den <= top.num * den {
                    self.parabolas.pop();
                } else {
                    start = (num, den);
                    break;
                }
            }
            self.parabolas.push(Parabola {
                pos,
                value,
                h,
                num: start.0,
                den: start.1,
            });
        }
    }

    /// Overwrites `f` with the envelope's squared distances at every position (all infinite when
    /// the envelope is empty).
    fn evaluate_all(&self, f: &mut [f64], s: f64) {
        if self.parabolas.is_empty() {
            f.fill(f64::INFINITY);
            return;
        }
        let mut m = 0;
        for (q, out) in f.iter_mut().enumerate() {
            *out = self.squared_at(q, &mut m, s);
        }
    }

    /// Calls `emit(q, squared distance)` at each position `q` where `query` is set, in order.
    fn evaluate_where(&self, query: &[bool], s: f64, mut emit: impl FnMut(usize, f64)) {
        if self.parabolas.is_empty() {
            for (q, _) in query.iter().enumerate().filter(|(_, &q)| q) {
                emit(q, f64::INFINITY);
            }
            return;
        }
        let mut m = 0;
        for (q, _) in query.iter().enumerate().filter(|(_, &q)| q) {
            emit(q, self.squared_at(q, &mut m, s));
        }
    }

    /// The envelope at `q`, advancing the parabola index `m` (positions must be visited in order).
    #[inline]
    fn squared_at(&self, q: usize, m: &mut usize, s: f64) -> f64 {
        let x = q as f64;
        while let Some(next) = self.parabolas.get(*m + 1) {
            if next.num < x * next.den {
                *m += 1;
            } else {
                break;
            }
        }
        let p = self.parabolas[*m];
        let t = (x - p.pos) * s;
        p.value + t * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SplitMix;

    /// O(n^2) reference: distance from each voxel to the nearest `false` voxel.
    fn brute_force(mask: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
        let [n0, n1, n2] = shape;
        let coords = |idx: usize| [idx / (n1 * n2), (idx / n2) % n1, idx % n2];
        let zeros: Vec<[usize; 3]> = (0..mask.len()).filter(|&i| !mask[i]).map(coords).collect();
        (0..n0 * n1 * n2)
            .map(|idx| {
                let p = coords(idx);
                zeros
                    .iter()
                    .map(|z| {
                        (0..3)
                            .map(|a| {
                                let d = (p[a] as f64 - z[a] as f64) * spacing[a];
                                d * d
                            })
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_on_random_volumes() {
        let mut rng = SplitMix(7);
        for case in 0..40 {
            let shape = [
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 9) as usize,
            ];
            let spacing = if case % 2 == 0 {
                [1.0, 1.0, 1.0]
            } else {
                [
                    0.3 + 2.0 * rng.uniform(),
                    0.3 + 2.0 * rng.uniform(),
                    0.3 + 2.0 * rng.uniform(),
                ]
            };
            let density = [0.97, 0.8, 0.3][case % 3];
            let n = shape.iter().product();
            let mask: Vec<bool> = (0..n).map(|_| rng.uniform() < density).collect();
            let got = edt(&mask, shape, spacing).unwrap();
            let want = brute_force(&mask, shape, spacing);
            for (g, w) in got.iter().zip(&want) {
                if w.is_infinite() {
                    assert!(g.is_infinite(), "case {case}: {g} vs inf");
                } else {
                    assert!(
                        (g - w).abs() <= 1e-12 * w.max(1.0),
                        "case {case}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn distances_at_query_equal_the_full_transform() {
        let mut rng = SplitMix(11);
        let shape = [7, 5, 9];
        let spacing = [0.7, 1.3, 2.1];
        let sites: Vec<bool> = (0..315).map(|_| rng.uniform() < 0.05).collect();
        let query: Vec<bool> = (0..315).map(|_| rng.uniform() < 0.3).collect();
        let full = edt(
            &sites.iter().map(|s| !s).collect::<Vec<_>>(),
            shape,
            spacing,
        )
        .unwrap();
        let want: Vec<f64> = (0..315).filter(|&i| query[i]).map(|i| full[i]).collect();
        assert_eq!(distances_at(&sites, &query, shape, spacing), want);
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(
            edt(&[true; 5], [2, 2, 2], [1.0; 3]),
            Err(Error::Length { len: 5, .. })
        ));
        assert!(matches!(
            edt(&[true; 8], [2, 2, 2], [1.0, 0.0, 1.0]),
            Err(Error::Spacing { .. })
        ));
    }
}
