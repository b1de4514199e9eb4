//! Masked update: per weight, `keep ∈ {0,1}` copied from the public instance,
//! `w' = keep·(w + δ)` and `keep·y = 0` (the solve variable lives on the masked
//! set only). Masked weights are therefore exactly zero after the update.

use ff::Field;
use halo2_proofs::{
    circuit::{AssignedCell, Layouter},
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
        w: &AssignedCell<Fp, Fp>,
        delta: &AssignedCell<Fp, Fp>,
        w_new: &AssignedCell<Fp, Fp>,
        y: &AssignedCell<Fp, Fp>,
    ) -> Result<AssignedCell<Fp, Fp>, Error> {
        let cfg = &self.config;
        layouter.assign_region(
            || "masked update",
            |mut region| {
                cfg.q.enable(&mut region, 0)?;
                let keep = region.assign_advice_from_instance(|| "keep", cfg.instance, keep_row, cfg.cols[0], 0)?;
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
    use halo2_proofs::{
        circuit::{SimpleFloorPlanner, Value},
        dev::MockProver,
        plonk::Circuit,
    };

    #[derive(Clone, Default)]
    struct TestCircuit {
        rows: Vec<(i128, i128, i128, i128)>, // w, δ, w', y
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = (MaskedUpdateConfig, [Column<Advice>; 5]);
        type FloorPlanner = SimpleFloorPlanner;
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
                            .map(|(j, v)| r.assign_advice(|| "", cfg.1[j], 0, || Value::known(fp_from_i128(**v))))
                            .collect::<Result<Vec<_>, _>>()
                    },
                )?;
                chip.apply(&mut layouter, i, &cells[0], &cells[1], &cells[2], &cells[3])?;
            }
            Ok(())
        }
    }

    fn ok(rows: Vec<(i128, i128, i128, i128)>, mask: Vec<u64>) -> bool {
        let inst = mask.into_iter().map(Fp::from).collect();
        MockProver::run(5, &TestCircuit { rows }, vec![inst])
            .unwrap()
            .verify()
            .is_ok()
    }

    #[test]
    fn kept_weights_move_by_delta_and_masked_weights_are_zero() {
        assert!(ok(vec![(10, -3, 7, 0), (-4, 4, 0, 9), (5, 0, 5, 0)], vec![1, 0, 1]));
    }

    #[test]
    fn wrong_updates_and_masks_are_rejected() {
        // Masked weight left non-zero (only the compensation applied).
        assert!(!ok(vec![(-4, 4, 1, 9)], vec![0]));
        // Kept weight not compensated.
        assert!(!ok(vec![(10, -3, 10, 0)], vec![1]));
        // y non-zero on a kept weight.
        assert!(!ok(vec![(10, -3, 7, 1)], vec![1]));
        // A non-boolean "mask bit" that would scale the update.
        assert!(!ok(vec![(10, -3, 14, 0)], vec![2]));
        // Same witness under another mask.
        assert!(!ok(vec![(10, -3, 7, 0), (-4, 4, 0, 9)], vec![0, 1]));
    }
}
