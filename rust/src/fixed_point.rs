//! Fixed-point multiply–accumulate with floor rescale.
//!
//! `dot` computes `P = Σ_j a_j·y_j` four products per row
//! (`acc' = acc + Σ_{t<4} a_t·y_t`); `floor_rescale` constrains
//! `2^s·δ + r + P = 0` with `0 ≤ r < 2^s`, i.e. `δ = ⌊−P / 2^s⌋` exactly once
//! the caller bounds δ (so that |2^s·δ| + r ≪ p keeps the equation inside the
//! integers). The unlearning circuit bounds δ through `w' = w + δ` with both
//! weights range-checked, instead of paying a wide range check of its own.

use crate::h2::{ACell, RegionExt};
use halo2_axiom::{
    circuit::{Layouter, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Fixed, Selector, VirtualCells},
    poly::Rotation,
};

use crate::field::pow2;
use crate::range::RangeCheckChip;
use crate::Fp;

/// Products per MAC row.
pub const MAC_WIDTH: usize = 4;

#[derive(Clone, Debug)]
pub struct FixedPointConfig {
    a: [Column<Advice>; MAC_WIDTH],
    y: [Column<Advice>; MAC_WIDTH],
    acc: Column<Advice>,
    /// First MAC row (`acc' = Σ a·y`): no constant 0 to start from.
    q_mac_first: Selector,
    q_mac: Selector,
    q_floor: Selector,
    scale: Column<Fixed>,
}

/// The scale s is a construction argument: it lands in a fixed column (so in
/// the verifying key), not in the gate, so one configuration serves every s.
#[derive(Clone, Debug)]
pub struct FixedPointChip {
    config: FixedPointConfig,
    scale_bits: usize,
    range: RangeCheckChip,
}

impl FixedPointChip {
    /// Uses `advice[0..4]` for a, `advice[4..8]` for y, `advice[8]` for the
    /// accumulator (all equality-enabled); the floor row reuses acc, a[0], a[1].
    pub fn configure(meta: &mut ConstraintSystem<Fp>, advice: [Column<Advice>; 2 * MAC_WIDTH + 1]) -> FixedPointConfig {
        for c in advice {
            meta.enable_equality(c);
        }
        let a: [Column<Advice>; MAC_WIDTH] = advice[..MAC_WIDTH].try_into().unwrap();
        let y: [Column<Advice>; MAC_WIDTH] = advice[MAC_WIDTH..2 * MAC_WIDTH].try_into().unwrap();
        let acc = advice[2 * MAC_WIDTH];
        let q_mac_first = meta.selector();
        let q_mac = meta.selector();
        let q_floor = meta.selector();
        let scale = meta.fixed_column();
        let products = |m: &mut VirtualCells<Fp>| {
            (0..MAC_WIDTH).fold(Expression::Constant(Fp::zero()), |s, t| {
                s + m.query_advice(a[t], Rotation::cur()) * m.query_advice(y[t], Rotation::cur())
            })
        };
        // Two gates: the first row has no accumulator cell to query.
        meta.create_gate("mac first: acc' = Σ a·y", |m| {
            let q = m.query_selector(q_mac_first);
            let acc_next = m.query_advice(acc, Rotation::next());
            vec![q * (acc_next - products(m))]
        });
        meta.create_gate("mac: acc' = acc + Σ a·y", |m| {
            let q = m.query_selector(q_mac);
            let acc_cur = m.query_advice(acc, Rotation::cur());
            let acc_next = m.query_advice(acc, Rotation::next());
            vec![q * (acc_next - acc_cur - products(m))]
        });
        meta.create_gate("floor: 2^s·δ + r + P = 0", |m| {
            let q = m.query_selector(q_floor);
            let p = m.query_advice(acc, Rotation::cur());
            let delta = m.query_advice(a[0], Rotation::cur());
            let r = m.query_advice(a[1], Rotation::cur());
            let two_s = m.query_fixed(scale, Rotation::cur());
            vec![q * (delta * two_s + r + p)]
        });
        FixedPointConfig {
            a,
            y,
            acc,
            q_mac_first,
            q_mac,
            q_floor,
            scale,
        }
    }

    /// `range` checks the remainders (a clone shares its lane rotation).
    pub fn construct(config: FixedPointConfig, scale_bits: usize, range: RangeCheckChip) -> Self {
        Self {
            config,
            scale_bits,
            range,
        }
    }

