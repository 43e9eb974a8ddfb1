//! Connected-component post-processing.

use crate::{check_len, Error};

/// Keeps only the largest 26-connected component of `mask` (C order, `shape`), clearing every
/// other voxel, and returns how many components there were. Of equally large components the one
/// whose first voxel comes first in C order is kept.
pub fn keep_largest_component(mask: &mut [bool], shape: [usize; 3]) -> Result<usize, Error> {
    check_len(mask.len(), shape)?;
    let [n0, n1, n2] = shape;
    // Component id + 1 per voxel (0 = not yet visited or background).
    let mut component = vec![0u32; mask.len()];
    let mut sizes: Vec<usize> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for seed in 0..mask.len() {
        if !mask[seed] || component[seed] != 0 {
            continue;
        }
        sizes.push(0);
        let id = sizes.len() as u32;
        component[seed] = id;
        stack.push(seed);
        let mut size = 0;
        while let Some(v) = stack.pop() {
            size += 1;
            let (i, j, k) = (v / (n1 * n2), (v / n2) % n1, v % n2);
            for ni in i.saturating_sub(1)..=(i + 1).min(n0 - 1) {
                for nj in j.saturating_sub(1)..=(j + 1).min(n1 - 1) {
                    for nk in k.saturating_sub(1)..=(k + 1).min(n2 - 1) {
                        let u = (ni * n1 + nj) * n2 + nk;
                        if mask[u] && component[u] == 0 {
                            component[u] = id;
                            stack.push(u);
                        }
                    }
                }
            }
        }
        sizes[id as usize - 1] = size;
    }
    let Some(best) = sizes
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i as u32 + 1)
    else {
        return Ok(0);
    };
    for (m, c) in mask.iter_mut().zip(&component) {
        *m = *c == best;
    }
    Ok(sizes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_diagonally_connected_component() {
        let shape = [4, 4, 4];
        let idx = |i: usize, j: usize, k: usize| (i * 4 + j) * 4 + k;
        let mut mask = vec![false; 64];
        // A diagonal chain of three voxels (26-connected only).
        for t in 0..3 {
            mask[idx(t, t, t)] = true;
        }
        // Two separate single voxels.
        mask[idx(0, 3, 3)] = true;
        mask[idx(3, 0, 3)] = true;
        assert_eq!(keep_largest_component(&mut mask, shape).unwrap(), 3);
        let kept: Vec<usize> = (0..64).filter(|&v| mask[v]).collect();
        assert_eq!(kept, vec![idx(0, 0, 0), idx(1, 1, 1), idx(2, 2, 2)]);
    }

    #[test]
    fn ties_keep_the_first_component_and_empty_masks_stay_empty() {
        let shape = [1, 1, 5];
        let mut mask = vec![false, true, false, true, false];
        assert_eq!(keep_largest_component(&mut mask, shape).unwrap(), 2);
        assert_eq!(mask, vec![false, true, false, false, false]);
        let mut empty = vec![false; 5];
        assert_eq!(keep_largest_component(&mut empty, shape).unwrap(), 0);
        assert!(keep_largest_component(&mut empty, [2, 2, 2]).is_err());
    }
}
