//! cuDNN's graph (backend) API for the three convolution directions: the engines PyTorch's cuDNN
//! convolutions use since its "v8 API" (`cudnnBackend*` descriptors, heuristics mode A, execution
//! plans), as opposed to the legacy `cudnnConvolution*` calls of `conv.rs`, whose algorithm list
//! is a fixed older subset.
//!
//! Per thread, device, shape, direction, pointer alignment and precision setting, the first time:
//! the operation graph of the one convolution is built, the engine configurations of heuristics
//! mode A are turned into execution plans (configurations that fail to finalize, need more than
//! [`MAX_WORKSPACE`] bytes, or carry a numerical note the precision setting forbids are
//! skipped), up to [`MAX_TIMED`] of them are timed on the call's own buffers and the fastest is
//! cached (what PyTorch does under `cudnn.benchmark`). A shape for which nothing works is cached as "use the legacy path", so the graph API
//! never makes a convolution fail that the legacy API can run.
//!
//! Numerical notes, as PyTorch filters them: engines that down-convert their inputs are never used;
//! tensor-core engines (TF32 for f32 data) only when TF32 is allowed.
//!
//! `DUOSEG_CUDNN_LOG=1` prints each search (candidates, their times, the choice) to stderr.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;
use std::time::Instant;

use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::{bail, CudaDevice, Result};

use super::handle::{check, with_workspace, Cudnn, MAX_WORKSPACE};

use sys::cudnnBackendAttributeName_t as Attr;
use sys::cudnnBackendAttributeType_t as Ty;
use sys::cudnnBackendDescriptorType_t as Kind;

/// Largest number of execution plans timed per convolution (heuristics order; the rest are not run).
const MAX_TIMED: usize = 8;

/// Timed runs per plan after its warm-up run; the fastest counts (one run alone was noisy: the same
/// engine measured 8.9 and 3.0 ms in one search on an H200).
const TIMED_RUNS: usize = 2;

/// Unique ids of the three tensors of every convolution graph: the forward direction's input,
/// filter and output (for the backward directions: dx, dw and dy take the same ids).
const UID_X: i64 = 1;
const UID_W: i64 = 2;
const UID_Y: i64 = 3;

/// Which of the three convolution operations a graph computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx = conv_backward_data(dy, w)`.
    BackwardData,
    /// `dw = conv_backward_filter(x, dy)`.
    BackwardFilter,
}

/// The convolution a graph computes, in the forward direction's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvShape {
    pub(crate) x: [usize; 5],
    pub(crate) w: [usize; 5],
    pub(crate) y: [usize; 5],
    pub(crate) pad: [usize; 3],
    pub(crate) stride: [usize; 3],
    pub(crate) dilation: [usize; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PlanKey {
    shape: ConvShape,
    direction: Direction,
    alignment: i64,
    tf32: bool,
}

/// A finalized execution plan and its workspace size (with the descriptors it was built from,
/// kept alive as long as the plan).
pub(crate) struct Plan {
    plan: BackendDesc,
    workspace: usize,
    _keep: Vec<BackendDesc>,
}

/// Plans chosen per key; `None`: the graph API had nothing for this key, use the legacy path.
pub(crate) type PlanCache = RefCell<HashMap<PlanKey, Option<Rc<Plan>>>>;

/// An owned backend descriptor.
pub(crate) struct BackendDesc(sys::cudnnBackendDescriptor_t);

impl Drop for BackendDesc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
        }
    }
}

