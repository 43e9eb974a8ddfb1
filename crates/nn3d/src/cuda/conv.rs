//! cuDNN 3D convolution: forward, backward-data and backward-filter for the ops of
//! `ops/conv3d.rs`, in terms of the forward convolution's [`Geometry`].
//!
//! Algorithm choice, once per thread, device, shape and precision setting (then cached): cuDNN
//! times every algorithm on the call's own buffers (`cudnnFind*AlgorithmEx`, what PyTorch does
//! under `cudnn.benchmark`) and the fastest that launches is kept. Where the search itself fails,
//! cuDNN's heuristic list (`cudnnGet*Algorithm_v7`) gives the order instead. Candidates that report
//! "not supported" are skipped, as are those needing more than [`MAX_WORKSPACE`] bytes of workspace.
//! The heuristics alone picked algorithms 20x slower than the measured best for the backward of a
//! full-size 3^3 convolution on an H100-class GPU (60 ms instead of about 3 ms).
//!
//! Precision: the descriptor's math type is `CUDNN_FMA_MATH` (plain f32) unless TF32 is allowed,
//! then `CUDNN_DEFAULT_MATH` (TF32 tensor cores permitted), before the search, so the search
//! itself considers tensor-core algorithms only when allowed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt::Debug;

use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};

use super::graph::{self, ConvShape, Direction, PlanCache};
use super::handle::{check, const_ptr, cudnn, f32_view, is_not_supported, mut_ptr};
use super::handle::{ConvDesc, Cudnn, FilterDesc, TensorDesc};
use crate::ops::cpu_gemm::Geometry;

/// Largest workspace a convolution algorithm may ask for (2 GiB).
pub(crate) const MAX_WORKSPACE: usize = 2 << 30;

/// Workspace sizes offered to the algorithm search, largest first (the first that can be
/// allocated is used; algorithms needing more are not timed).
const SEARCH_WORKSPACE: [usize; 3] = [1 << 30, 256 << 20, 0];

type Math = sys::cudnnMathType_t;

/// What a cached algorithm choice depends on: the whole geometry and the precision setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    shape: [usize; 21],
    tf32: bool,
}

impl ConvKey {
    fn new(g: &Geometry, pad: [usize; 3], tf32: bool) -> Self {
        let mut shape = [0usize; 21];
        shape[..3].copy_from_slice(&[g.batch, g.c_in, g.c_out]);
        let triples = [g.in_dims, g.out_dims, g.kernel, g.stride, pad, g.dilation];
        for (i, t) in triples.iter().enumerate() {
            shape[3 + 3 * i..6 + 3 * i].copy_from_slice(t);
        }
        Self { shape, tf32 }
    }
}

/// Algorithms chosen per shape, one map per direction.
#[derive(Default)]
pub(crate) struct AlgoCache {
    fwd: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionFwdAlgo_t, Math)>>,
    bwd_data: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdDataAlgo_t, Math)>>,
    bwd_filter: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdFilterAlgo_t, Math)>>,
    /// Execution plans of the graph API (see `graph.rs`), all directions.
    graph: PlanCache,
}

/// Descriptors of one convolution: input `x`, filter `w`, output `y` of the forward direction.
struct Setup {
    h: std::rc::Rc<Cudnn>,
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
    key: ConvKey,
    shape: ConvShape,
    tf32: bool,
    x_len: usize,
    w_len: usize,
    y_len: usize,
}

