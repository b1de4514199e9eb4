//! Key generation, proving, verification and the versioned byte formats.
//!
//! Every encoding starts with `b"ETZK"`, a kind byte and a version byte
//! ([`version`]; v1 proofs, inputs and parameters were over Pasta):
//! * proof `P`, v2: the raw Blake2b/Challenge255 transcript follows;
//! * public inputs `I`, v2: six 32-byte canonical field elements
//!   (h_W in/out, h_W' in/out, h_A in/out), `scale_bits` u32 LE, `tol` u64 LE,
//!   mask length u32 LE, then one byte per weight (1 = kept, 0 = masked);
//! * circuit descriptor `V`, v1: circuit version u8, k u8, block u32, n_blocks
//!   u32, scale_bits u8, tol u64, y_bits u8 (all LE). `keygen_vk` is
//!   deterministic in the circuit, k and the reference string, so these bytes
//!   and the verifier's string determine the key for this exact crate version;
//! * verifying key `K`, v2: the key itself ([`vk_to_bytes`]), read without
//!   key generation ([`vk_from_bytes`]); v1 had no selector assignments (keys
//!   were made without selector compression);
//! * structured reference string `G`, v3 ([`setup`]): KZG parameters for every
//!   circuit size from 2^[`SRS_MIN_K`] to 2^k_max rows. The verifier (the
//!   provider) makes them, each k from a secret it drops, and sends them to the
//!   provers; whoever knows a secret could forge proofs under it, so a verifier
//!   only ever verifies under its own (v1 and v2 were IPA parameters, which
//!   needed no setup).
//!
//! Readers return `Err(ZkError::Format)` on any malformed input and never panic.

use halo2_axiom::halo2curves::group::GroupEncoding;
use halo2_axiom::{
    circuit::Value,
    halo2curves::bn256::{Bn256, G1Affine, G2Affine},
    halo2curves::{serde::SerdeObject, CurveAffine},
    plonk::{
        create_proof, keygen_pk, keygen_vk_custom, permutation, verify_proof, Advice, Any, Assigned, Assignment,
        Challenge, Circuit, Column, ConstraintSystem, Error, Fixed, FloorPlanner, Instance, ProvingKey, Selector,
        VerifyingKey,
    },
    poly::{
        commitment::{Params as _, ParamsProver},
        kzg::{
            commitment::{KZGCommitmentScheme, ParamsKZG},
            multiopen::{ProverSHPLONK, VerifierSHPLONK},
            strategy::SingleStrategy,
        },
        EvaluationDomain,
    },
    transcript::{Blake2bRead, Blake2bWrite, Challenge255, TranscriptReadBuffer, TranscriptWriterBuffer},
    SerdeFormat,
};
use rand_core::RngCore;

use crate::circuit::{PublicInputs, Shape, UnlearnCircuit};
use crate::field;
use crate::witness::Witness;
use crate::{Curve, Fp, ZkError};

pub const MAGIC: &[u8; 4] = b"ETZK";
/// Bumped whenever the circuit layout or the proof system changes (keys and
/// proofs are then incompatible): 4 = the move to halo2-axiom, 5 = KZG
/// commitments (SHPLONK openings) and keys with selector compression.
pub const CIRCUIT_VERSION: u8 = 5;
const KIND_PROOF: u8 = b'P';
const KIND_PUBLIC: u8 = b'I';
const KIND_KEY: u8 = b'V';
const KIND_PARAMS: u8 = b'G';
const KIND_VK: u8 = b'K';

/// The format version of each kind of bytes. v1 proofs, public inputs and
/// parameters were IPA over Pasta (zcash `halo2_proofs`), v2 IPA over BN254
/// (halo2-axiom); proofs v3 and parameters v3 are KZG over BN254. The
/// descriptor `V` kept its layout (its circuit version says the rest); the
/// stored verifying key `K` v2 carries the selector assignments and names its
/// reference string.
pub fn version(kind: u8) -> u8 {
    match kind {
        KIND_PROOF | KIND_PARAMS => 3,
        KIND_PUBLIC | KIND_VK => 2,
        _ => 1,
    }
}

/// KZG parameters of one circuit size.
pub type Params = ParamsKZG<Bn256>;
/// The smallest circuit size a reference string holds: one block of 4 weights
/// takes 616 rows (2^10).
pub const SRS_MIN_K: u32 = 10;
/// Largest k accepted from bytes (2^22 rows: far beyond what fits in memory here).
pub const MAX_K: u32 = 22;

/// Circuit descriptor: k plus the shape. Its bytes are the "verifying key".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyParams {
    pub k: u32,
    pub shape: Shape,
}

/// KZG parameters with the proving and verifying keys of one circuit shape.
pub struct Keys {
    pub key_params: KeyParams,
    pub params: Params,
    pub pk: ProvingKey<Curve>,
}

impl Keys {
    pub fn vk(&self) -> &VerifyingKey<Curve> {
        self.pk.get_vk()
    }
}

