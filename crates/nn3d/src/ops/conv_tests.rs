//! Tests of `conv3d` / `conv_transpose3d`: forward and every gradient against a naive direct-loop
//! reference (f64), central finite differences, PyTorch fixtures, and input errors.

use candle_core::{DType, Device, Tensor, Var};

use super::{conv3d, conv_transpose3d, Conv3dParams, ConvTranspose3dParams};

/// Deterministic uniform numbers in [-1, 1) (64-bit LCG), so the tests need no `rand` (also the
/// Winograd kernels' tests).
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    pub(super) fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

/// A convolution problem: `small = conv(big, w)` where `big [n, c_big, dims]`,
/// `w [c_small, c_big, kernel]`, `small [n, c_small, conv output dims]`. For `conv3d` big is the
/// input, for `conv_transpose3d` big is the output.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_big: usize,
    c_small: usize,
    big: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dil: [usize; 3],
}

impl Case {
    fn small(&self) -> [usize; 3] {
        std::array::from_fn(|i| {
            (self.big[i] + 2 * self.pad[i] - self.dil[i] * (self.kernel[i] - 1) - 1)
                / self.stride[i]
                + 1
        })
    }

    fn conv_params(&self) -> Conv3dParams {
        Conv3dParams {
            stride: self.stride,
            padding: self.pad,
            dilation: self.dil,
        }
    }

    fn valid(&self) -> bool {
        (0..3).all(|i| self.big[i] + 2 * self.pad[i] > self.dil[i] * (self.kernel[i] - 1))
    }

