//! The int8 ZO head's passes (`runtime/zo.py`): the ±ε walk `w ← w + k·ε·z` and the update
//! `w ← clip(w − SR(Σ_j ΔL_j·z_j / 2^s))`, with the counter PRNG of `runtime/prng.py` drawn
//! in place, so a step makes no temporaries at all.
//!
//! The PRNG is SplitMix64's finaliser over `base + (index + 1)·γ`, the base mixed from
//! `(seed, stream)`: word `index` of a stream depends on nothing else, so any slice of a
//! tensor is drawn where it is needed, and every path draws the same words.

use crate::path::Path;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const STREAM: u64 = 0xD1B5_4A32_D192_ED03;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

/// Weights per block of the update: its i64 estimates stay in vector registers.
const BLOCK: usize = 16;

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z ^= z >> 30;
    z = z.wrapping_mul(M1);
    z ^= z >> 27;
    z = z.wrapping_mul(M2);
    z ^ (z >> 31)
}

/// One `(seed, stream)` sequence of `prng.random_bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(u64);

impl Stream {
    pub fn new(seed: u64, stream: u64) -> Stream {
        Stream(mix(seed ^ mix(stream.wrapping_add(STREAM))))
    }

    /// Word `index` of the sequence (`random_bits(seed, stream, 1, index)[0]`).
    #[inline(always)]
    pub fn word(self, index: u64) -> u64 {
        mix(self.0.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
    }

    /// Whether element `index` of `prng.rademacher` is −1 (the word's top bit).
    #[inline(always)]
    fn negative(self, index: u64) -> bool {
        self.word(index) >> 63 != 0
    }

    /// Element `index` of `prng.uniform_below_pow2(…, bits)`: the word's top `bits` bits
    /// (0 for `bits == 0`), as numpy's cast to int64 gives them (`bits ≤ 64`).
    #[inline(always)]
    fn below_pow2(self, index: u64, bits: u32) -> i64 {
        if bits == 0 {
            0
        } else {
            (self.word(index) >> (64 - bits)) as i64
        }
    }
}

/// `prng.rademacher(seed, stream, out.len(), start)`: ±1.
pub fn rademacher(path: Path, s: Stream, start: u64, out: &mut [i8]) {
    crate::path::vectorized(path, #[inline(always)] || {
        for (i, o) in (start..).zip(out.iter_mut()) {
            *o = 1 - 2 * s.negative(i) as i8;
        }
    })
}

/// `prng.uniform_below_pow2(seed, stream, out.len(), bits, start)`, `bits ≤ 64`.
pub fn uniform_below_pow2(path: Path, s: Stream, start: u64, bits: u32, out: &mut [i64]) {
    assert!(bits <= 64);
    crate::path::vectorized(path, #[inline(always)] || {
        for (i, o) in (start..).zip(out.iter_mut()) {
            *o = s.below_pow2(i, bits);
        }
    })
}

/// `w[i] += step·z_i` in place over a flat tensor, `z` = `rademacher(s)` from index 0,
/// wrapping like numpy's int8 `+=` (the caller's clip keeps it from wrapping).
pub fn perturb(path: Path, w: &mut [i8], s: Stream, step: i8) {
    let down = step.wrapping_neg();
    crate::path::vectorized(path, #[inline(always)] || {
        for (i, v) in (0u64..).zip(w.iter_mut()) {
            *v = v.wrapping_add(if s.negative(i) { down } else { step });
        }
    })
}

/// One probed direction of the update: its sign stream and integer loss difference.
#[derive(Clone, Copy, Debug)]
pub struct Direction {
    pub signs: Stream,
    pub diff: i64,
}

/// Why an update's arguments were refused (it then changes nothing).
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// `Σ_j |ΔL_j| ≥ 2^62`: the estimate plus its rounding noise could leave i64.
    DiffsTooLarge,
    /// `shift > 62` (`prng.uniform_below_pow2` draws at most 62 bits).
    ShiftTooLarge,
    /// `limit` outside `0..=127`.
    BadLimit,
}

