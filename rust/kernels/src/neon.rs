//! aarch64 micro-kernels of the exact s8 × u8 → i32 GEMM ([`crate::gemm`]'s packed layout):
//! `neon` for cores without the dot product (Raspberry Pi 4's Cortex-A72) and `dotprod`
//! (`sdot`, Armv8.2's FEAT_DotProd: Pi 5's Cortex-A76 and most newer cores).
//!
//! Both multiply signed bytes only, so B's unsigned bytes are moved to s8 by flipping the
//! sign bit (`b − 128`, one `eor` per loaded vector, shared by every row of the tile); the
//! shift is undone with A's row sums: `Σ a·b = Σ a·(b − 128) + 128·Σ a`, wrapping i32 like
//! the other paths, so the result is the same bits as [`crate::gemm`]'s scalar path always.
//!
//! * `neon`: `smull`/`smull2` (8 × s8·s8 → i16 each; a product is at most 128·128 = 2^14,
//!   exact) then `sadalp` (pairs of i16 added into i32 lanes): never two products summed in
//!   16 bits, so nothing can saturate or wrap before the i32 accumulator.
//! * `dotprod`: `sdot v.4s, b.16b, a.4b[lane]`: four s8·s8 products summed into each i32
//!   lane, A's quad taken by lane from a register holding four quads of one row. Written
//!   with `asm!`: the `vdotq_laneq_s32` intrinsic is not stable in the Rust 1.85 that
//!   builds the aarch64 wheel (`.ci/arm64-kernels`); the instruction is enabled by the
//!   functions' `#[target_feature(enable = "dotprod")]`.
//!
//! One B vector is 16 bytes: four columns × one quad (`[column][4]`). Column blocks are 8
//! columns (two vectors), which divides [`LANES`], so no tile has a ragged edge in columns.

use crate::gemm::{PackedA, PackedB, LANES};
use std::arch::aarch64::*;
use std::arch::asm;

/// Columns per tile: two 16-byte vectors of four columns each.
const COLS: usize = 8;
const _: () = assert!(LANES % COLS == 0);

/// `128 · Σ_k A[r, k]` for each row (what the sign flip of B took away), wrapping.
fn flip_corrections(a: &PackedA) -> Vec<i32> {
    a.row_sums().iter().map(|s| s.wrapping_mul(128)).collect()
}

/// Checks what the tiles read and write through raw pointers.
fn check(a: &PackedA, b: &PackedB, c: &[i32]) {
    assert!(a.quads == b.quads && b.data.len() == b.quads * b.padded_cols * 4, "B is not packed for A");
    assert!(b.padded_cols % COLS == 0 && c.len() == a.m * b.padded_cols, "output has the wrong size");
}

/// Tiles of up to `MAX_MR` rows × [`COLS`] columns, dispatched to a const-sized kernel.
macro_rules! tiles {
    ($a:expr, $b:expr, $c:expr, $kernel:ident, $max_mr:expr, $($mr:literal)*) => {{
        let (a, b, c) = ($a, $b, $c);
        let fix = flip_corrections(a);
        for m0 in (0..a.m).step_by($max_mr) {
            for c0 in (0..b.padded_cols).step_by(COLS) {
                match ($max_mr as usize).min(a.m - m0) {
                    $( $mr => $kernel::<$mr>(a, b, c, m0, c0, &fix[m0..m0 + $mr]), )*
                    _ => unreachable!(),
                }
            }
        }
    }};
}

// -- plain NEON: smull + sadalp; MR ≤ 4 rows × 8 columns, 16 accumulators ------------------

const NEON_MR: usize = 4;

