//! Python module `edgetrain_zk` (feature `python`).
//!
//! Bytes in and out use the versioned formats of [`crate::proof`]; digests are
//! 32-byte little-endian field elements. Malformed bytes raise
//! `ProofFormatError` (a `ValueError`); no Rust panic crosses into Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rand_core::OsRng;

use crate::circuit::{PublicInputs, Shape};
use crate::proof::{self, KeyParams};
use crate::{commit as cm, field, witness, Fp, ZkError};

create_exception!(
    edgetrain_zk,
    ProofFormatError,
    PyValueError,
    "Bytes that are not a valid proof, key or public-input encoding."
);

fn to_py(e: ZkError) -> PyErr {
    match e {
        ZkError::Format(m) => ProofFormatError::new_err(m),
        ZkError::Invalid(m) => PyValueError::new_err(m),
        ZkError::Backend(m) => PyRuntimeError::new_err(m),
    }
}

/// Runs `f`, turning a panic into a RuntimeError.
fn guarded<T>(f: impl FnOnce() -> Result<T, ZkError>) -> Result<T, ZkError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(ZkError::Backend(format!("internal panic: {msg}")))
    })
}

fn digest_arg(name: &str, b: &[u8]) -> PyResult<Fp> {
    let arr: [u8; 32] = b
        .try_into()
        .map_err(|_| ProofFormatError::new_err(format!("{name}: {} bytes, expected a 32-byte digest", b.len())))?;
    field::from_bytes(&arr).ok_or_else(|| ProofFormatError::new_err(format!("{name}: not a canonical field element")))
}

/// Poseidon digest of signed integers in [−2^23, 2^23) (see the crate README).
#[pyfunction]
fn commit<'py>(py: Python<'py>, values: Vec<i64>) -> PyResult<Bound<'py, PyBytes>> {
    let d = cm::commit(&values, cm::WEIGHTS).map_err(to_py)?;
    Ok(PyBytes::new(py, &field::to_bytes(&d)))
}

/// Continues a weight digest chain from `acc` (32 bytes) over `values`.
#[pyfunction]
fn commit_chain<'py>(py: Python<'py>, acc: &[u8], values: Vec<i64>) -> PyResult<Bound<'py, PyBytes>> {
    let d = cm::commit_chain(digest_arg("acc", acc)?, &values, cm::WEIGHTS).map_err(to_py)?;
    Ok(PyBytes::new(py, &field::to_bytes(&d)))
}

/// Continues a Fisher digest chain from `acc` over the lower triangles of the
/// symmetric B×B blocks `a` (row-major, concatenated); a whole vector of
/// n blocks starts from `initial_acc(n·B·(B+1)/2)`.
#[pyfunction]
fn commit_fisher_chain<'py>(py: Python<'py>, acc: &[u8], a: Vec<i64>, block: usize) -> PyResult<Bound<'py, PyBytes>> {
    let tri = cm::lower_triangle(&a, block).map_err(to_py)?;
    let d = cm::commit_chain(digest_arg("acc", acc)?, &tri, cm::FISHER).map_err(to_py)?;
    Ok(PyBytes::new(py, &field::to_bytes(&d)))
}

/// The chain start of a vector of `n` values.
#[pyfunction]
fn initial_acc<'py>(py: Python<'py>, n: usize) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &field::to_bytes(&cm::initial_acc(n)))
}

fn shape(block: usize, n_blocks: usize, scale_bits: usize, tol: u64, y_bits: usize) -> Shape {
    Shape {
        block,
        n_blocks,
        scale_bits,
        tol,
        y_bits,
    }
}