    /// `Σ_j a_j·y_j` over equal-length cell slices (the caller range-checks
    /// both so the sum cannot wrap).
    pub fn dot(&self, layouter: &mut impl Layouter<Fp>, a: &[ACell], y: &[ACell]) -> Result<ACell, Error> {
        assert_eq!(a.len(), y.len(), "dot: a has {} entries, y has {}", a.len(), y.len());
        let cfg = &self.config;
        layouter.assign_region(
            || "dot",
            |mut region| {
                let mut acc: Option<ACell> = None;
                for (row, (ac, yc)) in a.chunks(MAC_WIDTH).zip(y.chunks(MAC_WIDTH)).enumerate() {
                    let mut sum = match &acc {
                        None => {
                            cfg.q_mac_first.enable(&mut region, row)?;
                            Value::known(Fp::zero())
                        }
                        Some(c) => {
                            cfg.q_mac.enable(&mut region, row)?;
                            c.value().copied()
                        }
                    };
                    for t in 0..MAC_WIDTH {
                        let (av, yv) = if t < ac.len() {
                            let av = ac[t].copy_advice(|| "a", &mut region, cfg.a[t], row)?;
                            let yv = yc[t].copy_advice(|| "y", &mut region, cfg.y[t], row)?;
                            (av.value().copied(), yv.value().copied())
                        } else {
                            // Unused slots multiply two constant zeros.
                            region.advice_from_constant(|| "a pad", cfg.a[t], row, Fp::zero())?;
                            region.advice_from_constant(|| "y pad", cfg.y[t], row, Fp::zero())?;
                            (Value::known(Fp::zero()), Value::known(Fp::zero()))
                        };
                        sum = sum + av * yv;
                    }
                    acc = Some(region.advice(|| "acc", cfg.acc, row + 1, || sum)?);
                }
                Ok(acc.expect("dot of at least one product"))
            },
        )
    }

