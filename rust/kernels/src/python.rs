//! Python module `edgetrain_kernels` (feature `python`): one `Kernels(path=None)` object
//! whose methods take and return numpy arrays. `runtime/backend.py` is its only user.
//!
//! Every allocation goes through CPython's raw allocator, so `tracemalloc` counts the
//! kernels' buffers as it counts numpy's.

use std::alloc::{GlobalAlloc, Layout, System};

use numpy::ndarray::IxDyn;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::elementwise::{add_bytes, quantize, AddParams};
use crate::exact::{matmul_i64, matmul_i64_to_i32};
use crate::path::Path;
use crate::pool::{max_pool, mean_pool, Mean, Window};
use crate::qlinear::{conv, conv_packed, fully_connected, fully_connected_packed, Bytes, Conv2d, Output, PackedConv, PackedWeights, Weights};
use crate::requant::Requant;
use crate::zo::{self, Direction, Stream, UpdateError};

/// CPython's raw allocator (traced by tracemalloc) for every alignment malloc gives.
struct PyRawAlloc;

const MALLOC_ALIGN: usize = 16;

// SAFETY: PyMem_Raw* are malloc/realloc/free with tracing hooks; they need no GIL. Larger
// alignments go to the system allocator, and `dealloc`/`realloc` see the same layout.
unsafe impl GlobalAlloc for PyRawAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > MALLOC_ALIGN {
            return unsafe { System.alloc(layout) };
        }
        unsafe { pyo3::ffi::PyMem_RawMalloc(layout.size()).cast() }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() > MALLOC_ALIGN {
            return unsafe { System.dealloc(ptr, layout) };
        }
        unsafe { pyo3::ffi::PyMem_RawFree(ptr.cast()) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() > MALLOC_ALIGN {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        unsafe { pyo3::ffi::PyMem_RawRealloc(ptr.cast(), new_size).cast() }
    }
}

#[global_allocator]
static ALLOCATOR: PyRawAlloc = PyRawAlloc;

/// An int8 or uint8 array, read as bytes.
enum ByteArray<'py> {
    I8(PyReadonlyArrayDyn<'py, i8>),
    U8(PyReadonlyArrayDyn<'py, u8>),
}

impl<'py> ByteArray<'py> {
    fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<i8>>() {
            return Ok(ByteArray::I8(a));
        }
        obj.extract::<PyReadonlyArrayDyn<u8>>()
            .map(ByteArray::U8)
            .map_err(|_| PyValueError::new_err(format!("{what}: expected an int8 or uint8 numpy array")))
    }

    fn shape(&self) -> &[usize] {
        match self {
            ByteArray::I8(a) => a.shape(),
            ByteArray::U8(a) => a.shape(),
        }
    }

    fn bytes(&self, what: &str) -> PyResult<Bytes<'_>> {
        let err = |_| PyValueError::new_err(format!("{what}: expected a C-contiguous array"));
        Ok(match self {
            ByteArray::I8(a) => Bytes { data: i8_as_bytes(a.as_slice().map_err(err)?), signed: true },
            ByteArray::U8(a) => Bytes { data: a.as_slice().map_err(err)?, signed: false },
        })
    }
}

fn i8_as_bytes(s: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid in both.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// A new int8 (`signed`) or uint8 array of `shape`, filled by `fill` through its bytes.
fn new_bytes<'py>(py: Python<'py>, shape: &[usize], signed: bool, fill: impl FnOnce(&mut [u8])) -> PyResult<Bound<'py, PyAny>> {
    if signed {
        let arr = PyArrayDyn::<i8>::zeros(py, IxDyn(shape), false);
        {
            let mut rw = arr.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            // SAFETY: as in `i8_as_bytes`.
            fill(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) });
        }
        Ok(arr.into_any())
    } else {
        let arr = PyArrayDyn::<u8>::zeros(py, IxDyn(shape), false);
        fill(arr.readwrite().as_slice_mut().expect("a new array is contiguous"));
        Ok(arr.into_any())
    }
}

fn value_err(e: String) -> PyErr {
    PyValueError::new_err(e)
}

fn pair(v: &[usize], what: &str) -> PyResult<[usize; 2]> {
    v.try_into().map_err(|_| PyValueError::new_err(format!("{what}: expected 2 values, got {v:?}")))
}

fn four(v: &[usize], what: &str) -> PyResult<[usize; 4]> {
    v.try_into().map_err(|_| PyValueError::new_err(format!("{what}: expected 4 values, got {v:?}")))
}