fn setup(dev: &CudaDevice, g: &Geometry) -> Result<Setup> {
    let mut pad = [0usize; 3];
    for (p, &gp) in pad.iter_mut().zip(&g.pad) {
        *p = match usize::try_from(gp) {
            Ok(v) => v,
            Err(_) => bail!("cuda conv3d: negative padding {:?} is not supported", g.pad),
        };
    }
    let [d, h, w] = g.in_dims;
    let [od, oh, ow] = g.out_dims;
    let [kd, kh, kw] = g.kernel;
    let x_dims = [g.batch, g.c_in, d, h, w];
    let w_dims = [g.c_out, g.c_in, kd, kh, kw];
    let y_dims = [g.batch, g.c_out, od, oh, ow];
    let handle = cudnn(dev)?;
    let tf32 = super::allow_tf32();
    let s = Setup {
        x: TensorDesc::new(&x_dims)?,
        w: FilterDesc::new(&w_dims)?,
        y: TensorDesc::new(&y_dims)?,
        conv: ConvDesc::new(pad, g.stride, g.dilation)?,
        h: handle,
        key: ConvKey::new(g, pad, tf32),
        shape: ConvShape {
            x: x_dims,
            w: w_dims,
            y: y_dims,
            pad,
            stride: g.stride,
            dilation: g.dilation,
        },
        tf32,
        x_len: x_dims.iter().product(),
        w_len: w_dims.iter().product(),
        y_len: y_dims.iter().product(),
    };
    // cuDNN must agree on the output size (catches geometry mistakes with a clear message).
    let mut out = [0i32; 5];
    check(
        unsafe {
            sys::cudnnGetConvolutionNdForwardOutputDim(
                s.conv.raw(),
                s.x.raw(),
                s.w.raw(),
                5,
                out.as_mut_ptr(),
            )
        },
        "output size query",
    )?;
    if out.iter().zip(&y_dims).any(|(&a, &b)| a as usize != b) {
        bail!(
            "cuda conv3d: cudnn computes output {out:?} for input {x_dims:?}, weight {w_dims:?}, \
             padding {pad:?}, stride {:?}, dilation {:?}, expected {y_dims:?}",
            g.stride,
            g.dilation
        )
    }
    s.conv.set_math(search_math(tf32))?;
    Ok(s)
}

/// The descriptor's math type while searching: plain f32 unless TF32 is allowed.
fn search_math(tf32: bool) -> Math {
    if tf32 {
        Math::CUDNN_DEFAULT_MATH
    } else {
        Math::CUDNN_FMA_MATH
    }
}

/// Candidates from a search or heuristic list `(algo, status, math)`: successful ones, in order, without
/// repeats, with the math type forced to FMA unless TF32 is allowed.
fn candidates<A: Copy + PartialEq>(
    perf: &[(A, sys::cudnnStatus_t, Math)],
    tf32: bool,
) -> Vec<(A, Math)> {
    let mut out: Vec<(A, Math)> = Vec::new();
    for &(algo, status, math) in perf {
        if status != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            continue;
        }
        let math = if tf32 { math } else { Math::CUDNN_FMA_MATH };
        if !out.contains(&(algo, math)) {
            out.push((algo, math));
        }
    }
    out
}

/// Candidate order for a shape not yet cached: the measured search when it succeeds, else the
/// heuristic list. `find(workspace, bytes)` runs `cudnnFind*AlgorithmEx` (which writes the
/// output buffer, later overwritten by the real launch).
fn search<A: Copy + PartialEq>(
    s: &Setup,
    dev: &CudaDevice,
    find: impl Fn(*mut c_void, usize) -> Result<Vec<(A, sys::cudnnStatus_t, Math)>>,
    heuristics: impl Fn() -> Result<Vec<(A, sys::cudnnStatus_t, Math)>>,
) -> Result<Vec<(A, Math)>> {
    s.conv.set_math(search_math(s.tf32))?;
    let mut found = None;
    for bytes in SEARCH_WORKSPACE {
        let result = if bytes == 0 {
            find(std::ptr::null_mut(), 0)
        } else {
            // Safety: cuDNN only writes the workspace; its contents need no initialisation.
            let Ok(mut ws) = (unsafe { dev.alloc::<u8>(bytes) }) else {
                continue;
            };
            let (ptr, _guard) = mut_ptr(&mut ws, s.h.stream());
            find(ptr, bytes)
        };
        found = Some(result);
        break;
    }
    s.conv.set_math(search_math(s.tf32))?;
    // A failed search (or no workspace at all) is not an error: the heuristic order below still
    // gives working algorithms, only perhaps slower ones.
    if let Some(Ok(list)) = found {
        let list = candidates(&list, s.tf32);
        if !list.is_empty() {
            return Ok(list);
        }
    }
    Ok(candidates(&heuristics()?, s.tf32))
}

