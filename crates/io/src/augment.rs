//! Random augmentation (names start with `Rand`, as in MONAI). Every draw comes from the one
//! [`Rng`] passed in, so a run is reproducible from its seed; `Rng` serialises with serde for resume.

use rand::Rng as _;

use crate::error::{Error, Result};
use crate::preprocess::{crop, pad, Crop3};
use crate::volume::check_len;

/// The generator used for all augmentation: ChaCha8, stable across platforms and rand versions,
/// serialisable (serde) for reproducible resume.
pub type Rng = rand_chacha::ChaCha8Rng;

/// An image patch with its (optional) labels, C order.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub shape: [usize; 3],
    pub image: Vec<f32>,
    pub label: Option<Vec<u8>>,
}

impl Patch {
    /// Checks buffer lengths against `shape`.
    pub fn new(shape: [usize; 3], image: Vec<f32>, label: Option<Vec<u8>>) -> Result<Self> {
        check_len("patch image", image.len(), shape)?;
        if let Some(l) = &label {
            check_len("patch label", l.len(), shape)?;
        }
        Ok(Self {
            shape,
            image,
            label,
        })
    }
}

/// UA-MT's padding rule before a random crop: if any side is `<=` the crop (UA-MT's code compares
/// with `<=`), every axis is zero-padded on both sides by `max((crop - size) // 2 + 3, 0)` (floor
/// division, as Python).
pub fn uamt_padding(shape: [usize; 3], size: [usize; 3]) -> [usize; 3] {
    if (0..3).all(|a| shape[a] > size[a]) {
        return [0; 3];
    }
    [0, 1, 2].map(|a| ((size[a] as i64 - shape[a] as i64).div_euclid(2) + 3).max(0) as usize)
}

/// Random crop of `size` (UA-MT `RandomCrop`): pad by [`uamt_padding`], then a uniform offset in
/// `[0, side - size)` per axis (numpy `randint` excludes the upper bound), drawn in axis order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandCrop {
    pub size: [usize; 3],
}

impl RandCrop {
    pub fn apply(&self, rng: &mut Rng, patch: Patch) -> Result<Patch> {
        if self.size.contains(&0) {
            return Err(Error::Invalid(format!(
                "crop size {:?} has a zero side",
                self.size
            )));
        }
        let p = uamt_padding(patch.shape, self.size);
        let (image, shape) = pad(&patch.image, patch.shape, p, p)?;
        let label = patch
            .label
            .map(|l| pad(&l, patch.shape, p, p).map(|x| x.0))
            .transpose()?;
        let mut start = [0; 3];
        for a in 0..3 {
            // After padding every side is >= size; a side equal to size gives offset 0.
            start[a] = if shape[a] > self.size[a] {
                rng.random_range(0..shape[a] - self.size[a])
            } else {
                0
            };
        }
        let c = Crop3 {
            start,
            size: self.size,
        };
        Ok(Patch {
            shape: self.size,
            image: crop(&image, shape, c)?,
            label: label.map(|l| crop(&l, shape, c)).transpose()?,
        })
    }
}

/// Random rot90 in the axial plane (the plane of the first two axes, numpy `rot90(x, k)` with
/// `k` in 0..4) followed by a random flip of axis 0 or 1 (UA-MT `RandomRotFlip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RandRot90Flip;

impl RandRot90Flip {
    pub fn apply(&self, rng: &mut Rng, patch: Patch) -> Result<Patch> {
        let k = rng.random_range(0..4u8);
        let axis = rng.random_range(0..2usize);
        Ok(flip(rot90(patch, k), axis))
    }
}

/// numpy `rot90(x, k, axes=(0, 1))`.
pub fn rot90(patch: Patch, k: u8) -> Patch {
    let [na, nb, nc] = patch.shape;
    let k = k % 4;
    let out_shape = if k % 2 == 1 {
        [nb, na, nc]
    } else {
        patch.shape
    };
    // Source (a, b) of output (i, j).
    let src = |i: usize, j: usize| -> (usize, usize) {
        match k {
            1 => (j, nb - 1 - i),
            2 => (na - 1 - i, nb - 1 - j),
            3 => (na - 1 - j, i),
            _ => (i, j),
        }
    };
    fn remap<T: Copy>(
        data: &[T],
        out_shape: [usize; 3],
        nb: usize,
        src: &dyn Fn(usize, usize) -> (usize, usize),
    ) -> Vec<T> {
        let nc = out_shape[2];
        let mut out = Vec::with_capacity(data.len());
        for i in 0..out_shape[0] {
            for j in 0..out_shape[1] {
                let (a, b) = src(i, j);
                let row = (a * nb + b) * nc;
                out.extend_from_slice(&data[row..row + nc]);
            }
        }
        out
    }
    Patch {
        shape: out_shape,
        image: remap(&patch.image, out_shape, nb, &src),
        label: patch.label.map(|l| remap(&l, out_shape, nb, &src)),
    }
}

