//! CUDA-vs-CPU check of every nn3d op and gradient, run on the GPU machine.
//!
//! Build here with `cargo xtask gpu-build` (CUDA feature, stub toolchain), then on the device:
//! `bash xtask/gpu-run.sh gpu_check [--bench]` (carry `gpu/bin/gpu_check`; `cargo xtask gpu-check`
//! prints the exact call). For each case the same inputs go through the op on the CPU (the tested
//! reference kernels) and on `cuda:0`; the forward output and the gradients of
//! `sum(output * r)` (random `r`) with respect to every input are compared by
//! `max |cuda - cpu| / max |cpu|`, which must be <= 1e-4. Prints one table row per quantity and
//! exits with 0 when all pass, 1 when any fails, 2 on error (for instance no CUDA device).
//!
//! `--bench` also times, on the GPU, the full-size ops of the issue (input `(2, 16, 112, 112, 80)`):
//! conv3d 16 -> 16, 3^3, padding 1 (forward, forward + backward; f32 and TF32) and batch norm in
//! training mode (forward + backward), median of 10 runs after 3 warm-ups, and prints them as one
//! JSON line, with the two parts of those figures that are not the op itself: the harness
//! `sum(y * r)` with its backward, and the convolution's bias gradient.
//!
//! Built on CPU-only machines too (it then reports that no CUDA device exists and exits 2);
//! `--self-test` runs every case with the CPU in place of the GPU (all errors 0), which checks the
//! cases themselves without a GPU: `cargo run --release -p duoseg-nn3d --example gpu_check -- --self-test`.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use duoseg_nn3d::cuda;
use duoseg_nn3d::ops::{self, Conv3dParams, ConvTranspose3dParams};

/// Largest accepted `max |cuda - cpu| / max |cpu|`.
const TOLERANCE: f64 = 1e-4;

/// Deterministic uniform values in `[lo, hi)` (64-bit LCG), so CPU and CUDA get the same inputs.
fn uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// One op applied to inputs on some device: returns the outputs, the first of which is
/// differentiated (the others, e.g. batch statistics, are compared only).
type OpFn = dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>;

struct Row {
    case: String,
    quantity: String,
    rel_err: f64,
    pass: bool,
}

/// Forward outputs and gradients (`None` where an input gets none) of `op` on `dev`.
fn run_on(
    dev: &Device,
    inputs: &[Tensor],
    r: &Tensor,
    op: &OpFn,
) -> Result<(Vec<Tensor>, Vec<Option<Tensor>>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let outs = op(&tensors)?;
    let loss = (&outs[0] * r.to_device(dev)?)?.sum_all()?;
    let grads = loss.backward()?;
    let g = tensors
        .iter()
        .map(|t| grads.get(t).map(|g| g.to_device(&Device::Cpu)).transpose())
        .collect::<Result<_>>()?;
    let outs = outs
        .iter()
        .map(|t| t.to_device(&Device::Cpu))
        .collect::<Result<_>>()?;
    Ok((outs, g))
}

fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    if got.dims() != want.dims() {
        return Ok(f64::INFINITY);
    }
    let got = got.to_dtype(DType::F64)?.flatten_all()?;
    let want = want.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (got - &want)?.abs()?.max(0)?.to_scalar::<f64>()?;
    let scale = want.abs()?.max(0)?.to_scalar::<f64>()?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Compares `op` on CPU and CUDA; `names` label the inputs, `out_names` the outputs.
fn check_case(
    gpu: &Device,
    case: &str,
    names: &[&str],
    out_names: &[&str],
    inputs: Vec<Tensor>,
    op: &OpFn,
    rows: &mut Vec<Row>,
) -> Result<()> {
    // The loss weights `r` need the output shape: one CPU forward gives it.
    let shape = op(&inputs)?[0].dims().to_vec();
    let r = uniform(&shape, 7, -1.0, 1.0)?;
    let (cpu_out, cpu_grads) = run_on(&Device::Cpu, &inputs, &r, op)?;
    let (gpu_out, gpu_grads) = run_on(gpu, &inputs, &r, op)?;
    let mut push = |quantity: String, err: f64| {
        rows.push(Row {
            case: case.to_string(),
            quantity,
            rel_err: err,
            pass: err <= TOLERANCE,
        })
    };
    for (i, name) in out_names.iter().enumerate() {
        push(name.to_string(), rel_err(&gpu_out[i], &cpu_out[i])?);
    }
    for (i, name) in names.iter().enumerate() {
        match (&cpu_grads[i], &gpu_grads[i]) {
            (Some(c), Some(g)) => push(format!("d{name}"), rel_err(g, c)?),
            (None, None) => {}
            _ => push(
                format!("d{name} (present on one device only)"),
                f64::INFINITY,
            ),
        }
    }
    Ok(())
}