/// Runs `launch` with the cached algorithm for `s.key`, or with the first candidate of [`search`]
/// that works, and caches it. `workspace(algo)` returns the status and size of the workspace
/// query; `launch(algo, workspace, bytes)` the status of the call.
#[allow(clippy::too_many_arguments)]
fn run_with_algo<A: Copy + PartialEq + Debug>(
    s: &Setup,
    dev: &CudaDevice,
    cache: &RefCell<HashMap<ConvKey, (A, Math)>>,
    what: &str,
    find: impl Fn(*mut c_void, usize) -> Result<Vec<(A, sys::cudnnStatus_t, Math)>>,
    heuristics: impl Fn() -> Result<Vec<(A, sys::cudnnStatus_t, Math)>>,
    workspace: impl Fn(A) -> (sys::cudnnStatus_t, usize),
    mut launch: impl FnMut(A, *mut c_void, usize) -> sys::cudnnStatus_t,
) -> Result<()> {
    let cached = cache.borrow().get(&s.key).copied();
    let list = match cached {
        Some(choice) => vec![choice],
        None => search(s, dev, find, heuristics)?,
    };
    let mut tried = Vec::new();
    for (algo, math) in list {
        s.conv.set_math(math)?;
        let (status, bytes) = workspace(algo);
        if status != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            tried.push(format!("{algo:?}: workspace query {status:?}"));
            continue;
        }
        if bytes > MAX_WORKSPACE {
            tried.push(format!("{algo:?}: needs {bytes} bytes of workspace"));
            continue;
        }
        let status = if bytes > 0 {
            // Safety: cuDNN only writes the workspace; its contents need no initialisation.
            let mut ws = unsafe { dev.alloc::<u8>(bytes) }?;
            let (ptr, _guard) = mut_ptr(&mut ws, s.h.stream());
            launch(algo, ptr, bytes)
        } else {
            launch(algo, std::ptr::null_mut(), 0)
        };
        if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
            cache.borrow_mut().insert(s.key, (algo, math));
            return Ok(());
        }
        if !is_not_supported(status) {
            bail!("cudnn convolution {what} with {algo:?} ({math:?}) failed: {status:?}")
        }
        tried.push(format!("{algo:?}: {status:?}"));
    }
    bail!(
        "cudnn convolution {what}: no usable algorithm for key {:?}; tried {tried:?}",
        s.key
    )
}

fn f32_ptr(v: &f32) -> *const c_void {
    v as *const f32 as *const c_void
}

