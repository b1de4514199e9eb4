//! Range check by running-sum decomposition into 8-bit limbs, each limb
//! looked up in a 256-row table.
//!
//! Why lookups with a running sum: a b-bit check costs ⌈b/8⌉+1 rows in one
//! advice column, the table is small enough for tiny test circuits (k ≥ 9),
//! and the bit width is a per-call argument, so one chip serves 24-bit
//! weights, 32-bit y, 48-bit δ and s-bit remainders.
//!
//! For `x = v + shift` (shift = 2^(b−1) for signed values) the region holds
//! `z_0 = v`, `z_{i+1} = (z_i' − l_i)/2^8` where `z_0' = mul·v + shift·mul` and
//! `z_i' = z_i` after; every limb `l_i` is looked up and the last `z_m` is
//! constrained to 0, so `x ∈ [0, 2^(8m))`. Widths that are not multiples of 8
//! are checked twice: `x` in 8m bits and `x·2^(8m−b)` in 8m bits, which
//! together give `x < 2^b` (no wrap: both products stay far below p).

use std::cell::Cell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::h2::{ACell, RegionExt};
use ff::{Field, PrimeField};
use halo2_axiom::{
    circuit::{Layouter, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Fixed, Selector, TableColumn},
    poly::Rotation,
};

use crate::field::{low_u128, pow2};
use crate::Fp;

/// Bits per looked-up limb.
pub const LIMB_BITS: usize = 8;
/// Widest value the chip checks (keeps every intermediate below p).
pub const MAX_BITS: usize = 120;

/// One running-sum column with its own selector, fixed columns and lookup.
#[derive(Clone, Copy, Debug)]
struct Lane {
    z: Column<Advice>,
    q_lookup: Selector,
    /// Marks the last running-sum cell, which must be 0.
    q_end: Selector,
    mul: Column<Fixed>,
    shift: Column<Fixed>,
}

/// Several lanes share one table; checks alternate between lanes so the
/// floor planner can place them side by side (rows ≈ total / lanes).
#[derive(Clone, Debug)]
pub struct RangeCheckConfig {
    lanes: Vec<Lane>,
    table: TableColumn,
}

#[derive(Clone, Debug)]
pub struct RangeCheckChip {
    config: RangeCheckConfig,
    /// Shared by clones: every chip that range-checks through a clone of one
    /// chip continues the same lane rotation, so all lanes fill evenly.
    next_lane: Rc<Cell<usize>>,
    _marker: PhantomData<Fp>,
}

