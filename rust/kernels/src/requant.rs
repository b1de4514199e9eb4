//! The store after a GEMM: zero-point corrections, bias, and requantisation to 8 bits,
//! with the arithmetic of `runtime/quant.py` (its `requantize`), bit for bit:
//!
//! * `acc = Σ_k (a − za)(x − zx) + bias` in wrapping i32 (numpy's int32 sums wrap too);
//! * `prod = acc · m` in i64 (|acc| < 2^31, m < 2^31: no overflow), then one rounding
//!   shift `(prod + 2^(bits−1) − [prod < 0]) >> bits` (ties away from zero), `bits = 31 − shift`;
//! * `+ zy`, clamp to the output type's range.

use crate::gemm::{PackedA, PackedB};
use crate::path::Path;

/// Per-row Q31 multipliers (`runtime/quant.py`'s `quantize_multiplier`) and the output's range.
pub struct Requant {
    pub mult: Vec<i32>,
    pub bits: Vec<u32>,
    pub zero_point: i64,
    pub lo: i64,
    pub hi: i64,
}

impl Requant {
    /// From quant.py's `(multiplier_q31, shift)` per row; errors name the bad value.
    pub fn new(mult: &[i64], shift: &[i64], zero_point: i64, lo: i64, hi: i64) -> Result<Requant, String> {
        if mult.len() != shift.len() {
            return Err(format!("{} multipliers but {} shifts", mult.len(), shift.len()));
        }
        let mut m32 = Vec::with_capacity(mult.len());
        let mut bits = Vec::with_capacity(mult.len());
        for (&m, &s) in mult.iter().zip(shift) {
            if !(0..1 << 31).contains(&m) || !(0..=62).contains(&(31 - s)) {
                return Err(format!("multiplier {m} with shift {s} is not a Q31 multiplier (0 ≤ m < 2^31, −31 ≤ shift ≤ 31)"));
            }
            m32.push(m as i32);
            bits.push((31 - s) as u32);
        }
        Ok(Requant { mult: m32, bits, zero_point, lo, hi })
    }

    /// The row's multiplier (one for all rows when per-tensor).
    fn row(&self, r: usize) -> (i64, u32) {
        let i = if self.mult.len() == 1 { 0 } else { r };
        (self.mult[i] as i64, self.bits[i])
    }
}

/// `round(acc · m · 2^−bits) + zp`, clamped: quant.py's `_requantize_block` for one value.
#[inline(always)]
pub fn requantize(acc: i32, mult: i64, bits: u32, zp: i64, lo: i64, hi: i64) -> i64 {
    let prod = acc as i64 * mult;
    let rounded = (prod + ((1i64 << bits) >> 1) - (prod < 0) as i64) >> bits;
    (rounded + zp).clamp(lo, hi)
}

/// What turns a raw `Σ A_s8 · B_u8` into the true `Σ (a − za)(x − zx) + bias`, per row:
/// `acc = raw + base[r] − za[r] · colsum[p]`.
pub struct Correction {
    base: Vec<i32>,
    za: Vec<i32>,
}

impl Correction {
    /// `za`: A's zero-points in its s8 form, per row; `zb`: B's in its u8 form;
    /// `bias`: per row, or none.
    pub fn new(a: &PackedA, za: &[i32], zb: i32, bias: Option<&[i32]>) -> Correction {
        let k = a.k as i32;
        let base = a
            .row_sums()
            .iter()
            .zip(za)
            .enumerate()
            .map(|(r, (&sum, &z))| {
                let b = bias.map_or(0, |b| b[r]);
                b.wrapping_sub(zb.wrapping_mul(sum)).wrapping_add(k.wrapping_mul(z).wrapping_mul(zb))
            })
            .collect();
        Correction { base, za: za.to_vec() }
    }

    /// B's column sums when some row of A has a zero-point (else the correction needs none).
    pub fn col_sums(&self, b: &PackedB) -> Option<Vec<i32>> {
        self.za.iter().any(|&z| z != 0).then(|| b.col_sums())
    }

