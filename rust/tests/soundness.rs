//! Real IPA proofs (k = 10, one block of B = 8 weights, |S| = 2): an honest
//! device verifies; devices that cheat in the ways of issue 4 do not; malformed
//! bytes give false or a format error, never a panic.

use std::sync::OnceLock;
use std::time::Instant;

use edgetrain_zk::circuit::{PublicInputs, Shape};
use edgetrain_zk::proof::{self, KeyParams, Keys};
use edgetrain_zk::witness::{honest_witness, Witness};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const K: u32 = 10;

fn key_params() -> KeyParams {
    KeyParams {
        k: K,
        shape: Shape {
            block: 8,
            n_blocks: 1,
            scale_bits: 12,
            tol: 1 << 16,
            y_bits: 32,
        },
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| proof::keygen(&key_params()).unwrap())
}

/// Symmetric, diagonally dominant A at scale 2^12 (a damped inverse Fisher),
/// weights in ±3000, weights 2 and 5 masked.
fn example(seed: u64) -> (Vec<i64>, Vec<i64>, Vec<bool>) {
    let b = 8;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut small = |m: u32| (rng.next_u32() % (2 * m + 1)) as i64 - m as i64;
    let w = (0..b).map(|_| small(3000)).collect();
    let mut a = vec![0i64; b * b];
    for i in 0..b {
        for j in 0..=i {
            let v = if i == j { 8192 + small(2000) } else { small(600) };
            a[i * b + j] = v;
            a[j * b + i] = v;
        }
    }
    (w, a, (0..b).map(|i| i != 2 && i != 5).collect())
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

struct Honest {
    proof: Vec<u8>,
    public: PublicInputs,
    witness: Witness,
}

fn honest() -> &'static Honest {
    static H: OnceLock<Honest> = OnceLock::new();
    H.get_or_init(|| {
        let (w, a, keep) = example(1);
        let t = Instant::now();
        let (proof, public, witness) = proof::prove(keys(), &w, &a, &keep, None, rng(2)).unwrap();
        eprintln!("prove: {:.2?}, proof {} bytes", t.elapsed(), proof.len());
        Honest { proof, public, witness }
    })
}

fn verifies(proof: &[u8], public: &PublicInputs) -> bool {
    let k = keys();
    proof::verify_with(&k.params, k.vk(), &k.key_params, proof, public).unwrap()
}

#[test]
fn honest_device_proof_verifies_from_bytes() {
    let h = honest();
    let t = Instant::now();
    let ok = proof::verify_bytes(&keys().params, &h.proof, &h.public.to_bytes(), &key_params().to_bytes()).unwrap();
    eprintln!("verify (incl. vk regeneration): {:.2?}", t.elapsed());
    assert!(ok);
    assert!(verifies(&h.proof, &h.public));
    assert_eq!(PublicInputs::from_bytes(&h.public.to_bytes()).unwrap(), h.public);
    assert_eq!(KeyParams::from_bytes(&key_params().to_bytes()).unwrap(), key_params());
    assert!(h.witness.w_new.iter().zip(&h.witness.keep).all(|(w, k)| *k || *w == 0));
}

#[test]
fn skipping_compensation_cannot_verify() {
    let h = honest();
    let mut lazy = h.witness.clone();
    lazy.delta.iter_mut().for_each(|d| *d = 0);
    lazy.remainder.iter_mut().for_each(|r| *r = 0);
    lazy.w_new = lazy
        .w
        .iter()
        .zip(&lazy.keep)
        .map(|(w, k)| if *k { *w } else { 0 })
        .collect();
    let own = PublicInputs::from_witness(&key_params().shape, &lazy, None).unwrap();
    for public in [&h.public, &own] {
        let p = proof::prove_with(keys(), lazy.clone(), public, rng(3)).unwrap();
        assert!(!verifies(&p, public));
    }
}

