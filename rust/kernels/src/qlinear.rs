//! The integer layers: QLinearConv (im2col into packed columns, then the GEMM) and the
//! fully connected QGemm / QLinearMatMul, each with the correction, bias and
//! requantisation fused into the store.
//!
//! Both read 8-bit tensors of either signedness. The GEMM wants the weights as s8 and
//! the activations as u8, so an int8 activation is flipped to `x + 128` (its sign bit)
//! with the zero-point moved by 128, and a uint8 weight to `w − 128`; [`Correction`]
//! then removes the zero-points exactly (`Σ(a − za)(u − zu) = Σau − zu·Σa − za·Σu + K·za·zu`).

use crate::gemm::{gemm, gemm_direct, PackedA, PackedB, LANES};
use crate::path::Path;
use crate::requant::{store_accumulators, store_requantized, store_segments, Correction, Requant, Run};

/// A tensor of 8-bit integers as bytes, and whether they are int8 (else uint8).
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    pub data: &'a [u8],
    pub signed: bool,
}

impl Bytes<'_> {
    /// A zero-point in the s8 form.
    fn s8_zero(&self, zp: i32) -> i32 {
        if self.signed { zp } else { zp - 128 }
    }
    /// The byte that encodes value `b` as u8 (int8 moves up by 128: its sign bit flips).
    #[inline(always)]
    fn u8_of(&self, b: u8) -> u8 {
        if self.signed { b ^ 0x80 } else { b }
    }
    /// A zero-point in the u8 form.
    fn u8_zero(&self, zp: i32) -> i32 {
        if self.signed { zp + 128 } else { zp }
    }
}

/// The requantised 8-bit output (bytes), or the int32 accumulators themselves.
pub enum Output<'a> {
    Requantized(&'a Requant, &'a mut [u8]),
    Accumulators(&'a mut [i32]),
}

fn finish(path: Path, c: &mut [i32], b: &PackedB, fix: &Correction, runs: &[Run], out: &mut Output) {
    match out {
        Output::Requantized(rq, bytes) => store_requantized(path, c, b.padded_cols, fix, fix.col_sums(b).as_deref(), rq, runs, bytes),
        Output::Accumulators(acc) => {
            fix.apply(c, b);
            store_accumulators(c, b.padded_cols, runs, acc)
        }
    }
}

/// The weights of the fully connected layer, `(n × k)` row-major, per-row zero-points.
pub struct Weights<'a> {
    pub bytes: Bytes<'a>,
    pub zero_points: &'a [i32],
    pub bias: Option<&'a [i32]>,
}

impl Weights<'_> {
    fn packed(&self, rows: std::ops::Range<usize>, k: usize) -> (PackedA<'_>, Vec<i32>) {
        let a = PackedA::new(&self.bytes.data[rows.start * k..rows.end * k], rows.len(), k, !self.bytes.signed);
        let za = rows.map(|r| self.bytes.s8_zero(self.zero_points[r])).collect();
        (a, za)
    }
}

/// `y = x · wᵀ (+ bias)` for `x (rows × k)` and weights `(n × k)`; `out` is `(rows × n)`.
pub fn fully_connected(path: Path, x: Bytes, x_zp: i32, rows: usize, k: usize, w: &Weights, n: usize, mut out: Output) {
    assert_eq!(x.data.len(), rows * k);
    assert_eq!(w.bytes.data.len(), n * k);
    let (a, za) = w.packed(0..n, k);
    let fix = Correction::new(&a, &za, x.u8_zero(x_zp), w.bias);
    let mut b = PackedB::zeros(k, rows);
    let stride = b.padded_cols * 4;
    crate::path::vectorized(path, #[inline(always)] || {
        for (p, src) in x.data.chunks_exact(k.max(1)).enumerate() {
            // each quad of a row lands in its own quad row of B, at column p
            for (q, quad) in src.chunks(4).enumerate() {
                for (t, &v) in quad.iter().enumerate() {
                    b.data[q * stride + p * 4 + t] = x.u8_of(v);
                }
            }
        }
    });
    let mut c = vec![0i32; n * b.padded_cols];
    gemm(path, &a, &b, &mut c);
    let runs: Vec<Run> = (0..n).map(|r| Run { row: r, channel: r, cols: 0..rows, start: r, stride: n }).collect();
    finish(path, &mut c, &b, &fix, &runs, &mut out);
}

/// A fully connected layer's weights `(n × k)` packed once as the GEMM's right operand
/// (u8, `[quad][output][4]`): the output channels run across the vector lanes, so a small
/// batch still fills them and the product comes out row-major, as the layer's output is
/// stored. Int8 weights become u8 by flipping the sign bit (`w + 128`, zero-point moved
/// alike); activations then take the s8 side (uint8 ones flipped to `x − 128`).
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    pub signed: bool,
    b: PackedB,
    /// `Σ_k` of each output's packed (u8) weights
    col_sums: Vec<i32>,
    /// the weights as packed (a compare with them is one memcmp, where the strided packed
    /// layout would cost as much as packing)
    source: Vec<u8>,
}

impl PackedWeights {
    pub fn new(w: Bytes, n: usize, k: usize) -> PackedWeights {
        assert_eq!(w.data.len(), n * k);
        let mut packed = PackedWeights { n, k, signed: w.signed, b: PackedB::zeros(k, n), col_sums: Vec::new(), source: Vec::new() };
        packed.pack(w);
        packed
    }

    fn pack(&mut self, w: Bytes) {
        self.source.clear();
        self.source.extend_from_slice(w.data);
        let stride = self.b.padded_cols * 4;
        for (p, row) in w.data.chunks_exact(self.k.max(1)).enumerate().take(self.n) {
            for (kk, &v) in row.iter().enumerate() {
                self.b.data[(kk / 4) * stride + p * 4 + kk % 4] = w.u8_of(v);
            }
        }
        self.col_sums = self.b.col_sums();
    }