impl BackendDesc {
    fn new(kind: Kind) -> Result<Self> {
        let mut raw: sys::cudnnBackendDescriptor_t = std::ptr::null_mut();
        check(
            unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut raw) },
            &format!("create {kind:?}"),
        )?;
        Ok(Self(raw))
    }

    /// Sets `attr` to `n` elements of type `ty` read from `ptr`.
    ///
    /// Safety: `ptr` must point to `n` valid elements of the C type that `ty` names.
    unsafe fn set_raw(&self, attr: Attr, ty: Ty, n: usize, ptr: *const c_void) -> Result<()> {
        check(
            unsafe { sys::cudnnBackendSetAttribute(self.0, attr, ty, n as i64, ptr) },
            &format!("set {attr:?}"),
        )
    }

    fn set_i64s(&self, attr: Attr, v: &[i64]) -> Result<()> {
        unsafe { self.set_raw(attr, Ty::CUDNN_TYPE_INT64, v.len(), v.as_ptr().cast()) }
    }

    fn set_descs(&self, attr: Attr, v: &[&BackendDesc]) -> Result<()> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = v.iter().map(|d| d.0).collect();
        unsafe {
            self.set_raw(
                attr,
                Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                raw.len(),
                raw.as_ptr().cast(),
            )
        }
    }

    fn set_f32_data_type(&self, attr: Attr) -> Result<()> {
        let t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        unsafe {
            self.set_raw(
                attr,
                Ty::CUDNN_TYPE_DATA_TYPE,
                1,
                (&t as *const sys::cudnnDataType_t).cast(),
            )
        }
    }

    fn set_f32(&self, attr: Attr, v: f32) -> Result<()> {
        unsafe { self.set_raw(attr, Ty::CUDNN_TYPE_FLOAT, 1, (&v as *const f32).cast()) }
    }

    fn set_handle(&self, attr: Attr, h: sys::cudnnHandle_t) -> Result<()> {
        unsafe {
            self.set_raw(
                attr,
                Ty::CUDNN_TYPE_HANDLE,
                1,
                (&h as *const sys::cudnnHandle_t).cast(),
            )
        }
    }

    fn finalize(&self, what: &str) -> Result<()> {
        check(
            unsafe { sys::cudnnBackendFinalize(self.0) },
            &format!("finalize {what}"),
        )
    }

    /// Reads up to `capacity` elements of type `ty` of `attr` into `out` (with `capacity` 0 and a
    /// null `out`: only counts them); returns the attribute's element count.
    ///
    /// Safety: `out` must have room for `capacity` elements of the C type that `ty` names.
    unsafe fn get_raw(&self, attr: Attr, ty: Ty, capacity: usize, out: *mut c_void) -> Result<i64> {
        let mut n = 0i64;
        check(
            unsafe {
                sys::cudnnBackendGetAttribute(self.0, attr, ty, capacity as i64, &mut n, out)
            },
            &format!("get {attr:?}"),
        )?;
        Ok(n)
    }

    fn get_i64(&self, attr: Attr) -> Result<i64> {
        let mut v = 0i64;
        unsafe { self.get_raw(attr, Ty::CUDNN_TYPE_INT64, 1, (&mut v as *mut i64).cast())? };
        Ok(v)
    }
}

/// A finalized f32 tensor descriptor, packed C order.
fn tensor(dims: &[usize; 5], uid: i64, alignment: i64) -> Result<BackendDesc> {
    let d: Vec<i64> = dims.iter().map(|&v| v as i64).collect();
    let mut strides = [1i64; 5];
    for i in (0..4).rev() {
        strides[i] = strides[i + 1] * d[i + 1];
    }
    let t = BackendDesc::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set_f32_data_type(Attr::CUDNN_ATTR_TENSOR_DATA_TYPE)?;
    t.set_i64s(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, &d)?;
    t.set_i64s(Attr::CUDNN_ATTR_TENSOR_STRIDES, &strides)?;
    t.set_i64s(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[uid])?;
    t.set_i64s(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[alignment])?;
    t.finalize(&format!("tensor {dims:?}"))?;
    Ok(t)
}