/// numpy `flip(x, axis)` for axis 0, 1 or 2.
pub fn flip(patch: Patch, axis: usize) -> Patch {
    let [na, nb, nc] = patch.shape;
    fn go<T: Copy>(data: &[T], [na, nb, nc]: [usize; 3], axis: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(data.len());
        for i in 0..na {
            for j in 0..nb {
                let (a, b) = match axis {
                    0 => (na - 1 - i, j),
                    1 => (i, nb - 1 - j),
                    _ => (i, j),
                };
                let row = &data[(a * nb + b) * nc..(a * nb + b + 1) * nc];
                if axis == 2 {
                    out.extend(row.iter().rev());
                } else {
                    out.extend_from_slice(row);
                }
            }
        }
        out
    }
    Patch {
        shape: [na, nb, nc],
        image: go(&patch.image, patch.shape, axis),
        label: patch.label.map(|l| go(&l, patch.shape, axis)),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    // import numpy as np; m = np.arange(6).reshape(2, 3, 1)
    // [np.rot90(m, k).ravel() for k in range(4)], np.flip(m, 0).ravel(), np.flip(m, 1).ravel()
    #[test]
    fn rot90_and_flip_match_numpy() {
        let p = Patch::new(
            [2, 3, 1],
            (0..6).map(|v| v as f32).collect(),
            Some((0..6).collect()),
        )
        .unwrap();
        let want: [&[f32]; 4] = [
            &[0., 1., 2., 3., 4., 5.],
            &[2., 5., 1., 4., 0., 3.],
            &[5., 4., 3., 2., 1., 0.],
            &[3., 0., 4., 1., 5., 2.],
        ];
        for k in 0..4u8 {
            let r = rot90(p.clone(), k);
            assert_eq!(r.shape, if k % 2 == 1 { [3, 2, 1] } else { [2, 3, 1] });
            assert_eq!(r.image, want[k as usize]);
            assert_eq!(
                r.label.unwrap(),
                want[k as usize]
                    .iter()
                    .map(|&v| v as u8)
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(flip(p.clone(), 0).image, vec![3., 4., 5., 0., 1., 2.]);
        assert_eq!(flip(p.clone(), 1).image, vec![2., 1., 0., 5., 4., 3.]);
        let q = Patch::new([1, 1, 3], vec![1., 2., 3.], None).unwrap();
        assert_eq!(flip(q, 2).image, vec![3., 2., 1.]);
    }

    #[test]
    fn uamt_padding_rule() {
        // 190x142x88 vs 112x112x80: no side <= crop, no padding.
        assert_eq!(uamt_padding([190, 142, 88], [112, 112, 80]), [0, 0, 0]);
        // One side equal to the crop pads every axis: (80-80)//2+3 = 3, (112-190)//2+3 < 0 -> 0.
        assert_eq!(uamt_padding([190, 142, 80], [112, 112, 80]), [0, 0, 3]);
        assert_eq!(uamt_padding([100, 142, 88], [112, 112, 80]), [9, 0, 0]);
        // Python floor division of odd negatives: (112-115)//2 = -2 -> +3 = 1.
        assert_eq!(uamt_padding([115, 100, 88], [112, 112, 80]), [1, 9, 0]);
    }

    #[test]
    fn rand_crop_is_seeded_and_keeps_image_and_label_aligned() {
        let shape = [12, 9, 7];
        let n = 12 * 9 * 7;
        let image: Vec<f32> = (0..n).map(|v| v as f32).collect();
        let label: Vec<u8> = (0..n).map(|v| (v % 251) as u8).collect();
        let p = Patch::new(shape, image, Some(label)).unwrap();
        let crop = RandCrop { size: [5, 5, 7] };
        let a = crop.apply(&mut Rng::seed_from_u64(3), p.clone()).unwrap();
        let b = crop.apply(&mut Rng::seed_from_u64(3), p.clone()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape, [5, 5, 7]);
        for (v, l) in a.image.iter().zip(a.label.as_ref().unwrap()) {
            // Padded voxels are zero in both; others keep the label of their intensity.
            assert_eq!(
                *l,
                if *v == 0.0 {
                    0
                } else {
                    (*v as usize % 251) as u8
                }
            );
        }
        // Offsets cover [0, side - size) over many seeds: never the last position (numpy randint).
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let c = RandCrop {
                size: [5, 9 - 1, 1],
            }
            .apply(&mut Rng::seed_from_u64(seed), p.clone())
            .unwrap();
            firsts.insert(c.image[0] as usize / (9 * 7));
        }
        assert_eq!(firsts, (0..7).collect());
        let rf = RandRot90Flip
            .apply(&mut Rng::seed_from_u64(1), a.clone())
            .unwrap();
        assert_eq!(rf.image.len(), a.image.len());
        let mut sorted_a = a.image.clone();
        let mut sorted_r = rf.image.clone();
        sorted_a.sort_by(f32::total_cmp);
        sorted_r.sort_by(f32::total_cmp);
        assert_eq!(sorted_a, sorted_r);
        assert!(RandCrop { size: [0, 1, 1] }
            .apply(&mut Rng::seed_from_u64(0), p)
            .is_err());
    }

    #[test]
    fn rng_state_serialises_for_resume() {
        use rand::Rng as _;
        let mut rng = Rng::seed_from_u64(9);
        let _: u64 = rng.random();
        let saved = serde_json::to_string(&rng).unwrap();
        let mut restored: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(rng.random::<u64>(), restored.random::<u64>());
    }
}
