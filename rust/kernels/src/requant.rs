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
        Correction::from_row_sums(a.k, &a.row_sums(), za, zb, bias)
    }

    /// [`Self::new`] from A's `k` and row sums (`PackedA::row_sums`), kept from an earlier call.
    pub fn from_row_sums(k: usize, row_sums: &[i32], za: &[i32], zb: i32, bias: Option<&[i32]>) -> Correction {
        assert!(za.len() == row_sums.len() && bias.is_none_or(|b| b.len() == za.len()));
        let k = k as i32;
        let base = row_sums
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

    /// Whether no row of A has a zero-point (then B's column sums are not needed).
    pub fn without_col_sums(&self) -> bool {
        self.za.iter().all(|&z| z == 0)
    }

    /// [`Self::apply`] for rows of `cols` values when no row of A has a zero-point.
    pub fn apply_base(&self, c: &mut [i32], cols: usize) {
        assert!(self.without_col_sums(), "A has zero-points: the correction needs B's column sums");
        for (row, &base) in c.chunks_exact_mut(cols).zip(&self.base) {
            row.iter_mut().for_each(|v| *v = v.wrapping_add(base));
        }
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

/// One output channel's requantisation: `requantize(acc + base, mult, bits, zero_point, lo, hi)`.
#[derive(Clone, Copy)]
pub struct RowRequant {
    pub base: i32,
    pub mult: i64,
    pub bits: u32,
    pub zero_point: i64,
    pub lo: i64,
    pub hi: i64,
}

/// `out[j] = requantize(acc[j] + base − za·sums[j])` as bytes (`sums`: B's column sums and
/// A's zero-point, when it has one): the store of one run of GEMM outputs. The AVX-512 path
/// runs 16 values per step (and a masked last step), the aarch64 ones 8 (`neon::RequantRow`);
/// the others a loop the compiler vectorises as it can. The same integers on every path.
#[inline(always)]
pub fn requantize_row(path: Path, acc: &[i32], sums: Option<(&[i32], i32)>, q: &RowRequant, out: &mut [u8]) {
    assert!(out.len() == acc.len() && sums.is_none_or(|(s, _)| s.len() == acc.len()));
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512Vnni && q.bits <= 63 {
        // SAFETY: the path's CPU features (checked by `Path::supported` when the kernels were
        // made) include AVX-512 F, BW, DQ and VL, all these functions enable.
        return unsafe { x86::Avx512Row::new(q, sums.map_or(0, |(_, z)| z)).store(acc, sums.map(|(s, _)| s), out) };
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(path, Path::Neon | Path::Dotprod) {
        if let Some(row) = crate::neon::RequantRow::new(q, sums.map_or(0, |(_, z)| z)) {
            return row.store(acc, sums.map(|(s, _)| s), out);
        }
    }
    let _ = path;
    requantize_row_scalar(acc, sums, q, out)
}

#[inline(always)]
fn requantize_row_scalar(acc: &[i32], sums: Option<(&[i32], i32)>, q: &RowRequant, out: &mut [u8]) {
    let value = |v: i32| requantize(v.wrapping_add(q.base), q.mult, q.bits, q.zero_point, q.lo, q.hi) as u8;
    match sums {
        Some((sums, za)) => out.iter_mut().zip(acc).zip(sums).for_each(|((o, &v), &s)| *o = value(v.wrapping_sub(za.wrapping_mul(s)))),
        None => out.iter_mut().zip(acc).for_each(|(o, &v)| *o = value(v)),
    }
}

/// A tile of GEMM rows stored as output planes: row `r` is output channel `ch0 + r`, and each
/// segment `(col, len, start)` writes its requantised columns `col .. col + len` (corrected
/// with `fix`) at `out[start + (ch0 + r)·plane ..][..len]`. Rows outside, segments inside,
/// so a row's constants are set once for all of its (often short) segments.
#[allow(clippy::too_many_arguments)]
pub fn store_segments(path: Path, c: &[i32], padded_cols: usize, fix: &Correction, col_sums: Option<&[i32]>, rq: &Requant, ch0: usize, plane: usize, segments: &[(usize, usize, usize)], out: &mut [u8]) {
    let mut bytes = Vec::new();
    for (r, acc) in c.chunks_exact(padded_cols).enumerate().take(fix.base.len()) {
        let (mult, bits) = rq.row(ch0 + r);
        let q = RowRequant { base: fix.base[r], mult, bits, zero_point: rq.zero_point, lo: rq.lo, hi: rq.hi };
        let za = fix.za[r];
        let sums = col_sums.filter(|_| za != 0);
        let offset = (ch0 + r) * plane;
        #[cfg(target_arch = "x86_64")]
        if path == Path::Avx512Vnni && q.bits <= 63 {
            // SAFETY: as in `requantize_row`.
            unsafe { x86::Avx512Row::new(&q, za).store_segments(acc, sums, segments, &mut out[offset..]) };
            continue;
        }
        // elsewhere one long loop over the row's columns (short segments would not
        // vectorise), then the segments copied out of it
        let used = segments.iter().map(|&(col, len, _)| col + len).max().unwrap_or(0);
        bytes.resize(used, 0);
        crate::path::vectorized(path, #[inline(always)] || {
            requantize_row(path, &acc[..used], sums.map(|s| (&s[..used], za)), &q, &mut bytes[..used]);
        });
        for &(col, len, start) in segments {
            out[offset + start..offset + start + len].copy_from_slice(&bytes[col..col + len]);
        }
    }
}

/// Corrects the raw product `c` (rows × `padded_cols`) with `fix` and stores it requantised
/// to bytes (`out` as u8: an int8 value is stored as its two's-complement byte), each run
/// straight from the accumulators into its place in `out`.
#[allow(clippy::too_many_arguments)]
pub fn store_requantized(path: Path, c: &[i32], padded_cols: usize, fix: &Correction, col_sums: Option<&[i32]>, rq: &Requant, runs: &[Run], out: &mut [u8]) {
    crate::path::vectorized(path, #[inline(always)] || {
        let mut bytes = Vec::new(); // a strided run's values, before they are spread out
        for run in runs {
            let r = run.row;
            let (mult, bits) = rq.row(run.channel);
            let q = RowRequant { base: fix.base[r], mult, bits, zero_point: rq.zero_point, lo: rq.lo, hi: rq.hi };
            let acc = &c[r * padded_cols..(r + 1) * padded_cols][run.cols.clone()];
            let sums = col_sums.filter(|_| fix.za[r] != 0).map(|s| (&s[run.cols.clone()], fix.za[r]));
            if run.stride == 1 {
                requantize_row(path, acc, sums, &q, &mut out[run.start..run.start + acc.len()]);
            } else {
                bytes.resize(acc.len(), 0);
                requantize_row(path, acc, sums, &q, &mut bytes);
                bytes.iter().enumerate().for_each(|(j, &v)| out[run.start + j * run.stride] = v);
            }
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::RowRequant;
    use std::arch::x86_64::*;

    /// One row's requantisation constants in zmm registers, for [`super::requantize_row`].
    pub struct Avx512Row {
        /// the output is a whole 8-bit type (`lo, hi` = −128, 127 or 0, 255) and `32 ≤ bits ≤ 48`:
        /// then every result fits i32 and `zp` folds into the rounding constant (exact:
        /// `⌊(p + c + zp·2^bits) / 2^bits⌋ = ⌊(p + c) / 2^bits⌋ + zp`, no i64 overflow), so one
        /// saturating narrowing clamps (see [`Self::store`])
        narrow: Option<bool>,
        half_zp: __m512i,
        base: __m512i,
        za: __m512i,
        mult: __m512i,
        half: __m512i,
        count: __m128i,
        zp: __m512i,
        lo: __m512i,
        hi: __m512i,
    }

    impl Avx512Row {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        pub fn new(q: &RowRequant, za: i32) -> Avx512Row {
            let whole = match (q.lo, q.hi) {
                (-128, 127) => Some(true),
                (0, 255) => Some(false),
                _ => None,
            };
            let narrow = whole.filter(|_| (32..=48).contains(&q.bits) && (-255..=255).contains(&q.zero_point));
            Avx512Row {
                narrow,
                half_zp: _mm512_set1_epi64(((1i64 << q.bits) >> 1) + if narrow.is_some() { q.zero_point << q.bits } else { 0 }),
                base: _mm512_set1_epi32(q.base),
                za: _mm512_set1_epi32(za),
                mult: _mm512_set1_epi64(q.mult),
                half: _mm512_set1_epi64((1i64 << q.bits) >> 1),
                count: _mm_cvtsi64_si128(q.bits as i64),
                zp: _mm512_set1_epi64(q.zero_point),
                lo: _mm512_set1_epi64(q.lo),
                hi: _mm512_set1_epi64(q.hi),
            }
        }

        /// The rounding shift `(p + 2^(bits−1) − [p < 0]) >> bits` of the products `p = v·m`
        /// (`vpmuldq` of the lanes' low halves: exact, |v|, m < 2^31), `+ zp`, clamped.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        fn finish(&self, v: __m512i) -> __m512i {
            let prod = _mm512_mul_epi32(v, self.mult);
            let rounded = _mm512_add_epi64(_mm512_add_epi64(prod, self.half), _mm512_srai_epi64::<63>(prod));
            let y = _mm512_add_epi64(_mm512_sra_epi64(rounded, self.count), self.zp);
            _mm512_min_epi64(_mm512_max_epi64(y, self.lo), self.hi)
        }

        /// [`Self::store`] of each segment `(col, len, start)`: `acc[col..][..len]` to
        /// `out[start..][..len]`, in one function so the row's constants stay in registers
        /// across its (often short) segments.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        pub fn store_segments(&self, acc: &[i32], sums: Option<&[i32]>, segments: &[(usize, usize, usize)], out: &mut [u8]) {
            for &(col, len, start) in segments {
                self.store(&acc[col..col + len], sums.map(|s| &s[col..col + len]), &mut out[start..start + len]);
            }
        }

        /// [`Self::finish`] without the clamp, `zp` folded into the rounding (the `narrow` case):
        /// `(p + 2^(bits−1) + zp·2^bits − [p < 0]) >> bits`, which fits i32.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        fn finish_narrow(&self, v: __m512i) -> __m512i {
            let prod = _mm512_mul_epi32(v, self.mult);
            _mm512_sra_epi64(_mm512_add_epi64(_mm512_add_epi64(prod, self.half_zp), _mm512_srai_epi64::<63>(prod)), self.count)
        }

        /// `out[j] = requantize(acc[j] + base − za·sums[j])`, 16 values per step: even and odd
        /// lanes through [`Self::finish`] in i64, merged back to 16 i32 lanes and narrowed
        /// (in the `narrow` case clamped by the narrowing itself: signed saturation to int8,
        /// or unsigned after a max with 0 — the same values as the clamp to `lo, hi`).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        pub fn store(&self, acc: &[i32], sums: Option<&[i32]>, out: &mut [u8]) {
            let n = acc.len();
            assert!(out.len() == n && sums.is_none_or(|s| s.len() == n));
            if let Some(signed) = self.narrow {
                let mut j = 0;
                while j < n {
                    let mask = lanes_mask(n - j);
                    // SAFETY: as in `requantized`.
                    unsafe {
                        let both = self.requantized::<true>(acc, sums, j, mask);
                        let bytes = if signed { _mm512_cvtsepi32_epi8(both) } else { _mm512_cvtusepi32_epi8(_mm512_max_epi32(both, _mm512_setzero_si512())) };
                        _mm_mask_storeu_epi8(out.as_mut_ptr().add(j).cast(), mask, bytes);
                    }
                    j += 16;
                }
                return;
            }
            let mut j = 0;
            while j < n {
                let mask = lanes_mask(n - j);
                // SAFETY: as in `requantized`.
                unsafe {
                    let both = self.requantized::<false>(acc, sums, j, mask);
                    _mm_mask_storeu_epi8(out.as_mut_ptr().add(j).cast(), mask, _mm512_cvtepi32_epi8(both));
                }
                j += 16;
            }
        }

        /// The 16 (or `mask`'s) values of [`Self::store`] from `j` on, requantized to i32 lanes
        /// not yet narrowed: [`Self::finish_narrow`] when `NARROW`, else [`Self::finish`].
        ///
        /// # Safety
        /// `mask` covers only elements `j .. j + popcount(mask) ≤ acc.len()` (and of `sums`).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
        unsafe fn requantized<const NARROW: bool>(&self, acc: &[i32], sums: Option<&[i32]>, j: usize, mask: __mmask16) -> __m512i {
            // SAFETY: the masked loads touch only the elements the caller's `mask` covers.
            unsafe {
                let mut v = _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(j).cast()), self.base);
                if let Some(s) = sums {
                    v = _mm512_sub_epi32(v, _mm512_mullo_epi32(self.za, _mm512_maskz_loadu_epi32(mask, s.as_ptr().add(j).cast())));
                }
                let high = _mm512_srli_epi64::<32>(v);
                let (even, odd) = if NARROW { (self.finish_narrow(v), self.finish_narrow(high)) } else { (self.finish(v), self.finish(high)) };
                _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd))
            }
        }
    }

    /// The mask of the first `min(left, 16)` lanes.
    #[inline]
    fn lanes_mask(left: usize) -> __mmask16 {
        if left >= 16 { 0xffff } else { (1u16 << left) - 1 }
    }
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

    /// Every path's row store against `requantize` value by value: multipliers whose shifts
    /// fall inside and outside the AVX-512 store's narrowing case, both output types, the
    /// column-sum correction (zero-points of A at −128 and 127 too), extreme accumulators and
    /// clamps, and lengths not a multiple of 16 or 8 (the AVX-512 and NEON steps).
    #[test]
    fn row_stores_equal_requantize_on_every_path() {
        let mut accs: Vec<i32> = vec![0, 1, -1, i32::MAX, i32::MIN, i32::MIN + 1, 1 << 30, -(1 << 30)];
        accs.extend((0..200).map(|i: i32| i.wrapping_mul(0x9E37_79B9u32 as i32) >> (i % 31)));
        let sums: Vec<i32> = (0..accs.len() as i32).map(|i| i * 977 - 90_000).collect();
        for path in Path::available() {
            for &(mult, bits) in &[(1i64 << 30, 31u32), (1_518_500_250, 32), (1_073_741_824, 38), ((1 << 31) - 1, 48), (1_300_000_000, 49), (2_000_000_000, 62), (0, 40), (1_073_741_824, 1), (987_654_321, 45)] {
                for &(zp, lo, hi) in &[(0i64, -128i64, 127i64), (-128, -128, 127), (127, -128, 127), (0, 0, 255), (255, 0, 255), (128, 0, 255), (5, -3, 40), (-1 << 40, i64::MIN, i64::MAX)] {
                    for za in [0, 3, -128, 127] {
                        for len in [accs.len(), 17, 9, 8, 7, 5, 1, 0] {
                            let q = RowRequant { base: -12_345, mult, bits, zero_point: zp, lo, hi };
                            let (acc, s) = (&accs[..len], &sums[..len]);
                            let mut got = vec![0u8; len];
                            requantize_row(path, acc, (za != 0).then_some((s, za)), &q, &mut got);
                            for j in 0..len {
                                let v = acc[j].wrapping_add(q.base).wrapping_sub(za.wrapping_mul(s[j]));
                                assert_eq!(got[j], requantize(v, mult, bits, zp, lo, hi) as u8, "{} m {mult} bits {bits} zp {zp} za {za}", path.name());
                            }
                        }
                    }
                }
            }
        }
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