fn header(kind: u8) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(kind);
    v.push(version(kind));
    v
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], kind: u8, what: &'static str) -> Result<Self, ZkError> {
        let mut r = Reader { buf, what };
        let magic = r.take(4)?;
        if magic != MAGIC {
            return Err(ZkError::Format(format!(
                "{what}: bad magic {magic:02x?}, expected {MAGIC:02x?}"
            )));
        }
        let k = r.take(1)?[0];
        if k != kind {
            return Err(ZkError::Format(format!(
                "{what}: kind byte {k:#04x}, expected {kind:#04x}"
            )));
        }
        let v = r.take(1)?[0];
        if v != version(kind) {
            return Err(ZkError::Format(format!(
                "{what}: version {v}, this build reads version {}",
                version(kind)
            )));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ZkError> {
        if self.buf.len() < n {
            return Err(ZkError::Format(format!(
                "{}: truncated ({} bytes left, {n} needed)",
                self.what,
                self.buf.len()
            )));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }

    fn u8(&mut self) -> Result<u8, ZkError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ZkError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ZkError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn fp(&mut self) -> Result<Fp, ZkError> {
        let b: [u8; 32] = self.take(32)?.try_into().unwrap();
        field::from_bytes(&b).ok_or_else(|| ZkError::Format(format!("{}: non-canonical field element", self.what)))
    }
    fn finish(self) -> Result<(), ZkError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ZkError::Format(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

impl KeyParams {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(KIND_KEY);
        self.write_body(&mut v);
        v
    }

    fn write_body(&self, v: &mut Vec<u8>) {
        let s = &self.shape;
        v.push(CIRCUIT_VERSION);
        v.push(self.k as u8);
        v.extend((s.block as u32).to_le_bytes());
        v.extend((s.n_blocks as u32).to_le_bytes());
        v.push(s.scale_bits as u8);
        v.extend(s.tol.to_le_bytes());
        v.push(s.y_bits as u8);
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        let mut r = Reader::new(bytes, KIND_KEY, "verifying key")?;
        let kp = Self::read_body(&mut r)?;
        r.finish()?;
        Ok(kp)
    }

    fn read_body(r: &mut Reader<'_>) -> Result<Self, ZkError> {
        let cv = r.u8()?;
        if cv != CIRCUIT_VERSION {
            return Err(ZkError::Format(format!(
                "verifying key: circuit version {cv}, this build has circuit version {CIRCUIT_VERSION}"
            )));
        }
        let k = r.u8()? as u32;
        let shape = Shape {
            block: r.u32()? as usize,
            n_blocks: r.u32()? as usize,
            scale_bits: r.u8()? as usize,
            tol: r.u64()?,
            y_bits: r.u8()? as usize,
        };
        let kp = KeyParams { k, shape };
        kp.validate()
            .map_err(|e| ZkError::Format(format!("verifying key: {e}")))?;
        Ok(kp)
    }

    pub fn validate(&self) -> Result<(), ZkError> {
        if !(4..=MAX_K).contains(&self.k) {
            return Err(ZkError::Invalid(format!("k = {} must be in 4..={MAX_K}", self.k)));
        }
        self.shape.validate()
    }
}

impl PublicInputs {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(KIND_PUBLIC);
        for x in self.digests() {
            v.extend(field::to_bytes(&x));
        }
        v.extend(self.scale_bits.to_le_bytes());
        v.extend(self.tol.to_le_bytes());
        v.extend((self.keep.len() as u32).to_le_bytes());
        v.extend(self.keep.iter().map(|k| *k as u8));
        v
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        let mut r = Reader::new(bytes, KIND_PUBLIC, "public inputs")?;
        let d = [r.fp()?, r.fp()?, r.fp()?, r.fp()?, r.fp()?, r.fp()?];
        let scale_bits = r.u32()?;
        let tol = r.u64()?;
        let n = r.u32()? as usize;
        let keep = r
            .take(n)?
            .iter()
            .map(|b| match b {
                0 => Ok(false),
                1 => Ok(true),
                x => Err(ZkError::Format(format!(
                    "public inputs: mask byte {x}, expected 0 or 1"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(PublicInputs {
            w_in: d[0],
            w_out: d[1],
            w_new_in: d[2],
            w_new_out: d[3],
            a_in: d[4],
            a_out: d[5],
            scale_bits,
            tol,
            keep,
        })
    }
}

fn backend(e: impl std::fmt::Debug) -> ZkError {
    ZkError::Backend(format!("{e:?}"))
}

/// Fresh KZG parameters for 2^k rows, their secret drawn from `rng` and
/// dropped. Proofs verify only under the parameters they were made with.
pub fn params_with(k: u32, rng: impl RngCore) -> Result<Params, ZkError> {
    if !(4..=MAX_K).contains(&k) {
        return Err(ZkError::Invalid(format!("k = {k} must be in 4..={MAX_K}")));
    }
    Ok(ParamsKZG::setup(k, rng))
}

/// [`params_with`] from the operating system's generator: for tests and for a
/// process that is prover and verifier at once.
pub fn params(k: u32) -> Result<Params, ZkError> {
    params_with(k, rand_core::OsRng)
}

/// Bytes of one size's parameters inside a reference string: halo2-axiom's
/// uncompressed encoding (k, then 2·2^k G1 points of 64 bytes, then two G2
/// points of 128), read back without square roots.
fn params_entry_len(k: u32) -> usize {
    4 + 2 * (1usize << k) * 64 + 2 * 128
}

/// The structured reference string for circuits of 2^[`SRS_MIN_K`] to 2^k_max
/// rows (kind `G`, v3): k_min and k_max (u8 each), then one
/// [`params_with`] per k, each with its own secret from `rng`.
pub fn setup(k_max: u32, mut rng: impl RngCore) -> Result<Vec<u8>, ZkError> {
    if !(SRS_MIN_K..=MAX_K).contains(&k_max) {
        return Err(ZkError::Invalid(format!(
            "k = {k_max} must be in {SRS_MIN_K}..={MAX_K}"
        )));
    }
    let mut v = header(KIND_PARAMS);
    v.extend([SRS_MIN_K as u8, k_max as u8]);
    for k in SRS_MIN_K..=k_max {
        params_with(k, &mut rng)?
            .write_custom(&mut v, SerdeFormat::RawBytes)
            .expect("writing to a Vec cannot fail");
    }
    Ok(v)
}

/// A reference string's sizes (k_min, k_max) and its entries, one per size,
/// after the lengths are checked against the sizes.
fn srs_entries(srs: &[u8]) -> Result<(u32, u32, &[u8]), ZkError> {
    let mut r = Reader::new(srs, KIND_PARAMS, "params")?;
    let (k_min, k_max) = (r.take(1)?[0] as u32, r.take(1)?[0] as u32);
    if k_min > k_max || k_max > MAX_K {
        return Err(ZkError::Format(format!("params: sizes 2^{k_min}..2^{k_max} rows")));
    }
    let expected: usize = (k_min..=k_max).map(params_entry_len).sum();
    if r.buf.len() != expected {
        return Err(ZkError::Format(format!(
            "params: {} bytes for 2^{k_min}..2^{k_max} rows, expected {expected}",
            r.buf.len()
        )));
    }
    Ok((k_min, k_max, r.buf))
}

/// One size of a reference string: the parameters for 2^k rows. Lengths are
/// checked before anything is allocated and every point is checked to be on
/// its curve.
pub fn params_from_srs(srs: &[u8], k: u32) -> Result<Params, ZkError> {
    let (k_min, k_max, entries) = srs_entries(srs)?;
    if !(k_min..=k_max).contains(&k) {
        return Err(ZkError::Invalid(format!(
            "the reference string holds circuits of 2^{k_min} to 2^{k_max} rows, this one has 2^{k}: \
             the verifier makes one that reaches it (`edgetrain setup -k {k}`)"
        )));
    }
    let at: usize = (k_min..k).map(params_entry_len).sum();
    let mut entry = &entries[at..at + params_entry_len(k)];
    if u32::from_le_bytes(entry[..4].try_into().expect("4 bytes")) != k {
        return Err(ZkError::Format(format!(
            "params: the entry for 2^{k} rows says otherwise"
        )));
    }
    if !points_on_curve(&entry[4..], k) {
        return Err(ZkError::Format(format!(
            "params: a point of the entry for 2^{k} rows is not on its curve"
        )));
    }
    ParamsKZG::read_custom(&mut entry, SerdeFormat::RawBytes).map_err(|e| ZkError::Format(format!("params: {e}")))
}

/// Whether an entry's points (2·2^k in G1, then two in G2, uncompressed) lie on
/// their curves. halo2curves' raw reader checks only that each coordinate is
/// below the modulus, and an off-curve point panics later, inside keygen.
/// (G1 has cofactor 1; the G2 points are only ever the verifier's own.)
fn points_on_curve(points: &[u8], k: u32) -> bool {
    let (g1, g2) = points.split_at(2 * (1usize << k) * 64);
    g1.chunks_exact(64)
        .all(|b| G1Affine::read_raw(&mut &b[..]).is_ok_and(|p| bool::from(p.is_on_curve())))
        && g2
            .chunks_exact(128)
            .all(|b| G2Affine::read_raw(&mut &b[..]).is_ok_and(|p| bool::from(p.is_on_curve())))
}

/// The sizes a reference string holds, (k_min, k_max), from its header (its
/// length checked against them; the points are read by [`params_from_srs`]).
pub fn srs_sizes(srs: &[u8]) -> Result<(u32, u32), ZkError> {
    srs_entries(srs).map(|(k_min, k_max, _)| (k_min, k_max))
}

/// The verifying key for `kp` with given parameters (of the same k).
pub fn verifying_key_with(params: &Params, kp: &KeyParams) -> Result<VerifyingKey<Curve>, ZkError> {
    kp.validate()?;
    if params.k() != kp.k {
        return Err(ZkError::Invalid(format!(
            "params are for k = {}, the key for k = {}",
            params.k(),
            kp.k
        )));
    }
    let blank = UnlearnCircuit {
        shape: kp.shape,
        witness: None,
    };
    // Selector compression: selectors that are never on in the same row share
    // a fixed column where the gates' degree allows (fewer fixed columns to
    // commit, extend and open: 58 → 50, 256 bytes less per proof).
    keygen_vk_custom(params, &blank, true).map_err(backend)
}

/// A verifying key with the descriptor it was made for: what a verifier
/// keeps, and what [`vk_to_bytes`] / [`vk_from_bytes`] store.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub key_params: KeyParams,
    pub vk: VerifyingKey<Curve>,
    /// The reference string the key was made with: its `[s]G2` (compressed).
    pub srs_id: Vec<u8>,
}

/// What names a reference string's parameters of one size: `[s]G2`, compressed
/// (64 bytes). Different secrets give different points.
pub fn srs_id(params: &Params) -> Vec<u8> {
    params.s_g2().to_bytes().as_ref().to_vec()
}

/// Bytes of a verifying key (kind `K`, v2): the descriptor's fields as in
/// [`KeyParams::to_bytes`], then u32 count + compressed points (32 bytes each)
/// of the fixed-column commitments (the compressed selectors among them), the
/// same for the permutation's column commitments, then u32 count + the
/// assignment of every selector (2^k bits each, packed 8 to a byte, lowest bit
/// first: the compression of the constraint system depends on which selectors
/// share rows), the [`srs_id`] of the parameters it was made with (64 bytes)
/// and the key's 32-byte transcript digest. The constraint system
/// is not stored: the reader rebuilds it from the circuit (this build's
/// `configure`), so it must be the same crate version, which the digest checks.
pub fn vk_to_bytes(kp: &KeyParams, vk: &VerifyingKey<Curve>, params: &Params) -> Vec<u8> {
    let mut v = header(KIND_VK);
    kp.write_body(&mut v);
    for points in [
        vk.fixed_commitments().as_slice(),
        vk.permutation().commitments().as_slice(),
    ] {
        v.extend((points.len() as u32).to_le_bytes());
        for p in points {
            v.extend(p.to_bytes().as_ref());
        }
    }
    // halo2-axiom keeps the assignments private; its own encoding of the key ends
    // with them, one packed bitmap per selector, so they are that encoding's tail.
    let n_selectors = vk.cs().num_selectors();
    let mut fork = Vec::new();
    vk.write(&mut fork, halo2_axiom::SerdeFormat::Processed)
        .expect("writing to a Vec cannot fail");
    let bitmaps = n_selectors * selector_bytes(kp.k);
    v.extend((n_selectors as u32).to_le_bytes());
    v.extend(&fork[fork.len() - bitmaps..]);
    v.extend(srs_id(params));
    v.extend(field::to_bytes(&vk.transcript_repr()));
    v
}

/// Bytes of one selector's packed assignment at 2^k rows.
fn selector_bytes(k: u32) -> usize {
    (1usize << k).div_ceil(8)
}

/// Reads [`vk_to_bytes`] without any key generation: the constraint system
/// from `configure`, the commitments from the bytes (each checked to be a
/// point), and the transcript digest recomputed and compared.
pub fn vk_from_bytes(bytes: &[u8]) -> Result<StoredKey, ZkError> {
    let what = "verifying key";
    let mut r = Reader::new(bytes, KIND_VK, what)?;
    let kp = KeyParams::read_body(&mut r)?;
    let mut cs = ConstraintSystem::<Fp>::default();
    UnlearnCircuit::configure(&mut cs);
    let domain = EvaluationDomain::new(cs.degree() as u32, kp.k);
    // The fixed columns' count depends on the selector compression, read after
    // them: bounded here by the uncompressed count, checked exactly below.
    let most_fixed = cs.num_fixed_columns() + cs.num_selectors();
    let mut points = |expected: Option<usize>, name: &str| -> Result<Vec<Curve>, ZkError> {
        let n = r.u32()? as usize;
        if expected.is_some_and(|e| n != e) || n > most_fixed {
            return Err(ZkError::Format(format!(
                "{what}: {n} {name} commitments, this circuit has {}",
                expected.unwrap_or(most_fixed)
            )));
        }
        (0..n)
            .map(|i| {
                let mut b = <Curve as GroupEncoding>::Repr::default();
                b.as_mut().copy_from_slice(r.take(32)?);
                Option::from(Curve::from_bytes(&b))
                    .ok_or_else(|| ZkError::Format(format!("{what}: {name} commitment {i} is not a curve point")))
            })
            .collect()
    };
    let fixed = points(None, "fixed-column")?;
    let sigma = points(Some(cs.permutation().get_columns().len()), "permutation")?;
    let n_selectors = r.u32()? as usize;
    if n_selectors != cs.num_selectors() {
        return Err(ZkError::Format(format!(
            "{what}: {n_selectors} selectors, this circuit has {}",
            cs.num_selectors()
        )));
    }
    let rows = 1usize << kp.k;
    let selectors: Vec<Vec<bool>> = (0..n_selectors)
        .map(|_| {
            let packed = r.take(selector_bytes(kp.k))?;
            Ok((0..rows).map(|row| packed[row / 8] >> (row % 8) & 1 == 1).collect())
        })
        .collect::<Result<_, ZkError>>()?;
    let (cs, _) = cs.compress_selectors(selectors.clone());
    if fixed.len() != cs.num_fixed_columns() {
        return Err(ZkError::Format(format!(
            "{what}: {} fixed-column commitments, this circuit with these selectors has {}",
            fixed.len(),
            cs.num_fixed_columns()
        )));
    }
    let srs = r.take(64)?.to_vec();
    let mut repr = <G2Affine as GroupEncoding>::Repr::default();
    repr.as_mut().copy_from_slice(&srs);
    if Option::<G2Affine>::from(G2Affine::from_bytes(&repr)).is_none() {
        return Err(ZkError::Format(format!(
            "{what}: its reference string's point is not a G2 point"
        )));
    }
    let repr = r.fp()?;
    r.finish()?;
    let vk = VerifyingKey::from_parts(
        domain,
        fixed,
        permutation::VerifyingKey::from_commitments(sigma),
        cs,
        selectors,
        true,
    );
    if vk.transcript_repr() != repr {
        return Err(ZkError::Format(format!(
            "{what}: its digest differs from the key these commitments make with this build's circuit \
             (made by another crate version?)"
        )));
    }
    Ok(StoredKey {
        key_params: kp,
        vk,
        srs_id: srs,
    })
}

/// The verifier's key from either kind of key bytes: a stored key (`K`) is
/// read, a descriptor (`V`) regenerated with `params` (one keygen).
pub fn stored_key(params: &Params, key_bytes: &[u8]) -> Result<StoredKey, ZkError> {
    if key_bytes.get(4) == Some(&KIND_VK) {
        let key = vk_from_bytes(key_bytes)?;
        if params.k() != key.key_params.k {
            return Err(ZkError::Invalid(format!(
                "params are for k = {}, the key for k = {}",
                params.k(),
                key.key_params.k
            )));
        }
        if key.srs_id != srs_id(params) {
            return Err(ZkError::Invalid(
                "the verifying key was made with another reference string than these parameters".into(),
            ));
        }
        Ok(key)
    } else {
        let kp = KeyParams::from_bytes(key_bytes)?;
        let vk = verifying_key_with(params, &kp)?;
        Ok(StoredKey {
            key_params: kp,
            vk,
            srs_id: srs_id(params),
        })
    }
}

/// k of either kind of key bytes (both start with the descriptor's fields).
pub fn key_k(key_bytes: &[u8]) -> Result<u32, ZkError> {
    Ok(key_descriptor(key_bytes)?.k)
}

/// The descriptor of either kind of key bytes (for `K`, without reading the points).
pub fn key_descriptor(key_bytes: &[u8]) -> Result<KeyParams, ZkError> {
    if key_bytes.get(4) == Some(&KIND_VK) {
        let mut r = Reader::new(key_bytes, KIND_VK, "verifying key")?;
        KeyParams::read_body(&mut r)
    } else {
        KeyParams::from_bytes(key_bytes)
    }
}

/// The constraint system's degree (largest of gates, lookups and the
/// permutation argument) and the extended domain's size as a multiple of 2^k:
/// the quotient has degree (degree − 1)·2^k, rounded up to a power of two.
pub fn constraint_degree() -> (usize, usize) {
    let mut cs = ConstraintSystem::<Fp>::default();
    UnlearnCircuit::configure(&mut cs);
    let d = cs.degree();
    (d, (d - 1).next_power_of_two())
}

/// Rows the circuit of `shape` needs, unusable (blinding) rows included: one
/// layout pass without values, so it costs a fraction of a proof.
pub fn rows_needed(shape: &Shape) -> Result<usize, ZkError> {
    let (layout, cs) = layout_pass(shape)?;
    let instance_rows = crate::circuit::ROW_MASK + shape.n_weights();
    // halo2 reserves blinding_factors + 1 rows at the end of every column.
    Ok(layout.rows.max(instance_rows) + cs.blinding_factors() + 1)
}

/// Rows each advice column of the circuit of `shape` fills, in column order
/// (commitment chips, range lanes, arithmetic; see `circuit.rs`): where the
/// height comes from.
pub fn advice_heights(shape: &Shape) -> Result<Vec<usize>, ZkError> {
    Ok(layout_pass(shape)?.0.advice_rows.into_values().collect())
}

/// The circuit of `shape` laid out without values, and its constraint system.
fn layout_pass(shape: &Shape) -> Result<(LayoutPass, ConstraintSystem<Fp>), ZkError> {
    shape.validate()?;
    let mut cs = ConstraintSystem::default();
    let config = UnlearnCircuit::configure(&mut cs);
    let constants = vec![config.constants];
    let blank = UnlearnCircuit {
        shape: *shape,
        witness: None,
    };
    let mut layout = LayoutPass::default();
    <UnlearnCircuit as Circuit<Fp>>::FloorPlanner::synthesize(&mut layout, &blank, config, constants)
        .map_err(backend)?;
    Ok((layout, cs))
}

/// Checks, without any key generation, that the circuit of `kp` fits 2^k rows.
pub fn check_fits(kp: &KeyParams) -> Result<(), ZkError> {
    kp.validate()?;
    let rows = rows_needed(&kp.shape)?;
    if rows > 1 << kp.k {
        return Err(ZkError::Invalid(format!(
            "the circuit needs {rows} rows, more than 2^{} = {}",
            kp.k,
            1usize << kp.k
        )));
    }
    Ok(())
}

/// The smallest k whose 2^k rows hold the circuit of `shape`.
pub fn min_k(shape: &Shape) -> Result<u32, ZkError> {
    let rows = rows_needed(shape)?;
    let k = rows.next_power_of_two().trailing_zeros().max(4);
    if k > MAX_K {
        return Err(ZkError::Invalid(format!(
            "the circuit of {shape:?} needs {rows} rows, more than 2^{MAX_K}; split it into chunks"
        )));
    }
    Ok(k)
}

/// The most blocks (of `shape.block` weights, other fields as in `shape`) that
/// one proof of 2^k rows holds; 0 if not even one does. Past the lookup
/// table's fixed 256 rows, rows grow about linearly in the block count (hashing
/// comes in steps of 15 elements), so a few secant steps get within a block or
/// two and single steps settle it; each step is one layout pass.
pub fn max_blocks(k: u32, shape: &Shape) -> Result<usize, ZkError> {
    if !(4..=MAX_K).contains(&k) {
        return Err(ZkError::Invalid(format!("k = {k} must be in 4..={MAX_K}")));
    }
    let rows = |n_blocks: usize| rows_needed(&Shape { n_blocks, ..*shape }).map(|r| r as i64);
    let cap = 1i64 << k;
    const BASE: usize = 16;
    let r_base = rows(BASE)?;
    let (mut n, mut r) = (2 * BASE, rows(2 * BASE)?);
    for _ in 0..4 {
        if n == BASE {
            break;
        }
        let slope = (r - r_base) as f64 / (n as f64 - BASE as f64);
        let next = (BASE as f64 + (cap - r_base) as f64 / slope).floor().max(1.0) as usize;
        if next == n {
            break;
        }
        (n, r) = (next, rows(next)?);
    }
    while r > cap {
        if n == 1 {
            return Ok(0);
        }
        n -= 1;
        r = rows(n)?;
    }
    while rows(n + 1)? <= cap {
        n += 1;
    }
    Ok(n)
}

/// An [`Assignment`] that records only the floor planner's layout, without a
/// witness: the rows any cell, selector or copy touches and, if asked (tests),
/// the regions' names in the order the planner enters them (MockProver's
/// region indices).
#[derive(Default)]
pub(crate) struct LayoutPass {
    /// One past the highest row touched.
    pub rows: usize,
    pub regions: Option<Vec<String>>,
    /// One past the highest row assigned, per advice column.
    pub advice_rows: std::collections::BTreeMap<Column<Advice>, usize>,
    /// Per region (and table), in the order entered: the first row any cell or
    /// selector of it takes, and the first row a fixed cell of it takes.
    pub region_starts: Vec<(Option<usize>, Option<usize>)>,
    pub(crate) in_region: bool,
}

impl LayoutPass {
    fn mark(&mut self, row: usize, fixed: bool) {
        if self.in_region {
            if let Some((any, fx)) = self.region_starts.last_mut() {
                *any = Some(any.map_or(row, |r| r.min(row)));
                if fixed {
                    *fx = Some(fx.map_or(row, |r| r.min(row)));
                }
            }
        }
    }

    fn touch(&mut self, row: usize) -> Result<(), Error> {
        self.rows = self.rows.max(row + 1);
        Ok(())
    }
}

impl Assignment<Fp> for LayoutPass {
    fn enter_region<NR: Into<String>, N: FnOnce() -> NR>(&mut self, name: N) {
        if let Some(regions) = &mut self.regions {
            regions.push(name().into());
        }
        self.region_starts.push((None, None));
        self.in_region = true;
    }
    fn annotate_column<A: FnOnce() -> AR, AR: Into<String>>(&mut self, _: A, _: Column<Any>) {}
    fn exit_region(&mut self) {
        self.in_region = false;
    }
    fn enable_selector<A: FnOnce() -> AR, AR: Into<String>>(
        &mut self,
        _: A,
        _: &Selector,
        row: usize,
    ) -> Result<(), Error> {
        self.mark(row, false);
        self.touch(row)
    }
    fn query_instance(&self, _: Column<Instance>, _: usize) -> Result<Value<Fp>, Error> {
        Ok(Value::unknown())
    }
    fn assign_advice<'v>(&mut self, c: Column<Advice>, row: usize, _: Value<Assigned<Fp>>) -> Value<&'v Assigned<Fp>> {
        let h = self.advice_rows.entry(c).or_default();
        *h = (*h).max(row + 1);
        self.rows = self.rows.max(row + 1);
        self.mark(row, false);
        Value::unknown()
    }
    fn assign_fixed(&mut self, _: Column<Fixed>, row: usize, _: Assigned<Fp>) {
        self.rows = self.rows.max(row + 1);
        self.mark(row, true);
    }
    fn copy(&mut self, _: Column<Any>, left: usize, _: Column<Any>, right: usize) {
        self.rows = self.rows.max(left.max(right) + 1);
    }
    // Pads a lookup table to the end of the column: no row of its own.
    fn fill_from_row(&mut self, _: Column<Fixed>, _: usize, _: Value<Assigned<Fp>>) -> Result<(), Error> {
        Ok(())
    }
    fn get_challenge(&self, _: Challenge) -> Value<Fp> {
        Value::unknown()
    }
    fn push_namespace<NR: Into<String>, N: FnOnce() -> NR>(&mut self, _: N) {}
    fn pop_namespace(&mut self, _: Option<String>) {}
}

/// Full keys for proving, reusing `params` (of the same k).
pub fn keygen_with(params: Params, kp: &KeyParams) -> Result<Keys, ZkError> {
    let vk = verifying_key_with(&params, kp)?;
    let blank = UnlearnCircuit {
        shape: kp.shape,
        witness: None,
    };
    let pk = keygen_pk(&params, vk, &blank).map_err(backend)?;
    Ok(Keys {
        key_params: *kp,
        params,
        pk,
    })
}

/// Full keys for proving.
pub fn keygen(kp: &KeyParams) -> Result<Keys, ZkError> {
    keygen_with(params(kp.k)?, kp)
}

/// Proves `witness` against `public` (which the caller normally derives with
/// [`PublicInputs::from_witness`]). A witness that does not satisfy the circuit
/// yields a proof that does not verify; it is not detected here.
pub fn prove_with(keys: &Keys, witness: Witness, public: &PublicInputs, rng: impl RngCore) -> Result<Vec<u8>, ZkError> {
    let shape = keys.key_params.shape;
    if witness.w.len() != shape.n_weights() || public.keep.len() != shape.n_weights() {
        return Err(ZkError::Invalid(format!(
            "witness has {} weights and public mask {} bits; the key is for {}",
            witness.w.len(),
            public.keep.len(),
            shape.n_weights()
        )));
    }
    let instance = public.to_instance();
    let circuit = UnlearnCircuit {
        shape,
        witness: Some(witness),
    };
    let mut transcript = Blake2bWrite::<_, Curve, Challenge255<_>>::init(header(KIND_PROOF));
    create_proof::<KZGCommitmentScheme<Bn256>, ProverSHPLONK<'_, Bn256>, _, _, _, _>(
        &keys.params,
        &keys.pk,
        &[circuit],
        &[&[&instance]],
        rng,
        &mut transcript,
    )
    .map_err(backend)?;
    Ok(transcript.finalize())
}

/// Honest witness from integers, its public inputs, and a proof.
pub fn prove(
    keys: &Keys,
    w: &[i64],
    a: &[i64],
    keep: &[bool],
    acc_in: Option<[Fp; 3]>,
    rng: impl RngCore,
) -> Result<(Vec<u8>, PublicInputs, Witness), ZkError> {
    let shape = keys.key_params.shape;
    let witness = crate::witness::honest_witness(&shape, w, a, keep)?;
    let public = PublicInputs::from_witness(&shape, &witness, acc_in)?;
    let proof = prove_with(keys, witness.clone(), &public, rng)?;
    Ok((proof, public, witness))
}

/// Verifies with a regenerated verifying key. `Ok(false)` for any proof that
/// does not verify (including public inputs of another shape); `Err` only for
/// bytes that are not a proof / inputs / key of this format.
pub fn verify_with(
    params: &Params,
    vk: &VerifyingKey<Curve>,
    kp: &KeyParams,
    proof: &[u8],
    public: &PublicInputs,
) -> Result<bool, ZkError> {
    let body = Reader::new(proof, KIND_PROOF, "proof")?.buf;
    if public.keep.len() != kp.shape.n_weights()
        || public.scale_bits as usize != kp.shape.scale_bits
        || public.tol != kp.shape.tol
    {
        return Ok(false);
    }
    let instance = public.to_instance();
    let mut transcript = Blake2bRead::<_, Curve, Challenge255<_>>::init(body);
    let params = params.verifier_params();
    let strategy = SingleStrategy::new(params);
    // The transcript reader works on the body; the header is only framing.
    let ok = verify_proof::<KZGCommitmentScheme<Bn256>, VerifierSHPLONK<'_, Bn256>, _, _, _>(
        params,
        vk,
        strategy,
        &[&[&instance]],
        &mut transcript,
    )
    .is_ok();
    Ok(ok)
}

/// Verifies byte encodings end to end under the verifier's `params`, catching
/// any panic inside halo2. `vk_bytes`: a stored key (`K`) or a descriptor (`V`,
/// the key is regenerated).
pub fn verify_bytes(params: &Params, proof: &[u8], public_inputs: &[u8], vk_bytes: &[u8]) -> Result<bool, ZkError> {
    key_descriptor(vk_bytes)?;
    let public = PublicInputs::from_bytes(public_inputs)?;
    Reader::new(proof, KIND_PROOF, "proof")?;
    let run = || -> Result<bool, ZkError> {
        let key = stored_key(params, vk_bytes)?;
        verify_with(params, &key.vk, &key.key_params, proof, &public)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(_) => Ok(false),
    }
}

/// Checks that chunk public inputs (in order) link into one layer whose
/// whole-vector digests are `[h_W, h_W', h_A]`: the first chunk starts from
/// the layer lengths, each chunk starts where the previous one ended, and the
/// last ends at the given digests. Returns the concatenated mask on success.
/// (Each chunk proof must still be verified on its own.)
pub fn chain_links(publics: &[PublicInputs], block: usize, digests: [Fp; 3]) -> Option<Vec<bool>> {
    let first = publics.first()?;
    let last = publics.last()?;
    let n: usize = publics.iter().map(|p| p.keep.len()).sum();
    let starts_ok = first.w_in == crate::commit::initial_acc(n)
        && first.w_new_in == crate::commit::initial_acc(n)
        && first.a_in == crate::commit::initial_acc(n / block * (block * (block + 1) / 2));
    let links_ok = publics
        .windows(2)
        .all(|p| p[0].w_out == p[1].w_in && p[0].w_new_out == p[1].w_new_in && p[0].a_out == p[1].a_in);
    let ends_ok = [last.w_out, last.w_new_out, last.a_out] == digests;
    (starts_ok && links_ok && ends_ok).then(|| publics.iter().flat_map(|p| p.keep.iter().copied()).collect())
}

/// Verifies every chunk proof under one key and checks [`chain_links`] and
/// that the concatenated mask equals `keep`.
pub fn verify_chain_with(
    params: &Params,
    vk: &VerifyingKey<Curve>,
    kp: &KeyParams,
    proofs: &[&[u8]],
    public_inputs: &[&[u8]],
    digests: [Fp; 3],
    keep: &[bool],
) -> Result<bool, ZkError> {
    if proofs.len() != public_inputs.len() {
        return Err(ZkError::Invalid(format!(
            "{} proofs but {} public-input blobs",
            proofs.len(),
            public_inputs.len()
        )));
    }
    let publics = public_inputs
        .iter()
        .map(|b| PublicInputs::from_bytes(b))
        .collect::<Result<Vec<_>, _>>()?;
    for p in proofs {
        Reader::new(p, KIND_PROOF, "proof")?;
    }
    match chain_links(&publics, kp.shape.block, digests) {
        Some(mask) if mask == keep => {}
        _ => return Ok(false),
    }
    let run = || -> Result<bool, ZkError> {
        for (p, public) in proofs.iter().zip(&publics) {
            if !verify_with(params, vk, kp, p, public)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or(Ok(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_set_the_degree_and_the_domain_is_four_times_k() {
        // Gates reach 4 (Poseidon's aux²·t with its selector), the range lookups
        // 2 + 2 + 1 = 5: a quotient of degree 4·2^k, so a 4× extended domain
        // (halo2_gadgets' Pow5 gates had degree 6: 8×).
        assert_eq!(constraint_degree(), (5, 4));
    }

    #[test]
    fn max_blocks_fill_but_do_not_overflow_k() {
        let shape = crate::circuit::tests::small_shape();
        for k in [11, 12] {
            let n = max_blocks(k, &shape).unwrap();
            assert!(n > 1);
            assert_eq!(min_k(&Shape { n_blocks: n, ..shape }), Ok(k));
            assert_eq!(
                min_k(&Shape {
                    n_blocks: n + 1,
                    ..shape
                }),
                Ok(k + 1)
            );
        }
        assert_eq!(max_blocks(8, &shape), Ok(0));
    }

    #[test]
    fn reference_strings_hold_every_size_and_reject_malformed_bytes() {
        use rand_chacha::ChaCha20Rng;
        use rand_core::SeedableRng;
        let b = setup(11, ChaCha20Rng::seed_from_u64(1)).unwrap();
        assert_eq!(srs_sizes(&b), Ok((SRS_MIN_K, 11)));
        let (p10, p11) = (params_from_srs(&b, 10).unwrap(), params_from_srs(&b, 11).unwrap());
        assert_eq!((p10.k(), p11.k()), (10, 11));
        assert_ne!(srs_id(&p10), srs_id(&p11)); // a secret of its own per size
        let mut again = Vec::new();
        p11.write_custom(&mut again, SerdeFormat::RawBytes).unwrap();
        assert_eq!(&b[b.len() - again.len()..], &again[..]);
        assert!(matches!(params_from_srs(&b, 12), Err(ZkError::Invalid(_))));
        assert!(matches!(params_from_srs(&b, 9), Err(ZkError::Invalid(_))));
        for bad in [&b[..b.len() - 1], &b[..10], &b[..3]] {
            assert!(matches!(params_from_srs(bad, 10), Err(ZkError::Format(_))));
            assert!(matches!(srs_sizes(bad), Err(ZkError::Format(_))));
        }
        let mut huge = b.clone();
        huge[7] = 31;
        assert!(matches!(params_from_srs(&huge, 10), Err(ZkError::Format(_))));
        let mut off_curve = b.clone();
        off_curve[12..76].fill(0x5a); // the first point of the 2^10 entry: coordinates above the modulus
        assert!(matches!(params_from_srs(&off_curve, 10), Err(ZkError::Format(_))));
        let last = b.len() - 2 * 128; // past the 2^11 entry's G1 points
        for at in [12, 12 + 64 * 1500, last - 64, last, last + 128] {
            let mut flipped = b.clone(); // coordinates in range, the point off its curve
            flipped[at] ^= 1;
            let k = if at < 12 + params_entry_len(10) { 10 } else { 11 };
            assert!(
                matches!(params_from_srs(&flipped, k), Err(ZkError::Format(_))),
                "byte {at}"
            );
        }
        assert!(setup(SRS_MIN_K - 1, ChaCha20Rng::seed_from_u64(1)).is_err());
    }

    /// halo2's MockProver (an honest witness at k, then at k − 1) is the reference.
    #[test]
    fn min_k_is_where_mock_prover_starts_to_fit() {
        for (seed, n_blocks) in [(0u64, 1usize), (1, 5)] {
            let (mut shape, ..) = example(seed);
            shape.n_blocks = n_blocks;
            let parts: Vec<_> = (0..n_blocks as u64).map(|i| example(seed * 10 + i)).collect();
            let w: Vec<i64> = parts.iter().flat_map(|p| p.1.clone()).collect();
            let a: Vec<i64> = parts.iter().flat_map(|p| p.2.clone()).collect();
            let keep: Vec<bool> = parts.iter().flat_map(|p| p.3.clone()).collect();
            let wit = honest_witness(&shape, &w, &a, &keep).unwrap();
            let public = PublicInputs::from_witness(&shape, &wit, None).unwrap();
            let circuit = UnlearnCircuit {
                shape,
                witness: Some(wit),
            };
            let k = min_k(&shape).unwrap();
            let mock = |k| MockProver::run(k, &circuit, vec![public.to_instance()]).map(|p| p.verify());
            assert_eq!(mock(k).unwrap(), Ok(()), "{n_blocks} blocks at k = {k}");
            // halo2-axiom's MockProver panics on a row past the usable ones.
            let smaller = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mock(k - 1)));
            assert!(
                !matches!(smaller, Ok(Ok(Ok(())))),
                "{n_blocks} blocks fit k − 1 = {}",
                k - 1
            );
            assert!(check_fits(&KeyParams { k, shape }).is_ok());
            assert!(matches!(
                check_fits(&KeyParams { k: k - 1, shape }),
                Err(ZkError::Invalid(_))
            ));
        }
    }
    use crate::circuit::tests::example;
    use crate::circuit::UnlearnCircuit;
    use crate::witness::honest_witness;
    use halo2_axiom::dev::MockProver;

    /// Two chunks of 8 blocks × 8 weights chain to the layer's digests.
    #[test]
    fn chunk_proofs_chain_through_digests() {
        let mut parts = Vec::new();
        for seed in 0..16 {
            parts.push(example(seed));
        }
        let mut shape = parts[0].0;
        shape.n_blocks = 8;
        type Part = (Shape, Vec<i64>, Vec<i64>, Vec<bool>);
        let cat = |r: std::ops::Range<usize>, f: &dyn Fn(&Part) -> Vec<i64>| {
            parts[r].iter().flat_map(f).collect::<Vec<i64>>()
        };
        let mut publics = Vec::new();
        let mut acc: Option<[Fp; 3]> = None;
        let (mut all_w, mut all_w_new, mut all_a, mut all_keep) = (vec![], vec![], vec![], vec![]);
        let n_total = 16 * 8;
        for c in 0..2 {
            let r = c * 8..(c + 1) * 8;
            let w = cat(r.clone(), &|p| p.1.clone());
            let a = cat(r.clone(), &|p| p.2.clone());
            let keep: Vec<bool> = parts[r].iter().flat_map(|p| p.3.clone()).collect();
            let wit = honest_witness(&shape, &w, &a, &keep).unwrap();
            let start = acc.unwrap_or([
                crate::commit::initial_acc(n_total),
                crate::commit::initial_acc(n_total),
                crate::commit::initial_acc(16 * 36),
            ]);
            let public = PublicInputs::from_witness(&shape, &wit, Some(start)).unwrap();
            let circuit = UnlearnCircuit {
                shape,
                witness: Some(wit.clone()),
            };
            let prover = MockProver::run(13, &circuit, vec![public.to_instance()]).unwrap();
            assert_eq!(prover.verify(), Ok(()), "chunk {c}");
            acc = Some([public.w_out, public.w_new_out, public.a_out]);
            all_w.push(wit.w);
            all_w_new.push(wit.w_new);
            all_a.push(crate::commit::lower_triangle(&wit.a, 8).unwrap());
            all_keep.extend(keep);
            publics.push(public);
        }
        // The layer's digests, chained natively chunk by chunk.
        let chained = |parts: &[Vec<i64>], packing, len| {
            parts.iter().fold(crate::commit::initial_acc(len), |acc, p| {
                crate::commit::commit_chain(acc, p, packing).unwrap()
            })
        };
        use crate::commit::{FISHER, WEIGHTS};
        let digests = [
            chained(&all_w, WEIGHTS, n_total),
            chained(&all_w_new, WEIGHTS, n_total),
            chained(&all_a, FISHER, 16 * 36),
        ];
        assert_eq!(chain_links(&publics, 8, digests), Some(all_keep));
        // Out of order, or ending at another digest, does not link.
        assert!(chain_links(&[publics[1].clone(), publics[0].clone()], 8, digests).is_none());
        assert!(chain_links(&publics, 8, [digests[0], digests[0], digests[2]]).is_none());
    }
}