/// The fully connected layers' output, `(rows, n)`: with `mult` and `shift`, int8 / uint8
/// requantised by them (one value, or one per output column); with neither, the int32
/// accumulators. `run` computes it into the [`Output`] it is given, after the checks that
/// zero-points and bias hold one value per output column.
#[allow(clippy::too_many_arguments)]
fn fully_connected_output<'py>(
    py: Python<'py>,
    op: &str,
    rows: usize,
    n: usize,
    zp: &[i32],
    bias: Option<&[i32]>,
    mult: Option<PyReadonlyArray1<i64>>,
    shift: Option<PyReadonlyArray1<i64>>,
    y_zp: i64,
    y_signed: bool,
    run: impl FnOnce(Output),
) -> PyResult<Bound<'py, PyAny>> {
    if zp.len() != n || bias.is_some_and(|b| b.len() != n) {
        return Err(PyValueError::new_err(format!("{op}: zero-points and bias need one value per output column")));
    }
    match (mult, shift) {
        (Some(mult), Some(shift)) => {
            let rq = requant(&mult, &shift, y_zp, y_signed)?;
            if !(rq.mult.len() == 1 || rq.mult.len() == n) {
                return Err(PyValueError::new_err(format!("{op}: one multiplier, or one per output column")));
            }
            new_bytes(py, &[rows, n], y_signed, |out| run(Output::Requantized(&rq, out)))
        }
        (None, None) => {
            let arr = PyArrayDyn::<i32>::zeros(py, IxDyn(&[rows, n]), false);
            {
                let mut rw = arr.readwrite();
                run(Output::Accumulators(rw.as_slice_mut().expect("a new array is contiguous")));
            }
            Ok(arr.into_any())
        }
        _ => Err(PyValueError::new_err(format!("{op}: give both mult and shift, or neither"))),
    }
}

/// The output's 8-bit requantisation: per-row `(multiplier_q31, shift)`, zero-point, dtype.
fn requant(mult: &PyReadonlyArray1<i64>, shift: &PyReadonlyArray1<i64>, y_zp: i64, y_signed: bool) -> PyResult<Requant> {
    let (lo, hi) = if y_signed { (-128, 127) } else { (0, 255) };
    Requant::new(mult.as_slice()?, shift.as_slice()?, y_zp, lo, hi).map_err(value_err)
}

/// Weights packed once by `Kernels.pack_weights` (opaque to Python).
#[pyclass(module = "edgetrain_kernels")]
struct Packed {
    inner: PackedWeights,
}

/// One QLinearConv node made ready at load by `Kernels.conv_layer`: its weights packed (and
/// repacked when training changes them), its requantisation, zero-points and output type,
/// and the windows of the input sizes it has seen (`add_window`), so that a call passes
/// only the input, the current weights and the bias.
#[pyclass(module = "edgetrain_kernels")]
struct ConvLayer {
    path: Path,
    packed: PackedConv,
    rq: Requant,
    x_zp: i32,
    y_signed: bool,
    /// per input `(h, w)`: strides, dilations, pads, out_hw, and the window of a MaxPool run
    /// on the output (the node after this one), if it was given
    windows: Vec<ConvWindow>,
}

#[derive(Clone, Copy)]
struct ConvWindow {
    hw: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 4],
    out_hw: [usize; 2],
    /// a following MaxPool's kernel, strides, dilations, pads and out_hw
    pool: Option<([usize; 2], [usize; 2], [usize; 2], [usize; 4], [usize; 2])>,
}

