//! Object surfaces as medpy extracts them, and bounding boxes.

use rayon::prelude::*;

use crate::{check_len, Error};

/// The surface of `mask` as medpy 0.5 defines it: `mask xor binary_erosion(mask)` with the
/// 6-connected cross, voxels outside the array counting as background (so a mask voxel on the
/// array border is always a surface voxel). C order, `shape` as the mask.
pub fn surface(mask: &[bool], shape: [usize; 3]) -> Result<Vec<bool>, Error> {
    check_len(mask.len(), shape)?;
    Ok(surface_unchecked(mask, shape))
}

/// [`surface`] without the length check.
pub(crate) fn surface_unchecked(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [n0, n1, n2] = shape;
    let n = n0 * n1 * n2;
    let mut out = vec![false; n];
    if n == 0 {
        return out;
    }
    let empty = vec![false; n2];
    let row = |i: usize, j: usize| &mask[(i * n1 + j) * n2..(i * n1 + j + 1) * n2];
    out.par_chunks_mut(n1 * n2)
        .enumerate()
        .for_each(|(i, slab)| {
            for (j, out_row) in slab.chunks_exact_mut(n2).enumerate() {
                let centre = row(i, j);
                // A fold without early exit vectorises; most rows are empty.
                if !centre.iter().fold(false, |a, &m| a | m) {
                    continue;
                }
                let up = if i > 0 { row(i - 1, j) } else { &empty };
                let down = if i + 1 < n0 { row(i + 1, j) } else { &empty };
                let left = if j > 0 { row(i, j - 1) } else { &empty };
                let right = if j + 1 < n1 { row(i, j + 1) } else { &empty };
                // The ends of the row lack a neighbour along axis 2: surface wherever set.
                out_row[0] = centre[0];
                out_row[n2 - 1] = centre[n2 - 1];
                if n2 > 2 {
                    let m = n2 - 2;
                    let (prev, mid, next) = (&centre[..m], &centre[1..m + 1], &centre[2..]);
                    let (up, down) = (&up[1..m + 1], &down[1..m + 1]);
                    let (left, right) = (&left[1..m + 1], &right[1..m + 1]);
                    for (k, o) in out_row[1..m + 1].iter_mut().enumerate() {
                        let interior = prev[k] & next[k] & up[k] & down[k] & left[k] & right[k];
                        *o = mid[k] & !interior;
                    }
                }
            }
        });
    out
}

/// A box of voxels: `lo` inclusive, `hi` exclusive, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

impl Bounds {
    /// The smallest box holding every `true` voxel of `mask`, or `None` if the mask is empty.
    pub fn of_mask(mask: &[bool], shape: [usize; 3]) -> Option<Bounds> {
        let [_, n1, n2] = shape;
        if mask.is_empty() {
            return None;
        }
        mask.par_chunks(n1 * n2)
            .enumerate()
            .filter_map(|(i, slab)| {
                let mut found: Option<Bounds> = None;
                for (j, row) in slab.chunks_exact(n2).enumerate() {
                    // A fold without early exit vectorises; most rows are empty.
                    if !row.iter().fold(false, |a, &m| a | m) {
                        continue;
                    }
                    let Some(first) = row.iter().position(|&m| m) else {
                        continue;
                    };
                    let last = row.iter().rposition(|&m| m).unwrap_or(first);
                    let b = Bounds {
                        lo: [i, j, first],
                        hi: [i + 1, j + 1, last + 1],
                    };
                    found = Some(found.map_or(b, |f| f.union(b)));
                }
                found
            })
            .reduce_with(Bounds::union)
    }

    /// The smallest box holding both boxes.
    pub fn union(self, other: Bounds) -> Bounds {
        Bounds {
            lo: std::array::from_fn(|a| self.lo[a].min(other.lo[a])),
            hi: std::array::from_fn(|a| self.hi[a].max(other.hi[a])),
        }
    }

    /// The box's shape.
    pub fn shape(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.hi[a] - self.lo[a])
    }

    /// Copies the box out of a C-order volume of `shape` (C order, [`Bounds::shape`]).
    pub fn crop<T: Copy + Send + Sync + Default>(&self, data: &[T], shape: [usize; 3]) -> Vec<T> {
        let [_, n1, n2] = shape;
        let [m0, m1, m2] = self.shape();
        let mut out = vec![T::default(); m0 * m1 * m2];
        if out.is_empty() {
            return out;
        }
        out.par_chunks_mut(m1 * m2)
            .enumerate()
            .for_each(|(i, slab)| {
                for (j, row) in slab.chunks_exact_mut(m2).enumerate() {
                    let start = ((self.lo[0] + i) * n1 + self.lo[1] + j) * n2 + self.lo[2];
                    row.copy_from_slice(&data[start..start + m2]);
                }
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SplitMix;

    /// Direct transcription of the definition, one voxel at a time.
    fn naive_surface(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
        let [n0, n1, n2] = shape;
        let at = |i: isize, j: isize, k: isize| {
            i >= 0
                && j >= 0
                && k >= 0
                && (i as usize) < n0
                && (j as usize) < n1
                && (k as usize) < n2
                && mask[((i as usize) * n1 + j as usize) * n2 + k as usize]
        };
        let mut out = vec![false; mask.len()];
        for i in 0..n0 as isize {
            for j in 0..n1 as isize {
                for k in 0..n2 as isize {
                    let eroded = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]
                        .iter()
                        .chain(&[(0, 0, 1), (0, 0, -1)])
                        .all(|&(a, b, c)| at(i + a, j + b, k + c));
                    out[((i as usize) * n1 + j as usize) * n2 + k as usize] =
                        at(i, j, k) && !eroded;
                }
            }
        }
        out
    }

    #[test]
    fn surface_matches_the_definition() {
        let mut rng = SplitMix(3);
        for _ in 0..30 {
            let shape = [
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 7) as usize,
            ];
            let n = shape.iter().product();
            let mask: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.8).collect();
            assert_eq!(surface(&mask, shape).unwrap(), naive_surface(&mask, shape));
        }
    }

    #[test]
    fn a_full_array_is_all_surface_on_its_border_only() {
        let shape = [3, 4, 5];
        let s = surface(&[true; 60], shape).unwrap();
        // Only the centre voxels (1, 1..3, 1..4) are interior.
        assert_eq!(s.iter().filter(|&&b| !b).count(), 6);
    }

    #[test]
    fn bounds_and_crop() {
        let shape = [4, 5, 6];
        let mut mask = vec![false; 120];
        mask[(5 + 2) * 6 + 4] = true; // (1, 2, 4)
        mask[(3 * 5 + 1) * 6 + 1] = true; // (3, 1, 1)
        let b = Bounds::of_mask(&mask, shape).unwrap();
        assert_eq!(b.lo, [1, 1, 1]);
        assert_eq!(b.hi, [4, 3, 5]);
        let crop = b.crop(&mask, shape);
        assert_eq!(crop.len(), 3 * 2 * 4);
        assert_eq!(crop.iter().filter(|&&m| m).count(), 2);
        assert!(Bounds::of_mask(&[false; 8], [2, 2, 2]).is_none());
    }
}