/// `y = conv3d(x, w) (+ bias)`: `x [N, C_in, in_dims]`, `w [C_out, C_in, kernel]`, `bias [C_out]`,
/// all contiguous f32; returns `y [N, C_out, out_dims]`.
pub(crate) fn conv_forward(
    g: &Geometry,
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    bias: Option<(&CudaStorage, &Layout)>,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let s = setup(dev, g)?;
    let xv = f32_view(x, lx, "cuda conv3d input")?;
    let wv = f32_view(w, lw, "cuda conv3d weight")?;
    expect_len("cuda conv3d input", xv.len(), s.x_len)?;
    expect_len("cuda conv3d weight", wv.len(), s.w_len)?;
    let mut y = dev.alloc_zeros::<f32>(s.y_len)?;
    {
        let stream = s.h.stream();
        let (xp, _gx) = const_ptr(&xv, stream);
        let (wp, _gw) = const_ptr(&wv, stream);
        let (yp, _gy) = mut_ptr(&mut y, stream);
        let (one, zero) = (1f32, 0f32);
        let h = s.h.raw();
        let ptrs = [xp as *mut c_void, wp as *mut c_void, yp];
        let by_graph = super::conv_api() == super::ConvApi::Graph
            && graph::run(
                &s.h,
                dev,
                &s.h.algos.graph,
                s.shape,
                Direction::Forward,
                s.tf32,
                ptrs,
            )?;
        if !by_graph {
            run_with_algo(
                &s,
                dev,
                &s.h.algos.fwd,
                "forward",
                |ws, bytes| {
                    let n =
                        sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnFindConvolutionForwardAlgorithmEx(
                                h,
                                s.x.raw(),
                                xp,
                                s.w.raw(),
                                wp,
                                s.conv.raw(),
                                s.y.raw(),
                                yp,
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                                ws,
                                bytes,
                            )
                        },
                        "forward algorithm search",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                || {
                    let n =
                        sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionFwdAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnGetConvolutionForwardAlgorithm_v7(
                                h,
                                s.x.raw(),
                                s.w.raw(),
                                s.conv.raw(),
                                s.y.raw(),
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                            )
                        },
                        "forward algorithm query",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                |algo| {
                    let mut bytes = 0usize;
                    let status = unsafe {
                        sys::cudnnGetConvolutionForwardWorkspaceSize(
                            h,
                            s.x.raw(),
                            s.w.raw(),
                            s.conv.raw(),
                            s.y.raw(),
                            algo,
                            &mut bytes,
                        )
                    };
                    (status, bytes)
                },
                |algo, ws, bytes| unsafe {
                    sys::cudnnConvolutionForward(
                        h,
                        f32_ptr(&one),
                        s.x.raw(),
                        xp,
                        s.w.raw(),
                        wp,
                        s.conv.raw(),
                        algo,
                        ws,
                        bytes,
                        f32_ptr(&zero),
                        s.y.raw(),
                        yp,
                    )
                },
            )?;
        }
        if let Some((b, lb)) = bias {
            let bv = f32_view(b, lb, "cuda conv3d bias")?;
            expect_len("cuda conv3d bias", bv.len(), g.c_out)?;
            let bdesc = TensorDesc::new(&[1, g.c_out, 1, 1, 1])?;
            let (bp, _gb) = const_ptr(&bv, stream);
            check(
                unsafe {
                    sys::cudnnAddTensor(
                        h,
                        f32_ptr(&one),
                        bdesc.raw(),
                        bp,
                        f32_ptr(&one),
                        s.y.raw(),
                        yp,
                    )
                },
                "bias add",
            )?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

/// `dx = conv3d_backward_data(dy, w)`: `dy [N, C_out, out_dims]`, `w [C_out, C_in, kernel]`,
/// contiguous f32; returns `dx [N, C_in, in_dims]` (also `conv_transpose3d`'s forward).
pub(crate) fn conv_backward_data(
    g: &Geometry,
    dy: &CudaStorage,
    ldy: &Layout,
    w: &CudaStorage,
    lw: &Layout,
) -> Result<CudaStorage> {
    let dev = &dy.device;
    let s = setup(dev, g)?;
    let dyv = f32_view(dy, ldy, "cuda conv3d backward-data grad")?;
    let wv = f32_view(w, lw, "cuda conv3d backward-data weight")?;
    expect_len("cuda conv3d backward-data grad", dyv.len(), s.y_len)?;
    expect_len("cuda conv3d backward-data weight", wv.len(), s.w_len)?;
    let mut dx = dev.alloc_zeros::<f32>(s.x_len)?;
    {
        let stream = s.h.stream();
        let (dyp, _gy) = const_ptr(&dyv, stream);
        let (wp, _gw) = const_ptr(&wv, stream);
        let (dxp, _gx) = mut_ptr(&mut dx, stream);
        let (one, zero) = (1f32, 0f32);
        let h = s.h.raw();
        let ptrs = [dxp, wp as *mut c_void, dyp as *mut c_void];
        let by_graph = super::conv_api() == super::ConvApi::Graph
            && graph::run(
                &s.h,
                dev,
                &s.h.algos.graph,
                s.shape,
                Direction::BackwardData,
                s.tf32,
                ptrs,
            )?;
        if !by_graph {
            run_with_algo(
                &s,
                dev,
                &s.h.algos.bwd_data,
                "backward-data",
                |ws, bytes| {
                    let n =
                        sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                            as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionBwdDataAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                                h,
                                s.w.raw(),
                                wp,
                                s.y.raw(),
                                dyp,
                                s.conv.raw(),
                                s.x.raw(),
                                dxp,
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                                ws,
                                bytes,
                            )
                        },
                        "backward-data algorithm search",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                || {
                    let n =
                        sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                            as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionBwdDataAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                                h,
                                s.w.raw(),
                                s.y.raw(),
                                s.conv.raw(),
                                s.x.raw(),
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                            )
                        },
                        "backward-data algorithm query",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                |algo| {
                    let mut bytes = 0usize;
                    let status = unsafe {
                        sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                            h,
                            s.w.raw(),
                            s.y.raw(),
                            s.conv.raw(),
                            s.x.raw(),
                            algo,
                            &mut bytes,
                        )
                    };
                    (status, bytes)
                },
                |algo, ws, bytes| unsafe {
                    sys::cudnnConvolutionBackwardData(
                        h,
                        f32_ptr(&one),
                        s.w.raw(),
                        wp,
                        s.y.raw(),
                        dyp,
                        s.conv.raw(),
                        algo,
                        ws,
                        bytes,
                        f32_ptr(&zero),
                        s.x.raw(),
                        dxp,
                    )
                },
            )?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
}

/// `dw = conv3d_backward_filter(x, dy)`: `x [N, C_in, in_dims]`, `dy [N, C_out, out_dims]`,
/// contiguous f32; returns `dw [C_out, C_in, kernel]`.
pub(crate) fn conv_backward_filter(
    g: &Geometry,
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let s = setup(dev, g)?;
    let xv = f32_view(x, lx, "cuda conv3d backward-filter input")?;
    let dyv = f32_view(dy, ldy, "cuda conv3d backward-filter grad")?;
    expect_len("cuda conv3d backward-filter input", xv.len(), s.x_len)?;
    expect_len("cuda conv3d backward-filter grad", dyv.len(), s.y_len)?;
    let mut dw = dev.alloc_zeros::<f32>(s.w_len)?;
    {
        let stream = s.h.stream();
        let (xp, _gx) = const_ptr(&xv, stream);
        let (dyp, _gy) = const_ptr(&dyv, stream);
        let (dwp, _gw) = mut_ptr(&mut dw, stream);
        let (one, zero) = (1f32, 0f32);
        let h = s.h.raw();
        let ptrs = [xp as *mut c_void, dwp, dyp as *mut c_void];
        let by_graph = super::conv_api() == super::ConvApi::Graph
            && graph::run(
                &s.h,
                dev,
                &s.h.algos.graph,
                s.shape,
                Direction::BackwardFilter,
                s.tf32,
                ptrs,
            )?;
        if !by_graph {
            run_with_algo(
                &s,
                dev,
                &s.h.algos.bwd_filter,
                "backward-filter",
                |ws, bytes| {
                    let n =
                        sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
                            as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionBwdFilterAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                                h,
                                s.x.raw(),
                                xp,
                                s.y.raw(),
                                dyp,
                                s.conv.raw(),
                                s.w.raw(),
                                dwp,
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                                ws,
                                bytes,
                            )
                        },
                        "backward-filter algorithm search",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                || {
                    let n =
                        sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
                            as usize;
                    // Safety: all-zero bytes are valid for these plain-data structs (enum value 0 exists).
                    let mut perf: Vec<sys::cudnnConvolutionBwdFilterAlgoPerf_t> =
                        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
                    let mut got = 0i32;
                    check(
                        unsafe {
                            sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                                h,
                                s.x.raw(),
                                s.y.raw(),
                                s.conv.raw(),
                                s.w.raw(),
                                n as i32,
                                &mut got,
                                perf.as_mut_ptr(),
                            )
                        },
                        "backward-filter algorithm query",
                    )?;
                    let got = (got.max(0) as usize).min(n);
                    Ok(perf[..got]
                        .iter()
                        .map(|p| (p.algo, p.status, p.mathType))
                        .collect())
                },
                |algo| {
                    let mut bytes = 0usize;
                    let status = unsafe {
                        sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                            h,
                            s.x.raw(),
                            s.y.raw(),
                            s.conv.raw(),
                            s.w.raw(),
                            algo,
                            &mut bytes,
                        )
                    };
                    (status, bytes)
                },
                |algo, ws, bytes| unsafe {
                    sys::cudnnConvolutionBackwardFilter(
                        h,
                        f32_ptr(&one),
                        s.x.raw(),
                        xp,
                        s.y.raw(),
                        dyp,
                        s.conv.raw(),
                        algo,
                        ws,
                        bytes,
                        f32_ptr(&zero),
                        s.w.raw(),
                        dwp,
                    )
                },
            )?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(dw, dev.clone()))
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("{what}: {got} elements, the convolution geometry needs {want}")
    }
    Ok(())
}