fn conv_cases(gpu: &Device, rows: &mut Vec<Row>) -> Result<()> {
    // (x shape, w shape, stride, padding, dilation, bias)
    type ConvCase = (
        [usize; 5],
        [usize; 5],
        [usize; 3],
        [usize; 3],
        [usize; 3],
        bool,
    );
    let cases: [ConvCase; 8] = [
        (
            [2, 3, 7, 6, 5],
            [4, 3, 3, 3, 3],
            [1; 3],
            [1; 3],
            [1; 3],
            true,
        ),
        (
            [1, 2, 9, 8, 7],
            [3, 2, 3, 2, 3],
            [2; 3],
            [1, 0, 2],
            [1; 3],
            false,
        ),
        (
            [2, 2, 11, 10, 9],
            [2, 2, 3, 3, 3],
            [1; 3],
            [2; 3],
            [2; 3],
            true,
        ),
        (
            [1, 4, 8, 8, 8],
            [5, 4, 7, 7, 7],
            [1; 3],
            [3; 3],
            [1; 3],
            false,
        ),
        (
            [2, 16, 20, 18, 12],
            [16, 16, 3, 3, 3],
            [1; 3],
            [1; 3],
            [1; 3],
            true,
        ),
        (
            [1, 3, 9, 9, 9],
            [2, 3, 1, 1, 1],
            [2; 3],
            [0; 3],
            [1; 3],
            true,
        ),
        (
            [2, 4, 8, 6, 4],
            [8, 4, 2, 2, 2],
            [2; 3],
            [0; 3],
            [1; 3],
            true,
        ),
        (
            [1, 3, 10, 7, 8],
            [2, 3, 3, 1, 2],
            [1, 2, 3],
            [0, 1, 1],
            [2, 1, 1],
            false,
        ),
    ];
    for (i, (xs, ws, stride, padding, dilation, bias)) in cases.into_iter().enumerate() {
        let p = Conv3dParams {
            stride,
            padding,
            dilation,
        };
        let mut inputs = vec![
            uniform(&xs, 100 + i as u64, -1.0, 1.0)?,
            uniform(&ws, 200 + i as u64, -0.5, 0.5)?,
        ];
        let mut names = vec!["x", "w"];
        if bias {
            inputs.push(uniform(&[ws[0]], 300 + i as u64, -0.5, 0.5)?);
            names.push("bias");
        }
        let case = format!("conv3d x{xs:?} w{ws:?} s{stride:?} p{padding:?} d{dilation:?}");
        let op = move |t: &[Tensor]| -> Result<Vec<Tensor>> {
            Ok(vec![ops::conv3d(&t[0], &t[1], t.get(2), p)?])
        };
        check_case(gpu, &case, &names, &["y"], inputs, &op, rows)?;
    }
    Ok(())
}

