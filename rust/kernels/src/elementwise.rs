//! The element-wise integer ops: QuantizeLinear at the graph's input (float32 → 8 bits)
//! and QLinearAdd, each with `runtime/` arithmetic bit for bit.

use crate::path::Path;

/// QuantizeLinear per tensor, as `quant.quantize_float`: `clamp(rint(x / scale) + zp)`,
/// all in float32 (ties to even), then the 8-bit value's byte. Err on a NaN (numpy's cast
/// of a NaN is the platform's; the caller leaves that case to numpy).
#[inline(always)] // into the caller's `path::vectorized` (SSE4.1+ rounds in one instruction)
pub fn quantize(x: &[f32], scale: f32, zero_point: f32, lo: f32, hi: f32, out: &mut [u8]) -> Result<(), ()> {
    if x.iter().fold(false, |nan, v| nan | v.is_nan()) {
        return Err(());
    }
    assert!(-128.0 <= lo && hi <= 255.0 && !scale.is_nan() && !zero_point.is_nan());
    for (o, &v) in out.iter_mut().zip(x) {
        let q = ((v / scale).round_ties_even() + zero_point).max(lo).min(hi);
        // SAFETY: q is an integer in [lo, hi] ⊂ i32 (no NaN: checked above), so the cast is exact
        *o = unsafe { q.to_int_unchecked::<i32>() } as u8;
    }
    Ok(())
}

/// QLinearAdd's integer form (`runtime/kernels/add.py`): `ma·(a − za) + mb·(b − zb)` in
/// i64, one rounding shift by `bits` (ties away from zero), `+ zc`, clamped. `a`, `b` are
/// 8-bit values as i32 (`|value| ≤ 255`), `|ma|, |mb| < 2^31`, `bits ≤ 62`: no overflow.
#[derive(Clone, Copy)]
pub struct AddParams {
    pub za: i64,
    pub ma: i64,
    pub zb: i64,
    pub mb: i64,
    pub bits: u32,
    pub zc: i64,
    pub lo: i64,
    pub hi: i64,
}

#[inline(always)]
pub fn add(p: AddParams, a: i32, b: i32) -> u8 {
    // i32 × i32 → i64 products (|m| < 2^31, |v − z| < 2^31): one vpmuldq each when vectorised
    let product = |m: i64, v: i32, z: i64| (m as i32 as i64) * ((v as i64 - z) as i32 as i64);
    let total = product(p.ma, a, p.za) + product(p.mb, b, p.zb);
    let rounded = (total + ((1i64 << p.bits) >> 1) - (total < 0) as i64) >> p.bits;
    (rounded + p.zc).clamp(p.lo, p.hi) as u8
}

