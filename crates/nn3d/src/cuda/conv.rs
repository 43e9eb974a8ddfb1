//! cuDNN 3D convolution: forward, backward-data and backward-filter for the ops of
//! `ops/conv3d.rs`, in terms of the forward convolution's [`Geometry`].
//!
//! All three directions run through one routine, [`convolve`]; a direction ([`Op`]: [`Forward`],
//! [`BackwardData`], [`BackwardFilter`]) only names which of the tensors `x`, `w`, `y` it reads and
//! writes and its four legacy cuDNN calls ([`conv_op!`]).
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
use std::rc::Rc;

use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::DeviceId;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};

use super::graph::{self, ConvShape, Direction, PlanCache};
use super::handle::{check, const_ptr, f32_view, is_not_supported, mut_ptr, with_workspace};
use super::handle::{ConvDesc, Cudnn, FilterDesc, TensorDesc, MAX_WORKSPACE};
use crate::geometry::Geometry;

/// Workspace sizes offered to the algorithm search, largest first (the first that can be
/// allocated is used; algorithms needing more are not timed).
const SEARCH_WORKSPACE: [usize; 3] = [1 << 30, 256 << 20, 0];

type Math = sys::cudnnMathType_t;
type Status = sys::cudnnStatus_t;

/// What a cached algorithm choice depends on: the whole geometry and the precision setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConvKey {
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
struct AlgoCache {
    fwd: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionFwdAlgo_t, Math)>>,
    bwd_data: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdDataAlgo_t, Math)>>,
    bwd_filter: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdFilterAlgo_t, Math)>>,
    /// Execution plans of the graph API (see `graph.rs`), all directions.
    graph: PlanCache,
}

/// A cuDNN handle plus the convolution algorithms and plans chosen on it (dropped after the
/// handle, in field order).
struct Handle {
    cudnn: Cudnn,
    algos: AlgoCache,
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Rc<Handle>>> = RefCell::new(HashMap::new());
}

/// The calling thread's cuDNN handle for `dev` (created on first use), with the device's context
/// made current on this thread.
fn handle(dev: &CudaDevice) -> Result<Rc<Handle>> {
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(candle_core::Error::wrap)?;
    let id = dev.id();
    if let Some(h) = HANDLES.with(|m| m.borrow().get(&id).cloned()) {
        return Ok(h);
    }
    let handle = Rc::new(Handle {
        cudnn: Cudnn::new(stream)?,
        algos: AlgoCache::default(),
    });
    HANDLES.with(|m| m.borrow_mut().insert(id, handle.clone()));
    Ok(handle)
}

/// One value per tensor of the convolution, in the forward direction's terms: input `x`,
/// filter `w`, output `y` (for the backward directions: `dx`, `dw`, `dy`).
#[derive(Clone, Copy, Debug)]
struct Xwy<T> {
    x: T,
    w: T,
    y: T,
}

/// Device pointers of the three tensors of one call.
type Ptrs = Xwy<*mut c_void>;