fn conv_desc(s: &ConvShape) -> Result<BackendDesc> {
    let as_i64 = |v: &[usize; 3]| -> [i64; 3] { [v[0] as i64, v[1] as i64, v[2] as i64] };
    let c = BackendDesc::new(Kind::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    c.set_f32_data_type(Attr::CUDNN_ATTR_CONVOLUTION_COMP_TYPE)?;
    let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
    unsafe {
        c.set_raw(
            Attr::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
            Ty::CUDNN_TYPE_CONVOLUTION_MODE,
            1,
            (&mode as *const sys::cudnnConvolutionMode_t).cast(),
        )?
    };
    c.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, &[3])?;
    c.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_DILATIONS, &as_i64(&s.dilation))?;
    c.set_i64s(
        Attr::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        &as_i64(&s.stride),
    )?;
    c.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &as_i64(&s.pad))?;
    c.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, &as_i64(&s.pad))?;
    c.finalize("convolution descriptor")?;
    Ok(c)
}

/// The operation graph of one convolution, with every descriptor it holds.
fn operation_graph(
    h: &Cudnn,
    s: &ConvShape,
    direction: Direction,
    alignment: i64,
) -> Result<(BackendDesc, Vec<BackendDesc>)> {
    let x = tensor(&s.x, UID_X, alignment)?;
    let w = tensor(&s.w, UID_W, alignment)?;
    let y = tensor(&s.y, UID_Y, alignment)?;
    let conv = conv_desc(s)?;
    let (kind, alpha, beta, conv_attr, [ax, aw, ay]) = match direction {
        Direction::Forward => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
            ],
        ),
        Direction::BackwardData => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
            ],
        ),
        Direction::BackwardFilter => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
            ],
        ),
    };
    let op = BackendDesc::new(kind)?;
    op.set_f32(alpha, 1.0)?;
    op.set_f32(beta, 0.0)?;
    op.set_descs(conv_attr, &[&conv])?;
    op.set_descs(ax, &[&x])?;
    op.set_descs(aw, &[&w])?;
    op.set_descs(ay, &[&y])?;
    op.finalize(&format!("{direction:?} operation"))?;
    let graph = BackendDesc::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph.set_descs(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&op])?;
    graph.set_handle(Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, h.raw())?;
    graph.finalize("operation graph")?;
    Ok((graph, vec![op, conv, x, w, y]))
}