impl RangeCheckChip {
    /// One lane per column in `zs` (each equality-enabled, each with its own
    /// lookup and its own `z_m = 0` gate); `constants` becomes the circuit's
    /// constant column, which the other chips share.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        zs: &[Column<Advice>],
        constants: Column<Fixed>,
    ) -> RangeCheckConfig {
        assert!(!zs.is_empty(), "range check needs at least one column");
        meta.enable_constant(constants);
        let table = meta.lookup_table_column();
        let lanes = zs
            .iter()
            .map(|&z| {
                meta.enable_equality(z);
                let q_lookup = meta.complex_selector();
                let mul = meta.fixed_column();
                let shift = meta.fixed_column();
                meta.lookup("range limb", |m| {
                    let q = m.query_selector(q_lookup);
                    let z_cur = m.query_advice(z, Rotation::cur());
                    let z_next = m.query_advice(z, Rotation::next());
                    let mul = m.query_fixed(mul, Rotation::cur());
                    let shift = m.query_fixed(shift, Rotation::cur());
                    // mul and shift are 0 wherever q is off, so only the z_next term
                    // needs the selector: off rows look up 0, on rows the limb, and the
                    // input has degree 2 (lookup degree 2 + 2 + 1 = 5, not 6).
                    let limb = mul * z_cur + shift - q * z_next * Expression::Constant(pow2(LIMB_BITS));
                    vec![(limb, table)]
                });
                // A gate rather than a copy to a constant: constants share one
                // fixed column, which would make every check cost a row there.
                let q_end = meta.selector();
                meta.create_gate("range: last z = 0", |m| {
                    vec![m.query_selector(q_end) * m.query_advice(z, Rotation::cur())]
                });
                Lane {
                    z,
                    q_lookup,
                    q_end,
                    mul,
                    shift,
                }
            })
            .collect();
        RangeCheckConfig { lanes, table }
    }

    pub fn construct(config: RangeCheckConfig) -> Self {
        Self {
            config,
            next_lane: Rc::new(Cell::new(0)),
            _marker: PhantomData,
        }
    }

    fn lane(&self) -> Lane {
        let i = self.next_lane.get();
        self.next_lane.set((i + 1) % self.config.lanes.len());
        self.config.lanes[i]
    }

    /// Fills the limb table; call once per circuit.
    pub fn load_table(&self, layouter: &mut impl Layouter<Fp>) -> Result<(), Error> {
        layouter.assign_table(
            || "range table",
            |mut t| {
                for i in 0..(1usize << LIMB_BITS) {
                    t.assign_cell(|| "limb", self.config.table, i, || Value::known(Fp::from(i as u64)))?;
                }
                Ok(())
            },
        )
    }

    /// Assigns `value` and constrains it to `[0, 2^bits)` (unsigned) or
    /// `[−2^(bits−1), 2^(bits−1))` (signed). Returns the checked cell.
    pub fn witness_checked(
        &self,
        layouter: &mut impl Layouter<Fp>,
        value: Value<Fp>,
        bits: usize,
        signed: bool,
    ) -> Result<ACell, Error> {
        assert!(
            (1..=MAX_BITS).contains(&bits),
            "range check width {bits} outside 1..={MAX_BITS}"
        );
        let cell = self.decompose(layouter, Source::Value(value), bits, signed, false)?;
        if !bits.is_multiple_of(LIMB_BITS) {
            self.decompose(layouter, Source::Cell(&cell), bits, signed, true)?;
        }
        Ok(cell)
    }

    /// Constrains an existing cell like [`Self::witness_checked`].
    pub fn check(
        &self,
        layouter: &mut impl Layouter<Fp>,
        cell: &ACell,
        bits: usize,
        signed: bool,
    ) -> Result<(), Error> {
        assert!(
            (1..=MAX_BITS).contains(&bits),
            "range check width {bits} outside 1..={MAX_BITS}"
        );
        self.decompose(layouter, Source::Cell(cell), bits, signed, false)?;
        if !bits.is_multiple_of(LIMB_BITS) {
            self.decompose(layouter, Source::Cell(cell), bits, signed, true)?;
        }
        Ok(())
    }

    fn decompose(
        &self,
        layouter: &mut impl Layouter<Fp>,
        source: Source<'_>,
        bits: usize,
        signed: bool,
        scaled: bool,
    ) -> Result<ACell, Error> {
        let limbs = bits.div_ceil(LIMB_BITS);
        let mul = if scaled {
            pow2(limbs * LIMB_BITS - bits)
        } else {
            Fp::ONE
        };
        let shift = if signed { pow2(bits - 1) } else { Fp::ZERO } * mul;
        let cfg = self.lane();
        layouter.assign_region(
            || format!("range check {bits} bits"),
            |mut region| {
                let z0 = match &source {
                    Source::Value(v) => region.advice(|| "z_0", cfg.z, 0, || *v)?,
                    Source::Cell(c) => c.copy_advice(|| "z_0", &mut region, cfg.z, 0)?,
                };
                let mut z = z0.value().map(|v| *v * mul + shift);
                let inv = pow2(LIMB_BITS).invert().unwrap();
                for i in 0..limbs {
                    cfg.q_lookup.enable(&mut region, i)?;
                    let (m, s) = if i == 0 { (mul, shift) } else { (Fp::ONE, Fp::ZERO) };
                    region.fixed(|| "mul", cfg.mul, i, || Value::known(m))?;
                    region.fixed(|| "shift", cfg.shift, i, || Value::known(s))?;
                    let next = z.map(|zv| {
                        let limb = Fp::from_u128(low_u128(&zv) & ((1u128 << LIMB_BITS) - 1));
                        (zv - limb) * inv
                    });
                    region.advice(|| "z", cfg.z, i + 1, || next)?;
                    z = next;
                }
                cfg.q_end.enable(&mut region, limbs)?;
                Ok(z0)
            },
        )
    }
}

