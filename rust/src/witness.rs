//! Honest witness from plain integers.
//!
//! Fixed-point conventions (scale 2^s, s = `scale_bits`):
//! * weights `w` are integers at scale 2^s (real = int / 2^s) in the committed
//!   range `[−2^23, 2^23)`; Fisher-inverse blocks `A` are symmetric integers
//!   at any scale of their own in `[−2^15, 2^15)` (the step is invariant to a
//!   block's scale);
//! * `y` (length B per block, zero on kept weights) is at scale 2^s and solves
//!   `A[S,S]·y ≈ 2^s·w[S]`; it is found in f64 and rounded to nearest, and the
//!   residual `e = A[S,S]·y − 2^s·w[S]` (product scale 2^(2s)) must satisfy
//!   `|e| ≤ τ`;
//! * `P_i = Σ_j A[i,j]·y_j`, `δ_i = ⌊−P_i / 2^s⌋` (floor, towards −∞) with
//!   remainder `r_i = −P_i − 2^s·δ_i ∈ [0, 2^s)`;
//! * `w'_i = keep_i·(w_i + δ_i)`, which must stay in the committed range.
//!
//! A blocks are B×B, row-major, one after another.

use crate::circuit::Shape;
use crate::commit::{lower_triangle, Packing, FISHER, WEIGHTS};
use crate::ZkError;

/// Every private value of one proof, as integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    pub w: Vec<i64>,
    pub a: Vec<i64>,
    pub keep: Vec<bool>,
    pub y: Vec<i64>,
    pub delta: Vec<i64>,
    pub remainder: Vec<i64>,
    /// Solve residual e_i on masked weights, 0 on kept ones.
    pub residual: Vec<i64>,
    pub w_new: Vec<i64>,
}

fn check_committed(name: &str, v: &[i64], packing: Packing) -> Result<(), ZkError> {
    let (lo, hi) = (packing.min(), packing.end());
    match v.iter().enumerate().find(|(_, x)| !(lo..hi).contains(*x)) {
        Some((i, x)) => Err(ZkError::Invalid(format!(
            "{name}[{i}] = {x} is outside the committed range [{lo}, {hi})"
        ))),
        None => Ok(()),
    }
}

fn fits_signed(x: i128, bits: usize) -> bool {
    let half = 1i128 << (bits - 1);
    (-half..half).contains(&x)
}

/// Computes y, δ, remainders, residuals and W' for `shape` from W, the A
/// blocks and the keep mask (true = weight kept, false = masked).
pub fn honest_witness(shape: &Shape, w: &[i64], a: &[i64], keep: &[bool]) -> Result<Witness, ZkError> {
    shape.validate()?;
    let (b, n) = (shape.block, shape.n_weights());
    if w.len() != n || keep.len() != n || a.len() != shape.n_blocks * b * b {
        return Err(ZkError::Invalid(format!(
            "expected {n} weights, {n} mask bits and {} A entries for {} blocks of {b}; got {}, {}, {}",
            shape.n_blocks * b * b,
            shape.n_blocks,
            w.len(),
            keep.len(),
            a.len()
        )));
    }
    check_committed("w", w, WEIGHTS)?;
    check_committed("a", a, FISHER)?;
    lower_triangle(a, b)?; // symmetric blocks only
    let two_s = 1i128 << shape.scale_bits;
    let mut out = Witness {
        w: w.to_vec(),
        a: a.to_vec(),
        keep: keep.to_vec(),
        y: vec![0; n],
        delta: vec![0; n],
        remainder: vec![0; n],
        residual: vec![0; n],
        w_new: vec![0; n],
    };
    for blk in 0..shape.n_blocks {
        let base = blk * b;
        let ab = &a[blk * b * b..(blk + 1) * b * b];
        let s_idx: Vec<usize> = (0..b).filter(|&i| !keep[base + i]).collect();
        let m: Vec<Vec<f64>> = s_idx
            .iter()
            .map(|&i| s_idx.iter().map(|&j| ab[i * b + j] as f64).collect())
            .collect();
        let rhs: Vec<f64> = s_idx.iter().map(|&i| (w[base + i] as i128 * two_s) as f64).collect();
        let y_s = solve_f64(m, rhs)
            .ok_or_else(|| ZkError::Invalid(format!("A[S,S] of block {blk} (S = {s_idx:?}) is singular")))?;
        for (&j, yj) in s_idx.iter().zip(&y_s) {
            let yr = yj.round();
            if !yr.is_finite() || !fits_signed(yr as i128, shape.y_bits) || yr.abs() > 9.0e18 {
                return Err(ZkError::Invalid(format!(
                    "y = {yr} for weight {} does not fit y_bits = {}",
                    base + j,
                    shape.y_bits
                )));
            }
            out.y[base + j] = yr as i64;
        }
        for i in 0..b {
            let p: i128 = (0..b).map(|j| ab[i * b + j] as i128 * out.y[base + j] as i128).sum();
            let g = base + i;
            if !keep[g] {
                let e = p - two_s * w[g] as i128;
                let tol = shape.tol as i128;
                if !(-tol..tol).contains(&e) {
                    return Err(ZkError::Invalid(format!(
                        "solve residual e = {e} at weight {g} is outside [−tol, tol), tol = {} (raise tol or the scale)",
                        shape.tol
                    )));
                }
                out.residual[g] = e as i64;
            }
            let d = (-p).div_euclid(two_s);
            if d.unsigned_abs() >= 1 << 62 {
                return Err(ZkError::Invalid(format!(
                    "δ = {d} at weight {g} is out of any weight range"
                )));
            }
            out.delta[g] = d as i64;
            out.remainder[g] = (-p).rem_euclid(two_s) as i64;
            out.w_new[g] = if keep[g] { w[g] + d as i64 } else { 0 };
        }
    }
    check_committed("w_new", &out.w_new, WEIGHTS)?;
    Ok(out)
}

