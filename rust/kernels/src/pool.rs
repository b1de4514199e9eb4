//! The integer pools over NCHW 8-bit tensors: MaxPool, and the mean of QLinearAveragePool /
//! QLinearGlobalAveragePool with `runtime/kernels/pool.py`'s exact division (ties to even).
//!
//! The window is the one `runtime/kernels/_window.py` resolves (`pads` = top, left,
//! bottom, right, ceil-mode rows included); taps that fall on padding are skipped, which
//! is what padding with the lowest value (max) or with zero in `x − zx` terms (mean) gives.

/// Window geometry over `planes` planes of `h × w`.
#[derive(Clone, Debug)]
pub struct Window {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub out_hw: [usize; 2],
}

impl Window {
    /// For each kernel offset along one axis, the outputs whose tap at that offset lies
    /// inside the input: `lo..hi`, where `o·stride + t·dilation − pad ∈ [0, len)`.
    fn valid(len: usize, out: usize, kernel: usize, stride: usize, dilation: usize, pad: usize) -> Vec<(usize, usize)> {
        (0..kernel)
            .map(|t| {
                let off = t * dilation;
                let lo = pad.saturating_sub(off).div_ceil(stride).min(out);
                let hi = if len + pad > off { (len + pad - off).div_ceil(stride).min(out) } else { 0 };
                (lo, hi.max(lo))
            })
            .collect()
    }

    /// Folds every tap inside the input into one accumulator per output, a row of outputs
    /// at a time, one strided slice per kernel offset (as `_window.py` walks it): `fold(acc,
    /// x)` takes each tap (`fold_run` a contiguous run of them at once: a global pool's row),
    /// `finish(plane, output index, acc)` ends each output.
    #[inline(always)]
    fn reduce<T: Copy, A: Copy>(
        &self,
        x: &[T],
        init: A,
        fold: impl Fn(A, T) -> A,
        fold_run: impl Fn(A, &[T]) -> A,
        mut finish: impl FnMut(usize, usize, A),
    ) {
        let [oh, ow] = self.out_hw;
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        let rows = Self::valid(self.h, oh, self.kernel[0], sh, dh, self.pads[0]);
        let cols = Self::valid(self.w, ow, self.kernel[1], sw, dw, self.pads[1]);
        // one window across with unit dilation: its taps in a row are one run (a global pool)
        let one_run = (ow == 1 && dw == 1).then(|| {
            let mut taps = cols.iter().enumerate().filter(|(_, &(lo, hi))| lo < hi).map(|(j, _)| j - self.pads[1]);
            let first = taps.next();
            first.map_or(0..0, |f| f..taps.last().unwrap_or(f) + 1)
        });
        let mut acc = vec![init; ow];
        for plane in 0..self.planes {
            let image = &x[plane * self.h * self.w..][..self.h * self.w];
            for y in 0..oh {
                acc.fill(init);
                for (i, &(ylo, yhi)) in rows.iter().enumerate() {
                    if !(ylo..yhi).contains(&y) {
                        continue;
                    }
                    let row = &image[(y * sh + i * dh - self.pads[0]) * self.w..][..self.w];
                    if let Some(run) = &one_run {
                        acc[0] = fold_run(acc[0], &row[run.clone()]);
                        continue;
                    }
                    for (j, &(xlo, xhi)) in cols.iter().enumerate() {
                        if xlo == xhi {
                            continue;
                        }
                        let first = xlo * sw + j * dw - self.pads[1]; // the input column of output xlo
                        if sw == 1 {
                            let src = &row[first..first + (xhi - xlo)];
                            acc[xlo..xhi].iter_mut().zip(src).for_each(|(a, &v)| *a = fold(*a, v));
                        } else {
                            acc[xlo..xhi].iter_mut().enumerate().for_each(|(t, a)| *a = fold(*a, row[first + t * sw]));
                        }
                    }
                }
                for (xo, &a) in acc.iter().enumerate() {
                    finish(plane, (plane * oh + y) * ow + xo, a);
                }
            }
        }
    }
}

/// Max over each window; a window with no tap inside the input gives the type's lowest value.
#[inline(always)] // into the caller's `path::vectorized`
pub fn max_pool<T: Copy + Ord>(win: &Window, x: &[T], lowest: T, out: &mut [T]) {
    let [oh, ow] = win.out_hw;
    if win.kernel == [2, 2] && win.strides == [2, 2] && win.dilations == [1, 1] && win.pads == [0; 4] && 2 * oh <= win.h && 2 * ow <= win.w {
        // the common 2×2 pool: every window whole, two rows at a time
        for (plane, dst) in x.chunks_exact(win.h * win.w).zip(out.chunks_exact_mut(oh * ow)) {
            for (y, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &plane[2 * y * win.w..][..2 * ow];
                let bottom = &plane[(2 * y + 1) * win.w..][..2 * ow];
                for ((d, t), b) in dst_row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                    *d = t[0].max(t[1]).max(b[0].max(b[1]));
                }
            }
        }
        return;
    }
    win.reduce(x, lowest, T::max, |a, run| run.iter().fold(a, |a, &v| a.max(v)), |_, o, a| out[o] = a);
}