/// Verifying-key bytes (the circuit descriptor) for this shape. `k = None`
/// picks the smallest k that fits; a given k is checked to fit.
#[pyfunction]
#[pyo3(signature = (k, block, n_blocks=1, scale_bits=16, tol=1<<23, y_bits=32))]
#[allow(clippy::too_many_arguments)]
fn keygen<'py>(
    py: Python<'py>,
    k: Option<u32>,
    block: usize,
    n_blocks: usize,
    scale_bits: usize,
    tol: u64,
    y_bits: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let sh = shape(block, n_blocks, scale_bits, tol, y_bits);
    let kp = py
        .detach(|| {
            guarded(|| {
                let kp = KeyParams {
                    k: match k {
                        Some(k) => k,
                        None => proof::min_k(&sh)?,
                    },
                    shape: sh,
                };
                // min_k fits by construction; a given k is checked.
                k.map_or(Ok(()), |_| proof::check_fits(&kp)).map(|_| kp)
            })
        })
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &kp.to_bytes()))
}

/// Honest witness: dict of lists y, delta, remainder, residual, w_new.
#[pyfunction]
#[pyo3(signature = (w, a, keep, block, scale_bits=16, tol=1<<23, y_bits=32))]
#[allow(clippy::too_many_arguments)]
fn unlearn_witness<'py>(
    py: Python<'py>,
    w: Vec<i64>,
    a: Vec<i64>,
    keep: Vec<bool>,
    block: usize,
    scale_bits: usize,
    tol: u64,
    y_bits: usize,
) -> PyResult<Bound<'py, PyDict>> {
    if block == 0 || !w.len().is_multiple_of(block) {
        return Err(PyValueError::new_err(format!(
            "len(w) = {} is not a multiple of block = {block}",
            w.len()
        )));
    }
    let sh = shape(block, w.len() / block, scale_bits, tol, y_bits);
    let wit = witness::honest_witness(&sh, &w, &a, &keep).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("y", wit.y)?;
    d.set_item("delta", wit.delta)?;
    d.set_item("remainder", wit.remainder)?;
    d.set_item("residual", wit.residual)?;
    d.set_item("w_new", wit.w_new)?;
    Ok(d)
}

/// The arguments of a chain verification as the prover's API takes them.
type ChainArgs<'a> = ([Fp; 3], Vec<&'a [u8]>, Vec<&'a [u8]>);

fn chain_args<'a>(
    proofs: &'a [Vec<u8>],
    public_inputs: &'a [Vec<u8>],
    h_w: &[u8],
    h_w_new: &[u8],
    h_a: &[u8],
) -> PyResult<ChainArgs<'a>> {
    let digests = [
        digest_arg("h_w", h_w)?,
        digest_arg("h_w_new", h_w_new)?,
        digest_arg("h_a", h_a)?,
    ];
    Ok((
        digests,
        proofs.iter().map(|p| p.as_slice()).collect(),
        public_inputs.iter().map(|p| p.as_slice()).collect(),
    ))
}

fn chain_result(r: Result<bool, ZkError>) -> PyResult<bool> {
    match r {
        Ok(ok) => Ok(ok),
        Err(ZkError::Format(m)) => Err(ProofFormatError::new_err(m)),
        Err(ZkError::Invalid(m)) => Err(PyValueError::new_err(m)),
        Err(_) => Ok(false),
    }
}

/// The most blocks of `block` weights one proof of 2^k rows holds (0: none).
#[pyfunction]
#[pyo3(signature = (k, block, scale_bits=16, tol=1<<23, y_bits=32))]
fn max_blocks(py: Python<'_>, k: u32, block: usize, scale_bits: usize, tol: u64, y_bits: usize) -> PyResult<usize> {
    let sh = shape(block, 1, scale_bits, tol, y_bits);
    py.detach(|| guarded(|| proof::max_blocks(k, &sh))).map_err(to_py)
}

/// The verifier's structured reference string (KZG) for circuits of up to
/// 2^k_max rows: one setup per size, each secret from the OS and dropped.
/// Provers get these bytes from the verifier; a verifier verifies only under
/// its own.
#[pyfunction]
fn setup<'py>(py: Python<'py>, k_max: u32) -> PyResult<Bound<'py, PyBytes>> {
    let srs = py.detach(|| guarded(|| proof::setup(k_max, OsRng))).map_err(to_py)?;
    Ok(PyBytes::new(py, &srs))
}