    /// Whether `w` (the same shape and signedness) is what is packed, byte for byte.
    pub fn holds(&self, w: Bytes) -> bool {
        w.signed == self.signed && w.data == &self.source[..]
    }

    /// Packs `w` again unless it is what is packed (training changes weights in place);
    /// true when it repacked.
    pub fn refresh(&mut self, w: Bytes) -> bool {
        if self.holds(w) {
            return false;
        }
        assert_eq!(w.signed, self.signed, "weights changed signedness");
        self.pack(w);
        true
    }
}

/// `y = x · wᵀ (+ bias)` for `x (rows × k)` and packed weights `(n × k)` with per-output
/// zero-points; `out` is `(rows × n)`. The same accumulators as [`fully_connected`]:
/// `Σ (x − zx)(w − zw) = Σ x₈·w₈ − zw₈·Σx₈ − zx₈·Σw₈ + k·zx₈·zw₈` in the s8 (x) and u8 (w) forms.
pub fn fully_connected_packed(path: Path, x: Bytes, x_zp: i32, rows: usize, w: &PackedWeights, zero_points: &[i32], bias: Option<&[i32]>, out: Output) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.data.len(), rows * k);
    assert!(zero_points.len() == n && bias.is_none_or(|b| b.len() == n));
    let a = PackedA::new(x.data, rows, k, !x.signed);
    let zx = x.s8_zero(x_zp);
    let zw: Vec<i32> = zero_points.iter().map(|&z| if w.signed { z + 128 } else { z }).collect();
    let base: Vec<i32> = (0..n)
        .map(|p| {
            let b = bias.map_or(0, |b| b[p]);
            b.wrapping_sub(zx.wrapping_mul(w.col_sums[p])).wrapping_add((k as i32).wrapping_mul(zx).wrapping_mul(zw[p]))
        })
        .collect();
    let row_sums = a.row_sums();
    let pn = w.b.padded_cols;
    let mut c = vec![0i32; rows * pn];
    gemm(path, &a, &w.b, &mut c);
    crate::path::vectorized(path, #[inline(always)] || match out {
        Output::Requantized(rq, bytes) => {
            let each = |v: &[i32]| (0..n).map(|p| v[if v.len() == 1 { 0 } else { p }]).collect::<Vec<_>>();
            let mult: Vec<i64> = each(&rq.mult).into_iter().map(i64::from).collect();
            let bits: Vec<u64> = rq.bits.iter().map(|&b| b as u64).collect::<Vec<_>>();
            let bits: Vec<u64> = (0..n).map(|p| bits[if bits.len() == 1 { 0 } else { p }]).collect();
            let (zp, lo, hi) = (rq.zero_point, rq.lo, rq.hi);
            let half: Vec<i64> = bits.iter().map(|&b| (1i64 << b) >> 1).collect();
            for ((row, dst), &rs) in c.chunks_exact(pn).zip(bytes.chunks_exact_mut(n)).zip(&row_sums) {
                let per_output = base.iter().zip(&zw).zip(mult.iter().zip(&bits).zip(&half));
                for ((d, &v), ((&b, &z), ((&m, &s), &h))) in dst.iter_mut().zip(row).zip(per_output) {
                    let prod = v.wrapping_add(b).wrapping_sub(z.wrapping_mul(rs)) as i64 * m;
                    *d = (((prod + h - (prod < 0) as i64) >> s) + zp).clamp(lo, hi) as u8; // requant::requantize
                }
            }
        }
        Output::Accumulators(acc) => {
            for ((row, dst), &rs) in c.chunks_exact(pn).zip(acc.chunks_exact_mut(n)).zip(&row_sums) {
                for ((d, &v), (&b, &z)) in dst.iter_mut().zip(row).zip(base.iter().zip(&zw)) {
                    *d = v.wrapping_add(b).wrapping_sub(z.wrapping_mul(rs));
                }
            }
        }
    })
}

/// A 2-D convolution's shape: NCHW input, `(m, c / group, kh, kw)` weights, and the
/// window as `runtime/kernels/_window.py` resolves it (`pads` = top, left, bottom, right).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub out_hw: [usize; 2],
    pub group: usize,
}

/// The padded input is built for a block of images holding at most about this many bytes.
pub const PADDED_BLOCK_BYTES: usize = 1 << 16;
/// A tile's packed columns hold about this many bytes (with its int32 product, they stay in
/// the L1/L2 caches between im2col, the GEMM and the requantising store).
pub const TILE_BYTES: usize = 1 << 15;

/// Columns per tile for `quads` quads of patch rows: a multiple of 64 (whole VNNI tiles),
/// at most the `cols` there are (rounded up to whole lanes).
pub fn tile_cols(quads: usize, cols: usize) -> usize {
    let per_col = 4 * quads.max(1);
    (TILE_BYTES / per_col / 64 * 64).max(64).min(cols.div_ceil(LANES) * LANES)
}

/// Images per block of the padded input.
pub fn padded_block(cg: usize, ph: usize, pw: usize, n: usize) -> usize {
    (PADDED_BLOCK_BYTES / (cg * ph * pw).max(1)).clamp(1, n.max(1))
}