/// Descriptors of one convolution: input `x`, filter `w`, output `y` of the forward direction.
struct Setup {
    h: Rc<Handle>,
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
    key: ConvKey,
    shape: ConvShape,
    tf32: bool,
    /// Elements of each tensor.
    len: Xwy<usize>,
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
    let handle = handle(dev)?;
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
        len: Xwy {
            x: x_dims.iter().product(),
            w: w_dims.iter().product(),
            y: y_dims.iter().product(),
        },
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
fn candidates<A: Copy + PartialEq>(perf: &[(A, Status, Math)], tf32: bool) -> Vec<(A, Math)> {
    let mut out: Vec<(A, Math)> = Vec::new();
    for &(algo, status, math) in perf {
        if status != Status::CUDNN_STATUS_SUCCESS {
            continue;
        }
        let math = if tf32 { math } else { Math::CUDNN_FMA_MATH };
        if !out.contains(&(algo, math)) {
            out.push((algo, math));
        }
    }
    out
}

/// One direction of the convolution: the tensors it reads and writes and its legacy-API calls
/// (each impl written by [`conv_op!`]).
trait Op {
    /// The same operation in the graph API.
    const DIRECTION: Direction;
    /// Its name in errors.
    const WHAT: &'static str;
    /// Names of its two arguments in errors.
    const ARGS: [&'static str; 2];
    /// Its legacy algorithm enum.
    type Algo: Copy + PartialEq + Debug;
    /// The lengths of its two arguments and of its output.
    fn lens(len: &Xwy<usize>) -> [usize; 3];
    /// The pointers of its two arguments and of its output, in forward terms.
    fn place(a: *mut c_void, b: *mut c_void, out: *mut c_void) -> Ptrs;
    /// Its map of chosen algorithms.
    fn cache(algos: &AlgoCache) -> &RefCell<HashMap<ConvKey, (Self::Algo, Math)>>;
    /// `cudnnFind*AlgorithmEx` with workspace `(ws, bytes)` (writes the output buffer).
    fn find(s: &Setup, p: &Ptrs, ws: *mut c_void, bytes: usize) -> Result<Perf<Self::Algo>>;
    /// `cudnnGet*Algorithm_v7`: the heuristic order.
    fn heuristics(s: &Setup) -> Result<Perf<Self::Algo>>;
    /// `cudnnGet*WorkspaceSize`: the status and size of the workspace `algo` needs.
    fn workspace(s: &Setup, algo: Self::Algo) -> (Status, usize);
    /// The convolution itself (`alpha = 1`, `beta = 0`).
    fn launch(s: &Setup, p: &Ptrs, algo: Self::Algo, ws: *mut c_void, bytes: usize) -> Status;
}

/// A search or heuristic list: `(algo, status, math)` per algorithm.
type Perf<A> = Vec<(A, Status, Math)>;

/// The `(algo, status, math)` of the entries a `cudnnFind*` / `cudnnGet*_v7` call
/// `call(n, &mut got, perf)` wrote into `n` zeroed perf structs (the first `got`).
///
/// # Safety
/// All-zero bytes must be a valid `P` (true of cuDNN's plain-data perf structs: enum value 0
/// exists), and `call` must write at most `n` of them.
unsafe fn perf_list<P, A>(
    n: usize,
    what: &str,
    call: impl FnOnce(i32, &mut i32, *mut P) -> Status,
    entry: impl Fn(&P) -> (A, Status, Math),
) -> Result<Perf<A>> {
    let mut perf: Vec<P> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut got = 0i32;
    check(call(n as i32, &mut got, perf.as_mut_ptr()), what)?;
    let got = (got.max(0) as usize).min(n);
    Ok(perf[..got].iter().map(entry).collect())
}

/// `impl Op for $op` from its parts: `$what` and the names of its arguments `$arg_a`, `$arg_b`,
/// which of `x`, `w`, `y` they and the output are, its algorithm and perf types, algorithm count
/// and cache field, its four cuDNN calls and the order in which they take the tensors (two inputs,
/// then the output).
macro_rules! conv_op {
    (
        $op:ident: $what:literal,
        ($arg_a:literal $a:ident, $arg_b:literal $b:ident) -> $out:ident,
        $algo:ident, $perf:ident, $count:ident, $cache:ident,
        $find:ident, $heuristics:ident, $workspace:ident, $launch:ident,
        ($i:ident, $j:ident -> $o:ident)
    ) => {
        impl Op for $op {
            const DIRECTION: Direction = Direction::$op;
            const WHAT: &'static str = $what;
            const ARGS: [&'static str; 2] = [$arg_a, $arg_b];
            type Algo = sys::$algo;

            fn lens(len: &Xwy<usize>) -> [usize; 3] {
                [len.$a, len.$b, len.$out]
            }

            fn place(a: *mut c_void, b: *mut c_void, out: *mut c_void) -> Ptrs {
                Xwy {
                    $a: a,
                    $b: b,
                    $out: out,
                }
            }

            fn cache(algos: &AlgoCache) -> &RefCell<HashMap<ConvKey, (Self::Algo, Math)>> {
                &algos.$cache
            }

            fn find(
                s: &Setup,
                p: &Ptrs,
                ws: *mut c_void,
                bytes: usize,
            ) -> Result<Perf<Self::Algo>> {
                let n = sys::$algo::$count as usize;
                let entry = |e: &sys::$perf| (e.algo, e.status, e.mathType);
                let h = s.h.cudnn.raw();
                let (i, j) = (p.$i as *const c_void, p.$j as *const c_void);
                // Safety: cuDNN's perf structs are plain data; the call writes at most `n`.
                unsafe {
                    perf_list(
                        n,
                        concat!($what, " algorithm search"),
                        |n, got, perf| {
                            sys::$find(
                                h,
                                s.$i.raw(),
                                i,
                                s.$j.raw(),
                                j,
                                s.conv.raw(),
                                s.$o.raw(),
                                p.$o,
                                n,
                                got,
                                perf,
                                ws,
                                bytes,
                            )
                        },
                        entry,
                    )
                }
            }

            fn heuristics(s: &Setup) -> Result<Perf<Self::Algo>> {
                let n = sys::$algo::$count as usize;
                let entry = |e: &sys::$perf| (e.algo, e.status, e.mathType);
                let h = s.h.cudnn.raw();
                // Safety: as in `find`.
                unsafe {
                    perf_list(
                        n,
                        concat!($what, " algorithm query"),
                        |n, got, perf| {
                            sys::$heuristics(
                                h,
                                s.$i.raw(),
                                s.$j.raw(),
                                s.conv.raw(),
                                s.$o.raw(),
                                n,
                                got,
                                perf,
                            )
                        },
                        entry,
                    )
                }
            }

            fn workspace(s: &Setup, algo: Self::Algo) -> (Status, usize) {
                let mut bytes = 0usize;
                let h = s.h.cudnn.raw();
                let status = unsafe {
                    sys::$workspace(
                        h,
                        s.$i.raw(),
                        s.$j.raw(),
                        s.conv.raw(),
                        s.$o.raw(),
                        algo,
                        &mut bytes,
                    )
                };
                (status, bytes)
            }

            fn launch(
                s: &Setup,
                p: &Ptrs,
                algo: Self::Algo,
                ws: *mut c_void,
                bytes: usize,
            ) -> Status {
                let (one, zero) = (1f32, 0f32);
                let h = s.h.cudnn.raw();
                let (i, j) = (p.$i as *const c_void, p.$j as *const c_void);
                unsafe {
                    sys::$launch(
                        h,
                        f32_ptr(&one),
                        s.$i.raw(),
                        i,
                        s.$j.raw(),
                        j,
                        s.conv.raw(),
                        algo,
                        ws,
                        bytes,
                        f32_ptr(&zero),
                        s.$o.raw(),
                        p.$o,
                    )
                }
            }
        }
    };
}

/// `y = conv(x, w)`.
struct Forward;
/// `dx = conv_backward_data(dy, w)`.
struct BackwardData;
/// `dw = conv_backward_filter(x, dy)`.
struct BackwardFilter;

conv_op! {
    Forward: "forward",
    ("cuda conv3d input" x, "cuda conv3d weight" w) -> y,
    cudnnConvolutionFwdAlgo_t, cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, fwd,
    cudnnFindConvolutionForwardAlgorithmEx, cudnnGetConvolutionForwardAlgorithm_v7,
    cudnnGetConvolutionForwardWorkspaceSize, cudnnConvolutionForward,
    (x, w -> y)
}

conv_op! {
    BackwardData: "backward-data",
    ("cuda conv3d backward-data grad" y, "cuda conv3d backward-data weight" w) -> x,
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdDataAlgoPerf_t,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, bwd_data,
    cudnnFindConvolutionBackwardDataAlgorithmEx, cudnnGetConvolutionBackwardDataAlgorithm_v7,
    cudnnGetConvolutionBackwardDataWorkspaceSize, cudnnConvolutionBackwardData,
    (w, y -> x)
}

conv_op! {
    BackwardFilter: "backward-filter",
    ("cuda conv3d backward-filter input" x, "cuda conv3d backward-filter grad" y) -> w,
    cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionBwdFilterAlgoPerf_t,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, bwd_filter,
    cudnnFindConvolutionBackwardFilterAlgorithmEx, cudnnGetConvolutionBackwardFilterAlgorithm_v7,
    cudnnGetConvolutionBackwardFilterWorkspaceSize, cudnnConvolutionBackwardFilter,
    (x, y -> w)
}

/// Candidate order for a shape not yet cached: the measured search when it succeeds, else the
/// heuristic list. The search writes the output buffer, later overwritten by the real launch.
fn search<D: Op>(s: &Setup, dev: &CudaDevice, p: &Ptrs) -> Result<Vec<(D::Algo, Math)>> {
    s.conv.set_math(search_math(s.tf32))?;
    let mut found = None;
    for bytes in SEARCH_WORKSPACE {
        let result = if bytes == 0 {
            D::find(s, p, std::ptr::null_mut(), 0)
        } else {
            // Safety: cuDNN only writes the workspace; its contents need no initialisation.
            let Ok(mut ws) = (unsafe { dev.alloc::<u8>(bytes) }) else {
                continue;
            };
            let (ptr, _guard) = mut_ptr(&mut ws, s.h.cudnn.stream());
            D::find(s, p, ptr, bytes)
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
    Ok(candidates(&D::heuristics(s)?, s.tf32))
}

/// Runs direction `D` through the legacy API with the cached algorithm for `s.key`, or with the
/// first candidate of [`search`] that works, and caches it.
fn run_legacy<D: Op>(s: &Setup, dev: &CudaDevice, p: &Ptrs) -> Result<()> {
    let cache = D::cache(&s.h.algos);
    let what = D::WHAT;
    let cached = cache.borrow().get(&s.key).copied();
    let list = match cached {
        Some(choice) => vec![choice],
        None => search::<D>(s, dev, p)?,
    };
    let mut tried = Vec::new();
    for (algo, math) in list {
        s.conv.set_math(math)?;
        let (status, bytes) = D::workspace(s, algo);
        if status != Status::CUDNN_STATUS_SUCCESS {
            tried.push(format!("{algo:?}: workspace query {status:?}"));
            continue;
        }
        if bytes > MAX_WORKSPACE {
            tried.push(format!("{algo:?}: needs {bytes} bytes of workspace"));
            continue;
        }
        let status = with_workspace(dev, s.h.cudnn.stream(), bytes, |ws, bytes| {
            D::launch(s, p, algo, ws, bytes)
        })?;
        if status == Status::CUDNN_STATUS_SUCCESS {
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

/// Direction `D` of the convolution `g` on its two arguments `a`, `b` (contiguous f32): the
/// graph API's plan, else the legacy API ([`super::conv_api`] chooses). `epilogue(s, out)` then
/// runs on the output while its pointer is held.
fn convolve<D: Op>(
    g: &Geometry,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    epilogue: impl FnOnce(&Setup, *mut c_void) -> Result<()>,
) -> Result<CudaStorage> {
    let dev = &a.device;
    let s = setup(dev, g)?;
    let [what_a, what_b] = D::ARGS;
    let [len_a, len_b, len_out] = D::lens(&s.len);
    let av = f32_view(a, la, what_a)?;
    let bv = f32_view(b, lb, what_b)?;
    expect_len(what_a, av.len(), len_a)?;
    expect_len(what_b, bv.len(), len_b)?;
    let mut out = dev.alloc_zeros::<f32>(len_out)?;
    {
        let stream = s.h.cudnn.stream();
        let (ap, _ga) = const_ptr(&av, stream);
        let (bp, _gb) = const_ptr(&bv, stream);
        let (op, _go) = mut_ptr(&mut out, stream);
        let p = D::place(ap as *mut c_void, bp as *mut c_void, op);
        let by_graph = super::conv_api() == super::ConvApi::Graph
            && graph::run(
                &s.h.cudnn,
                dev,
                &s.h.algos.graph,
                s.shape,
                D::DIRECTION,
                s.tf32,
                [p.x, p.w, p.y],
            )?;
        if !by_graph {
            run_legacy::<D>(&s, dev, &p)?;
        }
        epilogue(&s, op)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
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
    convolve::<Forward>(g, (x, lx), (w, lw), |s, yp| {
        let Some((b, lb)) = bias else {
            return Ok(());
        };
        let bv = f32_view(b, lb, "cuda conv3d bias")?;
        expect_len("cuda conv3d bias", bv.len(), g.c_out)?;
        let bdesc = TensorDesc::new(&[1, g.c_out, 1, 1, 1])?;
        let (bp, _gb) = const_ptr(&bv, s.h.cudnn.stream());
        let one = 1f32;
        check(
            unsafe {
                sys::cudnnAddTensor(
                    s.h.cudnn.raw(),
                    f32_ptr(&one),
                    bdesc.raw(),
                    bp,
                    f32_ptr(&one),
                    s.y.raw(),
                    yp,
                )
            },
            "bias add",
        )
    })
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
    convolve::<BackwardData>(g, (dy, ldy), (w, lw), |_, _| Ok(()))
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
    convolve::<BackwardFilter>(g, (x, lx), (dy, ldy), |_, _| Ok(()))
}

fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("{what}: {got} elements, the convolution geometry needs {want}")
    }
    Ok(())
}