/// Gaussian elimination with partial pivoting; None if (numerically) singular.
fn solve_f64(mut m: Vec<Vec<f64>>, mut rhs: Vec<f64>) -> Option<Vec<f64>> {
    let n = rhs.len();
    let scale = m.iter().flatten().fold(0.0f64, |s, x| s.max(x.abs()));
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[piv][col].abs() <= 1e-12 * scale.max(1.0) {
            return None;
        }
        m.swap(col, piv);
        rhs.swap(col, piv);
        for r in col + 1..n {
            let f = m[r][col] / m[col][col];
            let pivot_row = m[col].clone();
            for (x, p) in m[r][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            rhs[r] -= f * rhs[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| m[r][c] * x[c]).sum();
        x[r] = (rhs[r] - s) / m[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_elimination_matches_a_known_solution() {
        let x = solve_f64(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
        assert!(solve_f64(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 1.0]).is_none());
    }

    #[test]
    fn masked_weights_become_zero_and_floor_holds() {
        let shape = Shape {
            block: 3,
            n_blocks: 1,
            scale_bits: 4,
            tol: 64,
            y_bits: 32,
        };
        // A = 16·[[2,0,1],[0,1,0],[1,0,2]] at scale 2^4.
        let a = vec![32, 0, 16, 0, 16, 0, 16, 0, 32];
        let w = vec![20, -7, 5];
        let wit = honest_witness(&shape, &w, &a, &[false, true, true]).unwrap();
        // y_0 = 2^s·w_0 / A_00 = 16·20/32 = 10; δ = −A[:,0]·y/16 = [−20, 0, −10].
        assert_eq!(wit.y, vec![10, 0, 0]);
        assert_eq!(wit.delta, vec![-20, 0, -10]);
        assert_eq!(wit.w_new, vec![0, -7, -5]);
        assert_eq!(wit.residual, vec![0, 0, 0]);
    }

    #[test]
    fn residual_above_tolerance_is_an_error_naming_it() {
        let shape = Shape {
            block: 1,
            n_blocks: 1,
            scale_bits: 1,
            tol: 2,
            y_bits: 32,
        };
        // A = 7, 2·w = 6 → y = 6/7 rounds to 1, e = 7 − 6 = 1 < τ; 2·w = 10 →
        // y = 10/7 rounds to 1, e = 7 − 10 = −3 beyond τ.
        assert!(honest_witness(&shape, &[3], &[7], &[false]).is_ok());
        let err = honest_witness(&shape, &[5], &[7], &[false]).unwrap_err();
        assert!(format!("{err}").contains("residual e = -3"), "{err}");
    }

    #[test]
    fn asymmetric_fisher_blocks_are_refused() {
        let shape = Shape {
            block: 2,
            n_blocks: 1,
            scale_bits: 4,
            tol: 64,
            y_bits: 32,
        };
        let err = honest_witness(&shape, &[1, 2], &[5, 1, 2, 5], &[false, true]).unwrap_err();
        assert!(format!("{err}").contains("not symmetric"), "{err}");
    }
}