/// `c = A · B` with widening multiplies (Armv8-A NEON, every aarch64 CPU).
///
/// # Safety
/// The CPU has NEON (every aarch64 Linux CPU does; `Path::supported` checks it).
#[target_feature(enable = "neon")]
pub unsafe fn gemm_neon(a: &PackedA, b: &PackedB, c: &mut [i32]) {
    check(a, b, c);
    tiles!(a, b, c, neon_tile, NEON_MR, 1 2 3 4);
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn neon_tile<const MR: usize>(a: &PackedA, b: &PackedB, c: &mut [i32], m0: usize, c0: usize, fix: &[i32]) {
    let cols = b.padded_cols;
    let flip = vdupq_n_u8(0x80);
    let rows: [&[i8]; MR] = std::array::from_fn(|r| a.row(m0 + r));
    // per row and B vector: lanes (col 0 k01, col 0 k23, col 1 k01, col 1 k23) for the
    // vector's low half, the same for columns 2 and 3 from the high half
    let mut lo = [[vdupq_n_s32(0); 2]; MR];
    let mut hi = [[vdupq_n_s32(0); 2]; MR];
    for q in 0..a.quads {
        // SAFETY: `check`: quad q's row holds `cols` columns of 4 bytes and c0 + 8 ≤ cols.
        let bv: [int8x16_t; 2] = std::array::from_fn(|j| unsafe {
            vreinterpretq_s8_u8(veorq_u8(vld1q_u8(b.data.as_ptr().add((q * cols + c0 + 4 * j) * 4)), flip))
        });
        for r in 0..MR {
            // SAFETY: a row holds `quads` quads of 4 bytes.
            let quad = unsafe { rows[r].as_ptr().add(4 * q).cast::<i32>().read_unaligned() };
            let av = vreinterpretq_s8_s32(vdupq_n_s32(quad));
            for j in 0..2 {
                lo[r][j] = vpadalq_s16(lo[r][j], vmull_s8(vget_low_s8(bv[j]), vget_low_s8(av)));
                hi[r][j] = vpadalq_s16(hi[r][j], vmull_high_s8(bv[j], av));
            }
        }
    }
    for r in 0..MR {
        for j in 0..2 {
            let sums = vaddq_s32(vpaddq_s32(lo[r][j], hi[r][j]), vdupq_n_s32(fix[r]));
            let at = (m0 + r) * cols + c0 + 4 * j;
            // SAFETY: row m0 + r of c holds `cols` i32 and c0 + 4j + 4 ≤ cols.
            unsafe { vst1q_s32(c[at..at + 4].as_mut_ptr(), sums) };
        }
    }
}

// -- dot product: sdot by lane; MR ≤ 8 rows × 8 columns, 16 accumulators ---------------------

const DOT_MR: usize = 8;

/// `acc += Σ_4 b · a.4b[LANE]` per i32 lane: `sdot` by element.
macro_rules! sdot {
    ($acc:expr, $b:expr, $a:expr, $lane:literal) => {
        // SAFETY: register-only arithmetic; the caller's target features include dotprod.
        unsafe {
            asm!(concat!("sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[", $lane, "]"),
                 acc = inout(vreg) $acc, b = in(vreg) $b, a = in(vreg) $a,
                 options(pure, nomem, nostack, preserves_flags))
        }
    };
}

/// `c = A · B` with `sdot` (FEAT_DotProd).
///
/// # Safety
/// The CPU has NEON and the dot product instructions (`Path::supported` checks both).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn gemm_dotprod(a: &PackedA, b: &PackedB, c: &mut [i32]) {
    check(a, b, c);
    tiles!(a, b, c, dot_tile, DOT_MR, 1 2 3 4 5 6 7 8);
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_tile<const MR: usize>(a: &PackedA, b: &PackedB, c: &mut [i32], m0: usize, c0: usize, fix: &[i32]) {
    let cols = b.padded_cols;
    let flip = vdupq_n_u8(0x80);
    let rows: [&[i8]; MR] = std::array::from_fn(|r| a.row(m0 + r));
    // B's two vectors (8 columns) of quad q, as s8
    let load_b = |q: usize| -> [int8x16_t; 2] {
        // SAFETY: `check`: quad q's row holds `cols` columns of 4 bytes and c0 + 8 ≤ cols.
        std::array::from_fn(|j| unsafe {
            vreinterpretq_s8_u8(veorq_u8(vld1q_u8(b.data.as_ptr().add((q * cols + c0 + 4 * j) * 4)), flip))
        })
    };
    let mut acc = [[vdupq_n_s32(0); 2]; MR];
    let mut q = 0;
    while q + 4 <= a.quads {
        // one register per row holds its quads q .. q + 4, taken by lane
        // SAFETY: a row holds `quads` quads of 4 bytes and q + 4 ≤ quads.
        let av: [int8x16_t; MR] = std::array::from_fn(|r| unsafe { vld1q_s8(rows[r].as_ptr().add(4 * q)) });
        macro_rules! step {
            ($lane:literal) => {{
                let bv = load_b(q + $lane);
                for r in 0..MR {
                    for j in 0..2 {
                        sdot!(acc[r][j], bv[j], av[r], $lane);
                    }
                }
            }};
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        q += 4;
    }
    for q in q..a.quads {
        let bv = load_b(q);
        for r in 0..MR {
            // SAFETY: a row holds `quads` quads of 4 bytes.
            let av = vreinterpretq_s8_s32(vdupq_n_s32(unsafe { rows[r].as_ptr().add(4 * q).cast::<i32>().read_unaligned() }));
            for j in 0..2 {
                sdot!(acc[r][j], bv[j], av, 0);
            }
        }
    }
    for r in 0..MR {
        for j in 0..2 {
            let at = (m0 + r) * cols + c0 + 4 * j;
            // SAFETY: row m0 + r of c holds `cols` i32 and c0 + 4j + 4 ≤ cols.
            unsafe { vst1q_s32(c[at..at + 4].as_mut_ptr(), vaddq_s32(acc[r][j], vdupq_n_s32(fix[r]))) };
        }
    }
}

// -- the requantising store ---------------------------------------------------------------

/// One row's requantisation constants in NEON registers, for `requant::requantize_row` on
/// the aarch64 paths: [`crate::requant::requantize`] 8 values per step, the same bits.
pub struct RequantRow {
    base: int32x4_t,
    za: int32x4_t,
    mult: int32x4_t,
    half: int64x2_t,
    shift: int64x2_t,
    zp: int32x4_t,
    lo: int32x4_t,
    hi: int32x4_t,
    scalar: crate::requant::RowRequant,
    za_scalar: i32,
}

/// How far the zero-point and the clamp bounds may lie from 0 for [`RequantRow`]: then a
/// rounded value narrowed to i32 with saturation, plus the zero-point (saturating), clamps
/// to the same bound as the exact i64 value would (real models have |zp|, |lo|, |hi| ≤ 255).
const RANGE: i64 = 1 << 29;

impl RequantRow {
    /// None when the row's constants lie outside what the vector store handles exactly.
    pub fn new(q: &crate::requant::RowRequant, za: i32) -> Option<RequantRow> {
        let small = |v: i64| (-RANGE..=RANGE).contains(&v);
        if !(small(q.zero_point) && small(q.lo) && small(q.hi) && q.bits <= 62 && (0..1 << 31).contains(&q.mult)) {
            return None;
        }
        // SAFETY: NEON is part of every aarch64 target this crate builds for.
        unsafe {
            Some(RequantRow {
                base: vdupq_n_s32(q.base),
                za: vdupq_n_s32(za),
                mult: vdupq_n_s32(q.mult as i32),
                half: vdupq_n_s64((1i64 << q.bits) >> 1),
                shift: vdupq_n_s64(-(q.bits as i64)),
                zp: vdupq_n_s32(q.zero_point as i32),
                lo: vdupq_n_s32(q.lo as i32),
                hi: vdupq_n_s32(q.hi as i32),
                scalar: *q,
                za_scalar: za,
            })
        }
    }

    /// `(p + 2^(bits−1) − [p < 0]) >> bits` of two exact products `p = v·m` (`smull`, `sshl`
    /// by −bits: an arithmetic shift right).
    #[inline(always)]
    unsafe fn round(&self, prod: int64x2_t) -> int64x2_t {
        vshlq_s64(vaddq_s64(vaddq_s64(prod, self.half), vshrq_n_s64::<63>(prod)), self.shift)
    }

    /// Four corrected accumulators → four requantised values in i32 lanes.
    #[inline(always)]
    unsafe fn four(&self, v: int32x4_t) -> int32x4_t {
        let lo = self.round(vmull_s32(vget_low_s32(v), vget_low_s32(self.mult)));
        let hi = self.round(vmull_high_s32(v, self.mult));
        let y = vqaddq_s32(vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi)), self.zp);
        vminq_s32(vmaxq_s32(y, self.lo), self.hi)
    }

    /// `out[j] = requantize(acc[j] + base − za·sums[j])` as bytes, 8 per step, the last few
    /// through the scalar formula.
    pub fn store(&self, acc: &[i32], sums: Option<&[i32]>, out: &mut [u8]) {
        let n = acc.len();
        assert!(out.len() == n && sums.is_none_or(|s| s.len() == n));
        let whole = n / 8 * 8;
        for j in (0..whole).step_by(8) {
            // SAFETY: j + 8 ≤ n for each load and the store; NEON is baseline on aarch64.
            unsafe {
                let mut v: [int32x4_t; 2] = std::array::from_fn(|h| vaddq_s32(vld1q_s32(acc.as_ptr().add(j + 4 * h)), self.base));
                if let Some(s) = sums {
                    v = std::array::from_fn(|h| vmlsq_s32(v[h], self.za, vld1q_s32(s.as_ptr().add(j + 4 * h))));
                }
                let y = vcombine_s16(vmovn_s32(self.four(v[0])), vmovn_s32(self.four(v[1])));
                vst1_u8(out.as_mut_ptr().add(j), vreinterpret_u8_s8(vmovn_s16(y)));
            }
        }
        let q = &self.scalar;
        for j in whole..n {
            let za = sums.map_or(0, |s| self.za_scalar.wrapping_mul(s[j]));
            let v = acc[j].wrapping_add(q.base).wrapping_sub(za);
            out[j] = crate::requant::requantize(v, q.mult, q.bits, q.zero_point, q.lo, q.hi) as u8;
        }
    }
}