fn conv_transpose_cases(gpu: &Device, rows: &mut Vec<Row>) -> Result<()> {
    // (x shape, w shape [C_in, C_out, k..], stride, padding, output_padding, dilation, bias)
    type TCase = (
        [usize; 5],
        [usize; 5],
        [usize; 3],
        [usize; 3],
        [usize; 3],
        [usize; 3],
        bool,
    );
    let cases: [TCase; 5] = [
        (
            [2, 4, 5, 4, 3],
            [4, 3, 3, 3, 3],
            [2; 3],
            [1; 3],
            [1; 3],
            [1; 3],
            true,
        ),
        (
            [1, 2, 4, 5, 6],
            [2, 3, 2, 2, 2],
            [2; 3],
            [0; 3],
            [0; 3],
            [1; 3],
            true,
        ),
        (
            [1, 3, 6, 5, 4],
            [3, 2, 3, 3, 3],
            [1; 3],
            [1; 3],
            [0; 3],
            [2; 3],
            false,
        ),
        (
            [2, 3, 4, 4, 4],
            [3, 2, 3, 2, 3],
            [2, 1, 3],
            [1, 0, 1],
            [1, 0, 2],
            [1; 3],
            true,
        ),
        (
            [2, 16, 7, 7, 5],
            [16, 16, 3, 3, 3],
            [2; 3],
            [1; 3],
            [1; 3],
            [1; 3],
            false,
        ),
    ];
    for (i, (xs, ws, stride, padding, output_padding, dilation, bias)) in
        cases.into_iter().enumerate()
    {
        let p = ConvTranspose3dParams {
            stride,
            padding,
            output_padding,
            dilation,
        };
        let mut inputs = vec![
            uniform(&xs, 400 + i as u64, -1.0, 1.0)?,
            uniform(&ws, 500 + i as u64, -0.5, 0.5)?,
        ];
        let mut names = vec!["x", "w"];
        if bias {
            inputs.push(uniform(&[ws[1]], 600 + i as u64, -0.5, 0.5)?);
            names.push("bias");
        }
        let case = format!(
            "conv_transpose3d x{xs:?} w{ws:?} s{stride:?} p{padding:?} op{output_padding:?} d{dilation:?}"
        );
        let op = move |t: &[Tensor]| -> Result<Vec<Tensor>> {
            Ok(vec![ops::conv_transpose3d(&t[0], &t[1], t.get(2), p)?])
        };
        check_case(gpu, &case, &names, &["y"], inputs, &op, rows)?;
    }
    Ok(())
}

fn batch_norm_cases(gpu: &Device, rows: &mut Vec<Row>) -> Result<()> {
    // (x shape, value offset: large offsets test the accuracy of the variance)
    let cases: [([usize; 5], f32); 4] = [
        ([2, 3, 5, 6, 7], 0.0),
        ([1, 4, 3, 3, 3], 0.5),
        ([2, 16, 24, 20, 16], 0.0),
        ([2, 5, 9, 7, 11], 100.0),
    ];
    let eps = 1e-5;
    for (i, (xs, offset)) in cases.into_iter().enumerate() {
        let c = xs[1];
        let x = uniform(&xs, 700 + i as u64, offset - 2.0, offset + 3.0)?;
        let weight = uniform(&[c], 800 + i as u64, 0.5, 1.5)?;
        let bias = uniform(&[c], 900 + i as u64, -0.5, 0.5)?;
        let train = move |t: &[Tensor]| -> Result<Vec<Tensor>> {
            let (y, stats) = ops::batch_norm_train(&t[0], &t[1], &t[2], eps)?;
            Ok(vec![y, stats.mean, stats.var])
        };
        check_case(
            gpu,
            &format!("batch_norm_train x{xs:?} offset {offset}"),
            &["x", "weight", "bias"],
            &["y", "mean", "var"],
            vec![x.clone(), weight.clone(), bias.clone()],
            &train,
            rows,
        )?;
        let mean = uniform(&[c], 1000 + i as u64, offset - 0.5, offset + 0.5)?;
        let var = uniform(&[c], 1100 + i as u64, 0.5, 2.0)?;
        let eval = move |t: &[Tensor]| -> Result<Vec<Tensor>> {
            Ok(vec![ops::batch_norm_eval(
                &t[0], &t[3], &t[4], &t[1], &t[2], eps,
            )?])
        };
        check_case(
            gpu,
            &format!("batch_norm_eval x{xs:?} offset {offset}"),
            &["x", "weight", "bias", "mean", "var"],
            &["y"],
            vec![x, weight, bias, mean, var],
            &eval,
            rows,
        )?;
    }
    Ok(())
}

/// Median milliseconds of `f` on `dev` over `runs` runs after `warmup` runs.
fn time_ms(dev: &Device, warmup: usize, runs: usize, f: &dyn Fn() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[runs / 2])
}