enum Source<'a> {
    Value(Value<Fp>),
    Cell(&'a ACell),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::fp_from_i128;
    use crate::mock::{assert_failures, at, constraint, failures, lookup, nth_region, region_names, Failure};
    use halo2_axiom::{dev::MockProver, plonk::Circuit};

    const K: u32 = 10;
    /// Lane l's `z_m = 0` gate is gate l (each lane adds its lookup, then its gate).
    const LAST_Z: &str = "range: last z = 0";

    /// Checks `values` (value, bits, signed) through the chip; `forged` is a
    /// prover that writes its own running sum `[z_0, z_1, z_2]` into lane 0 in
    /// the chip's 16-bit layout (limbs `z_i − 2^8·z_{i+1}` looked up, `z_2 = 0` gated).
    #[derive(Clone, Default)]
    struct TestCircuit {
        values: Vec<(i128, usize, bool)>,
        forged: Option<[i128; 3]>,
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = RangeCheckConfig;
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let zs = [meta.advice_column(), meta.advice_column()];
            let c = meta.fixed_column();
            RangeCheckChip::configure(meta, &zs, c)
        }
        fn synthesize(&self, config: Self::Config, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let chip = RangeCheckChip::construct(config.clone());
            chip.load_table(&mut layouter)?;
            for (v, bits, signed) in &self.values {
                chip.witness_checked(&mut layouter, Value::known(fp_from_i128(*v)), *bits, *signed)?;
            }
            if let Some(z) = self.forged {
                let lane = config.lanes[0];
                layouter.assign_region(
                    || "forged range check",
                    |mut region| {
                        for (row, z) in z.iter().enumerate() {
                            region.advice(|| "z", lane.z, row, || Value::known(fp_from_i128(*z)))?;
                        }
                        for row in 0..2 {
                            lane.q_lookup.enable(&mut region, row)?;
                            region.fixed(|| "mul", lane.mul, row, || Value::known(Fp::ONE))?;
                            region.fixed(|| "shift", lane.shift, row, || Value::known(Fp::ZERO))?;
                        }
                        lane.q_end.enable(&mut region, 2)
                    },
                )?;
            }
            Ok(())
        }
    }

    fn forged(z: [i128; 3]) -> TestCircuit {
        TestCircuit {
            values: vec![],
            forged: Some(z),
        }
    }

    /// The failures of one value's check.
    fn rejected(value: i128, bits: usize, signed: bool) -> (Vec<Failure>, Vec<String>) {
        let c = TestCircuit {
            values: vec![(value, bits, signed)],
            forged: None,
        };
        (failures(K, &c, vec![]), region_names(&c))
    }

    #[test]
    fn accepts_boundary_values() {
        let c = TestCircuit {
            values: vec![
                (0, 8, false),
                (255, 8, false),
                ((1 << 24) - 1, 24, false),
                (-(1 << 23), 24, true),
                ((1 << 23) - 1, 24, true),
                ((1 << 13) - 1, 13, false),
                (-(1 << 12), 13, true),
                ((1 << 47) - 1, 48, true),
            ],
            forged: None,
        };
        assert_eq!(MockProver::run(K, &c, vec![]).unwrap().verify(), Ok(()));
    }

    #[test]
    fn one_past_a_byte_multiple_width_leaves_a_nonzero_last_z() {
        // The honest decomposition of x = v + shift ≥ 2^(8m) (or of a negative x,
        // a field element near p) ends in z_m ≠ 0: lane 0's end gate fails
        // on the region's last row, offset m; every limb is in the table.
        for (value, bits, signed) in [
            (256, 8, false),
            (-1, 8, false),
            (1 << 23, 24, true),
            (-(1 << 23) - 1, 24, true),
        ] {
            let (fs, names) = rejected(value, bits, signed);
            let name = format!("range check {bits} bits");
            let region = nth_region(&names, &name, 0);
            assert_failures(fs, vec![constraint((0, LAST_Z), (0, ""), at(region, bits / 8))]);
        }
    }

    #[test]
    fn one_past_an_odd_width_fails_only_the_scaled_check() {
        // x < 2^16 passes the 16-bit check on lane 0; x·2^3 = 2^16 leaves z_2 = 1
        // in the second, scaled check, on lane 1 (gate 1).
        for (value, signed) in [(1 << 13, false), (1 << 12, true)] {
            let (fs, names) = rejected(value, 13, signed);
            let scaled = nth_region(&names, "range check 13 bits", 1);
            assert_failures(fs, vec![constraint((1, LAST_Z), (0, ""), at(scaled, 2))]);
        }
    }

    #[test]
    fn a_forged_running_sum_needs_a_limb_outside_the_table() {
        // The layout replica accepts the honest running sum of 2^16 − 1 …
        let honest = forged([65535, 255, 0]);
        assert_eq!(MockProver::run(K, &honest, vec![]).unwrap().verify(), Ok(()));
        // … and 2^16 can end in z_2 = 0 only through a limb of 256 (row 1:
        // 256 − 2^8·0), which lookup 0 (lane 0's) rejects; the end gate holds.
        let cheat = forged([65536, 256, 0]);
        let region = nth_region(&region_names(&cheat), "forged range check", 0);
        assert_failures(failures(K, &cheat, vec![]), vec![lookup(0, at(region, 1))]);
    }
}