    /// Constrains `2^s·δ + r + P = 0` with r in `[0, 2^s)`; returns the δ
    /// cell, which the caller must bound (without a bound, any r in range has
    /// a field element δ that satisfies the equation).
    pub fn floor_rescale(
        &self,
        layouter: &mut impl Layouter<Fp>,
        p: &ACell,
        delta: Value<Fp>,
        remainder: Value<Fp>,
    ) -> Result<ACell, Error> {
        let cfg = &self.config;
        let r = self
            .range
            .witness_checked(layouter, remainder, self.scale_bits, false)?;
        layouter.assign_region(
            || "floor rescale",
            |mut region| {
                cfg.q_floor.enable(&mut region, 0)?;
                region.fixed(|| "2^s", cfg.scale, 0, || Value::known(pow2(self.scale_bits)))?;
                p.copy_advice(|| "P", &mut region, cfg.acc, 0)?;
                r.copy_advice(|| "r", &mut region, cfg.a[1], 0)?;
                region.advice(|| "δ", cfg.a[0], 0, || delta)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::fp_from_i128;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, region_names, Failure};
    use ff::Field;
    use halo2_axiom::{
        dev::{MockProver, VerifyFailure},
        plonk::{Circuit, Instance},
    };

    const S: usize = 6;
    const K: u32 = 9;
    /// Gate indices in configure order: the range chip's one lane first.
    const LAST_Z: (usize, &str) = (0, "range: last z = 0");
    const FLOOR: (usize, &str) = (3, "floor: 2^s·δ + r + P = 0");

    /// δ = ⌊−a·y / 2^S⌋ exposed as the only public instance.
    #[derive(Clone, Default)]
    struct TestCircuit {
        a: Vec<i128>,
        y: Vec<i128>,
        delta: Fp,
        r: i128,
        /// The caller's bound on δ (40 bits signed).
        bound_delta: bool,
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = (FixedPointConfig, crate::range::RangeCheckConfig, Column<Instance>);
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let advice = [(); 9].map(|_| meta.advice_column());
            let constants = meta.fixed_column();
            let range = RangeCheckChip::configure(meta, &[advice[0]], constants);
            let fp = FixedPointChip::configure(meta, advice);
            let inst = meta.instance_column();
            meta.enable_equality(inst);
            (fp, range, inst)
        }
        fn synthesize(&self, cfg: Self::Config, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let range = RangeCheckChip::construct(cfg.1.clone());
            range.load_table(&mut layouter)?;
            let known = |v: &i128| Value::known(fp_from_i128(*v));
            let a = self
                .a
                .iter()
                .map(|v| range.witness_checked(&mut layouter, known(v), 16, true))
                .collect::<Result<Vec<_>, _>>()?;
            let y = self
                .y
                .iter()
                .map(|v| range.witness_checked(&mut layouter, known(v), 16, true))
                .collect::<Result<Vec<_>, _>>()?;
            let chip = FixedPointChip::construct(cfg.0.clone(), S, range.clone());
            let p = chip.dot(&mut layouter, &a, &y)?;
            let d = chip.floor_rescale(&mut layouter, &p, Value::known(self.delta), known(&self.r))?;
            if self.bound_delta {
                range.check(&mut layouter, &d, 40, true)?;
            }
            layouter.constrain_instance(d.cell(), cfg.2, 0);
            Ok(())
        }
    }

    fn honest(a: Vec<i128>, y: Vec<i128>) -> TestCircuit {
        let p: i128 = a.iter().zip(&y).map(|(a, y)| a * y).sum();
        let delta = fp_from_i128((-p).div_euclid(1 << S));
        let r = (-p).rem_euclid(1 << S);
        TestCircuit {
            a,
            y,
            delta,
            r,
            bound_delta: true,
        }
    }

    fn verify(c: &TestCircuit) -> Result<(), Vec<VerifyFailure>> {
        MockProver::run(K, c, vec![vec![c.delta]]).unwrap().verify()
    }

    /// The failures of `c` with its δ as the public instance, and its region names.
    fn rejected(c: &TestCircuit) -> (Vec<Failure>, Vec<String>) {
        (failures(K, c, vec![vec![c.delta]]), region_names(c))
    }

    #[test]
    fn an_unbounded_delta_is_a_field_element_for_any_remainder() {
        // Why the caller must bound δ: with r' = r + 1 the "δ" (−P − r')/2^s
        // exists in the field, and only the caller's range check rejects it.
        let c = honest(vec![3, -7, 11], vec![101, 250, -3]);
        let p: i128 = c.a.iter().zip(&c.y).map(|(a, y)| a * y).sum();
        let r2 = (c.r + 1) % (1 << S);
        let field_delta = (fp_from_i128(-p) - fp_from_i128(r2)) * pow2(S).invert().unwrap();
        let mut cheat = TestCircuit {
            delta: field_delta,
            r: r2,
            bound_delta: false,
            ..c
        };
        assert_eq!(verify(&cheat), Ok(()));
        cheat.bound_delta = true;
        // δ ≈ p/2^6 decomposes into five bytes with a nonzero rest: the 40-bit
        // check's end gate fails on its last row.
        let (fs, names) = rejected(&cheat);
        let bound = nth_region(&names, "range check 40 bits", 0);
        assert_failures(fs, vec![constraint(LAST_Z, (0, ""), at(bound, 5))]);
    }

    #[test]
    fn floor_of_negative_dot_product_verifies() {
        for (a, y) in [
            (vec![3, -7, 11, 5, 2, -1], vec![100, 250, -3, 7, 9, 1000]),
            (vec![-30000, 30000, 1], vec![-32768, -32768, 5]),
            (vec![1], vec![1]),
        ] {
            let c = honest(a, y);
            assert_eq!(verify(&c), Ok(()), "honest δ = {:?} r = {}", c.delta, c.r);
        }
    }

    #[test]
    fn rounding_other_than_floor_is_rejected() {
        let c = honest(vec![3, -7, 11, 5, 2], vec![101, 250, -3, 7, 9]);
        assert!(c.r != 0);
        // The remainder's 6-bit check: x in 8 bits, then x·2^2 in 8 bits.
        let names = region_names(&c);
        let r_check = |nth| at(nth_region(&names, "range check 6 bits", nth), 1);
        let floor = || at(nth_region(&names, "floor rescale", 0), 0);

        // δ+1 (ceil, or round-to-nearest upwards) needs r − 2^s < 0: a field
        // element near p fails both halves of the remainder check; the floor
        // equation itself holds.
        let up = TestCircuit {
            delta: c.delta + Fp::ONE,
            r: c.r - (1 << S),
            ..c.clone()
        };
        assert_failures(
            rejected(&up).0,
            vec![
                constraint(LAST_Z, (0, ""), r_check(0)),
                constraint(LAST_Z, (0, ""), r_check(1)),
            ],
        );
        // δ−1 needs r + 2^s ∈ [2^6, 2^7): below 2^8, so only the scaled half fails.
        let down = TestCircuit {
            delta: c.delta - Fp::ONE,
            r: c.r + (1 << S),
            ..c.clone()
        };
        assert_failures(rejected(&down).0, vec![constraint(LAST_Z, (0, ""), r_check(1))]);
        // δ that does not satisfy the equation at all, with an honest remainder.
        let wrong = TestCircuit {
            delta: c.delta + Fp::from(3u64),
            ..c.clone()
        };
        assert_failures(rejected(&wrong).0, vec![constraint(FLOOR, (0, ""), floor())]);
        // A product other than the one δ and r were computed for: the MAC rows
        // hold for the tampered y, the floor equation does not.
        let mut tampered = c.clone();
        tampered.y[0] += 1;
        assert_failures(rejected(&tampered).0, vec![constraint(FLOOR, (0, ""), floor())]);
    }
}