#[pymethods]
impl ConvLayer {
    /// The window for inputs of spatial size `hw`, as `_window.window_geometry` gives it,
    /// and optionally `pool = (kernel, strides, dilations, pads, out_hw)`: the window of a
    /// MaxPool over the output that `run(..., pooled=True)` applies. ValueError when a
    /// window leaves its padded input.
    #[pyo3(signature = (hw, strides, dilations, pads, out_hw, pool=None))]
    #[allow(clippy::type_complexity)]
    fn add_window(&mut self, hw: Vec<usize>, strides: Vec<usize>, dilations: Vec<usize>, pads: Vec<usize>, out_hw: Vec<usize>, pool: Option<(Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>)>) -> PyResult<()> {
        let (hw, strides, dilations, pads, out_hw) = (pair(&hw, "hw")?, pair(&strides, "strides")?, pair(&dilations, "dilations")?, four(&pads, "pads")?, pair(&out_hw, "out_hw")?);
        let kernel = self.packed.kernel;
        let span = |i: usize| (out_hw[i].max(1) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1;
        if out_hw.contains(&0) || strides.contains(&0) || dilations.contains(&0) || span(0) > hw[0] + pads[0] + pads[2] || span(1) > hw[1] + pads[1] + pads[3] {
            return Err(PyValueError::new_err(format!("conv_layer: window (strides {strides:?}, dilations {dilations:?}, pads {pads:?}, out {out_hw:?}) leaves the padded input {hw:?}")));
        }
        let pool = match pool {
            None => None,
            // as `max_pool` takes it (its taps on padding, ceil-mode rows included, are skipped)
            Some((k, s, d, p, o)) => Some((pair(&k, "pool kernel")?, pair(&s, "pool strides")?, pair(&d, "pool dilations")?, four(&p, "pool pads")?, pair(&o, "pool out_hw")?)),
        };
        self.windows.retain(|w| w.hw != hw);
        self.windows.push(ConvWindow { hw, strides, dilations, pads, out_hw, pool });
        Ok(())
    }

    /// QLinearConv of `x (n, c, h, w)` (a window added for `(h, w)`) by the layer's current
    /// weights `w` (the shape and dtype packed; repacked first if their bytes changed) and
    /// `bias` (int32 per output channel, or None): as `Kernels.qlinear_conv`. `pooled`: the
    /// window's MaxPool applied to that output, which is then never a numpy array.
    #[pyo3(signature = (x, w, bias=None, pooled=false))]
    fn run<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>, w: &Bound<'py, PyAny>, bias: Option<PyReadonlyArray1<i32>>, pooled: bool) -> PyResult<Bound<'py, PyAny>> {
        let (xa, wa) = (ByteArray::new(x, "x")?, ByteArray::new(w, "w")?);
        let (xs, ws) = (xa.shape(), wa.shape());
        let p = &self.packed;
        if xs.len() != 4 || ws != [p.m, p.cg, p.kernel[0], p.kernel[1]] || xs[1] != p.cg * p.group {
            return Err(PyValueError::new_err(format!("conv_layer: x {xs:?} and w {ws:?} do not fit the packed weights")));
        }
        let win = *self
            .windows
            .iter()
            .find(|win| win.hw == [xs[2], xs[3]])
            .ok_or_else(|| PyValueError::new_err(format!("conv_layer: no window for inputs of size {:?}", &xs[2..])))?;
        let g = Conv2d { n: xs[0], c: xs[1], h: xs[2], w: xs[3], m: p.m, kernel: p.kernel, strides: win.strides, dilations: win.dilations, pads: win.pads, out_hw: win.out_hw, group: p.group };
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        if bias.is_some_and(|b| b.len() != g.m) {
            return Err(PyValueError::new_err("conv_layer: the bias needs one value per output channel"));
        }
        let wb = wa.bytes("w")?;
        if wb.signed != p.signed {
            return Err(PyValueError::new_err("conv_layer: w's dtype is not the packed weights'"));
        }
        let xb = xa.bytes("x")?;
        self.packed.refresh(wb);
        let (path, x_zp, packed, rq, y_signed) = (self.path, self.x_zp, &self.packed, &self.rq, self.y_signed);
        let [oh, ow] = win.out_hw;
        if !pooled {
            return new_bytes(py, &[g.n, g.m, oh, ow], y_signed, |out| conv_packed(path, &g, xb, x_zp, packed, bias, Output::Requantized(rq, out)));
        }
        let (kernel, strides, dilations, pads, out_hw) = win.pool.ok_or_else(|| PyValueError::new_err("conv_layer: pooled=True, but the window has no pool"))?;
        let mut y = vec![0u8; g.n * g.m * oh * ow];
        conv_packed(path, &g, xb, x_zp, packed, bias, Output::Requantized(rq, &mut y));
        let pool = Window { planes: g.n * g.m, h: oh, w: ow, kernel, strides, dilations, pads, out_hw };
        new_bytes(py, &[g.n, g.m, out_hw[0], out_hw[1]], y_signed, |out| {
            crate::path::vectorized(path, #[inline(always)] || {
                if y_signed {
                    max_pool(&pool, i8_slice(&y), i8::MIN, i8_slice_mut(out));
                } else {
                    max_pool(&pool, &y, u8::MIN, out);
                }
            })
        })
    }
}

/// One fully connected node made ready at load by `Kernels.fc_layer`: its weights packed
/// (repacked when training changes them), zero-points, requantisation and output type.
#[pyclass(module = "edgetrain_kernels")]
struct FcLayer {
    path: Path,
    packed: PackedWeights,
    zero_points: Vec<i32>,
    rq: Requant,
    x_zp: i32,
    y_signed: bool,
}

#[pymethods]
impl FcLayer {
    /// `qgemm_packed` of `x (rows, k)` by the layer's current weights `w (n, k)` (the shape
    /// and dtype packed) and `bias` (int32 per output, or None), requantised.
    #[pyo3(signature = (x, w, bias=None))]
    fn run<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>, w: &Bound<'py, PyAny>, bias: Option<PyReadonlyArray1<i32>>) -> PyResult<Bound<'py, PyAny>> {
        let (xa, wa) = (ByteArray::new(x, "x")?, ByteArray::new(w, "w")?);
        let (xs, ws) = (xa.shape(), wa.shape());
        let (n, k) = (self.packed.n, self.packed.k);
        if xs.len() != 2 || ws != [n, k] || xs[1] != k {
            return Err(PyValueError::new_err(format!("fc_layer: x {xs:?} and w {ws:?} do not fit packed weights ({n}, {k})")));
        }
        let wb = wa.bytes("w")?;
        if wb.signed != self.packed.signed {
            return Err(PyValueError::new_err("fc_layer: w's dtype is not the packed weights'"));
        }
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        if bias.is_some_and(|b| b.len() != n) {
            return Err(PyValueError::new_err("fc_layer: the bias needs one value per output"));
        }
        let xb = xa.bytes("x")?;
        let rows = xs[0];
        self.packed.refresh(wb);
        let (path, x_zp, packed, zp, rq) = (self.path, self.x_zp, &self.packed, &self.zero_points[..], &self.rq);
        new_bytes(py, &[rows, n], self.y_signed, |out| fully_connected_packed(path, xb, x_zp, rows, packed, zp, bias, Output::Requantized(rq, out)))
    }
}