/// `Σ(x − zx)·mult / (count·2^bits) + add` rounded half to even, then `+ (zy − add)`, clamped:
/// `_IntegerMean.mean` with quant.py's `divide_round_half_even`. `counts` per output position.
pub struct Mean<'a> {
    pub x_zp: i64,
    pub counts: &'a [i64],
    pub mult: i64,
    pub bits: u32,
    pub add: i64,
    pub y_zp: i64,
    pub lo: i64,
    pub hi: i64,
}

/// `out` holds the 8-bit results as bytes (an int8 value as its two's-complement byte).
#[inline(always)]
pub fn mean_pool<T: Copy + Into<i32>>(win: &Window, x: &[T], m: &Mean, out: &mut [u8]) {
    let per_plane = win.out_hw[0] * win.out_hw[1];
    let finish = |o: usize, sum: i64| {
        let q = divide_round_half_even(sum * m.mult, m.counts[o % per_plane] << m.bits, m.add);
        (q + (m.y_zp - m.add)).clamp(m.lo, m.hi) as u8
    };
    if win.kernel == [win.h, win.w] && win.out_hw == [1, 1] && win.pads == [0; 4] {
        // a global pool: each plane's plain sum (one long loop the compiler vectorises)
        let taps = (win.h * win.w) as i64;
        for (o, (plane, dst)) in x.chunks_exact(win.h * win.w).zip(out.iter_mut()).enumerate().take(win.planes) {
            let sum: i32 = plane.iter().map(|&v| v.into()).sum();
            *dst = finish(o, sum as i64 - taps * m.x_zp);
        }
        return;
    }
    // Σ(x − zx) = Σx − taps·zx, with the taps inside the input counted as they are summed
    // (i32 holds them: fewer than 2^22 taps of |x| ≤ 255)
    let fold_run = |(s, n): (i32, i32), run: &[T]| (run.iter().fold(s, |s, &v| s + v.into()), n + run.len() as i32);
    win.reduce(x, (0i32, 0i32), |(s, n), v: T| (s + v.into(), n + 1), fold_run, |plane, o, (s, n)| {
        debug_assert_eq!(o / per_plane, plane);
        out[o] = finish(o, s as i64 - n as i64 * m.x_zp);
    });
}

/// quant.py's `divide_round_half_even`: floor division, `+ add`, then up when the remainder
/// is over half, or exactly half with an odd result (`den > 0`).
pub fn divide_round_half_even(num: i64, den: i64, add: i64) -> i64 {
    let (q, r) = (num.div_euclid(den) + add, num.rem_euclid(den));
    let twice = 2 * r;
    q + (twice > den || (twice == den && q.rem_euclid(2) == 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_even_after_the_addend() {
        assert_eq!(divide_round_half_even(5, 2, 0), 2); // 2.5 → 2
        assert_eq!(divide_round_half_even(7, 2, 0), 4); // 3.5 → 4
        assert_eq!(divide_round_half_even(-5, 2, 0), -2); // −2.5 → −2
        assert_eq!(divide_round_half_even(-7, 2, 0), -4);
        assert_eq!(divide_round_half_even(5, 2, 1), 4); // 2.5 + 1 = 3.5 → 4
        assert_eq!(divide_round_half_even(10, 4, 0), 2);
        assert_eq!(divide_round_half_even(11, 4, 0), 3);
    }

    #[test]
    fn max_pool_2x2_equals_the_general_walk() {
        let win = Window { planes: 3, h: 7, w: 9, kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [0; 4], out_hw: [3, 4] };
        let x: Vec<i8> = (0..3 * 7 * 9).map(|i| (i * 37 % 256) as u8 as i8).collect();
        let (mut fast, mut walk) = ([0i8; 36], [0i8; 36]);
        max_pool(&win, &x, i8::MIN, &mut fast);
        win.reduce(&x, i8::MIN, i8::max, |_, _| unreachable!(), |_, o, a| walk[o] = a);
        assert_eq!(fast, walk);
    }

    #[test]
    fn max_pool_skips_padding() {
        let win = Window { planes: 1, h: 2, w: 2, kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [2, 2] };
        let mut out = [0i8; 4];
        max_pool(&win, &[-5i8, 3, -128, 7], i8::MIN, &mut out);
        assert_eq!(out, [-5, 3, -128, 7]);
    }
}
