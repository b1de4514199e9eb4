//! Exact s8 × u8 → i32 GEMM: `C[m, p] = Σ_k A[m, k] · B[k, p]`, wrapping i32 sums.
//!
//! A (the weights, signed bytes) is read row by row, four `k` at a time (a "quad",
//! broadcast to every lane); B (the activations, unsigned bytes) is packed so that one
//! 32-bit lane holds the quad `B[4q..4q+4, p]` of one column: `[q][p][4]`, columns padded
//! to a multiple of 16 (one zmm of lanes). This is the operand order of `vpdpbusd`
//! (u8 × s8, four products summed into each i32 lane). Signed activations reach u8 by
//! flipping the sign bit (`x + 128`); the callers undo that shift exactly with the
//! row sums of A (see `conv` and `fc`).
//!
//! Sums wrap modulo 2^32 on every path, so each path returns the exact sum whenever it
//! fits i32 (`|Σ| ≤ 128·255·K`, so for K < 65,794) and the same bits as the others always.

use crate::path::Path;

/// Lanes of one packed column group (a zmm of i32).
pub const LANES: usize = 16;

/// The left operand: `m` rows of `k` signed bytes, each row zero-padded to whole quads
/// (borrowed as it is when it already has that form: int8 weights with `k % 4 == 0`).
pub struct PackedA<'a> {
    pub m: usize,
    pub k: usize,
    pub quads: usize,
    data: std::borrow::Cow<'a, [i8]>,
}

impl<'a> PackedA<'a> {
    /// From `m` rows of `k` bytes, row-major; `flip` moves uint8 to s8 (`b − 128`).
    pub fn new(bytes: &'a [u8], m: usize, k: usize, flip: bool) -> PackedA<'a> {
        assert_eq!(bytes.len(), m * k);
        let quads = k.div_ceil(4);
        if !flip && k % 4 == 0 {
            // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid in both.
            let data = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) };
            return PackedA { m, k, quads, data: std::borrow::Cow::Borrowed(data) };
        }
        let mut data = vec![0i8; m * quads * 4];
        for (row, src) in data.chunks_exact_mut(quads * 4).zip(bytes.chunks_exact(k.max(1))) {
            for (d, &s) in row.iter_mut().zip(src) {
                *d = (if flip { s ^ 0x80 } else { s }) as i8;
            }
        }
        PackedA { m, k, quads, data: std::borrow::Cow::Owned(data) }
    }

    /// The same operand owning its bytes (to keep it beyond the bytes it was made from).
    pub fn into_owned(self) -> PackedA<'static> {
        PackedA { m: self.m, k: self.k, quads: self.quads, data: std::borrow::Cow::Owned(self.data.into_owned()) }
    }

    pub fn row(&self, r: usize) -> &[i8] {
        &self.data[r * self.quads * 4..(r + 1) * self.quads * 4]
    }

    /// `Σ_k A[r, k]` for each row (what the +128 shift of B adds to each output, per unit).
    pub fn row_sums(&self) -> Vec<i32> {
        (0..self.m).map(|r| self.row(r).iter().map(|&v| v as i32).sum()).collect()
    }
}

/// The right operand: `k` rows of `cols` unsigned bytes in `[quad][column][4]` order,
/// columns padded to `padded_cols` (a multiple of [`LANES`]); padding is zero.
pub struct PackedB {
    pub k: usize,
    pub quads: usize,
    pub cols: usize,
    pub padded_cols: usize,
    pub data: Vec<u8>,
}

impl PackedB {
    pub fn zeros(k: usize, cols: usize) -> PackedB {
        let quads = k.div_ceil(4);
        let padded_cols = cols.div_ceil(LANES) * LANES;
        PackedB { k, quads, cols, padded_cols, data: vec![0u8; quads * padded_cols * 4] }
    }

    /// The packed bytes of quad `q`: `[column][4]`.
    pub fn quad_mut(&mut self, q: usize) -> &mut [u8] {
        let n = self.padded_cols * 4;
        &mut self.data[q * n..(q + 1) * n]
    }

