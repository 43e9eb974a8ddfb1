//! `relu(bn(conv3d(x)))` as one autograd node on the CPU.
//!
//! The values and gradients are those of [`super::conv3d()`] followed by
//! [`super::batch_norm_act_train`] / [`super::batch_norm_act_eval`] with [`super::Epilogue::Relu`]
//! (the same kernels run in the same order). One node instead of two saves candle's gradient
//! accumulation at the convolution output: candle adds every gradient it receives into a fresh zero
//! tensor (a fill and an add over the whole activation), and here the batch-norm backward hands its
//! `dz` straight to the convolution backward.
//!
//! | op | inputs | output |
//! |---|---|---|
//! | `ConvBnRelu` (`CustomOp3`) | `x`, `w`, packed `[k, C_out]` = ([bias], gamma, beta, [mean, var]) | `y` |
//!
//! The convolution output `z` (the batch norm's input, needed by its backward) and the batch
//! statistics are kept in the op, i.e. in the graph, exactly as long as the two-node form kept `z`.
//! Other devices compose the unfused ops.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::batch_norm::{rows_f32, BatchStats, ChannelStats, StatsSource};
use super::bn_act::{batch_norm_act_eval, batch_norm_act_train, BnAct, Epilogue, Kind};
use super::conv3d::{bias_grad, check_bias, conv3d, dims5, Conv3dFwd, Conv3dParams};

/// `relu(bn(conv3d(x, w, bias)))`, batch statistics when `running` is `None` (training mode; the
/// statistics are returned for the running-average update), else the given `(mean, var)` (eval).
/// Gradients flow to `x`, `w`, `bias`, `gamma` and `beta`.
#[allow(clippy::too_many_arguments)]
pub fn conv3d_bn_relu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    params: Conv3dParams,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    let (n, c_in, dims) = dims5("conv3d input", x)?;
    let (c_out, wc, kernel) = dims5("conv3d weight", w)?;
    if !x.device().is_cpu() || wc != c_in || x.dtype() != candle_core::DType::F32 {
        // the unfused ops report bad shapes with their own messages
        return unfused(x, w, bias, params, gamma, beta, running, eps);
    }
    check_bias("conv3d", bias, c_out)?;
    let out = params.output_dims(dims, kernel)?;
    let count = n * out.iter().product::<usize>();
    for (name, t) in [("weight", gamma), ("bias", beta)] {
        if t.dims() != [c_out] || t.dtype() != candle_core::DType::F32 {
            bail!(
                "batch-norm {name} must be f32 [{c_out}] for conv output channels, got {:?} {:?}",
                t.dtype(),
                t.dims()
            )
        }
    }
    if eps.is_nan() || eps < 0.0 {
        bail!("batch-norm eps must be >= 0, got {eps}")
    }
    let mut rows: Vec<Tensor> = Vec::with_capacity(5);
    if let Some(b) = bias {
        rows.push(b.clone());
    }
    rows.push(gamma.clone());
    rows.push(beta.clone());
    let source = match running {
        None => {
            if count < 2 {
                bail!(
                    "batch-norm in training mode needs more than 1 value per channel, conv output {:?}",
                    [n, c_out, out[0], out[1], out[2]]
                )
            }
            StatsSource::Batch
        }
        Some((mean, var)) => {
            for (name, t) in [("mean", mean), ("variance", var)] {
                if t.dims() != [c_out] || t.dtype() != candle_core::DType::F32 {
                    bail!(
                        "batch-norm {name} must be f32 [{c_out}], got {:?} {:?}",
                        t.dtype(),
                        t.dims()
                    )
                }
            }
            rows.push(mean.detach());
            rows.push(var.detach());
            StatsSource::Fixed
        }
    };
    let packed = Tensor::stack(&rows, 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnRelu {
        conv: Conv3dFwd { params },
        has_bias: bias.is_some(),
        bn: BnAct {
            eps,
            source,
            kind: Kind::Relu,
        },
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &packed, op)?;
    let stats = match source {
        StatsSource::Fixed => None,
        StatsSource::Batch => {
            let guard = saved.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = guard.as_ref() else {
                bail!("conv-bn-relu: the forward kept no statistics")
            };
            let s: &Saved = s;
            Some(BatchStats {
                mean: s.stats.get(0)?,
                var: s.stats.get(1)?,
                count,
            })
        }
    };
    Ok((y, stats))
}

