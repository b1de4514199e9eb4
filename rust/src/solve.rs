//! Solve check with bounded residual, per row i of a block:
//! `(1 − keep_i)·(P_i − 2^s·w_i − e_i) = 0` with `|e_i| ≤ τ`, where
//! `P_i = Σ_j A[i,j]·y_j` comes from the MAC chip. With `y_j = 0` off the
//! masked set S (enforced by the update chip) this is `A[S,S]·y − 2^s·w[S] = e`
//! on the masked rows, i.e. `y ≈ A[S,S]⁻¹·w[S]` in fixed point without any
//! in-circuit inversion. τ is a power of two, so the bound `−τ ≤ e < τ` is
//! one range check: `e + τ ∈ [0, 2τ)`.

use crate::h2::{ACell, RegionExt};
use ff::Field;
use halo2_axiom::{
    circuit::{Layouter, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Fixed, Selector},
    poly::Rotation,
};

use crate::field::pow2;
use crate::range::RangeCheckChip;
use crate::Fp;

#[derive(Clone, Debug)]
pub struct SolveCheckConfig {
    cols: [Column<Advice>; 5],
    q: Selector,
    scale: Column<Fixed>,
    tau: Column<Fixed>,
}

/// s and τ are construction arguments placed in fixed columns (so in the
/// verifying key); one configuration serves every scale and tolerance.
#[derive(Clone, Debug)]
pub struct SolveCheckChip {
    config: SolveCheckConfig,
    scale_bits: usize,
    tol: u64,
    range: RangeCheckChip,
}

/// Bits of the residual-bound range check, `log2(2τ)`; None unless τ is a
/// power of two.
pub fn tol_bits(tol: u64) -> Option<usize> {
    tol.is_power_of_two().then(|| tol.trailing_zeros() as usize + 1)
}

impl SolveCheckChip {
    /// Columns: keep, P, w, e, e+τ, τ−e (all equality-enabled).
    pub fn configure(meta: &mut ConstraintSystem<Fp>, cols: [Column<Advice>; 5]) -> SolveCheckConfig {
        for c in cols {
            meta.enable_equality(c);
        }
        let q = meta.selector();
        let scale = meta.fixed_column();
        let tau_col = meta.fixed_column();
        meta.create_gate("solve: (1−keep)(P − 2^s·w − e) = 0, e+τ", |m| {
            let q = m.query_selector(q);
            let [keep, p, w, e, lo] = cols.map(|c| m.query_advice(c, Rotation::cur()));
            let tau = m.query_fixed(tau_col, Rotation::cur());
            let two_s = m.query_fixed(scale, Rotation::cur());
            let one = Expression::Constant(Fp::ONE);
            vec![
                q.clone() * (one - keep) * (p - w * two_s - e.clone()),
                q * (lo - e - tau),
            ]
        });
        SolveCheckConfig {
            cols,
            q,
            scale,
            tau: tau_col,
        }
    }

    /// `tol` = τ, a power of two below 2^62.
    pub fn construct(config: SolveCheckConfig, scale_bits: usize, tol: u64, range: RangeCheckChip) -> Self {
        assert!(
            tol < (1u64 << 62) && tol_bits(tol).is_some(),
            "tolerance {tol} must be a power of two below 2^62"
        );
        Self {
            config,
            scale_bits,
            tol,
            range,
        }
    }