    /// `Σ_k B[k, p]` for each real column (needed only when A has a zero-point).
    pub fn col_sums(&self) -> Vec<i32> {
        let mut sums = vec![0i32; self.cols];
        for quad in self.data.chunks_exact(self.padded_cols * 4) {
            for (s, lane) in sums.iter_mut().zip(quad.chunks_exact(4)) {
                *s += lane.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
        sums
    }
}

/// `c = A · B`, row-major `m × padded_cols` (padding columns hold garbage-free zeros of B).
pub fn gemm(path: Path, a: &PackedA, b: &PackedB, c: &mut [i32]) {
    assert_eq!(a.quads, b.quads, "inner dimensions differ");
    assert_eq!(c.len(), a.m * b.padded_cols, "output has the wrong size");
    assert!(path.supported(), "kernel path {} is not supported by this CPU", path.name());
    match path {
        Path::Scalar => scalar(a, b, c),
        // SAFETY (both): `path.supported()` checked the CPU features each function enables.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::avx2(a, b, c) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => unsafe { x86::avx512_vnni(a, b, c) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { crate::neon::gemm_neon(a, b, c) },
        #[cfg(target_arch = "aarch64")]
        Path::Dotprod => unsafe { crate::neon::gemm_dotprod(a, b, c) },
        _ => unreachable!("kernel path {} is not built for this architecture", path.name()),
    }
}

/// `c = A · B` for a B that is never packed: quad `q` of column `p` is the four bytes at
/// `src[offsets[q] + 4p ..]` (a direct convolution reads them from channel-interleaved
/// input, one offset per (channel quad, kernel row, kernel column)). `cols` is a multiple
/// of [`LANES`]; `c` is row-major `m × cols`.
pub fn gemm_direct(path: Path, a: &PackedA, src: &[u8], offsets: &[usize], cols: usize, c: &mut [i32]) {
    assert_eq!(a.quads, offsets.len(), "one offset per quad");
    assert!(cols % LANES == 0 && c.len() == a.m * cols, "output has the wrong size");
    assert!(offsets.iter().all(|&o| o + 4 * cols <= src.len()), "a quad reads past the source");
    assert!(path.supported(), "kernel path {} is not supported by this CPU", path.name());
    match path {
        // SAFETY: the CPU features are checked above, the reads by the asserts.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => unsafe { x86::avx512_vnni_direct(a, src, offsets, cols, c) },
        _ => {
            for (r, out) in c.chunks_exact_mut(cols).enumerate() {
                out.fill(0);
                for (quad_a, &o) in a.row(r).chunks_exact(4).zip(offsets) {
                    let w = [quad_a[0] as i32, quad_a[1] as i32, quad_a[2] as i32, quad_a[3] as i32];
                    for (v, lane) in out.iter_mut().zip(src[o..o + 4 * cols].chunks_exact(4)) {
                        let dot = w[0] * lane[0] as i32 + w[1] * lane[1] as i32 + w[2] * lane[2] as i32 + w[3] * lane[3] as i32;
                        *v = v.wrapping_add(dot);
                    }
                }
            }
        }
    }
}

/// The reference: a dot product per output, written so the compiler can vectorise over columns.
fn scalar(a: &PackedA, b: &PackedB, c: &mut [i32]) {
    let cols = b.padded_cols;
    for (r, out) in c.chunks_exact_mut(cols).enumerate() {
        out.fill(0);
        for (quad_a, quad_b) in a.row(r).chunks_exact(4).zip(b.data.chunks_exact(cols * 4)) {
            let w = [quad_a[0] as i32, quad_a[1] as i32, quad_a[2] as i32, quad_a[3] as i32];
            for (o, lane) in out.iter_mut().zip(quad_b.chunks_exact(4)) {
                let dot = w[0] * lane[0] as i32 + w[1] * lane[1] as i32 + w[2] * lane[2] as i32 + w[3] * lane[3] as i32;
                *o = o.wrapping_add(dot);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Register-tiled micro-kernels: an `MR × (NV vectors)` block of C stays in registers
    //! while the whole inner dimension streams through.
    use super::{PackedA, PackedB, LANES};
    use std::arch::x86_64::*;

    /// A's quad `q` of row `r`, as one i32 (four signed bytes).
    #[inline(always)]
    fn quad(a: &PackedA, r: usize, q: usize) -> i32 {
        assert!(r < a.m && q < a.quads);
        // SAFETY: rows hold `quads · 4` bytes (checked above), so bytes 4q..4q+4 of row r lie inside.
        unsafe { a.data.as_ptr().add((r * a.quads + q) * 4).cast::<i32>().read_unaligned() }
    }

    // -- AVX-512 VNNI: MR ≤ 6 rows × NV ≤ 4 zmm (64 columns), 24 accumulators ----------------

    const VNNI_MR: usize = 6;
    const VNNI_NV: usize = 4;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn avx512_vnni(a: &PackedA, b: &PackedB, c: &mut [i32]) {
        let vectors = b.padded_cols / LANES;
        for m0 in (0..a.m).step_by(VNNI_MR) {
            let mr = VNNI_MR.min(a.m - m0);
            for v0 in (0..vectors).step_by(VNNI_NV) {
                let nv = VNNI_NV.min(vectors - v0);
                macro_rules! tile {
                    ($($mr:literal)*) => { match (mr, nv) {
                        $( ($mr, 1) => vnni_tile::<$mr, 1>(a, b, c, m0, v0),
                           ($mr, 2) => vnni_tile::<$mr, 2>(a, b, c, m0, v0),
                           ($mr, 3) => vnni_tile::<$mr, 3>(a, b, c, m0, v0),
                           ($mr, 4) => vnni_tile::<$mr, 4>(a, b, c, m0, v0), )*
                        _ => unreachable!(),
                    } };
                }
                tile!(1 2 3 4 5 6);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_tile<const MR: usize, const NV: usize>(a: &PackedA, b: &PackedB, c: &mut [i32], m0: usize, v0: usize) {
        let cols = b.padded_cols;
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        for (q, quad_b) in b.data.chunks_exact(cols * 4).enumerate() {
            // SAFETY: v0 + NV ≤ cols / 16, so each 64-byte load lies inside this quad's row.
            let bv: [__m512i; NV] =
                std::array::from_fn(|j| unsafe { _mm512_loadu_si512(quad_b.as_ptr().add((v0 + j) * 64).cast()) });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(quad(a, m0 + r, q));
                for (acc_rj, bvj) in acc_r.iter_mut().zip(&bv) {
                    *acc_rj = _mm512_dpbusd_epi32(*acc_rj, *bvj, av); // u8 (B) × s8 (A), wrapping
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let row = &mut c[(m0 + r) * cols + v0 * LANES..(m0 + r) * cols + (v0 + NV) * LANES];
            for (j, v) in acc_r.iter().enumerate() {
                // SAFETY: `row` holds NV·16 i32, this store writes 16 of them.
                unsafe { _mm512_storeu_si512(row.as_mut_ptr().add(j * LANES).cast(), *v) };
            }
        }
    }

    /// [`super::gemm_direct`] with the tiles of [`avx512_vnni`]. Callers checked that every
    /// quad's `cols` columns lie inside `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn avx512_vnni_direct(a: &PackedA, src: &[u8], offsets: &[usize], cols: usize, c: &mut [i32]) {
        let vectors = cols / LANES;
        for m0 in (0..a.m).step_by(VNNI_MR) {
            let mr = VNNI_MR.min(a.m - m0);
            for v0 in (0..vectors).step_by(VNNI_NV) {
                let nv = VNNI_NV.min(vectors - v0);
                macro_rules! tile {
                    ($($mr:literal)*) => { match (mr, nv) {
                        $( ($mr, 1) => direct_tile::<$mr, 1>(a, src, offsets, cols, c, m0, v0),
                           ($mr, 2) => direct_tile::<$mr, 2>(a, src, offsets, cols, c, m0, v0),
                           ($mr, 3) => direct_tile::<$mr, 3>(a, src, offsets, cols, c, m0, v0),
                           ($mr, 4) => direct_tile::<$mr, 4>(a, src, offsets, cols, c, m0, v0), )*
                        _ => unreachable!(),
                    } };
                }
                // SAFETY: as this function's.
                unsafe { tile!(1 2 3 4 5 6) };
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn direct_tile<const MR: usize, const NV: usize>(a: &PackedA, src: &[u8], offsets: &[usize], cols: usize, c: &mut [i32], m0: usize, v0: usize) {
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        for (q, &o) in offsets.iter().enumerate() {
            // SAFETY: o + 4·cols ≤ src.len() (the caller's check) and (v0 + NV)·64 ≤ 4·cols.
            let bv: [__m512i; NV] = std::array::from_fn(|j| unsafe { _mm512_loadu_si512(src.as_ptr().add(o + (v0 + j) * 64).cast()) });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(quad(a, m0 + r, q));
                for (acc_rj, bvj) in acc_r.iter_mut().zip(&bv) {
                    *acc_rj = _mm512_dpbusd_epi32(*acc_rj, *bvj, av);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let row = &mut c[(m0 + r) * cols + v0 * LANES..(m0 + r) * cols + (v0 + NV) * LANES];
            for (j, v) in acc_r.iter().enumerate() {
                // SAFETY: `row` holds NV·16 i32, this store writes 16 of them.
                unsafe { _mm512_storeu_si512(row.as_mut_ptr().add(j * LANES).cast(), *v) };
            }
        }
    }

    // -- AVX2: bytes widened to i16, vpmaddwd; MR ≤ 4 rows × 8 columns ----------------------

    const AVX2_MR: usize = 4;

    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2(a: &PackedA, b: &PackedB, c: &mut [i32]) {
        for m0 in (0..a.m).step_by(AVX2_MR) {
            for c0 in (0..b.padded_cols).step_by(8) {
                match AVX2_MR.min(a.m - m0) {
                    1 => avx2_tile::<1>(a, b, c, m0, c0),
                    2 => avx2_tile::<2>(a, b, c, m0, c0),
                    3 => avx2_tile::<3>(a, b, c, m0, c0),
                    4 => avx2_tile::<4>(a, b, c, m0, c0),
                    _ => unreachable!(),
                }
            }
        }
    }

    /// Each ymm holds 4 columns × 4 k as i16; `vpmaddwd` leaves two partial sums per
    /// column (k0+k1, k2+k3), added pairwise once at the end. Exact: |pair sum| ≤ 2·128·255.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_tile<const MR: usize>(a: &PackedA, b: &PackedB, c: &mut [i32], m0: usize, c0: usize) {
        let cols = b.padded_cols;
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for (q, quad_b) in b.data.chunks_exact(cols * 4).enumerate() {
            // SAFETY: c0 + 8 ≤ cols, so both 16-byte loads (columns c0..c0+8) lie inside the row.
            let bv: [__m256i; 2] = std::array::from_fn(|j| unsafe {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(quad_b.as_ptr().add((c0 + 4 * j) * 4).cast()))
            });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_cvtepi8_epi16(_mm_set1_epi32(quad(a, m0 + r, q)));
                for (acc_rj, bvj) in acc_r.iter_mut().zip(&bv) {
                    *acc_rj = _mm256_add_epi32(*acc_rj, _mm256_madd_epi16(*bvj, av));
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            // hadd gives columns (0 1 4 5 | 2 3 6 7); the 64-bit permute restores 0..8
            let sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc_r[0], acc_r[1]), 0b11_01_10_00);
            let out = &mut c[(m0 + r) * cols + c0..(m0 + r) * cols + c0 + 8];
            // SAFETY: `out` holds exactly the 8 i32 this store writes.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), sums) };
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64), so tests need no crate.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^ (z >> 31)
        }
        pub fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    #[test]
    fn every_path_equals_the_i64_sum() {
        let mut rng = Rng(7);
        for &(m, k, cols) in &[(1, 1, 1), (6, 25, 50), (7, 150, 33), (13, 3, 17), (16, 400, 64), (5, 1027, 100)] {
            // extremes included: A at -128 and 127, B at 0 and 255
            let av: Vec<i8> = (0..m * k).map(|i| if i % 7 == 0 { -128 } else { rng.byte() as i8 }).collect();
            let bv: Vec<u8> = (0..k * cols).map(|i| if i % 5 == 0 { 255 } else { rng.byte() }).collect();
            let a_bytes: Vec<u8> = av.iter().map(|&v| v as u8).collect();
            let a = PackedA::new(&a_bytes, m, k, false);
            let mut b = PackedB::zeros(k, cols);
            for kk in 0..k {
                let quad = b.quad_mut(kk / 4);
                for p in 0..cols {
                    quad[p * 4 + kk % 4] = bv[kk * cols + p];
                }
            }
            for path in Path::available() {
                let mut c = vec![0i32; m * b.padded_cols];
                gemm(path, &a, &b, &mut c);
                for r in 0..m {
                    for p in 0..cols {
                        let exact: i64 = (0..k).map(|kk| av[r * k + kk] as i64 * bv[kk * cols + p] as i64).sum();
                        assert_eq!(c[r * b.padded_cols + p] as i64, exact, "{} at ({r}, {p}) of {m}×{k}×{cols}", path.name());
                    }
                }
            }
        }
    }
}