#[allow(clippy::too_many_arguments)]
fn unfused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    params: Conv3dParams,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    let z = conv3d(x, w, bias, params)?;
    match running {
        None => {
            let (y, stats) = batch_norm_act_train(&z, gamma, beta, eps, Epilogue::Relu)?;
            Ok((y, Some(stats)))
        }
        Some((mean, var)) => Ok((
            batch_norm_act_eval(&z, mean, var, gamma, beta, eps, Epilogue::Relu)?,
            None,
        )),
    }
}

/// What the forward keeps for the backward: the convolution output and the `[2, C]` statistics.
#[derive(Debug)]
struct Saved {
    z: Tensor,
    stats: Tensor,
}

#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv3dFwd,
    has_bias: bool,
    bn: BnAct,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl ConvBnRelu {
    /// Rows of the packed operand: `[bias], gamma, beta, [mean, var]`.
    fn rows(&self) -> usize {
        2 + usize::from(self.has_bias) + 2 * usize::from(self.bn.source == StatsSource::Fixed)
    }
}

/// A contiguous f32 CPU tensor from kernel output.
fn cpu_tensor(s: CpuStorage, shape: Shape) -> Result<Tensor> {
    match s {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        other => bail!(
            "conv-bn-relu: kernel returned {:?}",
            candle_core::backend::BackendStorage::dtype(&other)
        ),
    }
}

impl CustomOp3 for ConvBnRelu {
    fn name(&self) -> &'static str {
        "nn3d-conv-bn-relu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(CustomOp3::name(self));
        let c = match *lw.dims() {
            [c, ..] => c,
            _ => bail!("conv3d weight must be rank 5, got {:?}", lw.dims()),
        };
        let packed = rows_f32(sp, lp, self.rows(), c, "conv-bn-relu parameters")?;
        let (bias, rest) = match self.has_bias {
            true => (Some(&packed[..c]), &packed[c..]),
            false => (None, packed),
        };
        let (zs, shape) = self.conv.cpu(sx, lx, sw, lw, bias)?;
        let zl = Layout::contiguous(shape.clone());
        let stats: Vec<f32> = match self.bn.source {
            StatsSource::Batch => match ChannelStats.cpu_fwd(&zs, &zl)?.0 {
                CpuStorage::F32(v) => v,
                _ => bail!("conv-bn-relu: statistics must be f32"),
            },
            StatsSource::Fixed => rest[2 * c..4 * c].to_vec(),
        };
        // [mean, var, gamma, beta], the fused batch-norm op's parameter layout
        let mut p4 = stats.clone();
        p4.extend_from_slice(&rest[..2 * c]);
        let p4 = CpuStorage::F32(p4);
        let p4l = Layout::contiguous((4, c));
        let (ys, _) = self.bn.forward_cpu((&zs, &zl), None, (&p4, &p4l))?;
        let saved = Saved {
            z: cpu_tensor(zs, shape.clone())?,
            stats: Tensor::from_vec(stats, (2, c), &Device::Cpu)?,
        };
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok((ys, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        packed: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (z, stats) = {
            let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(s) => (s.z.clone(), s.stats.clone()),
                None => bail!("conv-bn-relu: backward before forward"),
            }
        };
        let packed = packed.detach();
        let off = usize::from(self.has_bias);
        let p4 = Tensor::cat(&[&stats, &packed.narrow(0, off, 2)?], 0)?;
        let (dz, _, dp4) = self.bn.backward(&z, None, &p4, dy)?;
        let (dx, dw) = self.conv.grads(x, w, &dz)?;
        let mut rows = Vec::with_capacity(self.rows());
        if self.has_bias {
            rows.push(bias_grad(&dz)?);
        }
        rows.push(dp4.get(2)?);
        rows.push(dp4.get(3)?);
        if self.bn.source == StatsSource::Fixed {
            let zeros = dp4.get(0)?.zeros_like()?;
            rows.push(zeros.clone());
            rows.push(zeros);
        }
        Ok((dx, dw, Some(Tensor::stack(&rows, 0)?)))
    }
}