    /// Calls `f(big index, small index, weight index)` for every multiply of the convolution.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [bd, bh, bw] = self.big;
        let [sd, sh, sw] = self.small();
        let [kd, kh, kw] = self.kernel;
        for n in 0..self.n {
            for o in 0..self.c_small {
                for qd in 0..sd {
                    for qh in 0..sh {
                        for qw in 0..sw {
                            let small = (((n * self.c_small + o) * sd + qd) * sh + qh) * sw + qw;
                            for c in 0..self.c_big {
                                for a in 0..kd {
                                    for b in 0..kh {
                                        for e in 0..kw {
                                            let i = (qd * self.stride[0] + a * self.dil[0])
                                                as isize
                                                - self.pad[0] as isize;
                                            let j = (qh * self.stride[1] + b * self.dil[1])
                                                as isize
                                                - self.pad[1] as isize;
                                            let k = (qw * self.stride[2] + e * self.dil[2])
                                                as isize
                                                - self.pad[2] as isize;
                                            if i < 0
                                                || j < 0
                                                || k < 0
                                                || i >= bd as isize
                                                || j >= bh as isize
                                                || k >= bw as isize
                                            {
                                                continue;
                                            }
                                            let big = (((n * self.c_big + c) * bd + i as usize)
                                                * bh
                                                + j as usize)
                                                * bw
                                                + k as usize;
                                            let wi =
                                                (((o * self.c_big + c) * kd + a) * kh + b) * kw + e;
                                            f(big, small, wi);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn big_len(&self) -> usize {
        self.n * self.c_big * self.big.iter().product::<usize>()
    }

    fn small_len(&self) -> usize {
        self.n * self.c_small * self.small().iter().product::<usize>()
    }

    fn w_len(&self) -> usize {
        self.c_small * self.c_big * self.kernel.iter().product::<usize>()
    }

    fn big_shape(&self, c: usize) -> Vec<usize> {
        vec![self.n, c, self.big[0], self.big[1], self.big[2]]
    }

    fn small_shape(&self, c: usize) -> Vec<usize> {
        let s = self.small();
        vec![self.n, c, s[0], s[1], s[2]]
    }

    fn w_shape(&self, d0: usize, d1: usize) -> Vec<usize> {
        vec![d0, d1, self.kernel[0], self.kernel[1], self.kernel[2]]
    }
}

/// `max |got - want| / max |want|`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()))
        / scale
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn var(data: &[f32], shape: Vec<usize>) -> Var {
    Var::from_tensor(&Tensor::from_slice(data, shape, &Device::Cpu).unwrap()).unwrap()
}

fn bias_sums(case: &Case, c: usize, grad: &[f32], shape: &[usize]) -> Vec<f64> {
    let vol: usize = shape[2..].iter().product();
    let mut db = vec![0f64; c];
    for n in 0..case.n {
        for (ch, d) in db.iter_mut().enumerate() {
            *d += grad[(n * c + ch) * vol..][..vol]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
    }
    db
}

/// conv3d forward and the gradients of x, w, bias against the naive loops.
fn check_conv3d(case: &Case, rng: &mut Lcg, with_bias: bool) {
    let x = rng.vec(case.big_len());
    let w = rng.vec(case.w_len());
    let b = rng.vec(case.c_small);
    let g = rng.vec(case.small_len());
    let (mut y, mut dx, mut dw) = (
        vec![0f64; case.small_len()],
        vec![0f64; case.big_len()],
        vec![0f64; case.w_len()],
    );
    case.for_each_tap(|bi, si, wi| {
        y[si] += x[bi] as f64 * w[wi] as f64;
        dx[bi] += g[si] as f64 * w[wi] as f64;
        dw[wi] += g[si] as f64 * x[bi] as f64;
    });
    let small_shape = case.small_shape(case.c_small);
    let vol: usize = small_shape[2..].iter().product();
    if with_bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v += b[(i / vol) % case.c_small] as f64;
        }
    }
    let xv = var(&x, case.big_shape(case.c_big));
    let wv = var(&w, case.w_shape(case.c_small, case.c_big));
    let bv = var(&b, vec![case.c_small]);
    let out = conv3d(
        xv.as_tensor(),
        wv.as_tensor(),
        with_bias.then_some(bv.as_tensor()),
        case.conv_params(),
    )
    .unwrap();
    assert_eq!(out.dims(), small_shape.as_slice(), "{case:?}");
    let tol = 1e-4;
    let e = rel_err(&flat(&out), &y);
    assert!(
        e <= tol,
        "conv3d forward {case:?} bias {with_bias}: rel err {e}"
    );
    let gt = Tensor::from_slice(&g, small_shape.clone(), &Device::Cpu).unwrap();
    let grads = (out * gt).unwrap().sum_all().unwrap().backward().unwrap();
    let e = rel_err(&flat(grads.get(xv.as_tensor()).unwrap()), &dx);
    assert!(e <= tol, "conv3d dx {case:?}: rel err {e}");
    let e = rel_err(&flat(grads.get(wv.as_tensor()).unwrap()), &dw);
    assert!(e <= tol, "conv3d dw {case:?}: rel err {e}");
    if with_bias {
        let db = bias_sums(case, case.c_small, &g, &small_shape);
        let e = rel_err(&flat(grads.get(bv.as_tensor()).unwrap()), &db);
        assert!(e <= tol, "conv3d dbias {case:?}: rel err {e}");
    }
}

/// conv_transpose3d (input = the case's small side) forward and gradients against the naive loops.
fn check_conv_transpose3d(case: &Case, output_padding: [usize; 3], rng: &mut Lcg, with_bias: bool) {
    // the naive transposed conv writes into `big`, whose extent includes the output padding
    let x = rng.vec(case.small_len());
    let w = rng.vec(case.w_len()); // [c_small = C_in, c_big = C_out, k]
    let b = rng.vec(case.c_big);
    let g = rng.vec(case.big_len());
    let (mut y, mut dx, mut dw) = (
        vec![0f64; case.big_len()],
        vec![0f64; case.small_len()],
        vec![0f64; case.w_len()],
    );
    case.for_each_tap(|bi, si, wi| {
        y[bi] += x[si] as f64 * w[wi] as f64;
        dx[si] += g[bi] as f64 * w[wi] as f64;
        dw[wi] += x[si] as f64 * g[bi] as f64;
    });
    let big_shape = case.big_shape(case.c_big);
    let vol: usize = big_shape[2..].iter().product();
    if with_bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v += b[(i / vol) % case.c_big] as f64;
        }
    }
    let p = ConvTranspose3dParams {
        stride: case.stride,
        padding: case.pad,
        output_padding,
        dilation: case.dil,
    };
    let xv = var(&x, case.small_shape(case.c_small));
    let wv = var(&w, case.w_shape(case.c_small, case.c_big));
    let bv = var(&b, vec![case.c_big]);
    let out = conv_transpose3d(
        xv.as_tensor(),
        wv.as_tensor(),
        with_bias.then_some(bv.as_tensor()),
        p,
    )
    .unwrap();
    assert_eq!(
        out.dims(),
        big_shape.as_slice(),
        "{case:?} op {output_padding:?}"
    );
    let tol = 1e-4;
    let e = rel_err(&flat(&out), &y);
    assert!(
        e <= tol,
        "conv_transpose3d forward {case:?} op {output_padding:?}: rel err {e}"
    );
    let gt = Tensor::from_slice(&g, big_shape.clone(), &Device::Cpu).unwrap();
    let grads = (out * gt).unwrap().sum_all().unwrap().backward().unwrap();
    let e = rel_err(&flat(grads.get(xv.as_tensor()).unwrap()), &dx);
    assert!(e <= tol, "conv_transpose3d dx {case:?}: rel err {e}");
    let e = rel_err(&flat(grads.get(wv.as_tensor()).unwrap()), &dw);
    assert!(e <= tol, "conv_transpose3d dw {case:?}: rel err {e}");
    if with_bias {
        let db = bias_sums(case, case.c_big, &g, &big_shape);
        let e = rel_err(&flat(grads.get(bv.as_tensor()).unwrap()), &db);
        assert!(e <= tol, "conv_transpose3d dbias {case:?}: rel err {e}");
    }
}

/// Hand-picked cases covering the dispatch paths: unit stride (flipped-kernel backward), stride 2
/// (col2im backward), kernel == stride (also with a ragged tail), 1x1x1, kernel 7, the deep layers'
/// many channels at unit stride.
fn fixed_cases() -> Vec<Case> {
    let c = |n, c_big, c_small, big, kernel, stride, pad, dil| Case {
        n,
        c_big,
        c_small,
        big,
        kernel,
        stride,
        pad,
        dil,
    };
    vec![
        c(2, 3, 4, [5, 6, 7], [3; 3], [1; 3], [1; 3], [1; 3]),
        c(1, 2, 3, [9, 7, 8], [3; 3], [2; 3], [1; 3], [1; 3]),
        c(2, 3, 2, [7, 9, 6], [3; 3], [1; 3], [2; 3], [2; 3]),
        c(2, 3, 5, [6, 8, 4], [2; 3], [2; 3], [0; 3], [1; 3]),
        c(1, 2, 3, [5, 7, 3], [2; 3], [2; 3], [0; 3], [1; 3]),
        c(2, 4, 3, [3, 5, 4], [1; 3], [1; 3], [0; 3], [1; 3]),
        c(1, 2, 2, [9, 8, 9], [7; 3], [1; 3], [3; 3], [1; 3]),
        c(1, 1, 2, [11, 9, 10], [7; 3], [2; 3], [3; 3], [1; 3]),
        c(2, 2, 3, [5, 6, 4], [1; 3], [2; 3], [0; 3], [1; 3]),
        c(
            1,
            3,
            2,
            [6, 5, 7],
            [3, 1, 2],
            [1, 2, 1],
            [0, 1, 2],
            [2, 1, 1],
        ),
        // more than 64 channels at unit stride: the depth-folded whole-batch kernels
        // (depth_fold.rs) rather than Winograd; padding 0-2, dilation 2, one depth slice
        c(2, 66, 65, [4, 5, 3], [3; 3], [1; 3], [1; 3], [1; 3]),
        c(1, 70, 67, [5, 4, 6], [3; 3], [1; 3], [0; 3], [1; 3]),
        c(
            2,
            65,
            66,
            [5, 6, 5],
            [3, 3, 2],
            [1; 3],
            [2, 1, 0],
            [2, 1, 2],
        ),
        c(3, 67, 66, [1, 3, 2], [3; 3], [1; 3], [1; 3], [1; 3]),
        // padding beyond the kernel: the backward-data's flipped convolution crops (padding -1)
        c(1, 66, 65, [3, 4, 3], [3; 3], [1; 3], [3; 3], [1; 3]),
        // more output columns than one tile (cpu_gemm), so the tiled kernels rather than the
        // whole-batch ones
        c(2, 2, 2, [4, 40, 70], [3; 3], [1; 3], [1; 3], [1; 3]),
        c(2, 1, 2, [10, 20, 40], [7; 3], [1; 3], [3; 3], [1; 3]),
    ]
}

/// Random cases: odd sizes, kernels 1/2/3/7, stride 1/2, padding 0..3, dilation 1/2.
fn random_cases(rng: &mut Lcg, count: usize) -> Vec<Case> {
    let mut out = Vec::new();
    while out.len() < count {
        let k = [1, 2, 3, 3, 7][rng.below(5)];
        let mut kernel = [k; 3];
        if rng.below(4) == 0 {
            kernel = [1 + rng.below(3), 1 + rng.below(3), 1 + rng.below(3)];
        }
        let pick =
            |rng: &mut Lcg, choices: &[usize]| [0; 3].map(|_| choices[rng.below(choices.len())]);
        let stride = pick(rng, &[1, 2]);
        let pad = pick(rng, &[0, 1, 2, 3]);
        let dil = if k == 7 { [1; 3] } else { pick(rng, &[1, 2]) };
        let big = [0; 3].map(|_| 2 + rng.below(if k == 7 { 9 } else { 8 }));
        let case = Case {
            n: 1 + rng.below(2),
            c_big: 1 + rng.below(3),
            c_small: 1 + rng.below(3),
            big,
            kernel,
            stride,
            pad,
            dil,
        };
        if case.valid() {
            out.push(case);
        }
    }
    out
}

#[test]
fn conv3d_matches_naive_loops() {
    let mut rng = Lcg(1);
    for (i, case) in fixed_cases().iter().enumerate() {
        check_conv3d(case, &mut rng, i % 2 == 0);
    }
    for (i, case) in random_cases(&mut rng, 60).iter().enumerate() {
        check_conv3d(case, &mut rng, i % 2 == 1);
    }
}

/// The same on 3 threads: the whole-batch GEMMs split the output channels by thread, so 1-3
/// channels on 3 threads give empty, one-channel and uneven ranges, and the Winograd chunks and
/// weight transforms run on a thread count other than the machine's.
#[test]
fn conv3d_matches_naive_loops_on_three_threads() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("a rayon pool");
    pool.install(|| {
        let mut rng = Lcg(3);
        for (i, case) in fixed_cases().iter().enumerate() {
            check_conv3d(case, &mut rng, i % 2 == 0);
        }
        for (i, case) in random_cases(&mut rng, 30).iter().enumerate() {
            check_conv3d(case, &mut rng, i % 2 == 1);
        }
    });
}

#[test]
fn conv_transpose3d_matches_naive_loops() {
    let mut rng = Lcg(2);
    let cases: Vec<Case> = fixed_cases()
        .into_iter()
        .chain(random_cases(&mut rng, 60))
        .collect();
    for (i, case) in cases.iter().enumerate() {
        // the transposed conv's output: the natural size for its input, plus output_padding
        // (below the stride) on every third case
        let mut case = *case;
        let small = case.small();
        let mut op = [0; 3];
        let mut ok = true;
        for d in 0..3 {
            if i % 3 == 0 {
                op[d] = rng.below(case.stride[d]);
            }
            let natural = (small[d] - 1) * case.stride[d] + case.dil[d] * (case.kernel[d] - 1) + 1;
            ok &= natural > 2 * case.pad[d];
            case.big[d] = (natural + op[d]).saturating_sub(2 * case.pad[d]).max(1);
        }
        if !ok {
            continue;
        }
        assert_eq!(case.small(), small, "{case:?}");
        check_conv_transpose3d(&case, op, &mut rng, i % 2 == 0);
    }
}

/// `sum(op(..) * g)` in f64, for finite differences.
fn loss(y: &Tensor, g: &Tensor) -> f64 {
    (y.to_dtype(DType::F64).unwrap() * g)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central differences (eps 1e-2) of `sum(y * g)` at a few coordinates of every argument.
fn finite_difference_check(
    shapes: [Vec<usize>; 3],
    out_shape: Vec<usize>,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) {
    let mut rng = Lcg(7);
    let args: Vec<Var> = shapes
        .iter()
        .map(|s| var(&rng.vec(s.iter().product()), s.clone()))
        .collect();
    let g = Tensor::from_slice(
        &rng.vec(out_shape.iter().product()),
        out_shape,
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    let y = f(
        args[0].as_tensor(),
        args[1].as_tensor(),
        args[2].as_tensor(),
    );
    let grads = (y.to_dtype(DType::F64).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let eps = 1e-2f32;
    for (a, arg) in args.iter().enumerate() {
        let analytic = flat(grads.get(arg.as_tensor()).unwrap());
        let base = flat(arg.as_tensor());
        for _ in 0..6 {
            let i = rng.below(base.len());
            let probe = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_slice(&v, arg.shape(), &Device::Cpu).unwrap();
                let mut ts: Vec<Tensor> = args.iter().map(|a| a.as_tensor().detach()).collect();
                ts[a] = t;
                loss(&f(&ts[0], &ts[1], &ts[2]), &g)
            };
            let numeric = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
            let err = (numeric - analytic[i] as f64).abs();
            assert!(
                err <= 1e-3 * (1.0 + numeric.abs()),
                "argument {a} index {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
    }
}

#[test]
fn conv3d_gradients_match_finite_differences() {
    let p = Conv3dParams {
        stride: [2, 1, 2],
        padding: [1, 2, 0],
        dilation: [1, 2, 1],
    };
    // x [2, 3, 7, 6, 8], w [4, 3, 3, 3, 2] -> [2, 4, 4, 6, 4]
    finite_difference_check(
        [vec![2, 3, 7, 6, 8], vec![4, 3, 3, 3, 2], vec![4]],
        vec![2, 4, 4, 6, 4],
        |x, w, b| conv3d(x, w, Some(b), p).unwrap(),
    );
}

#[test]
fn conv_transpose3d_gradients_match_finite_differences() {
    let p = ConvTranspose3dParams {
        stride: [2, 2, 1],
        padding: [1, 0, 1],
        output_padding: [1, 0, 0],
        dilation: [1, 1, 2],
    };
    // x [2, 3, 3, 4, 5], w [3, 2, 3, 2, 3] -> [2, 2, 6, 8, 7]
    finite_difference_check(
        [vec![2, 3, 3, 4, 5], vec![3, 2, 3, 2, 3], vec![2]],
        vec![2, 2, 6, 8, 7],
        |x, w, b| conv_transpose3d(x, w, Some(b), p).unwrap(),
    );
}

#[test]
fn conv_second_order_gradient_is_available() {
    // d/dw of sum(d/dx sum(conv(x, w) * g) * h) is finite and matches conv-transposed quantities:
    // dx = conv_transpose(g, w) is linear in w, so the second gradient equals bwd-filter(h, g)
    // = the weight gradient of conv3d(h, w) against g.
    let mut rng = Lcg(3);
    let p = Conv3dParams::uniform(2, 1, 1);
    let (xs, ws, ys) = (
        vec![1, 2, 5, 5, 5],
        vec![3, 2, 3, 3, 3],
        vec![1, 3, 3, 3, 3],
    );
    let x = var(&rng.vec(250), xs.clone());
    let w = var(&rng.vec(162), ws);
    let g = Tensor::from_slice(&rng.vec(81), ys, &Device::Cpu).unwrap();
    let h = Tensor::from_slice(&rng.vec(250), xs, &Device::Cpu).unwrap();
    let inner = (conv3d(x.as_tensor(), w.as_tensor(), None, p).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap();
    let dx = inner
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .clone();
    // the first backward's result keeps its graph through the custom ops
    let second = (dx * &h).unwrap().sum_all().unwrap().backward().unwrap();
    let got = flat(second.get(w.as_tensor()).unwrap());
    let hv = var(&flat(&h), h.dims().to_vec());
    let reference = (conv3d(hv.as_tensor(), w.as_tensor(), None, p).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap();
    let want: Vec<f64> = flat(reference.backward().unwrap().get(w.as_tensor()).unwrap())
        .iter()
        .map(|&v| v as f64)
        .collect();
    let e = rel_err(&got, &want);
    assert!(e <= 1e-5, "second-order rel err {e}");
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 4, 4, 4), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((3, 2, 3, 3, 3), DType::F32, &dev).unwrap();
    let p = Conv3dParams::default();
    assert!(
        conv3d(&x.flatten_to(1).unwrap(), &w, None, p).is_err(),
        "rank 2 input"
    );
    assert!(
        conv3d(&x.narrow(1, 0, 1).unwrap(), &w, None, p).is_err(),
        "channel mismatch"
    );
    assert!(
        conv3d(&x.to_dtype(DType::F64).unwrap(), &w, None, p).is_err(),
        "f64 input"
    );
    let b = Tensor::zeros(2, DType::F32, &dev).unwrap();
    assert!(conv3d(&x, &w, Some(&b), p).is_err(), "bias length");
    let small = Tensor::zeros((1, 2, 2, 4, 4), DType::F32, &dev).unwrap();
    assert!(
        conv3d(&small, &w, None, p).is_err(),
        "kernel larger than input"
    );
    assert!(
        conv3d(&x, &w, None, Conv3dParams::uniform(0, 0, 1)).is_err(),
        "zero stride"
    );
    let wt = Tensor::zeros((2, 3, 3, 3, 3), DType::F32, &dev).unwrap();
    let bad_op = ConvTranspose3dParams::uniform(2, 1, 2, 1);
    assert!(
        conv_transpose3d(&x, &wt, None, bad_op).is_err(),
        "output_padding >= stride"
    );
    assert!(
        conv_transpose3d(&x, &w, None, ConvTranspose3dParams::default()).is_err(),
        "weight layout"
    );
    let huge_pad = ConvTranspose3dParams::uniform(1, 5, 0, 1);
    assert!(
        conv_transpose3d(&x, &wt, None, huge_pad).is_err(),
        "padding eats the output"
    );
}

/// Every case of `tests/fixtures/nn3d/conv.safetensors`, written by
/// `tests/reference/nn3d_conv.py` (seeded PyTorch `F.conv3d` / `F.conv_transpose3d` in f64, with
/// bias; the outputs and the gradients of `sum(y * g)`).
#[test]
fn conv_ops_match_pytorch_fixtures() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/nn3d/conv.safetensors"
    );
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = t.keys().filter_map(|k| k.strip_suffix(".params")).collect();
    names.sort();
    assert_eq!(names.len(), 13);
    for name in names {
        let get = |key: &str| t[&format!("{name}.{key}")].clone();
        let p: Vec<i64> = get("params").to_vec1().unwrap();
        let u = |i: usize| [p[i] as usize, p[i + 1] as usize, p[i + 2] as usize];
        let (stride, padding, dilation, output_padding) = (u(1), u(4), u(7), u(10));
        let (x, w, b) = (
            Var::from_tensor(&get("x")).unwrap(),
            Var::from_tensor(&get("w")).unwrap(),
            Var::from_tensor(&get("b")).unwrap(),
        );
        let y = if p[0] == 1 {
            let params = ConvTranspose3dParams {
                stride,
                padding,
                output_padding,
                dilation,
            };
            conv_transpose3d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), params).unwrap()
        } else {
            conv3d(
                x.as_tensor(),
                w.as_tensor(),
                Some(b.as_tensor()),
                Conv3dParams {
                    stride,
                    padding,
                    dilation,
                },
            )
            .unwrap()
        };
        let grads = (&y * get("g"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let checks = [
            ("y", y.clone()),
            ("dx", grads.get(x.as_tensor()).unwrap().clone()),
            ("dw", grads.get(w.as_tensor()).unwrap().clone()),
            ("db", grads.get(b.as_tensor()).unwrap().clone()),
        ];
        for (key, got) in checks {
            let want = get(key);
            assert_eq!(got.dims(), want.dims(), "{name}.{key}");
            let want: Vec<f64> = flat(&want).iter().map(|&v| v as f64).collect();
            let e = rel_err(&flat(&got), &want);
            assert!(e <= 1e-4, "{name}.{key}: rel err {e} against PyTorch");
        }
    }
}
