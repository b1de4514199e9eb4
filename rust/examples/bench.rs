//! Times keygen, prove and verify on synthetic data.
//! `cargo run --release --example bench -- BLOCK N_BLOCKS MASKED_PER_BLOCK K`
//! (defaults 64 1 4 15).

use std::time::Instant;

use edgetrain_zk::circuit::Shape;
use edgetrain_zk::proof::{self, KeyParams};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let block = *args.first().unwrap_or(&64);
    let n_blocks = *args.get(1).unwrap_or(&1);
    let masked = *args.get(2).unwrap_or(&4);
    let k = *args.get(3).unwrap_or(&15) as u32;
    let shape = Shape {
        block,
        n_blocks,
        scale_bits: 12,
        tol: 1 << 16,
        y_bits: 32,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let mut small = |m: u32| (rng.next_u32() % (2 * m + 1)) as i64 - m as i64;
    let n = block * n_blocks;
    let w: Vec<i64> = (0..n).map(|_| small(3000)).collect();
    let mut a = vec![0i64; n_blocks * block * block];
    for blk in 0..n_blocks {
        let base = blk * block * block;
        for i in 0..block {
            for j in 0..=i {
                let v = if i == j {
                    8192 + small(2000)
                } else {
                    small(600 / block as u32 * 8 + 1)
                };
                a[base + i * block + j] = v;
                a[base + j * block + i] = v;
            }
        }
    }
    let keep: Vec<bool> = (0..n).map(|i| i % block >= masked).collect();
    let kp = KeyParams { k, shape };
    let t = Instant::now();
    let params = proof::params(k).expect("params");
    let t_params = t.elapsed();
    let t = Instant::now();
    let vk = proof::verifying_key_with(&params, &kp).expect("vk");
    let t_vk = t.elapsed();
    let t = Instant::now();
    let keys = proof::keygen_with(params.clone(), &kp).expect("keygen");
    let t_keygen = t.elapsed();
    let t = Instant::now();
    let (proof_bytes, public, _) = proof::prove(&keys, &w, &a, &keep, None, OsRng).expect("prove");
    let t_prove = t.elapsed();
    let t = Instant::now();
    let ok = proof::verify_with(&params, &vk, &kp, &proof_bytes, &public).unwrap();
    let t_verify = t.elapsed();
    let ok_bytes = true;
    assert!(ok && ok_bytes);
    println!(
        "B = {block}, blocks = {n_blocks}, |S| = {masked}, k = {k}: params {t_params:.2?}, vk {t_vk:.2?}, \
         keygen (vk+pk) {t_keygen:.2?}, prove {t_prove:.2?}, verify {t_verify:.2?}, proof {} bytes",
        proof_bytes.len()
    );
}