/// (k_min, k_max): the circuit sizes a reference string holds.
#[pyfunction]
fn srs_sizes(params: &[u8]) -> PyResult<(u32, u32)> {
    proof::srs_sizes(params).map_err(to_py)
}

fn params_arg(py: Python<'_>, k: u32, params: &[u8]) -> PyResult<proof::Params> {
    py.detach(|| guarded(|| proof::params_from_srs(params, k)))
        .map_err(to_py)
}

/// The verifying key of a descriptor as bytes (kind `K`) a verifier stores and
/// later passes to Verifier instead of the descriptor: loading them needs no
/// key generation. Costs one key generation now.
#[pyfunction]
fn verifying_key<'py>(py: Python<'py>, vk: &[u8], params: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let kp = KeyParams::from_bytes(vk).map_err(to_py)?;
    let p = params_arg(py, kp.k, params)?;
    let key = py
        .detach(|| guarded(|| proof::verifying_key_with(&p, &kp)))
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &proof::vk_to_bytes(&kp, &key, &p)))
}

/// Keeps the proving key of one shape for repeated proofs (chunks).
#[pyclass(name = "Prover")]
struct PyProver {
    keys: proof::Keys,
}

#[pymethods]
impl PyProver {
    #[new]
    fn new(py: Python<'_>, vk: &[u8], params: &[u8]) -> PyResult<Self> {
        let kp = KeyParams::from_bytes(vk).map_err(to_py)?;
        let p = params_arg(py, kp.k, params)?;
        let keys = py.detach(|| guarded(|| proof::keygen_with(p, &kp))).map_err(to_py)?;
        Ok(PyProver { keys })
    }

    /// The verifying key of this shape as stored-key bytes (see `verifying_key`).
    fn verifying_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(
            py,
            &proof::vk_to_bytes(&self.keys.key_params, self.keys.vk(), &self.keys.params),
        )
    }

    /// Proves the unlearning step; returns (proof, public_inputs, w_new).
    /// `acc_in` = (W, W', A) chain accumulators of a previous chunk, or None.
    /// The GIL is released while proving.
    #[pyo3(signature = (w, a, keep, acc_in=None))]
    fn prove<'py>(
        &self,
        py: Python<'py>,
        w: Vec<i64>,
        a: Vec<i64>,
        keep: Vec<bool>,
        acc_in: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Vec<i64>)> {
        let acc = acc_arg(acc_in)?;
        let keys = &self.keys;
        let (proof_bytes, public, wit) = py
            .detach(|| guarded(|| proof::prove(keys, &w, &a, &keep, acc, OsRng)))
            .map_err(to_py)?;
        Ok((
            PyBytes::new(py, &proof_bytes),
            PyBytes::new(py, &public.to_bytes()),
            wit.w_new,
        ))
    }
}

/// Keeps the verifying key of one shape for repeated verification: `vk` is
/// stored-key bytes (`K`, read without key generation) or a descriptor (`V`,
/// the key is generated from it).
#[pyclass(name = "Verifier")]
struct PyVerifier {
    kp: KeyParams,
    params: proof::Params,
    vk: halo2_axiom::plonk::VerifyingKey<crate::Curve>,
}

#[pymethods]
impl PyVerifier {
    #[new]
    fn new(py: Python<'_>, vk: &[u8], params: &[u8]) -> PyResult<Self> {
        let k = proof::key_k(vk).map_err(to_py)?;
        let params = params_arg(py, k, params)?;
        let key = py
            .detach(|| guarded(|| proof::stored_key(&params, vk)))
            .map_err(to_py)?;
        Ok(PyVerifier {
            kp: key.key_params,
            params,
            vk: key.vk,
        })
    }

