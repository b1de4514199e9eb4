//! Exact int64 matrix products for the integer training tail (weight gradients `errᵀ·act`,
//! input errors `err·W`): numpy's int64 matmul does not use BLAS; this is the same
//! wrapping i64 arithmetic, vectorised over the output row.

use crate::path::Path;

/// `c (m × n) = a (m × k, any strides) · b (k × n, row-major)`, wrapping like numpy's int64.
pub fn matmul_i64(path: Path, a: &dyn Fn(usize, usize) -> i64, m: usize, k: usize, b: &[i64], n: usize, c: &mut [i64]) {
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    crate::path::vectorized(path, #[inline(always)] || matmul_body(a, k, b, n, c))
}

/// The same product stored as i32 (a weight gradient whose sums the caller has bounded),
/// a row at a time through one i64 row, so no m × n i64 array is made. False, with `c`
/// partly written, if a sum does not fit i32.
pub fn matmul_i64_to_i32(path: Path, a: &dyn Fn(usize, usize) -> i64, m: usize, k: usize, b: &[i64], n: usize, c: &mut [i32]) -> bool {
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    if n == 0 {
        return true;
    }
    let mut row = vec![0i64; n];
    crate::path::vectorized(path, #[inline(always)] || {
        c.chunks_exact_mut(n).enumerate().all(|(i, out)| {
            matmul_body(&|_, kk| a(i, kk), k, b, n, &mut row);
            out.iter_mut().zip(&row).all(|(o, &v)| i32::try_from(v).map(|v| *o = v).is_ok())
        })
    })
}

#[inline(always)]
fn matmul_body(a: &dyn Fn(usize, usize) -> i64, k: usize, b: &[i64], n: usize, c: &mut [i64]) {
    if n == 0 {
        return;
    }
    for (i, row) in c.chunks_exact_mut(n).enumerate() {
        row.fill(0);
        for (kk, b_row) in b.chunks_exact(n).enumerate().take(k) {
            let s = a(i, kk);
            if s != 0 {
                for (o, &v) in row.iter_mut().zip(b_row) {
                    *o = o.wrapping_add(s.wrapping_mul(v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_naive_product_on_every_path() {
        let (m, k, n) = (5, 7, 19);
        let a: Vec<i64> = (0..m * k).map(|i| (i as i64 * 7919) % 301 - 150).collect();
        let b: Vec<i64> = (0..k * n).map(|i| (i as i64 * 104729) % 255 - 127).collect();
        for path in Path::available() {
            let mut c = vec![0i64; m * n];
            matmul_i64(path, &|i, kk| a[i * k + kk], m, k, &b, n, &mut c);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(c[i * n + j], (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum::<i64>());
                }
            }
            let mut narrow = vec![0i32; m * n];
            assert!(matmul_i64_to_i32(path, &|i, kk| a[i * k + kk], m, k, &b, n, &mut narrow));
            assert!(narrow.iter().zip(&c).all(|(&x, &y)| x as i64 == y));
            let big: Vec<i64> = a.iter().map(|&v| v << 24).collect(); // sums beyond i32
            assert!(!matmul_i64_to_i32(path, &|i, kk| big[i * k + kk], m, k, &b, n, &mut narrow));
        }
    }
}
