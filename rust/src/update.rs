//! Masked update: per weight, `keep ∈ {0,1}` copied from the public instance,
//! `w' = keep·(w + δ)` and `keep·y = 0` (the solve variable lives on the masked
//! set only). Masked weights are therefore exactly zero after the update.

use crate::h2::{ACell, RegionExt};
use ff::Field;
use halo2_axiom::{
    circuit::Layouter,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Instance, Selector},
    poly::Rotation,
};

use crate::Fp;

#[derive(Clone, Debug)]
pub struct MaskedUpdateConfig {
    cols: [Column<Advice>; 5],
    instance: Column<Instance>,
    q: Selector,
}

#[derive(Clone, Debug)]
pub struct MaskedUpdateChip {
    config: MaskedUpdateConfig,
}

impl MaskedUpdateChip {
    /// Columns: keep, w, δ, w', y (all equality-enabled); `instance` holds the
    /// mask bits.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        cols: [Column<Advice>; 5],
        instance: Column<Instance>,
    ) -> MaskedUpdateConfig {
        for c in cols {
            meta.enable_equality(c);
        }
        meta.enable_equality(instance);
        let q = meta.selector();
        meta.create_gate("update: keep bool, w' = keep(w+δ), keep·y = 0", |m| {
            let q = m.query_selector(q);
            let [keep, w, d, w2, y] = cols.map(|c| m.query_advice(c, Rotation::cur()));
            let one = Expression::Constant(Fp::ONE);
            vec![
                q.clone() * keep.clone() * (one - keep.clone()),
                q.clone() * (w2 - keep.clone() * (w + d)),
                q * keep * y,
            ]
        });
        MaskedUpdateConfig { cols, instance, q }
    }

    pub fn construct(config: MaskedUpdateConfig) -> Self {
        Self { config }
    }

    /// Constrains one weight; `keep_row` is the mask bit's instance row.
    /// Returns the keep cell for other chips to copy.
    pub fn apply(
        &self,
        layouter: &mut impl Layouter<Fp>,
        keep_row: usize,
        w: &ACell,
        delta: &ACell,
        w_new: &ACell,
        y: &ACell,
    ) -> Result<ACell, Error> {
        let cfg = &self.config;
        layouter.assign_region(
            || "masked update",
            |mut region| {
                cfg.q.enable(&mut region, 0)?;
                let keep = region.advice_from_instance(|| "keep", cfg.instance, keep_row, cfg.cols[0], 0)?;
                w.copy_advice(|| "w", &mut region, cfg.cols[1], 0)?;
                delta.copy_advice(|| "δ", &mut region, cfg.cols[2], 0)?;
                w_new.copy_advice(|| "w'", &mut region, cfg.cols[3], 0)?;
                y.copy_advice(|| "y", &mut region, cfg.cols[4], 0)?;
                Ok(keep)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::fp_from_i128;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, region_names};
    use halo2_axiom::{circuit::Value, dev::MockProver, plonk::Circuit};

    const K: u32 = 5;
    const UPDATE: (usize, &str) = (0, "update: keep bool, w' = keep(w+δ), keep·y = 0");
    /// The gate's constraints, in order.
    const BOOL: (usize, &str) = (0, "");
    const STEP: (usize, &str) = (1, "");
    const Y_OFF_S: (usize, &str) = (2, "");

    #[derive(Clone, Default)]
    struct TestCircuit {
        rows: Vec<(i128, i128, i128, i128)>, // w, δ, w', y
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = (MaskedUpdateConfig, [Column<Advice>; 5]);
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let cols = [(); 5].map(|_| meta.advice_column());
            let inst = meta.instance_column();
            (MaskedUpdateChip::configure(meta, cols, inst), cols)
        }
        fn synthesize(&self, cfg: Self::Config, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let chip = MaskedUpdateChip::construct(cfg.0.clone());
            for (i, (w, d, w2, y)) in self.rows.iter().enumerate() {
                let cells = layouter.assign_region(
                    || "inputs",
                    |mut r| {
                        [w, d, w2, y]
                            .iter()
                            .enumerate()
                            .map(|(j, v)| r.advice(|| "", cfg.1[j], 0, || Value::known(fp_from_i128(**v))))
                            .collect::<Result<Vec<_>, _>>()
                    },
                )?;
                chip.apply(&mut layouter, i, &cells[0], &cells[1], &cells[2], &cells[3])?;
            }
            Ok(())
        }
    }

    fn instance(mask: &[u64]) -> Vec<Vec<Fp>> {
        vec![mask.iter().map(|k| Fp::from(*k)).collect()]
    }

    /// Asserts that the rows (w, δ, w', y) under `mask` fail exactly the
    /// update constraints `(constraint, weight)`, each in that weight's region.
    #[track_caller]
    fn assert_fails(rows: Vec<(i128, i128, i128, i128)>, mask: Vec<u64>, expected: &[((usize, &'static str), usize)]) {
        let c = TestCircuit { rows };
        let names = region_names(&c);
        let expected = expected
            .iter()
            .map(|(which, weight)| constraint(UPDATE, *which, at(nth_region(&names, "masked update", *weight), 0)))
            .collect();
        assert_failures(failures(K, &c, instance(&mask)), expected);
    }

    #[test]
    fn kept_weights_move_by_delta_and_masked_weights_are_zero() {
        let c = TestCircuit {
            rows: vec![(10, -3, 7, 0), (-4, 4, 0, 9), (5, 0, 5, 0)],
        };
        assert_eq!(MockProver::run(K, &c, instance(&[1, 0, 1])).unwrap().verify(), Ok(()));
    }

    #[test]
    fn wrong_updates_and_masks_are_rejected() {
        // Masked weight left non-zero (only the compensation applied).
        assert_fails(vec![(-4, 4, 1, 9)], vec![0], &[(STEP, 0)]);
        // Kept weight not compensated.
        assert_fails(vec![(10, -3, 10, 0)], vec![1], &[(STEP, 0)]);
        // y non-zero on a kept weight.
        assert_fails(vec![(10, -3, 7, 1)], vec![1], &[(Y_OFF_S, 0)]);
        // A non-boolean "mask bit" that would scale the update: 2·(w + δ) = w'
        // holds, only booleanity fails.
        assert_fails(vec![(10, -3, 14, 0)], vec![2], &[(BOOL, 0)]);
        // Same witness under another mask: weight 0 is now masked but kept its
        // value; weight 1 is now kept (w + δ = 0 = w' holds) but carries a y.
        assert_fails(
            vec![(10, -3, 7, 0), (-4, 4, 0, 9)],
            vec![0, 1],
            &[(STEP, 0), (Y_OFF_S, 1)],
        );
    }
}