/// The native integer kernels, on one instruction-set path (the fastest by default).
#[pyclass(frozen, module = "edgetrain_kernels")]
struct Kernels {
    path: Path,
}

#[pymethods]
impl Kernels {
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(path: Option<&str>) -> PyResult<Self> {
        let path = match path {
            None => Path::best(),
            Some(name) => {
                let p = Path::parse(name).ok_or_else(|| {
                    let all: Vec<_> = Path::ALL.iter().map(|p| p.name()).collect();
                    PyValueError::new_err(format!("kernel path {name:?} is not one of {all:?}"))
                })?;
                if !p.supported() {
                    return Err(PyValueError::new_err(format!("kernel path {name:?} is not supported by this CPU")));
                }
                p
            }
        };
        Ok(Kernels { path })
    }

    /// The instruction-set path these kernels run on.
    #[getter]
    fn path(&self) -> &'static str {
        self.path.name()
    }

    fn __repr__(&self) -> String {
        format!("Kernels(path={:?})", self.path.name())
    }

    /// QLinearConv: `x (n, c, h, w)` and `w (m, c/group, kh, kw)` 8-bit; per-output-channel
    /// `w_zp`, `bias` (int32 or None), `mult`, `shift`; the window as `_window.window_geometry`
    /// gives it. Returns `(n, m, oh, ow)` of the output's dtype (`y_signed`: int8, else uint8).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, x_zp, w, w_zp, bias, mult, shift, y_zp, y_signed, strides, dilations, pads, out_hw, group))]
    fn qlinear_conv<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        x_zp: i32,
        w: &Bound<'py, PyAny>,
        w_zp: PyReadonlyArray1<i32>,
        bias: Option<PyReadonlyArray1<i32>>,
        mult: PyReadonlyArray1<i64>,
        shift: PyReadonlyArray1<i64>,
        y_zp: i64,
        y_signed: bool,
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        out_hw: Vec<usize>,
        group: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (xa, wa) = (ByteArray::new(x, "x")?, ByteArray::new(w, "w")?);
        let (xs, ws) = (xa.shape(), wa.shape());
        if xs.len() != 4 || ws.len() != 4 || group == 0 || xs[1] != ws[1] * group || ws[0] % group != 0 {
            return Err(PyValueError::new_err(format!("qlinear_conv: shapes x {xs:?}, w {ws:?}, group {group} do not fit")));
        }
        let g = Conv2d {
            n: xs[0],
            c: xs[1],
            h: xs[2],
            w: xs[3],
            m: ws[0],
            kernel: [ws[2], ws[3]],
            strides: pair(&strides, "strides")?,
            dilations: pair(&dilations, "dilations")?,
            pads: four(&pads, "pads")?,
            out_hw: pair(&out_hw, "out_hw")?,
            group,
        };
        let span = |i: usize| (g.out_hw[i] - 1) * g.strides[i] + (g.kernel[i] - 1) * g.dilations[i] + 1;
        if g.out_hw.contains(&0) || span(0) > g.h + g.pads[0] + g.pads[2] || span(1) > g.w + g.pads[1] + g.pads[3] {
            return Err(PyValueError::new_err(format!("qlinear_conv: window {g:?} leaves the padded input")));
        }
        let rq = requant(&mult, &shift, y_zp, y_signed)?;
        let zp = w_zp.as_slice()?;
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        if zp.len() != g.m || bias.is_some_and(|b| b.len() != g.m) || !(rq.mult.len() == 1 || rq.mult.len() == g.m) {
            return Err(PyValueError::new_err("qlinear_conv: zero-points, bias and multipliers need one value per output channel"));
        }
        let weights = Weights { bytes: wa.bytes("w")?, zero_points: zp, bias };
        let xb = xa.bytes("x")?;
        new_bytes(py, &[g.n, g.m, g.out_hw[0], g.out_hw[1]], y_signed, |out| {
            conv(self.path, &g, xb, x_zp, &weights, Output::Requantized(&rq, out))
        })
    }

    /// A QLinearConv node's constants made ready once: weights `w (m, c/group, kh, kw)`
    /// (8-bit; packed now), per-output-channel `w_zp`, `mult`, `shift`, the input's and the
    /// output's zero-points, the output's dtype (`y_signed`: int8), `group`, `strides`. Its `run` then
    /// computes what `qlinear_conv` would.
    #[allow(clippy::too_many_arguments)]
    fn conv_layer(&self, w: &Bound<'_, PyAny>, w_zp: PyReadonlyArray1<i32>, mult: PyReadonlyArray1<i64>, shift: PyReadonlyArray1<i64>, x_zp: i32, y_zp: i64, y_signed: bool, group: usize, strides: Vec<usize>) -> PyResult<ConvLayer> {
        let wa = ByteArray::new(w, "w")?;
        let ws = wa.shape();
        if ws.len() != 4 || group == 0 || ws[0] % group != 0 || strides.contains(&0) {
            return Err(PyValueError::new_err(format!("conv_layer: weights {ws:?} with group {group} do not fit")));
        }
        let rq = requant(&mult, &shift, y_zp, y_signed)?;
        let zp = w_zp.as_slice()?;
        if zp.len() != ws[0] || !(rq.mult.len() == 1 || rq.mult.len() == ws[0]) {
            return Err(PyValueError::new_err("conv_layer: zero-points and multipliers need one value per output channel"));
        }
        let packed = PackedConv::new(self.path, wa.bytes("w")?, zp, ws[0], ws[1], [ws[2], ws[3]], group, pair(&strides, "strides")?);
        Ok(ConvLayer { path: self.path, packed, rq, x_zp, y_signed, windows: Vec::new() })
    }

    /// The fully connected layers: `y = (x − x_zp) · (w − w_zp)ᵀ + bias` for `x (rows, k)` and
    /// `w (n, k)`, requantised per output column (`mult`, `shift`: one or n values) to
    /// int8 / uint8 — or, with `mult=None`, the int32 accumulators themselves.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, x_zp, w, w_zp, bias=None, mult=None, shift=None, y_zp=0, y_signed=true))]
    fn qgemm<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        x_zp: i32,
        w: &Bound<'py, PyAny>,
        w_zp: PyReadonlyArray1<i32>,
        bias: Option<PyReadonlyArray1<i32>>,
        mult: Option<PyReadonlyArray1<i64>>,
        shift: Option<PyReadonlyArray1<i64>>,
        y_zp: i64,
        y_signed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (xa, wa) = (ByteArray::new(x, "x")?, ByteArray::new(w, "w")?);
        let (xs, ws) = (xa.shape(), wa.shape());
        if xs.len() != 2 || ws.len() != 2 || xs[1] != ws[1] {
            return Err(PyValueError::new_err(format!("qgemm: x {xs:?} and w {ws:?} are not (rows, k) and (n, k)")));
        }
        let (rows, k, n) = (xs[0], xs[1], ws[0]);
        let zp = w_zp.as_slice()?;
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        let (wb, xb) = (wa.bytes("w")?, xa.bytes("x")?);
        let path = self.path;
        fully_connected_output(py, "qgemm", rows, n, zp, bias, mult, shift, y_zp, y_signed, |out| {
            let weights = Weights { bytes: wb, zero_points: zp, bias };
            fully_connected(path, xb, x_zp, rows, k, &weights, n, out)
        })
    }

    /// A fully connected layer's weights `w (n, k)` (int8 or uint8) packed for
    /// [`Kernels::qgemm_packed`]; it keeps a packed copy, checked against `w` at each call.
    fn pack_weights(&self, w: &Bound<'_, PyAny>) -> PyResult<Packed> {
        let wa = ByteArray::new(w, "w")?;
        let ws = wa.shape();
        if ws.len() != 2 {
            return Err(PyValueError::new_err(format!("pack_weights: expected (n, k) weights, got shape {ws:?}")));
        }
        let (n, k) = (ws[0], ws[1]);
        Ok(Packed { inner: PackedWeights::new(wa.bytes("w")?, n, k) })
    }

    /// A fully connected node's constants made ready once: weights `w (n, k)` (8-bit; packed
    /// now), per-output `w_zp`, `mult`, `shift` (one or n values), the input's and the output's
    /// zero-points, the output's dtype (`y_signed`: int8). Its `run` computes what
    /// `qgemm_packed` would with them.
    #[allow(clippy::too_many_arguments)]
    fn fc_layer(&self, w: &Bound<'_, PyAny>, w_zp: PyReadonlyArray1<i32>, mult: PyReadonlyArray1<i64>, shift: PyReadonlyArray1<i64>, x_zp: i32, y_zp: i64, y_signed: bool) -> PyResult<FcLayer> {
        let wa = ByteArray::new(w, "w")?;
        let ws = wa.shape();
        if ws.len() != 2 {
            return Err(PyValueError::new_err(format!("fc_layer: expected (n, k) weights, got shape {ws:?}")));
        }
        let rq = requant(&mult, &shift, y_zp, y_signed)?;
        let zp = w_zp.as_slice()?;
        if zp.len() != ws[0] || !(rq.mult.len() == 1 || rq.mult.len() == ws[0]) {
            return Err(PyValueError::new_err("fc_layer: zero-points and multipliers need one value per output"));
        }
        let packed = PackedWeights::new(wa.bytes("w")?, ws[0], ws[1]);
        Ok(FcLayer { path: self.path, packed, zero_points: zp.to_vec(), rq, x_zp, y_signed })
    }

    /// `qgemm` on weights packed by `pack_weights`: `w` is the layer's current weight array,
    /// compared with the packed copy byte for byte first and packed again if it changed.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, x_zp, packed, w, w_zp, bias=None, mult=None, shift=None, y_zp=0, y_signed=true))]
    fn qgemm_packed<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        x_zp: i32,
        mut packed: PyRefMut<'py, Packed>,
        w: &Bound<'py, PyAny>,
        w_zp: PyReadonlyArray1<i32>,
        bias: Option<PyReadonlyArray1<i32>>,
        mult: Option<PyReadonlyArray1<i64>>,
        shift: Option<PyReadonlyArray1<i64>>,
        y_zp: i64,
        y_signed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (xa, wa) = (ByteArray::new(x, "x")?, ByteArray::new(w, "w")?);
        let (xs, ws) = (xa.shape(), wa.shape());
        let pw = &packed.inner;
        if xs.len() != 2 || ws != [pw.n, pw.k] || xs[1] != pw.k {
            return Err(PyValueError::new_err(format!("qgemm_packed: x {xs:?} and w {ws:?} do not fit packed weights ({}, {})", pw.n, pw.k)));
        }
        let wb = wa.bytes("w")?;
        if wb.signed != pw.signed {
            return Err(PyValueError::new_err("qgemm_packed: w's dtype is not the packed weights'"));
        }
        let (rows, n) = (xs[0], pw.n);
        let zp = w_zp.as_slice()?;
        let bias = bias.as_ref().map(|b| b.as_slice()).transpose()?;
        let xb = xa.bytes("x")?;
        let path = self.path;
        fully_connected_output(py, "qgemm_packed", rows, n, zp, bias, mult, shift, y_zp, y_signed, |out| {
            packed.inner.refresh(wb);
            fully_connected_packed(path, xb, x_zp, rows, &packed.inner, zp, bias, out)
        })
    }

    /// MaxPool over an int8 / uint8 NCHW tensor; returns the same dtype.
    fn max_pool<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        out_hw: Vec<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let xa = ByteArray::new(x, "x")?;
        let (win, shape) = window(xa.shape(), &kernel, &strides, &dilations, &pads, &out_hw)?;
        let xb = xa.bytes("x")?;
        new_bytes(py, &shape, xb.signed, |out| {
            crate::path::vectorized(self.path, #[inline(always)] || {
                if xb.signed {
                    max_pool(&win, i8_slice(xb.data), i8::MIN, i8_slice_mut(out));
                } else {
                    max_pool(&win, xb.data, u8::MIN, out);
                }
            })
        })
    }

    /// The integer mean of QLinearAveragePool / QLinearGlobalAveragePool (`pool.py`'s
    /// `_IntegerMean.mean`): `counts` per output position, `(oh, ow)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (x, x_zp, kernel, strides, dilations, pads, out_hw, counts, mult, bits, add, y_zp, y_signed))]
    fn mean_pool<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        x_zp: i64,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        out_hw: Vec<usize>,
        counts: PyReadonlyArray2<i64>,
        mult: i64,
        bits: u32,
        add: i64,
        y_zp: i64,
        y_signed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let xa = ByteArray::new(x, "x")?;
        let (win, shape) = window(xa.shape(), &kernel, &strides, &dilations, &pads, &out_hw)?;
        if counts.shape() != win.out_hw || !(0..1 << 31).contains(&mult) || bits > 40 {
            return Err(PyValueError::new_err("mean_pool: counts must be (oh, ow); mult < 2^31; bits ≤ 40"));
        }
        let counts = counts.as_slice()?;
        if counts.iter().any(|&c| !(1..1 << 22).contains(&c)) {
            return Err(PyValueError::new_err("mean_pool: every window count must lie in [1, 2^22)"));
        }
        let (lo, hi) = if y_signed { (-128, 127) } else { (0, 255) };
        let mean = Mean { x_zp, counts, mult, bits, add, y_zp, lo, hi };
        let xb = xa.bytes("x")?;
        new_bytes(py, &shape, y_signed, |out| {
            crate::path::vectorized(self.path, #[inline(always)] || {
                if xb.signed {
                    mean_pool(&win, i8_slice(xb.data), &mean, out)
                } else {
                    mean_pool(&win, xb.data, &mean, out)
                }
            })
        })
    }

    /// QuantizeLinear per tensor of a float32 array to int8 (`y_signed`) or uint8, as
    /// `quant.quantize_float`; None when `x` holds a NaN (the caller then runs numpy).
    fn quantize<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>, scale: f32, zero_point: i32, y_signed: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let xs = x.as_slice().map_err(|_| PyValueError::new_err("quantize: expected a C-contiguous array"))?;
        let (lo, hi) = if y_signed { (-128.0, 127.0) } else { (0.0, 255.0) };
        let mut ok = true;
        let y = new_bytes(py, x.shape(), y_signed, |out| {
            ok = crate::path::vectorized(self.path, #[inline(always)] || quantize(xs, scale, zero_point as f32, lo, hi, out)).is_ok();
        })?;
        Ok(ok.then_some(y))
    }

    /// QLinearAdd of two 8-bit arrays of one shape (`add.py`'s integer form): `(ma, mb)` the
    /// Q31 mantissas over the shared exponent, `bits = 31 − shift`.
    #[allow(clippy::too_many_arguments)]
    fn qlinear_add<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        a_zp: i64,
        ma: i64,
        b: &Bound<'py, PyAny>,
        b_zp: i64,
        mb: i64,
        bits: u32,
        y_zp: i64,
        y_signed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (aa, ba) = (ByteArray::new(a, "a")?, ByteArray::new(b, "b")?);
        if aa.shape() != ba.shape() {
            return Err(PyValueError::new_err(format!("qlinear_add: shapes {:?} and {:?} differ", aa.shape(), ba.shape())));
        }
        if bits > 62 || ma.unsigned_abs() >= 1 << 31 || mb.unsigned_abs() >= 1 << 31 || !(-128..=255).contains(&a_zp) || !(-128..=255).contains(&b_zp) {
            return Err(PyValueError::new_err("qlinear_add: multipliers must be below 2^31, bits at most 62, zero-points 8-bit"));
        }
        let (lo, hi) = if y_signed { (-128, 127) } else { (0, 255) };
        let p = AddParams { za: a_zp, ma, zb: b_zp, mb, bits, zc: y_zp, lo, hi };
        let (ab, bb) = (aa.bytes("a")?, ba.bytes("b")?);
        new_bytes(py, aa.shape(), y_signed, |out| {
            add_bytes(self.path, p, ab.data, ab.signed, bb.data, bb.signed, out)
        })
    }

    /// Exact `a · b` of int64 matrices (wrapping as numpy's int64 matmul); `a` may be strided
    /// (a transpose), `b` is made row-major if it is not. `int32=True` stores the product as
    /// int32 without an int64 one beside it (ValueError if a sum does not fit).
    #[pyo3(signature = (a, b, int32=false))]
    fn int_matmul<'py>(&self, py: Python<'py>, a: PyReadonlyArray2<'py, i64>, b: PyReadonlyArray2<'py, i64>, int32: bool) -> PyResult<Bound<'py, PyAny>> {
        let (av, bv) = (a.as_array(), b.as_array());
        let ((m, k), (k2, n)) = (av.dim(), bv.dim());
        if k != k2 {
            return Err(PyValueError::new_err(format!("int_matmul: shapes ({m}, {k}) and ({k2}, {n}) do not chain")));
        }
        let b_rows = bv.as_standard_layout();
        let b_slice = b_rows.as_slice().expect("standard layout is contiguous");
        let a_at = |i, kk| av[[i, kk]];
        if int32 {
            let arr = PyArrayDyn::<i32>::zeros(py, IxDyn(&[m, n]), false);
            let fits = matmul_i64_to_i32(self.path, &a_at, m, k, b_slice, n, arr.readwrite().as_slice_mut().expect("a new array is contiguous"));
            if !fits {
                return Err(PyValueError::new_err("int_matmul: a sum does not fit int32"));
            }
            return Ok(arr.into_any());
        }
        let arr = PyArrayDyn::<i64>::zeros(py, IxDyn(&[m, n]), false);
        matmul_i64(self.path, &a_at, m, k, b_slice, n, arr.readwrite().as_slice_mut().expect("a new array is contiguous"));
        Ok(arr.into_any())
    }
    /// `prng.rademacher(seed, stream, n, start)`: ±1 as int8 (seed and stream mod 2^64).
    #[pyo3(signature = (seed, stream, n, start=0))]
    fn rademacher<'py>(&self, py: Python<'py>, seed: u64, stream: u64, n: usize, start: u64) -> Bound<'py, PyAny> {
        let arr = PyArrayDyn::<i8>::zeros(py, IxDyn(&[n]), false);
        zo::rademacher(self.path, Stream::new(seed, stream), start, arr.readwrite().as_slice_mut().expect("a new array is contiguous"));
        arr.into_any()
    }

    /// `prng.uniform_below_pow2(seed, stream, n, bits, start)`: int64 in `[0, 2^bits)`.
    #[pyo3(signature = (seed, stream, n, bits, start=0))]
    fn uniform_below_pow2<'py>(&self, py: Python<'py>, seed: u64, stream: u64, n: usize, bits: u32, start: u64) -> PyResult<Bound<'py, PyAny>> {
        if bits > 62 {
            return Err(PyValueError::new_err(format!("uniform_below_pow2: bits = {bits} is above 62")));
        }
        let arr = PyArrayDyn::<i64>::zeros(py, IxDyn(&[n]), false);
        zo::uniform_below_pow2(self.path, Stream::new(seed, stream), start, bits, arr.readwrite().as_slice_mut().expect("a new array is contiguous"));
        Ok(arr.into_any())
    }

    /// `zo.SignPerturbation` on one tensor: `w += step·z` in place over C-contiguous int8 `w`,
    /// `z = prng.rademacher(seed, stream, w.size)` (wrapping as numpy's int8 `+=`).
    fn zo_perturb(&self, mut w: PyReadwriteArrayDyn<'_, i8>, seed: u64, stream: u64, step: i8) -> PyResult<()> {
        let ws = w.as_slice_mut().map_err(|_| PyValueError::new_err("zo_perturb: w must be C-contiguous"))?;
        zo::perturb(self.path, ws, Stream::new(seed, stream), step);
        Ok(())
    }

    /// `zo.sign_update` on one tensor, in place over C-contiguous int8 `w`: `w ← clip(w −
    /// ((Σ_j diffs[j]·z_j + r) >> shift), −limit, limit)`, `z_j = rademacher(seeds[j], stream)`,
    /// `r = uniform_below_pow2(noise_seed, noise_stream, w.size, shift)`. ValueError (and `w`
    /// untouched) when `Σ|diffs| ≥ 2^62`, `shift > 62` or `limit` is not in 0..=127.
    #[allow(clippy::too_many_arguments)]
    fn zo_sign_update(&self, mut w: PyReadwriteArrayDyn<'_, i8>, stream: u64, seeds: Vec<u64>, diffs: Vec<i64>, shift: u32, noise_seed: u64, noise_stream: u64, limit: i8) -> PyResult<()> {
        if seeds.len() != diffs.len() {
            return Err(PyValueError::new_err("zo_sign_update: one seed per loss difference"));
        }
        let dirs: Vec<Direction> = seeds.iter().zip(&diffs).map(|(&s, &diff)| Direction { signs: Stream::new(s, stream), diff }).collect();
        let ws = w.as_slice_mut().map_err(|_| PyValueError::new_err("zo_sign_update: w must be C-contiguous"))?;
        zo::sign_update(self.path, ws, &dirs, Stream::new(noise_seed, noise_stream), shift, limit).map_err(|e| {
            PyValueError::new_err(match e {
                UpdateError::DiffsTooLarge => "zo_sign_update: Σ|diffs| must be below 2^62",
                UpdateError::ShiftTooLarge => "zo_sign_update: shift must be at most 62",
                UpdateError::BadLimit => "zo_sign_update: limit must lie in 0..=127",
            })
        })
    }
}