    /// Turns `c = Σ A_s8 · B_u8` (rows × `b.padded_cols`) into the accumulators in place.
    pub fn apply(&self, c: &mut [i32], b: &PackedB) {
        let col_sums = self.col_sums(b);
        for ((row, &base), &za) in c.chunks_exact_mut(b.padded_cols).zip(&self.base).zip(&self.za) {
            match &col_sums {
                None => row.iter_mut().for_each(|v| *v = v.wrapping_add(base)),
                Some(sums) => row.iter_mut().zip(sums).for_each(|(v, &s)| *v = v.wrapping_add(base).wrapping_sub(za.wrapping_mul(s))),
            }
        }
    }
}

/// Where the outputs go: row `row` of the GEMM (columns `cols`), requantised with the
/// multiplier of output channel `channel`, is written at `start + i·stride` for the i-th column.
/// Runs of one row follow each other.
pub struct Run {
    pub row: usize,
    pub channel: usize,
    pub cols: std::ops::Range<usize>,
    pub start: usize,
    pub stride: usize,
}

/// Corrects the raw product `c` (rows × `padded_cols`) with `fix` and stores it requantised
/// to bytes (`out` as u8: an int8 value is stored as its two's-complement byte). One pass
/// per GEMM row turns the whole row into bytes (one multiplier, one long loop the compiler
/// vectorises), then the runs copy bytes out of it.
pub fn store_requantized(path: Path, c: &[i32], padded_cols: usize, fix: &Correction, col_sums: Option<&[i32]>, rq: &Requant, runs: &[Run], out: &mut [u8]) {
    crate::path::vectorized(path, #[inline(always)] || {
        let mut bytes = vec![0u8; padded_cols];
        let mut i = 0;
        while i < runs.len() {
            let (r, channel) = (runs[i].row, runs[i].channel);
            let (mult, bits) = rq.row(channel);
            let (base, za) = (fix.base[r], fix.za[r]);
            let acc = &c[r * padded_cols..(r + 1) * padded_cols];
            let value = |v: i32| requantize(v, mult, bits, rq.zero_point, rq.lo, rq.hi) as u8;
            match col_sums {
                Some(sums) if za != 0 => bytes.iter_mut().zip(acc).zip(sums).for_each(|((o, &v), &s)| {
                    *o = value(v.wrapping_add(base).wrapping_sub(za.wrapping_mul(s)))
                }),
                _ => bytes.iter_mut().zip(acc).for_each(|(o, &v)| *o = value(v.wrapping_add(base))),
            }
            while i < runs.len() && runs[i].row == r {
                let run = &runs[i];
                let src = &bytes[run.cols.clone()];
                if run.stride == 1 {
                    out[run.start..run.start + src.len()].copy_from_slice(src);
                } else {
                    src.iter().enumerate().for_each(|(j, &v)| out[run.start + j * run.stride] = v);
                }
                i += 1;
            }
        }
    })
}

/// Stores the accumulators of `c` as they are: the exact `Σ (a − za)(x − zx) + bias`.
pub fn store_accumulators(c: &[i32], padded_cols: usize, runs: &[Run], out: &mut [i32]) {
    for run in runs {
        for (i, p) in run.cols.clone().enumerate() {
            out[run.start + i * run.stride] = c[run.row * padded_cols + p];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quant.py's rounding, written out in i128 with a true division.
    fn reference(acc: i32, mult: i64, bits: u32) -> i128 {
        let prod = acc as i128 * mult as i128;
        let d = 1i128 << bits;
        let q = prod.abs() / d;
        let r = prod.abs() % d;
        let q = if bits > 0 && 2 * r >= d { q + 1 } else { q }; // half away from zero
        if prod < 0 { -q } else { q }
    }

    // (bits = 0, a multiplier ≥ 2^30, never comes out of quantize_multiplier for a real
    // model; there quant.py's formula subtracts 1 from negatives, and so does this one.)
    #[test]
    fn rounds_half_away_from_zero_like_quant_py() {
        for &acc in &[0, 1, -1, 2, -2, 3, -3, 12345, -12345, i32::MAX, i32::MIN, 1 << 30, -(1 << 30)] {
            for &(mult, bits) in &[(1i64 << 30, 31u32), (1 << 30, 1), ((1 << 31) - 1, 62), (1_518_500_250, 38), (0, 31)] {
                let got = requantize(acc, mult, bits, 0, i64::MIN, i64::MAX);
                assert_eq!(got as i128, reference(acc, mult, bits), "acc {acc} m {mult} bits {bits}");
            }
        }
    }
}
