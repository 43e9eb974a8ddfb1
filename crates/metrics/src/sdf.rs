//! The normalised signed distance map that DTC and SASSNet regress (`compute_sdf` of their public
//! code, docs/methods.md section 4).

use crate::{check_len, edt, Error};

/// The foreground voxels with a background 6-neighbour inside the array: skimage's
/// `find_boundaries(mask, mode='inner')` (outside the array nothing counts, so a mask touching the
/// border is not a boundary there).
fn inner_boundary(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [n0, n1, n2] = shape;
    let at = |i: usize, j: usize, k: usize| mask[(i * n1 + j) * n2 + k];
    let mut out = vec![false; mask.len()];
    for i in 0..n0 {
        for j in 0..n1 {
            for k in 0..n2 {
                if !at(i, j, k) {
                    continue;
                }
                let background = (i > 0 && !at(i - 1, j, k))
                    || (i + 1 < n0 && !at(i + 1, j, k))
                    || (j > 0 && !at(i, j - 1, k))
                    || (j + 1 < n1 && !at(i, j + 1, k))
                    || (k > 0 && !at(i, j, k - 1))
                    || (k + 1 < n2 && !at(i, j, k + 1));
                out[(i * n1 + j) * n2 + k] = background;
            }
        }
    }
    out
}

/// DTC's normalised signed distance of `mask` (voxel units, C order): outside the object the
/// distance to it scaled to [0, 1], inside minus the distance to the background scaled to
/// [0, 1], 0 on the object's inner boundary:
/// `(negdis - min negdis) / (max negdis - min negdis) - (posdis - min posdis) / (max posdis - min posdis)`
/// with `posdis = EDT(mask)`, `negdis = EDT(!mask)`. An empty mask gives zeros (as the code); so
/// does a mask with no background voxel, where the code divides 0 by 0.
pub fn normalized_signed_distance(mask: &[bool], shape: [usize; 3]) -> Result<Vec<f64>, Error> {
    check_len(mask.len(), shape)?;
    let n_fg = mask.iter().filter(|&&m| m).count();
    if n_fg == 0 || n_fg == mask.len() {
        return Ok(vec![0.0; mask.len()]);
    }
    let posdis = edt(mask, shape, [1.0; 3])?;
    let inverse: Vec<bool> = mask.iter().map(|m| !m).collect();
    let negdis = edt(&inverse, shape, [1.0; 3])?;
    let range = |d: &[f64]| {
        let lo = d.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, (hi - lo).max(f64::MIN_POSITIVE))
    };
    let (pos_lo, pos_span) = range(&posdis);
    let (neg_lo, neg_span) = range(&negdis);
    let boundary = inner_boundary(mask, shape);
    Ok((0..mask.len())
        .map(|i| {
            if boundary[i] {
                0.0
            } else {
                (negdis[i] - neg_lo) / neg_span - (posdis[i] - pos_lo) / pos_span
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cube_is_negative_inside_positive_outside_zero_on_its_boundary() {
        let shape = [7, 7, 7];
        let mask: Vec<bool> = (0..343)
            .map(|v| {
                let (i, j, k) = (v / 49, v / 7 % 7, v % 7);
                (2..5).contains(&i) && (2..5).contains(&j) && (2..5).contains(&k)
            })
            .collect();
        let sdf = normalized_signed_distance(&mask, shape).unwrap();
        let at = |i: usize, j: usize, k: usize| sdf[(i * 7 + j) * 7 + k];
        assert_eq!(at(2, 2, 2), 0.0, "boundary");
        assert_eq!(at(3, 3, 3), -1.0, "the deepest voxel");
        assert_eq!(at(0, 0, 0), 1.0, "the farthest background voxel");
        assert!(at(1, 3, 3) > 0.0 && at(1, 3, 3) < 1.0);
        assert!(sdf.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(
            normalized_signed_distance(&[false; 8], [2, 2, 2]).unwrap(),
            [0.0; 8]
        );
        assert_eq!(
            normalized_signed_distance(&[true; 8], [2, 2, 2]).unwrap(),
            [0.0; 8]
        );
        assert!(normalized_signed_distance(&[true; 7], [2, 2, 2]).is_err());
    }
}
