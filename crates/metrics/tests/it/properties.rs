//! Properties every metric must have, over seeded random blobs: Dice is symmetric, the HD95 of a
//! mask with itself is 0, distances do not change when the array is zero-padded, and the
//! largest-component option only ever removes prediction voxels.

use duoseg_metrics::{
    dice, evaluate_binary, evaluate_class, jaccard, keep_largest_component, surface_distances,
    MetricDefinition,
};

/// splitmix64, so the cases are reproducible without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A union of a few random balls (a blob) in an array of `shape`.
fn blob(rng: &mut Rng, shape: [usize; 3]) -> Vec<bool> {
    let balls: Vec<([f64; 3], f64)> = (0..1 + rng.below(4))
        .map(|_| {
            let c = std::array::from_fn(|a| rng.uniform() * shape[a] as f64);
            (c, 1.0 + rng.uniform() * 5.0)
        })
        .collect();
    let mut m = vec![false; shape.iter().product()];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let p = [i as f64, j as f64, k as f64];
                m[(i * shape[1] + j) * shape[2] + k] = balls
                    .iter()
                    .any(|(c, r)| (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>() <= r * r);
            }
        }
    }
    m
}

fn random_case(rng: &mut Rng) -> ([usize; 3], [f64; 3]) {
    let shape = [4 + rng.below(20), 4 + rng.below(20), 4 + rng.below(20)];
    let spacing = [
        0.4 + 2.0 * rng.uniform(),
        0.4 + 2.0 * rng.uniform(),
        0.4 + 2.0 * rng.uniform(),
    ];
    (shape, spacing)
}

pub fn dice_and_jaccard_are_symmetric() {
    let mut rng = Rng(1);
    for _ in 0..50 {
        let (shape, _) = random_case(&mut rng);
        let (a, b) = (blob(&mut rng, shape), blob(&mut rng, shape));
        assert_eq!(dice(&a, &b).unwrap(), dice(&b, &a).unwrap());
        assert_eq!(jaccard(&a, &b).unwrap(), jaccard(&b, &a).unwrap());
        let d = dice(&a, &b).unwrap();
        let j = jaccard(&a, &b).unwrap();
        // The identity linking the two.
        assert!((d - 2.0 * j / (1.0 + j)).abs() < 1e-12);
    }
}

pub fn hd95_of_a_mask_with_itself_is_zero() {
    let mut rng = Rng(2);
    for _ in 0..50 {
        let (shape, spacing) = random_case(&mut rng);
        let a = blob(&mut rng, shape);
        let m = evaluate_binary(&a, &a, shape, spacing, &MetricDefinition::default()).unwrap();
        if a.iter().any(|&v| v) {
            assert_eq!(
                (m.hd95, m.asd, m.hd, m.nsd),
                (Some(0.0), Some(0.0), Some(0.0), Some(1.0))
            );
        }
        assert_eq!((m.dice, m.jaccard), (1.0, 1.0));
    }
}

fn pad(
    m: &[bool],
    shape: [usize; 3],
    before: [usize; 3],
    after: [usize; 3],
) -> (Vec<bool>, [usize; 3]) {
    let out_shape: [usize; 3] = std::array::from_fn(|a| before[a] + shape[a] + after[a]);
    let mut out = vec![false; out_shape.iter().product()];
    for i in 0..shape[0] {
        for j in 0..shape[1] {
            for k in 0..shape[2] {
                let o =
                    ((i + before[0]) * out_shape[1] + j + before[1]) * out_shape[2] + k + before[2];
                out[o] = m[(i * shape[1] + j) * shape[2] + k];
            }
        }
    }
    (out, out_shape)
}

pub fn distances_are_invariant_to_zero_padding_away_from_the_border() {
    // Padding changes nothing as long as no mask touches the array border (a voxel on the border
    // is a surface voxel by medpy's rule, and stays one only while it is on the border): the blobs
    // are drawn one voxel inside the array.
    let mut rng = Rng(3);
    for _ in 0..60 {
        let (inner, spacing) = random_case(&mut rng);
        let (a, shape) = pad(&blob(&mut rng, inner), inner, [1; 3], [1; 3]);
        let (b, _) = pad(&blob(&mut rng, inner), inner, [1; 3], [1; 3]);
        let before = [rng.below(4), rng.below(4), rng.below(4)];
        let after = [rng.below(4), rng.below(4), rng.below(4)];
        let (a_pad, padded) = pad(&a, shape, before, after);
        let (b_pad, _) = pad(&b, shape, before, after);
        let want = surface_distances(&a, &b, shape, spacing).unwrap();
        let got = surface_distances(&a_pad, &b_pad, padded, spacing).unwrap();
        assert_eq!(got, want);
    }
}

pub fn padding_a_mask_on_the_border_removes_its_border_surface() {
    // A full 5x5x5 cube: every voxel on the array border is surface (98 of 125); padded, the same
    // cube only has its geometric surface, which is the same 98 voxels.
    let full = vec![true; 125];
    let (padded, shape) = pad(&full, [5; 3], [1; 3], [1; 3]);
    let d = surface_distances(&padded, &padded, shape, [1.0; 3])
        .unwrap()
        .unwrap();
    assert_eq!(d.pred_to_gt.len(), 98);
    let d = surface_distances(&full, &full, [5; 3], [1.0; 3])
        .unwrap()
        .unwrap();
    assert_eq!(d.pred_to_gt.len(), 98);
}

pub fn largest_component_only_removes_prediction_voxels() {
    let mut rng = Rng(4);
    for _ in 0..30 {
        let (shape, spacing) = random_case(&mut rng);
        let (a, b) = (blob(&mut rng, shape), blob(&mut rng, shape));
        let mut lcc = a.clone();
        let n = keep_largest_component(&mut lcc, shape).unwrap();
        assert!(lcc.iter().zip(&a).all(|(&l, &o)| !l || o));
        assert_eq!(n == 0, !a.iter().any(|&v| v));
        let def = MetricDefinition {
            keep_largest_component: true,
            ..MetricDefinition::default()
        };
        let with = evaluate_class(&a, &b, shape, spacing, &def).unwrap();
        let plain = evaluate_class(&lcc, &b, shape, spacing, &MetricDefinition::default()).unwrap();
        assert_eq!(with, plain);
    }
}
