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
    /// Calls `f(plane, output index, input indices of the taps inside the input)` per output.
    fn for_each(&self, mut f: impl FnMut(usize, usize, &mut dyn Iterator<Item = usize>)) {
        let [oh, ow] = self.out_hw;
        for plane in 0..self.planes {
            let base = plane * self.h * self.w;
            for y in 0..oh {
                for x in 0..ow {
                    let rows = (0..self.kernel[0])
                        .map(move |i| (y * self.strides[0] + i * self.dilations[0]).wrapping_sub(self.pads[0]))
                        .filter(|&r| r < self.h);
                    let mut taps = rows.flat_map(move |r| {
                        (0..self.kernel[1])
                            .map(move |j| (x * self.strides[1] + j * self.dilations[1]).wrapping_sub(self.pads[1]))
                            .filter(|&c| c < self.w)
                            .map(move |c| base + r * self.w + c)
                    });
                    f(plane, (plane * oh + y) * ow + x, &mut taps);
                }
            }
        }
    }
}

/// Max over each window; a window with no tap inside the input gives the type's lowest value.
pub fn max_pool<T: Copy + Ord>(win: &Window, x: &[T], lowest: T, out: &mut [T]) {
    win.for_each(|_, o, taps| out[o] = taps.map(|i| x[i]).fold(lowest, T::max));
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
pub fn mean_pool<T: Copy + Into<i64>>(win: &Window, x: &[T], m: &Mean, out: &mut [u8]) {
    let per_plane = win.out_hw[0] * win.out_hw[1];
    win.for_each(|plane, o, taps| {
        let sum: i64 = taps.map(|i| x[i].into() - m.x_zp).sum();
        let q = divide_round_half_even(sum * m.mult, m.counts[o - plane * per_plane] << m.bits, m.add);
        out[o] = (q + (m.y_zp - m.add)).clamp(m.lo, m.hi) as u8;
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
    fn max_pool_skips_padding() {
        let win = Window { planes: 1, h: 2, w: 2, kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [1, 1, 1, 1], out_hw: [2, 2] };
        let mut out = [0i8; 4];
        max_pool(&win, &[-5i8, 3, -128, 7], i8::MIN, &mut out);
        assert_eq!(out, [-5, 3, -128, 7]);
    }
}