/// `w[i] ← clip(w[i] − ((Σ_j ΔL_j·z_ji + r_i) >> shift), −limit, limit)` over a flat tensor,
/// `z_j` each direction's signs and `r` = `uniform_below_pow2(noise, …, shift)`, from index 0:
/// `zo.sign_update` on one tensor.
///
/// Bounds: `|Σ_j ΔL_j·z_ji| ≤ Σ_j |ΔL_j| < 2^62` and `r < 2^shift ≤ 2^62`, so the sum and
/// its noise stay below 2^63 in i64, exactly as numpy's int64 arithmetic computes them.
pub fn sign_update(path: Path, w: &mut [i8], dirs: &[Direction], noise: Stream, shift: u32, limit: i8) -> Result<(), UpdateError> {
    let total = dirs.iter().try_fold(0u64, |t, d| t.checked_add(d.diff.unsigned_abs()));
    if total.is_none_or(|t| t >= 1 << 62) {
        return Err(UpdateError::DiffsTooLarge);
    }
    if shift > 62 {
        return Err(UpdateError::ShiftTooLarge);
    }
    if limit < 0 {
        return Err(UpdateError::BadLimit);
    }
    let (lo, hi) = (-(limit as i64), limit as i64);
    crate::path::vectorized(path, #[inline(always)] || {
        let mut blocks = w.chunks_mut(BLOCK);
        let mut start = 0u64;
        for block in &mut blocks {
            let mut estimate = [0i64; BLOCK];
            for d in dirs {
                let (up, down) = (d.diff, d.diff.wrapping_neg());
                for (l, e) in estimate.iter_mut().enumerate() {
                    *e += if d.signs.negative(start + l as u64) { down } else { up };
                }
            }
            for (l, (v, e)) in block.iter_mut().zip(estimate).enumerate() {
                let u = (e + noise.below_pow2(start + l as u64, shift)) >> shift;
                *v = (*v as i64 - u).clamp(lo, hi) as i8;
            }
            start += BLOCK as u64;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_is_splitmix64() {
        // SplitMix64 seeded with 0 (Vigna's reference `next()`): its first two outputs
        assert_eq!(Stream(0).word(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(Stream(0).word(1), 0x6E78_9E6A_A1B9_65F4);
    }

    fn tensor(n: usize) -> Vec<i8> {
        (0..n).map(|i| ((i * 7919) % 251) as i8).map(|v| v.clamp(-120, 120)).collect()
    }

    #[test]
    fn every_path_draws_the_scalar_values() {
        let s = Stream::new(12345, 7);
        let (n, start) = (1000, (1u64 << 40) - 3);
        let mut signs = vec![0i8; n];
        rademacher(Path::Scalar, s, start, &mut signs);
        assert!(signs.iter().all(|&v| v == 1 || v == -1));
        for bits in [0, 1, 13, 62, 64] {
            let mut r = vec![0i64; n];
            uniform_below_pow2(Path::Scalar, s, start, bits, &mut r);
            for path in Path::available() {
                let mut got = vec![0i64; n];
                uniform_below_pow2(path, s, start, bits, &mut got);
                assert_eq!(got, r, "{path:?} {bits}");
                let mut got = vec![0i8; n];
                rademacher(path, s, start, &mut got);
                assert_eq!(got, signs, "{path:?}");
            }
        }
    }

    #[test]
    fn the_walk_returns_exactly() {
        let s = Stream::new(3, 0);
        let w0 = tensor(1037);
        for path in Path::available() {
            let mut w = w0.clone();
            perturb(path, &mut w, s, 5);
            let mut signs = vec![0i8; w.len()];
            rademacher(Path::Scalar, s, 0, &mut signs);
            assert!(w.iter().zip(&w0).zip(&signs).all(|((&a, &b), &z)| a as i32 == b as i32 + 5 * z as i32));
            perturb(path, &mut w, s, -5);
            assert_eq!(w, w0, "{path:?}");
        }
    }

    #[test]
    fn update_equals_the_formula_in_i128() {
        let dirs = [
            Direction { signs: Stream::new(1, 0), diff: (1 << 61) - 1 },
            Direction { signs: Stream::new(2, 0), diff: -(1 << 60) },
            Direction { signs: Stream::new(3, 0), diff: 0 },
            Direction { signs: Stream::new(4, 0), diff: 12345 },
        ];
        let total: u64 = dirs.iter().map(|d| d.diff.unsigned_abs()).sum();
        let w0 = tensor(1037); // not a multiple of BLOCK
        for (shift, limit) in [(0, 127), (3, 120), (62 - 3, 126)] {
            let noise = Stream::new(9, 1000);
            let expect: Vec<i8> = (0..w0.len() as u64)
                .map(|i| {
                    let e: i128 = dirs.iter().map(|d| d.diff as i128 * if d.signs.negative(i) { -1 } else { 1 }).sum();
                    let r = if shift == 0 { 0 } else { (noise.word(i) >> (64 - shift)) as i128 };
                    let u = (e + r).div_euclid(1 << shift);
                    (w0[i as usize] as i128 - u).clamp(-(limit as i128), limit as i128) as i8
                })
                .collect();
            for path in Path::available() {
                let mut w = w0.clone();
                sign_update(path, &mut w, &dirs, noise, shift, limit).unwrap();
                assert_eq!(w, expect, "{path:?} shift {shift} (total {total})");
            }
        }
    }

    #[test]
    fn update_refuses_what_could_overflow() {
        let d = |diff| Direction { signs: Stream::new(1, 0), diff };
        let mut w = tensor(40);
        let w0 = w.clone();
        let s = Stream::new(0, 0);
        assert_eq!(sign_update(Path::Scalar, &mut w, &[d(1 << 61), d(-(1 << 61))], s, 0, 127), Err(UpdateError::DiffsTooLarge));
        assert_eq!(sign_update(Path::Scalar, &mut w, &[d(i64::MIN)], s, 0, 127), Err(UpdateError::DiffsTooLarge));
        assert_eq!(sign_update(Path::Scalar, &mut w, &[d(1)], s, 63, 127), Err(UpdateError::ShiftTooLarge));
        assert_eq!(sign_update(Path::Scalar, &mut w, &[d(1)], s, 0, -1), Err(UpdateError::BadLimit));
        assert_eq!(w, w0);
    }
}