#[test]
fn weight_changed_after_update_cannot_verify() {
    let h = honest();
    let mut tweaked = h.witness.clone();
    tweaked.w_new[0] += 1;
    let own = PublicInputs::from_witness(&key_params().shape, &tweaked, None).unwrap();
    for public in [&h.public, &own] {
        let p = proof::prove_with(keys(), tweaked.clone(), public, rng(4)).unwrap();
        assert!(!verifies(&p, public));
    }
}

#[test]
fn fisher_block_other_than_committed_cannot_verify() {
    let h = honest();
    let (w, mut a, keep) = example(1);
    a[2 * 8 + 2] += 64;
    let other = honest_witness(&key_params().shape, &w, &a, &keep).unwrap();
    let p = proof::prove_with(keys(), other, &h.public, rng(5)).unwrap();
    assert!(!verifies(&p, &h.public));
}

#[test]
fn proof_for_another_mask_cannot_verify() {
    let h = honest();
    let mut other = h.public.clone();
    other.keep[3] = false;
    assert!(!verifies(&h.proof, &other));
    // Nor can the honest witness be proven under another mask.
    let p = proof::prove_with(keys(), h.witness.clone(), &other, rng(6)).unwrap();
    assert!(!verifies(&p, &other));
}

#[test]
fn malformed_bytes_give_false_or_format_error_never_panic() {
    let h = honest();
    let (pi, vk) = (h.public.to_bytes(), key_params().to_bytes());
    let check = |proof: &[u8], pi: &[u8], vk: &[u8]| match proof::verify_bytes(&keys().params, proof, pi, vk) {
        Ok(ok) => assert!(!ok),
        Err(e) => assert!(matches!(e, edgetrain_zk::ZkError::Format(_)), "{e}"),
    };
    for cut in [0, 3, 6, 7, 100, h.proof.len() - 1] {
        check(&h.proof[..cut], &pi, &vk);
    }
    for pos in [6, 40, h.proof.len() / 2, h.proof.len() - 1] {
        let mut p = h.proof.clone();
        p[pos] ^= 0x10;
        check(&p, &pi, &vk);
    }
    let mut noise = vec![0u8; h.proof.len()];
    rng(7).fill_bytes(&mut noise);
    check(&noise, &pi, &vk);
    let mut wrong_version = h.proof.clone();
    wrong_version[5] = 9;
    check(&wrong_version, &pi, &vk);
    for cut in [0, 10, pi.len() - 1] {
        check(&h.proof, &pi[..cut], &vk);
    }
    let mut bad_field = pi.clone();
    bad_field[6..38].fill(0xff);
    check(&h.proof, &bad_field, &vk);
    for cut in [0, 8, vk.len() - 1] {
        check(&h.proof, &pi, &vk[..cut]);
    }
    let mut huge_k = vk.clone();
    huge_k[7] = 60;
    check(&h.proof, &pi, &huge_k);
    // A key for another circuit shape (scale): the proof does not verify.
    let mut other = key_params();
    other.shape.scale_bits = 11;
    check(&h.proof, &pi, &other.to_bytes());
}

/// The verifying key as bytes (`K`): read back without key generation, it
/// verifies the honest proof and rejects a cheating one, as the generated key does.
#[test]
fn stored_verifying_key_verifies_without_keygen() {
    let h = honest();
    let k = keys();
    let bytes = proof::vk_to_bytes(&k.key_params, k.vk(), &k.params);
    let t = Instant::now();
    let stored = proof::vk_from_bytes(&bytes).unwrap();
    eprintln!("vk from {} bytes: {:.2?}", bytes.len(), t.elapsed());
    assert_eq!(stored.key_params, key_params());
    assert_eq!(stored.vk.transcript_repr(), k.vk().transcript_repr());
    assert_eq!(proof::vk_to_bytes(&stored.key_params, &stored.vk, &k.params), bytes);
    assert!(proof::verify_with(&k.params, &stored.vk, &stored.key_params, &h.proof, &h.public).unwrap());
    assert_eq!(
        proof::verify_bytes(&k.params, &h.proof, &h.public.to_bytes(), &bytes),
        Ok(true)
    );
    let mut lazy = h.witness.clone();
    lazy.delta.iter_mut().for_each(|d| *d = 0);
    let p = proof::prove_with(k, lazy, &h.public, rng(8)).unwrap();
    assert!(!proof::verify_with(&k.params, &stored.vk, &stored.key_params, &p, &h.public).unwrap());
}

