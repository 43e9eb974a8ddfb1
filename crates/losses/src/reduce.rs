//! Whole-tensor reductions that keep a GPU busy.
//!
//! candle's CUDA reduction kernel runs one thread block per output element, so a sum of a 2M-voxel
//! mask down to one scalar runs on one streaming multiprocessor. On an H200 the 32 counting sums of
//! the reliable-voxel bisection took 25 ms of a 92 ms loss phase that way (bench_step's
//! `losses_median_s`). Off the CPU, these functions first reduce [`ROWS`] contiguous stretches in
//! parallel, then the partial results. On the CPU they are candle's own reductions, so CPU results
//! (and the bit-exact resume of CPU runs) do not change.

use candle_core::{Result, Tensor};

/// Number of partial reductions of the first stage.
const ROWS: usize = 1024;

/// Tensors smaller than this are reduced in one stage everywhere.
const TWO_STAGE_MIN: usize = 1 << 16;

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Min,
    Max,
}

fn apply(t: &Tensor, op: Op, dim: usize) -> Result<Tensor> {
    match op {
        Op::Sum => t.sum(dim),
        Op::Min => t.min(dim),
        Op::Max => t.max(dim),
    }
}

fn combine(a: &Tensor, b: &Tensor, op: Op) -> Result<Tensor> {
    match op {
        Op::Sum => a + b,
        Op::Min => a.minimum(b),
        Op::Max => a.maximum(b),
    }
}

/// `op` over every element, in two stages: the first `ROWS * q` elements as `ROWS` rows of `q`,
/// then the rows' results and the remaining tail.
fn two_stage(t: &Tensor, op: Op) -> Result<Tensor> {
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    let q = n / ROWS;
    if q == 0 {
        return apply(&flat, op, 0);
    }
    let head = flat.narrow(0, 0, ROWS * q)?.reshape((ROWS, q))?;
    let partial = apply(&apply(&head, op, 1)?, op, 0)?;
    let tail = n - ROWS * q;
    if tail == 0 {
        return Ok(partial);
    }
    combine(
        &partial,
        &apply(&flat.narrow(0, ROWS * q, tail)?, op, 0)?,
        op,
    )
}

fn use_two_stage(t: &Tensor) -> bool {
    !t.device().is_cpu() && t.elem_count() >= TWO_STAGE_MIN
}

/// Sum of every element, a scalar (differentiable). See the module notes.
pub(crate) fn sum_all(t: &Tensor) -> Result<Tensor> {
    if use_two_stage(t) {
        two_stage(t, Op::Sum)
    } else {
        t.sum_all()
    }
}

/// Mean of every element, a scalar (differentiable).
pub(crate) fn mean_all(t: &Tensor) -> Result<Tensor> {
    if use_two_stage(t) {
        two_stage(t, Op::Sum)?.affine(1.0 / t.elem_count() as f64, 0.0)
    } else {
        t.mean_all()
    }
}

/// Smallest element, a scalar.
pub(crate) fn min_all(t: &Tensor) -> Result<Tensor> {
    if use_two_stage(t) {
        two_stage(t, Op::Min)
    } else {
        t.flatten_all()?.min(0)
    }
}

/// Largest element, a scalar.
pub(crate) fn max_all(t: &Tensor) -> Result<Tensor> {
    if use_two_stage(t) {
        two_stage(t, Op::Max)
    } else {
        t.flatten_all()?.max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The two-stage forms (forced on the CPU) against candle's one-stage reductions, with and
    /// without a tail, and the sum's gradient.
    #[test]
    fn two_stage_reductions_match_one_stage() -> Result<()> {
        let dev = Device::Cpu;
        for n in [5usize, 1024, 1024 * 7, 1024 * 7 + 13, 100_003] {
            let t = Tensor::randn(0f32, 1.0, n, &dev)?;
            let want = t.sum_all()?.to_scalar::<f32>()?;
            let got = two_stage(&t, Op::Sum)?.to_scalar::<f32>()?;
            assert!(
                (want - got).abs() <= 1e-4 * (1.0 + want.abs()) + 1e-3,
                "n {n}: {got} vs {want}"
            );
            let min = two_stage(&t, Op::Min)?.to_scalar::<f32>()?;
            let max = two_stage(&t, Op::Max)?.to_scalar::<f32>()?;
            assert_eq!(min, t.min(0)?.to_scalar::<f32>()?, "n {n}");
            assert_eq!(max, t.max(0)?.to_scalar::<f32>()?, "n {n}");
            let u = t.ge(0.0)?.to_dtype(DType::U32)?;
            assert_eq!(
                two_stage(&u, Op::Sum)?.to_scalar::<u32>()?,
                u.sum_all()?.to_scalar::<u32>()?,
                "n {n}"
            );
        }
        let v = Var::new(&[[1f32, 2.0, 3.0]; 700], &dev)?;
        let g = two_stage(v.as_tensor(), Op::Sum)?.backward()?;
        let grad = g.get(v.as_tensor()).expect("gradient");
        assert_eq!(grad.dims(), &[700, 3]);
        assert_eq!(grad.flatten_all()?.min(0)?.to_scalar::<f32>()?, 1.0);
        assert_eq!(grad.flatten_all()?.max(0)?.to_scalar::<f32>()?, 1.0);
        Ok(())
    }
}