fn bench(gpu: &Device) -> Result<()> {
    let shape = [2, 16, 112, 112, 80];
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, &shape[..], gpu)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (16, 16, 3, 3, 3), gpu)?)?;
    let b = Var::from_tensor(&Tensor::zeros(16, DType::F32, gpu)?)?;
    let gamma = Var::from_tensor(&Tensor::ones(16, DType::F32, gpu)?)?;
    let r = Tensor::randn(0f32, 1.0, &shape[..], gpu)?;
    let p = Conv3dParams::uniform(1, 1, 1);
    let conv_fwd = || -> Result<()> {
        ops::conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?;
        Ok(())
    };
    let conv_fwd_bwd = || -> Result<()> {
        let y = ops::conv3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?;
        (y * &r)?.sum_all()?.backward()?;
        Ok(())
    };
    let bn_fwd_bwd = || -> Result<()> {
        let (y, _) = ops::batch_norm_train(x.as_tensor(), gamma.as_tensor(), b.as_tensor(), 1e-5)?;
        (y * &r)?.sum_all()?.backward()?;
        Ok(())
    };
    cuda::set_allow_tf32(false);
    let f32_fwd = time_ms(gpu, 3, 10, &conv_fwd)?;
    let f32_fwd_bwd = time_ms(gpu, 3, 10, &conv_fwd_bwd)?;
    cuda::set_allow_tf32(true);
    let tf32_fwd = time_ms(gpu, 3, 10, &conv_fwd)?;
    let tf32_fwd_bwd = time_ms(gpu, 3, 10, &conv_fwd_bwd)?;
    cuda::set_allow_tf32(false);
    let bn = time_ms(gpu, 3, 10, &bn_fwd_bwd)?;
    // What the forward + backward figures spend outside the op itself: the harness
    // `sum(y * r)` and its backward on a tensor of the output's shape, and the conv's bias
    // gradient (the same candle ops as `ops::conv3d`'s backward: last-axis sum, then batch sum).
    let y0 = Var::from_tensor(&Tensor::randn(0f32, 1.0, &shape[..], gpu)?)?;
    let harness = || -> Result<()> {
        (y0.as_tensor() * &r)?.sum_all()?.backward()?;
        Ok(())
    };
    let harness_ms = time_ms(gpu, 3, 10, &harness)?;
    let bias_grad = || -> Result<()> {
        let [n, c, d, h, w] = shape;
        r.reshape((n, c, d * h * w))?.sum(2)?.sum(0)?;
        Ok(())
    };
    let bias_grad_ms = time_ms(gpu, 3, 10, &bias_grad)?;
    println!(
        "{{\"bench\": \"nn3d_cuda\", \"shape\": {shape:?}, \"conv3d_f32_k3_fwd_ms\": {f32_fwd:.3}, \
         \"conv3d_f32_k3_fwd_bwd_ms\": {f32_fwd_bwd:.3}, \"conv3d_tf32_k3_fwd_ms\": {tf32_fwd:.3}, \
         \"conv3d_tf32_k3_fwd_bwd_ms\": {tf32_fwd_bwd:.3}, \"batch_norm_train_fwd_bwd_ms\": {bn:.3}, \
         \"harness_sum_y_r_fwd_bwd_ms\": {harness_ms:.3}, \"conv_bias_grad_ms\": {bias_grad_ms:.3}}}"
    );
    Ok(())
}

fn run(bench_too: bool, self_test: bool) -> Result<bool> {
    let gpu = if self_test {
        Device::Cpu
    } else {
        Device::new_cuda(0)?
    };
    let mut rows = Vec::new();
    conv_cases(&gpu, &mut rows)?;
    conv_transpose_cases(&gpu, &mut rows)?;
    batch_norm_cases(&gpu, &mut rows)?;
    let width = rows.iter().map(|r| r.case.len()).max().unwrap_or(4);
    println!(
        "{:<width$}  {:<10}  {:>10}  result",
        "case", "quantity", "rel err"
    );
    for r in &rows {
        println!(
            "{:<width$}  {:<10}  {:>10.2e}  {}",
            r.case,
            r.quantity,
            r.rel_err,
            if r.pass { "ok" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!(
        "gpu_check: {} of {} comparisons within {TOLERANCE:e}, {failed} failed",
        rows.len() - failed,
        rows.len()
    );
    if bench_too {
        bench(&gpu)?;
    }
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_too = args.iter().any(|a| a == "--bench");
    let self_test = args.iter().any(|a| a == "--self-test");
    if let Some(other) = args
        .iter()
        .find(|a| !["--bench", "--self-test"].contains(&a.as_str()))
    {
        eprintln!(
            "gpu_check: unknown argument {other:?} (usage: gpu_check [--bench] [--self-test])"
        );
        return ExitCode::from(2);
    }
    match run(bench_too, self_test) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gpu_check: error: {e}");
            ExitCode::from(2)
        }
    }
}