/// [`add`] over two byte arrays of one length (`*_signed`: int8, else uint8): 16 values per
/// step in AVX-512 on that path, a loop the compiler vectorises on the others.
pub fn add_bytes(path: Path, p: AddParams, a: &[u8], a_signed: bool, b: &[u8], b_signed: bool, out: &mut [u8]) {
    assert!(a.len() == out.len() && b.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512Vnni && (-128..=255).contains(&p.za) && (-128..=255).contains(&p.zb) {
        // SAFETY: the path's features (checked when the kernels were made) include AVX-512 F/BW/DQ/VL.
        return unsafe { x86::add_bytes(p, a, a_signed, b, b_signed, out) };
    }
    crate::path::vectorized(path, #[inline(always)] || add_bytes_loop(p, a, a_signed, b, b_signed, out))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::AddParams;
    use std::arch::x86_64::*;

    /// `ma·(a − za) + mb·(b − zb)` as i64 products of the even and odd i32 lanes (`vpmuldq`),
    /// the rounding shift, `+ zc` and the clamp, as [`super::add`] computes each value.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub fn add_bytes(p: AddParams, a: &[u8], a_signed: bool, b: &[u8], b_signed: bool, out: &mut [u8]) {
        let n = out.len();
        assert!(a.len() == n && b.len() == n);
        let widen = |v: __m128i, signed: bool| if signed { _mm512_cvtepi8_epi32(v) } else { _mm512_cvtepu8_epi32(v) };
        let (za, zb) = (_mm512_set1_epi32(p.za as i32), _mm512_set1_epi32(p.zb as i32));
        let (ma, mb) = (_mm512_set1_epi64(p.ma), _mm512_set1_epi64(p.mb));
        let half = _mm512_set1_epi64((1i64 << p.bits) >> 1);
        let count = _mm_cvtsi64_si128(p.bits as i64);
        let (zc, lo, hi) = (_mm512_set1_epi64(p.zc), _mm512_set1_epi64(p.lo), _mm512_set1_epi64(p.hi));
        let finish = |va: __m512i, vb: __m512i| {
            let total = _mm512_add_epi64(_mm512_mul_epi32(va, ma), _mm512_mul_epi32(vb, mb));
            let rounded = _mm512_add_epi64(_mm512_add_epi64(total, half), _mm512_srai_epi64::<63>(total));
            let y = _mm512_add_epi64(_mm512_sra_epi64(rounded, count), zc);
            _mm512_min_epi64(_mm512_max_epi64(y, lo), hi)
        };
        // a whole 8-bit output type and 11 ≤ bits ≤ 50: |total| < 2^41, so every result fits
        // i32, and zc·2^bits folds into the rounding constant without overflow (the shift's
        // floor moves by exactly zc); one saturating narrowing then clamps
        let narrow = match (p.lo, p.hi) {
            (-128, 127) => Some(true),
            (0, 255) => Some(false),
            _ => None,
        }
        .filter(|_| (11..=50).contains(&p.bits) && (-255..=255).contains(&p.zc));
        let half_zc = _mm512_set1_epi64(((1i64 << p.bits) >> 1) + if narrow.is_some() { p.zc << p.bits } else { 0 });
        let finish_narrow = |va: __m512i, vb: __m512i| {
            let total = _mm512_add_epi64(_mm512_mul_epi32(va, ma), _mm512_mul_epi32(vb, mb));
            _mm512_sra_epi64(_mm512_add_epi64(_mm512_add_epi64(total, half_zc), _mm512_srai_epi64::<63>(total)), count)
        };
        let mut j = 0;
        while j < n {
            let mask: __mmask16 = if n - j >= 16 { 0xffff } else { (1u16 << (n - j)) - 1 };
            // SAFETY: the masked loads and store touch only bytes j .. j + popcount(mask) ≤ n.
            unsafe {
                let va = _mm512_sub_epi32(widen(_mm_maskz_loadu_epi8(mask, a.as_ptr().add(j).cast()), a_signed), za);
                let vb = _mm512_sub_epi32(widen(_mm_maskz_loadu_epi8(mask, b.as_ptr().add(j).cast()), b_signed), zb);
                let (va_odd, vb_odd) = (_mm512_srli_epi64::<32>(va), _mm512_srli_epi64::<32>(vb));
                let bytes = match narrow {
                    Some(signed) => {
                        let both = _mm512_mask_blend_epi32(0xaaaa, finish_narrow(va, vb), _mm512_slli_epi64::<32>(finish_narrow(va_odd, vb_odd)));
                        if signed { _mm512_cvtsepi32_epi8(both) } else { _mm512_cvtusepi32_epi8(_mm512_max_epi32(both, _mm512_setzero_si512())) }
                    }
                    None => _mm512_cvtepi32_epi8(_mm512_mask_blend_epi32(0xaaaa, finish(va, vb), _mm512_slli_epi64::<32>(finish(va_odd, vb_odd)))),
                };
                _mm_mask_storeu_epi8(out.as_mut_ptr().add(j).cast(), mask, bytes);
            }
            j += 16;
        }
    }
}

#[inline(always)]
fn add_bytes_loop(p: AddParams, a: &[u8], a_signed: bool, b: &[u8], b_signed: bool, out: &mut [u8]) {
    #[inline(always)]
    fn each(p: AddParams, a: &[u8], b: &[u8], out: &mut [u8], fa: impl Fn(u8) -> i32, fb: impl Fn(u8) -> i32) {
        let n = out.len();
        let (a, b) = (&a[..n], &b[..n]);
        for i in 0..n {
            out[i] = add(p, fa(a[i]), fb(b[i]));
        }
    }
    let (s, u) = (|v: u8| v as i8 as i32, |v: u8| v as i32);
    match (a_signed, b_signed) {
        (true, true) => each(p, a, b, out, s, s),
        (true, false) => each(p, a, b, out, s, u),
        (false, true) => each(p, a, b, out, u, s),
        (false, false) => each(p, a, b, out, u, u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_ties_to_even_and_clamps() {
        let mut out = [0u8; 6];
        quantize(&[0.5, 1.5, -0.5, -2.5, 1e9, -1e9], 1.0, 0.0, -128.0, 127.0, &mut out).unwrap();
        assert_eq!(out.map(|b| b as i8), [0, 2, 0, -2, 127, -128]);
        assert!(quantize(&[f32::NAN], 1.0, 0.0, 0.0, 255.0, &mut out[..1]).is_err());
    }

    #[test]
    fn add_bytes_equals_add_on_every_path() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<u8> = (0..1000u32).map(|i| (i * 101 % 256) as u8).collect();
        for p in [
            AddParams { za: -128, ma: (1 << 31) - 1, zb: 127, mb: -(1 << 30), bits: 31, zc: 3, lo: -128, hi: 127 },
            AddParams { za: 255, ma: 12345, zb: 0, mb: 1 << 20, bits: 13, zc: 128, lo: 0, hi: 255 },
            AddParams { za: 0, ma: 3, zb: 1, mb: 1, bits: 1, zc: 0, lo: -128, hi: 127 },
            // the AVX-512 loop's narrowing case at its ends, signed and unsigned, and outside it
            AddParams { za: 7, ma: -((1 << 31) - 1), zb: -128, mb: (1 << 31) - 1, bits: 11, zc: -128, lo: -128, hi: 127 },
            AddParams { za: 0, ma: 1 << 30, zb: 200, mb: -(1 << 29), bits: 50, zc: 255, lo: 0, hi: 255 },
            AddParams { za: 3, ma: 1 << 20, zb: 9, mb: 1 << 21, bits: 10, zc: 40, lo: 0, hi: 255 },
        ] {
            for (sa, sb) in [(true, true), (false, true), (true, false), (false, false)] {
                let value = |v: u8, s: bool| if s { v as i8 as i32 } else { v as i32 };
                let expect: Vec<u8> = a.iter().zip(&b).map(|(&x, &y)| add(p, value(x, sa), value(y, sb))).collect();
                for path in Path::available() {
                    for n in [0, 1, 15, 16, 17, 1000] {
                        let mut out = vec![0u8; n];
                        add_bytes(path, p, &a[..n], sa, &b[..n], sb, &mut out);
                        assert_eq!(out, expect[..n], "{} n = {n}", path.name());
                    }
                }
            }
        }
    }

    #[test]
    fn add_rounds_once_half_away_from_zero() {
        // 3·(a − 1) + 1·(b − 0) over 2^1: ties go away from zero
        let p = AddParams { za: 1, ma: 3, zb: 0, mb: 1, bits: 1, zc: 0, lo: -128, hi: 127 };
        assert_eq!(add(p, 2, 0) as i8, 2); // 3/2 = 1.5 → 2
        assert_eq!(add(p, 0, 0) as i8, -2); // −3/2 → −2
        assert_eq!(add(p, 100, 100) as i8, 127); // (297 + 100)/2 clamps
    }
}
