//! The element-wise integer ops: QuantizeLinear at the graph's input (float32 → 8 bits)
//! and QLinearAdd, each with `runtime/` arithmetic bit for bit.

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
    let total = p.ma * (a as i64 - p.za) + p.mb * (b as i64 - p.zb);
    let rounded = (total + ((1i64 << p.bits) >> 1) - (total < 0) as i64) >> p.bits;
    (rounded + p.zc).clamp(p.lo, p.hi) as u8
}

/// [`add`] over two byte arrays of one length (`*_signed`: int8, else uint8).
#[inline(always)]
pub fn add_bytes(p: AddParams, a: &[u8], a_signed: bool, b: &[u8], b_signed: bool, out: &mut [u8]) {
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
    fn add_rounds_once_half_away_from_zero() {
        // 3·(a − 1) + 1·(b − 0) over 2^1: ties go away from zero
        let p = AddParams { za: 1, ma: 3, zb: 0, mb: 1, bits: 1, zc: 0, lo: -128, hi: 127 };
        assert_eq!(add(p, 2, 0) as i8, 2); // 3/2 = 1.5 → 2
        assert_eq!(add(p, 0, 0) as i8, -2); // −3/2 → −2
        assert_eq!(add(p, 100, 100) as i8, 127); // (297 + 100)/2 clamps
    }
}