    /// Checks one row; `residual` is e_i (0 on kept rows).
    pub fn check(
        &self,
        layouter: &mut impl Layouter<Fp>,
        keep: &ACell,
        p: &ACell,
        w: &ACell,
        residual: Value<Fp>,
    ) -> Result<(), Error> {
        let cfg = &self.config;
        let tau = Fp::from(self.tol);
        let t = tol_bits(self.tol).expect("checked in construct");
        let lo = self
            .range
            .witness_checked(layouter, residual.map(|e| e + tau), t, false)?;
        layouter.assign_region(
            || "solve check",
            |mut region| {
                cfg.q.enable(&mut region, 0)?;
                region.fixed(|| "2^s", cfg.scale, 0, || Value::known(pow2(self.scale_bits)))?;
                region.fixed(|| "τ", cfg.tau, 0, || Value::known(tau))?;
                keep.copy_advice(|| "keep", &mut region, cfg.cols[0], 0)?;
                p.copy_advice(|| "P", &mut region, cfg.cols[1], 0)?;
                w.copy_advice(|| "w", &mut region, cfg.cols[2], 0)?;
                region.advice(|| "e", cfg.cols[3], 0, || residual)?;
                lo.copy_advice(|| "e+τ", &mut region, cfg.cols[4], 0)?;
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::fp_from_i128;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, region_names, Failure};
    use halo2_axiom::{dev::MockProver, plonk::Circuit};

    const S: usize = 4;
    const TAU: u64 = 8;
    const K: u32 = 9;
    /// Gate indices in configure order: the range chip's one lane first.
    const LAST_Z: (usize, &str) = (0, "range: last z = 0");
    const SOLVE: (usize, &str) = (1, "solve: (1−keep)(P − 2^s·w − e) = 0, e+τ");

    #[derive(Clone, Default)]
    struct TestCircuit {
        rows: Vec<(bool, i128, i128, i128)>, // keep, P, w, e
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = (SolveCheckConfig, crate::range::RangeCheckConfig, [Column<Advice>; 5]);
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let cols = [(); 5].map(|_| meta.advice_column());
            let constants = meta.fixed_column();
            let range = RangeCheckChip::configure(meta, &[cols[0]], constants);
            (SolveCheckChip::configure(meta, cols), range, cols)
        }
        fn synthesize(&self, cfg: Self::Config, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let range = RangeCheckChip::construct(cfg.1.clone());
            range.load_table(&mut layouter)?;
            let chip = SolveCheckChip::construct(cfg.0.clone(), S, TAU, range);
            for (keep, p, w, e) in &self.rows {
                let (k, p, w) = layouter.assign_region(
                    || "inputs",
                    |mut r| {
                        let k = r.advice(|| "", cfg.2[0], 0, || Value::known(Fp::from(*keep as u64)))?;
                        let p = r.advice(|| "", cfg.2[1], 0, || Value::known(fp_from_i128(*p)))?;
                        let w = r.advice(|| "", cfg.2[2], 0, || Value::known(fp_from_i128(*w)))?;
                        Ok((k, p, w))
                    },
                )?;
                chip.check(&mut layouter, &k, &p, &w, Value::known(fp_from_i128(*e)))?;
            }
            Ok(())
        }
    }

    /// What MockProver reports for one masked row (keep = 0) with P, w, e.
    fn assert_row_fails(p: i128, w: i128, e: i128, expected: impl FnOnce(&[String]) -> Vec<Failure>) {
        let c = TestCircuit {
            rows: vec![(false, p, w, e)],
        };
        let names = region_names(&c);
        assert_failures(failures(K, &c, vec![]), expected(&names));
    }

    #[test]
    fn residuals_within_tolerance_verify() {
        // P − 16·w = e for masked rows; kept rows are unconstrained.
        let rows = vec![
            (false, 16 * 7 + 7, 7, 7),
            (false, 16 * -7 - 8, -7, -8),
            (false, 0, 0, 0),
            (true, 12345, 3, 0),
        ];
        assert_eq!(
            MockProver::run(K, &TestCircuit { rows }, vec![]).unwrap().verify(),
            Ok(())
        );
        assert_eq!(tol_bits(8), Some(4));
        assert_eq!(tol_bits(10), None);
        assert_eq!(tol_bits(0), None);
    }

    #[test]
    fn residual_beyond_tolerance_or_wrong_is_rejected() {
        // e + τ must lie in [0, 2τ) = [0, 16), a 4-bit check: x in 8 bits on
        // row 1 of its first region, then x·2^4 in 8 bits in the second.
        let bound = |names: &[String], nth| at(nth_region(names, "range check 4 bits", nth), 1);
        let equation = |names: &[String]| at(nth_region(names, "solve check", 0), 0);
        // e = τ: e + τ = 16 < 2^8, but 16·2^4 = 2^8.
        assert_row_fails(16 * 7 + 8, 7, 8, |n| vec![constraint(LAST_Z, (0, ""), bound(n, 1))]);
        // e = −τ − 1: e + τ = −1 is p − 1, which neither half holds.
        assert_row_fails(16 * 7 - 9, 7, -9, |n| {
            vec![
                constraint(LAST_Z, (0, ""), bound(n, 0)),
                constraint(LAST_Z, (0, ""), bound(n, 1)),
            ]
        });
        // A consistent residual far beyond τ: e + τ = 48, 48·2^4 ≥ 2^8.
        assert_row_fails(16 * 7 + 40, 7, 40, |n| vec![constraint(LAST_Z, (0, ""), bound(n, 1))]);
        // e within τ that does not match P − 2^s·w: the solve constraint (0) fails.
        assert_row_fails(16 * 7 + 3, 7, 2, |n| vec![constraint(SOLVE, (0, ""), equation(n))]);
        // A y far from the solve: P unrelated to w, with a claimed e = 0.
        assert_row_fails(5000, 7, 0, |n| vec![constraint(SOLVE, (0, ""), equation(n))]);
    }
}