/// Stored-key bytes that are cut, altered or of another version are refused
/// with a format error (or, for a commitment moved to another valid point,
/// verify nothing); never a panic.
#[test]
fn malformed_stored_keys_are_refused() {
    let h = honest();
    let k = keys();
    let bytes = proof::vk_to_bytes(&k.key_params, k.vk(), &k.params);
    let pi = h.public.to_bytes();
    let format_error = |b: &[u8]| matches!(proof::vk_from_bytes(b), Err(edgetrain_zk::ZkError::Format(_)));
    for cut in [0, 5, 7, 20, bytes.len() / 2, bytes.len() - 1] {
        assert!(format_error(&bytes[..cut]), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(format_error(&longer));
    let mut old = bytes.clone();
    old[5] = 0;
    assert!(format_error(&old));
    let mut old_circuit = bytes.clone();
    old_circuit[6] = 3;
    assert!(format_error(&old_circuit));
    let mut count = bytes.clone();
    count[26] ^= 1; // the fixed-commitment count
    assert!(format_error(&count));
    // Layout after the 26-byte header: fixed commitments, permutation commitments
    // (each a u32 count, then 32-byte points), the selector bitmaps, the reference
    // string's [s]G2 (64 bytes), the digest.
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let n_fixed = u32_at(26);
    let perm_at = 30 + 32 * n_fixed;
    let selectors_at = perm_at + 4 + 32 * u32_at(perm_at);
    // A changed commitment byte: not a point, or another point, whose key then has
    // another digest than the stored one.
    for pos in [40, perm_at - 20, selectors_at - 10] {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        assert!(format_error(&b), "byte {pos}");
        match proof::verify_bytes(&k.params, &h.proof, &pi, &b) {
            Ok(ok) => assert!(!ok),
            Err(e) => assert!(matches!(e, edgetrain_zk::ZkError::Format(_)), "{e}"),
        }
    }
    // Selector bitmaps decide which selectors share a fixed column. Every selector on
    // in every row shares none: more fixed columns than the stored commitments.
    let mut all_on = bytes.clone();
    let bitmaps = all_on.len() - 32 - 64 - (selectors_at + 4);
    all_on[selectors_at + 4..selectors_at + 4 + bitmaps].fill(0xff);
    assert!(format_error(&all_on));
    // A key made under another reference string is refused by name with these
    // parameters (its commitments would verify nothing here).
    let other_params = proof::params(K).unwrap();
    let theirs = proof::verifying_key_with(&other_params, &k.key_params).unwrap();
    let theirs = proof::vk_to_bytes(&k.key_params, &theirs, &other_params);
    assert!(proof::vk_from_bytes(&theirs).is_ok());
    assert!(matches!(
        proof::verify_bytes(&k.params, &h.proof, &pi, &theirs),
        Err(edgetrain_zk::ZkError::Invalid(_))
    ));
    assert!(matches!(
        proof::stored_key(&k.params, &theirs),
        Err(edgetrain_zk::ZkError::Invalid(_))
    ));
    // Another k in front of this key's commitments: the digest (over the domain) differs.
    let mut other_k = bytes.clone();
    other_k[7] = K as u8 + 1;
    assert!(format_error(&other_k));
    // Another scale in front of them reads (the digest covers the commitments, where s and τ
    // are fixed cells), but the proof's public inputs then differ from the key: false.
    let mut other = bytes.clone();
    other[16] = 11; // scale_bits
    assert!(proof::vk_from_bytes(&other).is_ok());
    assert_eq!(proof::verify_bytes(&k.params, &h.proof, &pi, &other), Ok(false));
}