/// The engine configurations heuristics mode A proposes for `graph`, best first.
fn engine_configs(graph: &BackendDesc) -> Result<Vec<BackendDesc>> {
    let heur = BackendDesc::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_descs(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?;
    let mode = sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A;
    unsafe {
        heur.set_raw(
            Attr::CUDNN_ATTR_ENGINEHEUR_MODE,
            Ty::CUDNN_TYPE_HEUR_MODE,
            1,
            (&mode as *const sys::cudnnBackendHeurMode_t).cast(),
        )?
    };
    heur.finalize("engine heuristics")?;
    let results = Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS;
    let descs = Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR;
    let count = unsafe { heur.get_raw(results, descs, 0, std::ptr::null_mut())? };
    let count = count.clamp(0, 64) as usize;
    let configs: Vec<BackendDesc> = (0..count)
        .map(|_| BackendDesc::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
        .collect::<Result<_>>()?;
    let mut raw: Vec<sys::cudnnBackendDescriptor_t> = configs.iter().map(|c| c.0).collect();
    let got = unsafe { heur.get_raw(results, descs, count, raw.as_mut_ptr().cast())? };
    let mut configs = configs;
    configs.truncate(got.clamp(0, count as i64) as usize);
    Ok(configs)
}

/// The numerical notes of a configuration's engine (as raw enum values), with its global index.
fn engine_notes(config: &BackendDesc) -> Result<(i64, Vec<i32>)> {
    let engine = BackendDesc::new(Kind::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    let mut raw = engine.0;
    unsafe {
        config.get_raw(
            Attr::CUDNN_ATTR_ENGINECFG_ENGINE,
            Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            1,
            (&mut raw as *mut sys::cudnnBackendDescriptor_t).cast(),
        )?
    };
    let index = engine.get_i64(Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)?;
    let cap = sys::cudnnBackendNumericalNote_t::CUDNN_NUMERICAL_NOTE_TYPE_COUNT as usize;
    // Raw i32 values: a note this build's enum does not know must not become an invalid enum.
    let mut notes = vec![0i32; cap];
    let got = unsafe {
        engine.get_raw(
            Attr::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
            Ty::CUDNN_TYPE_NUMERICAL_NOTE,
            cap,
            notes.as_mut_ptr().cast(),
        )?
    };
    notes.truncate(got.clamp(0, cap as i64) as usize);
    Ok((index, notes))
}

/// Whether the precision setting allows an engine with these notes.
fn notes_allowed(notes: &[i32], tf32: bool) -> bool {
    use sys::cudnnBackendNumericalNote_t as Note;
    let has = |n: Note| notes.contains(&(n as i32));
    !has(Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
        && (tf32 || !has(Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE))
}

fn execution_plan(h: &Cudnn, config: &BackendDesc) -> Result<(BackendDesc, usize)> {
    let plan = BackendDesc::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
    plan.set_handle(Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, h.raw())?;
    plan.set_descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config])?;
    plan.finalize("execution plan")?;
    let bytes = plan.get_i64(Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)?;
    Ok((plan, bytes.max(0) as usize))
}

/// Runs `plan` on the three tensors (`[x, w, y]` in forward terms) with a workspace of `bytes`.
fn execute(
    h: &Cudnn,
    plan: &BackendDesc,
    ptrs: [*mut c_void; 3],
    workspace: *mut c_void,
) -> Result<()> {
    let pack = BackendDesc::new(Kind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    pack.set_i64s(
        Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
        &[UID_X, UID_W, UID_Y],
    )?;
    unsafe {
        pack.set_raw(
            Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
            Ty::CUDNN_TYPE_VOID_PTR,
            3,
            ptrs.as_ptr().cast(),
        )?;
        pack.set_raw(
            Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
            Ty::CUDNN_TYPE_VOID_PTR,
            1,
            (&workspace as *const *mut c_void).cast(),
        )?;
    }
    pack.finalize("variant pack")?;
    check(
        unsafe { sys::cudnnBackendExecute(h.raw(), plan.0, pack.0) },
        "execute plan",
    )
}

/// Runs `plan` with a freshly allocated workspace of its size.
fn execute_with_workspace(
    h: &Cudnn,
    dev: &CudaDevice,
    plan: &BackendDesc,
    bytes: usize,
    ptrs: [*mut c_void; 3],
) -> Result<()> {
    with_workspace(dev, h.stream(), bytes, |wp, _| execute(h, plan, ptrs, wp))?
}

fn log_enabled() -> bool {
    std::env::var_os("DUOSEG_CUDNN_LOG").is_some_and(|v| v != "0")
}

/// The largest power of two (at most 16) dividing every pointer: the alignment cuDNN may assume.
fn alignment(ptrs: &[*mut c_void; 3]) -> i64 {
    let mut a = 16i64;
    for &p in ptrs {
        let addr = p as usize as i64;
        while a > 1 && addr % a != 0 {
            a /= 2;
        }
    }
    a
}

/// Builds, times and picks a plan; `Ok(None)` when no engine configuration works here.
fn search(
    h: &Cudnn,
    dev: &CudaDevice,
    key: &PlanKey,
    ptrs: [*mut c_void; 3],
) -> Result<Option<Plan>> {
    let log = log_enabled();
    let (graph, mut keep) = operation_graph(h, &key.shape, key.direction, key.alignment)?;
    let configs = engine_configs(&graph)?;
    let mut plans: Vec<(BackendDesc, usize, i64)> = Vec::new();
    for config in &configs {
        if plans.len() == MAX_TIMED {
            break;
        }
        let (index, notes) = match engine_notes(config) {
            Ok(v) => v,
            Err(e) if key.tf32 => {
                if log {
                    eprintln!("cudnn graph: {e}; numerical notes unknown, allowed under TF32");
                }
                (-1, Vec::new())
            }
            // Exact f32 cannot be guaranteed without the notes.
            Err(_) => continue,
        };
        if !notes_allowed(&notes, key.tf32) {
            continue;
        }
        match execution_plan(h, config) {
            Ok((plan, bytes)) if bytes <= MAX_WORKSPACE => plans.push((plan, bytes, index)),
            Ok(_) => {}
            Err(e) => {
                if log {
                    eprintln!("cudnn graph: engine {index}: {e}");
                }
            }
        }
    }
    let stream = h.stream();
    let mut best: Option<(f64, usize)> = None;
    let mut report = Vec::new();
    for (i, (plan, bytes, index)) in plans.iter().enumerate() {
        // One warm-up run (lazy module loading), then the faster of TIMED_RUNS timed runs.
        let ok = execute_with_workspace(h, dev, plan, *bytes, ptrs)
            .and_then(|_| stream.synchronize().map_err(candle_core::Error::wrap));
        if let Err(e) = ok {
            report.push(format!("engine {index}: {e}"));
            continue;
        }
        let mut ms = f64::INFINITY;
        for _ in 0..TIMED_RUNS {
            let t0 = Instant::now();
            execute_with_workspace(h, dev, plan, *bytes, ptrs)?;
            stream.synchronize().map_err(candle_core::Error::wrap)?;
            ms = ms.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        report.push(format!("engine {index}: {ms:.3} ms, {bytes} B"));
        if best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, i));
        }
    }
    if log {
        eprintln!(
            "cudnn graph {:?} x{:?} w{:?} stride {:?} pad {:?} tf32 {} align {}: {} configs, {} plans [{}] -> {:?}",
            key.direction,
            key.shape.x,
            key.shape.w,
            key.shape.stride,
            key.shape.pad,
            key.tf32,
            key.alignment,
            configs.len(),
            plans.len(),
            report.join("; "),
            best.map(|(ms, i)| (plans[i].2, ms))
        );
    }
    let Some((_, i)) = best else {
        return Ok(None);
    };
    let (plan, workspace, _) = plans.swap_remove(i);
    keep.push(graph);
    Ok(Some(Plan {
        plan,
        workspace,
        _keep: keep,
    }))
}

/// Computes one convolution direction through the graph API; `ptrs` are `[x, w, y]` in forward
/// terms (for the backward directions: dx, dw, dy), the output among them fully overwritten.
/// Returns `Ok(false)` (nothing launched) when the graph API has no plan for this convolution, so
/// the caller uses the legacy path.
pub(crate) fn run(
    h: &Cudnn,
    dev: &CudaDevice,
    cache: &PlanCache,
    shape: ConvShape,
    direction: Direction,
    tf32: bool,
    ptrs: [*mut c_void; 3],
) -> Result<bool> {
    let key = PlanKey {
        shape,
        direction,
        alignment: alignment(&ptrs),
        tf32,
    };
    let cached = cache.borrow().get(&key).cloned();
    let plan = match cached {
        Some(p) => p,
        None => {
            let found = match search(h, dev, &key, ptrs) {
                Ok(found) => found.map(Rc::new),
                Err(e) => {
                    if log_enabled() {
                        eprintln!("cudnn graph {direction:?} {shape:?}: {e}; legacy API instead");
                    }
                    None
                }
            };
            cache.borrow_mut().insert(key, found.clone());
            found
        }
    };
    let Some(plan) = plan else {
        return Ok(false);
    };
    if let Err(e) = execute_with_workspace(h, dev, &plan.plan, plan.workspace, ptrs) {
        bail!("cudnn graph {direction:?} convolution {shape:?}: {e}")
    }
    Ok(true)
}