fn i8_slice(b: &[u8]) -> &[i8] {
    // SAFETY: as in `i8_as_bytes`, the other way round.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) }
}

fn i8_slice_mut(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `i8_as_bytes`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len()) }
}

/// A pool's window over an NCHW shape, and the output shape.
fn window(shape: &[usize], kernel: &[usize], strides: &[usize], dilations: &[usize], pads: &[usize], out_hw: &[usize]) -> PyResult<(Window, Vec<usize>)> {
    if shape.len() != 4 {
        return Err(PyValueError::new_err(format!("pool: expected a 4-D NCHW input, got shape {shape:?}")));
    }
    let win = Window {
        planes: shape[0] * shape[1],
        h: shape[2],
        w: shape[3],
        kernel: pair(kernel, "kernel")?,
        strides: pair(strides, "strides")?,
        dilations: pair(dilations, "dilations")?,
        pads: four(pads, "pads")?,
        out_hw: pair(out_hw, "out_hw")?,
    };
    Ok((win, vec![shape[0], shape[1], out_hw[0], out_hw[1]]))
}

/// The kernel paths this CPU runs, slowest first (`Kernels(path)` takes any of them).
#[pyfunction]
fn available_paths() -> Vec<&'static str> {
    Path::available().into_iter().map(Path::name).collect()
}

#[pymodule]
fn edgetrain_kernels(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Kernels>()?;
    m.add_class::<Packed>()?;
    m.add_class::<ConvLayer>()?;
    m.add_class::<FcLayer>()?;
    m.add_function(wrap_pyfunction!(available_paths, m)?)?;
    Ok(())
}