    /// Verifies chunk proofs of one layer: each proof under this key, the
    /// chunks' digests linking from the layer lengths to `(h_w, h_w_new, h_a)`,
    /// and the concatenated mask equal to `keep`.
    #[allow(clippy::too_many_arguments)]
    fn verify_chain(
        &self,
        py: Python<'_>,
        proofs: Vec<Vec<u8>>,
        public_inputs: Vec<Vec<u8>>,
        h_w: &[u8],
        h_w_new: &[u8],
        h_a: &[u8],
        keep: Vec<bool>,
    ) -> PyResult<bool> {
        let (digests, proofs, publics) = chain_args(&proofs, &public_inputs, h_w, h_w_new, h_a)?;
        let (params, vk, kp) = (&self.params, &self.vk, &self.kp);
        chain_result(
            py.detach(|| guarded(|| proof::verify_chain_with(params, vk, kp, &proofs, &publics, digests, &keep))),
        )
    }

    /// True iff the proof verifies for these public inputs under this key.
    /// Raises ProofFormatError for bytes that are not of this format.
    fn verify(&self, py: Python<'_>, proof: &[u8], public_inputs: &[u8]) -> PyResult<bool> {
        let public = PublicInputs::from_bytes(public_inputs).map_err(to_py)?;
        let (params, vk, kp) = (&self.params, &self.vk, &self.kp);
        match py.detach(|| guarded(|| proof::verify_with(params, vk, kp, proof, &public))) {
            Ok(ok) => Ok(ok),
            Err(ZkError::Format(m)) => Err(ProofFormatError::new_err(m)),
            Err(_) => Ok(false),
        }
    }
}

fn acc_arg(acc_in: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> PyResult<Option<[Fp; 3]>> {
    Ok(match acc_in {
        Some((x, y, z)) => Some([
            digest_arg("acc_in[0]", &x)?,
            digest_arg("acc_in[1]", &y)?,
            digest_arg("acc_in[2]", &z)?,
        ]),
        None => None,
    })
}

/// Decodes public-input bytes into a dict (digests as 32-byte bytes).
#[pyfunction]
fn public_inputs_info<'py>(py: Python<'py>, public_inputs: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let p = PublicInputs::from_bytes(public_inputs).map_err(to_py)?;
    let d = PyDict::new(py);
    for (name, x) in PublicInputs::DIGEST_NAMES.into_iter().zip(p.digests()) {
        d.set_item(name, PyBytes::new(py, &field::to_bytes(&x)))?;
    }
    d.set_item("scale_bits", p.scale_bits)?;
    d.set_item("tol", p.tol)?;
    d.set_item("keep", p.keep)?;
    Ok(d)
}

#[pymodule]
fn edgetrain_zk(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // On x86-64 the field arithmetic is halo2curves' assembly (Cargo.toml), which
    // uses BMI2's `mulx` and ADX's `adcx`/`adox`: refuse to load rather than die
    // of an illegal instruction on a CPU without them.
    #[cfg(target_arch = "x86_64")]
    if !(std::arch::is_x86_feature_detected!("bmi2") && std::arch::is_x86_feature_detected!("adx")) {
        return Err(pyo3::exceptions::PyImportError::new_err(
            "edgetrain_zk: this x86-64 build needs a CPU with BMI2 and ADX (Intel Broadwell, AMD Zen or newer)",
        ));
    }
    m.add("ProofFormatError", m.py().get_type::<ProofFormatError>())?;
    m.add("WEIGHT_VALUES_PER_STEP", cm::WEIGHTS.values_per_step())?;
    m.add("FISHER_VALUES_PER_STEP", cm::FISHER.values_per_step())?;
    m.add_function(wrap_pyfunction!(commit, m)?)?;
    m.add_function(wrap_pyfunction!(commit_chain, m)?)?;
    m.add_function(wrap_pyfunction!(commit_fisher_chain, m)?)?;
    m.add_function(wrap_pyfunction!(initial_acc, m)?)?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(max_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(unlearn_witness, m)?)?;
    m.add_function(wrap_pyfunction!(public_inputs_info, m)?)?;
    m.add_function(wrap_pyfunction!(setup, m)?)?;
    m.add_function(wrap_pyfunction!(srs_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(verifying_key, m)?)?;
    m.add_class::<PyProver>()?;
    m.add_class::<PyVerifier>()?;
    Ok(())
}