/// QLinearConv: `out` is `(n, m, oh, ow)`; weights `(m, c/group, kh, kw)` row-major.
///
/// An implicit GEMM over tiles of output columns: for each tile, im2col builds its packed
/// columns (a few tens of KB), the GEMM multiplies all of the group's output channels into
/// an int32 tile, and the store corrects, requantises and writes it to the output at once;
/// no full-size column or accumulator buffer exists. With unit width stride, each output
/// row is computed `pw` (the padded width) columns wide: a patch row `k = (ci, i, j)` of an
/// image is then one contiguous run of the padded input, so im2col is a 4-way byte
/// interleave of long runs. The `pw − ow` extra columns of each row read past its end
/// (harmless values) and are never stored.
pub fn conv(path: Path, g: &Conv2d, x: Bytes, x_zp: i32, w: &Weights, out: Output) {
    let packed = PackedConv::new(path, w.bytes, w.zero_points, g.m, g.c / g.group, g.kernel, g.group, g.strides);
    conv_packed(path, g, x, x_zp, &packed, w.bias, out)
}

/// A convolution's weights `(m, cg, kh, kw)` made ready for [`conv_packed`] once (at load),
/// instead of on every call: per group the GEMM's left operand with its s8 zero-points and
/// row sums, and, on the VNNI path when no weight row has a zero-point and `cg ≥ 4`, the
/// quads [`conv_direct`] reads. It keeps the weights it packed, to see when training has
/// changed them (one memcmp).
pub struct PackedConv {
    pub m: usize,
    pub cg: usize,
    pub kernel: [usize; 2],
    pub group: usize,
    pub signed: bool,
    path: Path,
    zero_points: Vec<i32>,
    source: Vec<u8>,
    /// per group: the weights as PackedA, A's zero-points in s8 form, A's row sums
    groups: Vec<(PackedA<'static>, Vec<i32>, Vec<i32>)>,
    /// per group, when the direct convolution can run: its reordered weights and their row sums
    direct: Vec<(PackedA<'static>, Vec<i32>)>,
    /// the strides the layer runs at, and, when [`conv_strided`] runs it, the kernel of its
    /// unit-stride form and that form's direct weights and row sums
    strides: [usize; 2],
    strided: Option<([usize; 2], PackedA<'static>, Vec<i32>)>,
}

/// Whether a convolution of `cg` channels per group at `strides` runs as [`conv_strided`]:
/// on the VNNI path, one group, strides above 1 and too few channels for the direct
/// convolution (`cg < 4`) but enough once the strides fold into them (`cg·sh·sw ≥ 4`).
pub fn strided_direct(path: Path, cg: usize, group: usize, strides: [usize; 2]) -> bool {
    path == Path::Avx512Vnni && group == 1 && strides != [1, 1] && cg < 4 && cg * strides[0] * strides[1] >= 4
}

impl PackedConv {
    /// `w` holds `m × cg·kh·kw` bytes; `zero_points` one per output channel.
    /// `strides`: those of the layer (another stride still runs, on the im2col path).
    #[allow(clippy::too_many_arguments)]
    pub fn new(path: Path, w: Bytes, zero_points: &[i32], m: usize, cg: usize, kernel: [usize; 2], group: usize, strides: [usize; 2]) -> PackedConv {
        assert!(group > 0 && m % group == 0 && zero_points.len() == m && !strides.contains(&0));
        assert_eq!(w.data.len(), m * cg * kernel[0] * kernel[1]);
        let mut packed = PackedConv { m, cg, kernel, group, signed: w.signed, path, zero_points: zero_points.to_vec(), source: Vec::new(), groups: Vec::new(), direct: Vec::new(), strides, strided: None };
        packed.pack(w);
        packed
    }

    fn pack(&mut self, w: Bytes) {
        let (mg, k) = (self.m / self.group, self.cg * self.kernel[0] * self.kernel[1]);
        self.source.clear();
        self.source.extend_from_slice(w.data);
        let weights = Weights { bytes: w, zero_points: &self.zero_points, bias: None };
        self.groups = (0..self.group)
            .map(|grp| {
                let (a, za) = weights.packed(grp * mg..(grp + 1) * mg, k);
                let a = a.into_owned();
                let sums = a.row_sums();
                (a, za, sums)
            })
            .collect();
        let symmetric = self.groups.iter().all(|(_, za, _)| za.iter().all(|&z| z == 0));
        self.direct = if self.path == Path::Avx512Vnni && self.cg >= 4 && symmetric {
            (0..self.group)
                .map(|grp| {
                    let a = direct_weights(w, grp, mg, self.cg, self.kernel);
                    let sums = a.row_sums();
                    (a, sums)
                })
                .collect()
        } else {
            Vec::new()
        };
        self.strided = (symmetric && strided_direct(self.path, self.cg, self.group, self.strides)).then(|| {
            // the weights of the unit-stride form: channel (ci, pr, pc) holds taps (di·sh + pr, dj·sw + pc)
            let ([kh, kw], [sh, sw]) = (self.kernel, self.strides);
            let (kh2, kw2, c2) = (kh.div_ceil(sh), kw.div_ceil(sw), self.cg * sh * sw);
            let zero = if w.signed { 0 } else { 0x80 }; // the value 0 (symmetric weights)
            let mut w2 = vec![zero; self.m * c2 * kh2 * kw2];
            for r in 0..self.m {
                for ci in 0..self.cg {
                    for i in 0..kh {
                        for j in 0..kw {
                            let ch = (ci * sh + i % sh) * sw + j % sw;
                            w2[((r * c2 + ch) * kh2 + i / sh) * kw2 + j / sw] = w.data[((r * self.cg + ci) * kh + i) * kw + j];
                        }
                    }
                }
            }
            let a = direct_weights(Bytes { data: &w2, signed: w.signed }, 0, self.m, c2, [kh2, kw2]);
            let sums = a.row_sums();
            ([kh2, kw2], a, sums)
        });
    }

    /// Packs `w` again unless it is what is packed (training changes weights in place);
    /// true when it repacked.
    pub fn refresh(&mut self, w: Bytes) -> bool {
        if w.signed == self.signed && w.data == &self.source[..] {
            return false;
        }
        assert!(w.signed == self.signed && w.data.len() == self.source.len(), "weights changed dtype or shape");
        self.pack(w);
        true
    }
}

/// QLinearConv on weights packed by [`PackedConv`]: [`conv`]'s arithmetic, per-channel `bias`.
pub fn conv_packed(path: Path, g: &Conv2d, x: Bytes, x_zp: i32, p: &PackedConv, bias: Option<&[i32]>, mut out: Output) {
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let k = cg * g.kernel[0] * g.kernel[1];
    let (ph, pw) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
    let [oh, ow] = g.out_hw;
    let pitch = if g.strides[1] == 1 { pw } else { ow }; // columns per output row
    assert_eq!(x.data.len(), g.n * g.c * g.h * g.w);
    assert!(p.m == g.m && p.cg == cg && p.kernel == g.kernel && p.group == g.group, "packed weights of another shape");
    assert!(bias.is_none_or(|b| b.len() == g.m));
    let zu = x.u8_zero(x_zp);
    if path == Path::Avx512Vnni && g.strides == [1, 1] && !p.direct.is_empty() {
        for (grp, (a, sums)) in p.direct.iter().enumerate() {
            conv_direct(path, g, grp, x, zu, a, sums, bias, &mut out);
        }
        return;
    }
    if let Some((kernel2, a, sums)) = &p.strided {
        if path == Path::Avx512Vnni && g.strides == p.strides && g.dilations == [1, 1] {
            return conv_strided(path, g, x, x_zp, *kernel2, a, sums, bias, out);
        }
    }
    let block = padded_block(cg, ph, pw, g.n);
    let tile = tile_cols(k.div_ceil(4), block * oh * pitch);
    let mut b = PackedB::zeros(k, tile);
    let mut c = vec![0i32; mg * b.padded_cols];
    let zeros = vec![0u8; tile.max(pitch * g.strides[1])]; // the patch rows past k
    let mut segments = Vec::new();
    for grp in 0..g.group {
        let (a, za, sums) = &p.groups[grp];
        let fix = Correction::from_row_sums(k, sums, za, zu, bias.map(|b| &b[grp * mg..(grp + 1) * mg]));
        for n0 in (0..g.n).step_by(block) {
            let nb = block.min(g.n - n0);
            // the block's input channels as u8, padded with the zero-point (0 once shifted),
            // plus a slack of one padded plane for the extra columns of the last output row;
            // rows are copied as they are and the whole buffer flipped to u8 after, in one long
            // loop (per-row flips of a few bytes do not vectorise); the padding is filled with
            // the zero-point's stored byte, which the flip turns into its u8 form
            let flip = x.u8_of(0);
            let mut padded = vec![zu as u8 ^ flip; (nb * cg + 1) * ph * pw];
            for (i, plane) in padded.chunks_exact_mut(ph * pw).take(nb * cg).enumerate() {
                let (img, ch) = (n0 + i / cg, grp * cg + i % cg);
                let src = &x.data[(img * g.c + ch) * g.h * g.w..][..g.h * g.w];
                for (row, src_row) in src.chunks_exact(g.w).enumerate() {
                    plane[(row + g.pads[0]) * pw + g.pads[1]..][..g.w].copy_from_slice(src_row);
                }
            }
            if flip != 0 {
                crate::path::vectorized(path, #[inline(always)] || padded.iter_mut().for_each(|v| *v ^= flip));
            }
            let cols = nb * oh * pitch;
            for c0 in (0..cols).step_by(tile) {
                let width = tile.min(cols - c0);
                // a full tile's columns are all rewritten; a shorter last one leaves stale
                // columns, whose products are never stored
                b.cols = width;
                crate::path::vectorized(path, #[inline(always)] || im2col_tile(g, &padded, cg, [ph, pw], pitch, c0, &mut b, &zeros));
                gemm(path, a, &b, &mut c);
                // the stored outputs of the tile: (column in the tile, length, output offset of channel 0)
                segments.clear();
                let mut col = c0;
                while col < c0 + width {
                    let (img, y, xo) = (col / (oh * pitch), col / pitch % oh, col % pitch);
                    let end = (col - xo + pitch).min(c0 + width);
                    if xo < ow {
                        let len = (end - col).min(ow - xo);
                        segments.push((col - c0, len, ((n0 + img) * g.m * oh + y) * ow + xo));
                    }
                    col = end;
                }
                match &mut out {
                    Output::Requantized(rq, bytes) => {
                        store_segments(path, &c, b.padded_cols, &fix, fix.col_sums(&b).as_deref(), rq, grp * mg, oh * ow, &segments, bytes)
                    }
                    Output::Accumulators(acc) => {
                        fix.apply(&mut c, &b);
                        for (r, row) in c.chunks_exact(b.padded_cols).enumerate() {
                            let plane = &mut acc[(grp * mg + r) * oh * ow..];
                            for &(col, len, start) in &segments {
                                plane[start..start + len].copy_from_slice(&row[col..col + len]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A strided convolution (one group, no dilation) as the unit-stride one [`conv_direct`]
/// runs: the padded input is split by the strides into `sh·sw` phase planes per channel,
/// plane `(ci, pr, pc)` holding pixels `(y·sh + pr, x·sw + pc)`, and tap `(i, j)` of channel
/// `ci` reads plane `(ci, i % sh, j % sw)` at `(y + i / sh, x + j / sw)`: the same products
/// (the taps past the kernel weigh 0), with no strided gather. Built for blocks of images;
/// cells past the padded input hold the zero-point (only zero weights reach them).
#[allow(clippy::too_many_arguments)]
fn conv_strided(path: Path, g: &Conv2d, x: Bytes, x_zp: i32, kernel2: [usize; 2], a: &PackedA, row_sums: &[i32], bias: Option<&[i32]>, mut out: Output) {
    let [sh, sw] = g.strides;
    let (ph, pw) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
    let (h2, w2, c2) = (ph.div_ceil(sh), pw.div_ceil(sw), g.c * sh * sw);
    let pad = (x.u8_zero(x_zp) as u8) ^ x.u8_of(0); // the zero-point as x stores it
    let block = padded_block(c2, h2, w2, g.n);
    let per_out = g.m * g.out_hw[0] * g.out_hw[1];
    let mut phases = Vec::new();
    for n0 in (0..g.n).step_by(block) {
        let nb = block.min(g.n - n0);
        phases.clear();
        phases.resize(nb * c2 * h2 * w2, pad);
        for (i, image) in phases.chunks_exact_mut(c2 * h2 * w2).enumerate() {
            for (plane_index, plane) in image.chunks_exact_mut(h2 * w2).enumerate() {
                let (ci, pr, pc) = (plane_index / (sh * sw), plane_index / sw % sh, plane_index % sw);
                let src = &x.data[((n0 + i) * g.c + ci) * g.h * g.w..][..g.h * g.w];
                // the first column of the plane inside the input, and the input column it reads
                let x0 = g.pads[1].saturating_sub(pc).div_ceil(sw);
                let col0 = x0 * sw + pc - g.pads[1];
                for (y2, dst) in plane.chunks_exact_mut(w2).enumerate() {
                    let yp = y2 * sh + pr;
                    if yp < g.pads[0] || yp - g.pads[0] >= g.h || col0 >= g.w {
                        continue; // padding: the zero-point
                    }
                    let row = &src[(yp - g.pads[0]) * g.w..][..g.w];
                    dst[x0..].iter_mut().zip(row[col0..].iter().step_by(sw)).for_each(|(d, &v)| *d = v);
                }
            }
        }
        let g2 = Conv2d { n: nb, c: c2, h: h2, w: w2, m: g.m, kernel: kernel2, strides: [1, 1], dilations: [1, 1], pads: [0; 4], out_hw: g.out_hw, group: 1 };
        let xb = Bytes { data: &phases, signed: x.signed };
        let range = n0 * per_out..(n0 + nb) * per_out;
        let mut part = match &mut out {
            Output::Requantized(rq, bytes) => Output::Requantized(rq, &mut bytes[range]),
            Output::Accumulators(acc) => Output::Accumulators(&mut acc[range]),
        };
        conv_direct(path, &g2, 0, xb, x.u8_zero(x_zp), a, row_sums, bias, &mut part);
    }
}

/// Group `grp`'s weights as [`conv_direct`] reads them: s8 quads `(cq, i, j)` × 4 channels
/// (zeros for the channels past `cg`: no effect on any sum).
fn direct_weights(w: Bytes, grp: usize, mg: usize, cg: usize, [kh, kw]: [usize; 2]) -> PackedA<'static> {
    let (channel_quads, kernel_quads) = (cg.div_ceil(4), kh * kw);
    let quads = channel_quads * kernel_quads;
    let mut wq = vec![0u8; mg * quads * 4];
    for r in 0..mg {
        let src = &w.data[(grp * mg + r) * cg * kernel_quads..][..cg * kernel_quads];
        for ch in 0..cg {
            for ij in 0..kernel_quads {
                let v = src[ch * kernel_quads + ij];
                wq[((r * channel_quads + ch / 4) * kernel_quads + ij) * 4 + ch % 4] = if w.signed { v } else { v ^ 0x80 };
            }
        }
    }
    PackedA::new(&wq, mg, quads * 4, false).into_owned()
}

/// Output columns per step of [`conv_direct`] (its int32 product is `mg` × this).
const DIRECT_COLS: usize = 512;

/// One group of a unit-stride convolution whose weights have no zero-point (int8 weights
/// quantised symmetrically, as onnxruntime does by default), on the VNNI path: a direct
/// convolution with no im2col. The padded input is stored channel-interleaved, four
/// channels to a 32-bit word (`[quad][pixel][4]`, channels past `cg` at the zero-point), so
/// the GEMM's operand for patch quad `(channel quad, i, j)` at output pixel `p` is simply the
/// word at pixel `p + i·dh·pw + j·dw`: [`gemm_direct`] reads it in place. Weights are
/// reordered to the same quads (zeros for the missing channels: no effect on any sum).
#[allow(clippy::too_many_arguments)]
fn conv_direct(path: Path, g: &Conv2d, grp: usize, x: Bytes, zu: i32, a: &PackedA, row_sums: &[i32], bias: Option<&[i32]>, out: &mut Output) {
    let (cg, mg) = (g.c / g.group, g.m / g.group);
    let (ph, pw) = (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3]);
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.kernel;
    let [dh, dw] = g.dilations;
    let (channel_quads, kernel_quads) = (cg.div_ceil(4), kh * kw);
    let quads = channel_quads * kernel_quads;
    assert!(a.m == mg && a.quads == quads);
    let cols = (oh * pw).div_ceil(LANES) * LANES; // the image's output pixels, pw per row
    let plane = cols + (kh - 1) * dh * pw + (kw - 1) * dw; // words per channel quad (≥ ph·pw)
    let fix = Correction::from_row_sums(quads * 4, row_sums, &vec![0; mg], zu, bias.map(|b| &b[grp * mg..(grp + 1) * mg]));
    let offsets: Vec<usize> = (0..quads).map(|q| 4 * ((q / kernel_quads) * plane + (q % kernel_quads / kw) * dh * pw + (q % kw) * dw)).collect();
    let image_bytes = channel_quads * plane * 4;
    let block = padded_block(cg, ph, pw, g.n);
    // rows are copied as x stores them and the whole block flipped to u8 after, in one long
    // loop (per-row flips of a few bytes do not vectorise); the padding and the missing
    // channels hold the zero-point's stored byte, which the flip turns into its u8 form
    let flip = x.u8_of(0);
    let stored_zero = zu as u8 ^ flip;
    let fill = vec![stored_zero; ph * pw];
    let mut planes: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; ph * pw]);
    let mut c = vec![0i32; mg * DIRECT_COLS.min(cols)];
    let mut segments = Vec::with_capacity(DIRECT_COLS / pw + 2);
    for n0 in (0..g.n).step_by(block) {
        let nb = block.min(g.n - n0);
        let mut interleaved = vec![stored_zero; nb * image_bytes];
        crate::path::vectorized(path, #[inline(always)] || {
            for (i, image) in interleaved.chunks_exact_mut(image_bytes).enumerate() {
                for (cq, dst) in image.chunks_exact_mut(plane * 4).enumerate() {
                    // four padded planes (the zero-point where a channel or pixel is missing)
                    for (t, planar) in planes.iter_mut().enumerate() {
                        planar.copy_from_slice(&fill);
                        let ch = cq * 4 + t;
                        if ch >= cg {
                            continue;
                        }
                        let src = &x.data[((n0 + i) * g.c + grp * cg + ch) * g.h * g.w..][..g.h * g.w];
                        for (row, src_row) in src.chunks_exact(g.w).enumerate() {
                            planar[(row + g.pads[0]) * pw + g.pads[1]..][..g.w].copy_from_slice(src_row);
                        }
                    }
                    interleave4([&planes[0][..], &planes[1][..], &planes[2][..], &planes[3][..]], &mut dst[..ph * pw * 4]);
                }
            }
            if flip != 0 {
                interleaved.iter_mut().for_each(|v| *v ^= flip);
            }
        });
        for i in 0..nb {
            let image = &interleaved[i * image_bytes..(i + 1) * image_bytes];
            for p0 in (0..cols).step_by(DIRECT_COLS) {
                let width = DIRECT_COLS.min(cols - p0);
                let c = &mut c[..mg * width];
                gemm_direct(path, a, &image[4 * p0..], &offsets, width, c);
                segments.clear();
                for y in p0 / pw..oh {
                    let (lo, hi) = (y * pw, y * pw + ow);
                    if lo >= p0 + width {
                        break;
                    }
                    let (lo, hi) = (lo.max(p0), hi.min(p0 + width));
                    if lo < hi {
                        segments.push((lo - p0, hi - lo, ((n0 + i) * g.m * oh + y) * ow + lo - y * pw));
                    }
                }
                match out {
                    Output::Requantized(rq, bytes) => store_segments(path, c, width, &fix, None, rq, grp * mg, oh * ow, &segments, bytes),
                    Output::Accumulators(acc) => {
                        fix.apply_base(c, width);
                        for (r, row) in c.chunks_exact(width).enumerate() {
                            let plane = &mut acc[(grp * mg + r) * oh * ow..];
                            for &(col, len, start) in &segments {
                                plane[start..start + len].copy_from_slice(&row[col..col + len]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The packed columns `c0 .. c0 + b.cols` of a block of padded images: patch row
/// `k = (ci, i, j)` (the weight's own order), column `(image, oh, x)` with `x < pitch`.
/// Patch rows past `k` are zero.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn im2col_tile(g: &Conv2d, padded: &[u8], cg: usize, [ph, pw]: [usize; 2], pitch: usize, c0: usize, b: &mut PackedB, zeros: &[u8]) {
    let [kh, kw] = g.kernel;
    let [oh, _] = g.out_hw;
    let [sh, sw] = g.strides;
    let [dh, dw] = g.dilations;
    let (k, width) = (b.k, b.cols);
    let per_image = oh * pitch;
    for q in 0..b.quads {
        let offsets: [Option<usize>; 4] = std::array::from_fn(|t| {
            let kk = 4 * q + t;
            (kk < k).then(|| (kk / (kh * kw)) * ph * pw + (kk / kw % kh) * dh * pw + (kk % kw) * dw)
        });
        let quad = b.quad_mut(q);
        let mut col = c0;
        while col < c0 + width {
            let (img, within) = (col / per_image, col % per_image);
            let (y, xo) = (within / pitch, within % pitch);
            // one run: to the end of the image (unit strides: its rows lie back to back in
            // the padded input) or of the output row
            let end = if sh == 1 && sw == 1 { (img + 1) * per_image } else { col - xo + pitch }.min(c0 + width);
            let len = end - col;
            let lanes = &mut quad[(col - c0) * 4..][..len * 4];
            let start = img * cg * ph * pw + y * sh * pw + xo * sw;
            if sw == 1 {
                let src = offsets.map(|o| o.map_or(&zeros[..len], |o| &padded[start + o..][..len]));
                interleave4(src, lanes);
            } else {
                let run = (len - 1) * sw + 1;
                let src = offsets.map(|o| o.map_or(&zeros[..run], |o| &padded[start + o..][..run]));
                // strided iterators: no bounds check per byte
                let [s0, s1, s2, s3] = src.map(|s| s.iter().step_by(sw));
                for (lane, (((&a, &b), &c), &d)) in lanes.chunks_exact_mut(4).zip(s0.zip(s1).zip(s2).zip(s3)) {
                    lane.copy_from_slice(&[a, b, c, d]);
                }
            }
            col = end;
        }
    }
}

/// `lanes[4i + t] = src[t][i]`: four rows into one row of quads.
#[inline(always)]
fn interleave4(src: [&[u8]; 4], lanes: &mut [u8]) {
    let n = lanes.len() / 4;
    let (s0, s1, s2, s3) = (&src[0][..n], &src[1][..n], &src[2][..n], &src[3][..n]);
    let done = interleave4_simd([s0, s1, s2, s3], lanes);
    for (i, lane) in lanes.chunks_exact_mut(4).enumerate().skip(done) {
        // one little-endian word per lane: the form the compiler vectorises (zero-extend, shift, or)
        let word = s0[i] as u32 | (s1[i] as u32) << 8 | (s2[i] as u32) << 16 | (s3[i] as u32) << 24;
        lane.copy_from_slice(&word.to_le_bytes());
    }
}

/// [`interleave4`] 16 columns at a time with byte and word unpacks (SSE2, which every
/// x86_64 CPU has: pure data movement, the same bytes on every kernel path); returns how
/// many columns it did.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn interleave4_simd(src: [&[u8]; 4], lanes: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = lanes.len() / 4;
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 ≤ n, so each 16-byte load lies inside its row (every row holds n bytes)
        // and the four 16-byte stores inside lanes[4i .. 4i + 64] (lanes holds 4n bytes).
        unsafe {
            let [a, b, c, d] = src.map(|s| _mm_loadu_si128(s.as_ptr().add(i).cast()));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b)); // a0 b0 a1 b1 …
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let out = lanes.as_mut_ptr().add(4 * i);
            _mm_storeu_si128(out.cast(), _mm_unpacklo_epi16(ab_lo, cd_lo)); // a0 b0 c0 d0 a1 …
            _mm_storeu_si128(out.add(16).cast(), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(out.add(32).cast(), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(out.add(48).cast(), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
    whole
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn interleave4_simd(_src: [&[u8]; 4], _lanes: &mut [u8]) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::tests::Rng;

    /// Σ (w − zw)(x − zx) + bias over the window, zero padding in (x − zx) terms, in i64.
    fn conv_reference(g: &Conv2d, x: &[i64], zx: i64, w: &[i64], zw: &[i64], bias: &[i64]) -> Vec<i64> {
        let (cg, mg) = (g.c / g.group, g.m / g.group);
        let mut out = vec![0i64; g.n * g.m * g.out_hw[0] * g.out_hw[1]];
        for n in 0..g.n {
            for m in 0..g.m {
                for oy in 0..g.out_hw[0] {
                    for ox in 0..g.out_hw[1] {
                        let mut s = bias[m];
                        for ci in 0..cg {
                            for i in 0..g.kernel[0] {
                                for j in 0..g.kernel[1] {
                                    let yy = (oy * g.strides[0] + i * g.dilations[0]) as i64 - g.pads[0] as i64;
                                    let xx = (ox * g.strides[1] + j * g.dilations[1]) as i64 - g.pads[1] as i64;
                                    if yy < 0 || xx < 0 || yy >= g.h as i64 || xx >= g.w as i64 {
                                        continue;
                                    }
                                    let c = (m / mg) * cg + ci;
                                    let xv = x[((n * g.c + c) * g.h + yy as usize) * g.w + xx as usize] - zx;
                                    let wv = w[((m * cg + ci) * g.kernel[0] + i) * g.kernel[1] + j] - zw[m];
                                    s += xv * wv;
                                }
                            }
                        }
                        out[((n * g.m + m) * g.out_hw[0] + oy) * g.out_hw[1] + ox] = s;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn interleave4_puts_row_t_in_byte_t_of_each_lane() {
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let rows: Vec<Vec<u8>> = (0..4).map(|t| (0..n).map(|i| (i * 4 + t) as u8).collect()).collect();
            let mut lanes = vec![0u8; 4 * n];
            interleave4([&rows[0], &rows[1], &rows[2], &rows[3]], &mut lanes);
            assert_eq!(lanes, (0..4 * n).map(|v| v as u8).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn packed_weights_give_the_i64_products_and_follow_changes() {
        let mut rng = Rng(5);
        for &(rows, k, n) in &[(1, 1, 1), (64, 400, 120), (3, 7, 17), (5, 84, 10), (2, 130, 33)] {
            for (x_signed, w_signed) in [(true, true), (false, true), (true, false), (false, false)] {
                let xb: Vec<u8> = (0..rows * k).map(|_| rng.byte()).collect();
                let mut wb: Vec<u8> = (0..n * k).map(|i| if i % 11 == 0 { 0x80 } else { rng.byte() }).collect();
                let val = |b: u8, s: bool| if s { b as i8 as i64 } else { b as i64 };
                let zx: i32 = if x_signed { -128 } else { 255 };
                let zw: Vec<i32> = (0..n).map(|p| if w_signed { [0, 127, -128][p % 3] } else { [128, 0, 255][p % 3] }).collect();
                let bias: Vec<i32> = (0..n).map(|p| p as i32 * 77 - 300).collect();
                let mut packed = PackedWeights::new(Bytes { data: &wb, signed: w_signed }, n, k);
                for round in 0..2 {
                    if round == 1 {
                        wb[n * k / 2] ^= 0x41; // training changes a weight in place
                        assert!(packed.refresh(Bytes { data: &wb, signed: w_signed }));
                        assert!(!packed.refresh(Bytes { data: &wb, signed: w_signed }));
                    }
                    for path in Path::available() {
                        let mut got = vec![0i32; rows * n];
                        fully_connected_packed(path, Bytes { data: &xb, signed: x_signed }, zx, rows, &packed, &zw, Some(&bias), Output::Accumulators(&mut got));
                        for r in 0..rows {
                            for p in 0..n {
                                let exact: i64 = (0..k).map(|kk| (val(xb[r * k + kk], x_signed) - zx as i64) * (val(wb[p * k + kk], w_signed) - zw[p] as i64)).sum::<i64>() + bias[p] as i64;
                                assert_eq!(got[r * n + p] as i64, exact, "{} {rows}×{k}×{n}", path.name());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn conv_accumulators_equal_the_i64_reference_on_every_path() {
        let mut rng = Rng(11);
        let shapes = [
            Conv2d { n: 3, c: 1, h: 9, w: 8, m: 6, kernel: [5, 5], strides: [1, 1], dilations: [1, 1], pads: [2, 2, 2, 2], out_hw: [9, 8], group: 1 },
            Conv2d { n: 2, c: 4, h: 7, w: 7, m: 4, kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [4, 4], group: 2 },
            Conv2d { n: 1, c: 3, h: 9, w: 9, m: 5, kernel: [3, 2], strides: [1, 2], dilations: [2, 1], pads: [0, 1, 2, 0], out_hw: [7, 5], group: 1 },
            // several blocks of padded images, and tiles that end inside images and rows
            Conv2d { n: 7, c: 8, h: 38, w: 38, m: 10, kernel: [3, 3], strides: [1, 1], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [38, 38], group: 1 },
            Conv2d { n: 3, c: 16, h: 21, w: 21, m: 8, kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [11, 11], group: 1 },
            Conv2d { n: 4, c: 6, h: 14, w: 14, m: 16, kernel: [5, 5], strides: [2, 1], dilations: [1, 1], pads: [0, 0, 0, 0], out_hw: [5, 10], group: 2 },
            // unit strides with ≥ 4 channels per group: the direct convolution on the VNNI path
            // when the weights have no zero-point (channels not a multiple of 4, dilation,
            // uneven pads, groups, several column steps of one image)
            Conv2d { n: 3, c: 6, h: 11, w: 9, m: 7, kernel: [3, 3], strides: [1, 1], dilations: [2, 1], pads: [1, 0, 2, 1], out_hw: [10, 8], group: 1 },
            Conv2d { n: 2, c: 10, h: 6, w: 6, m: 4, kernel: [2, 2], strides: [1, 1], dilations: [1, 1], pads: [0, 0, 0, 0], out_hw: [5, 5], group: 2 },
            // strided with 1–3 channels: the unit-stride form of conv_strided on the VNNI path
            // (odd padded sizes, a kernel wider than the stride, uneven pads, stride 3)
            Conv2d { n: 3, c: 1, h: 13, w: 12, m: 5, kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [7, 6], group: 1 },
            Conv2d { n: 2, c: 3, h: 9, w: 10, m: 4, kernel: [5, 4], strides: [2, 1], dilations: [1, 1], pads: [2, 0, 1, 2], out_hw: [4, 9], group: 1 },
            Conv2d { n: 2, c: 1, h: 11, w: 11, m: 3, kernel: [2, 3], strides: [3, 2], dilations: [1, 1], pads: [0, 1, 0, 0], out_hw: [4, 5], group: 1 },
            Conv2d { n: 80, c: 1, h: 28, w: 28, m: 16, kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [14, 14], group: 1 },
        ];
        assert!(shapes[8..].iter().all(|g| strided_direct(Path::Avx512Vnni, g.c, g.group, g.strides)));
        assert!(padded_block(4, 15, 15, 80) < 80); // the last shape takes several blocks of phase planes
        // the shapes above do cover those cases
        let blocks = |g: &Conv2d| g.n.div_ceil(padded_block(g.c / g.group, g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3], g.n));
        let tiles = |g: &Conv2d| {
            let pitch = if g.strides[1] == 1 { g.w + g.pads[1] + g.pads[3] } else { g.out_hw[1] };
            (g.n * g.out_hw[0] * pitch).div_ceil(tile_cols((g.c / g.group * g.kernel[0] * g.kernel[1]).div_ceil(4), usize::MAX / 2))
        };
        assert!(blocks(&shapes[3]) > 1 && tiles(&shapes[3]) > 2 && tiles(&shapes[4]) > 1);
        for g in &shapes {
            // symmetric: weights without a zero-point (0 for int8, 128 for uint8)
            for (x_signed, w_signed, symmetric) in [(true, true, false), (false, true, false), (true, false, false), (true, true, true), (false, false, true)] {
                let xb: Vec<u8> = (0..g.n * g.c * g.h * g.w).map(|_| rng.byte()).collect();
                let k = g.c / g.group * g.kernel[0] * g.kernel[1];
                let wb: Vec<u8> = (0..g.m * k).map(|_| rng.byte()).collect();
                let val = |b: u8, s: bool| if s { b as i8 as i64 } else { b as i64 };
                let zx: i32 = if x_signed { -128 } else { 255 };
                let zw: Vec<i32> = (0..g.m).map(|m| if w_signed { [0, 127, -128][if symmetric { 0 } else { m % 3 }] } else { [128, 0, 255][if symmetric { 0 } else { m % 3 }] }).collect();
                let bias: Vec<i32> = (0..g.m).map(|m| m as i32 * 1000 - 2000).collect();
                let expect = conv_reference(
                    g,
                    &xb.iter().map(|&b| val(b, x_signed)).collect::<Vec<_>>(),
                    zx as i64,
                    &wb.iter().map(|&b| val(b, w_signed)).collect::<Vec<_>>(),
                    &zw.iter().map(|&z| z as i64).collect::<Vec<_>>(),
                    &bias.iter().map(|&b| b as i64).collect::<Vec<_>>(),
                );
                for path in Path::available() {
                    let mut got = vec![0i32; expect.len()];
                    let w = Weights { bytes: Bytes { data: &wb, signed: w_signed }, zero_points: &zw, bias: Some(&bias) };
                    conv(path, g, Bytes { data: &xb, signed: x_signed }, zx, &w, Output::Accumulators(&mut got));
                    assert_eq!(got.iter().map(|&v| v as i64).collect::<Vec<_>>(), expect, "{} {g:?}", path.name());
                }
            }
        }
    }
}

