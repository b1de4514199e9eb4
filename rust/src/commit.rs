//! Poseidon commitment over packed signed integers, natively and in-circuit.
//!
//! Convention (identical on both sides), for a [`Packing`] of `bits` and
//! `per_element`:
//! * each value v must lie in `[−2^(bits−1), 2^(bits−1))`; it is offset to
//!   `u = v + 2^(bits−1)` (`bits` bits unsigned);
//! * `per_element` consecutive values pack into one field element
//!   `Σ_k u_k·2^(bits·k)` (240 bits < 254 for both packings, so packing is
//!   injective); a last partial group packs the values present;
//! * packed elements are zero-padded to a multiple of [`ELEMENTS_PER_STEP`]
//!   and absorbed as `acc ← H16(acc, e_1, …, e_15)`, with `H16` the
//!   constant-length Poseidon hash ([`crate::poseidon::P128Pow5T3Bn254`], width 3, rate 2) of 16
//!   elements: 8 permutations per 15 packed elements;
//! * a whole vector starts from `acc = n` (its length), so the digest binds the
//!   length. [`commit_chain`] continues from any `acc`: splitting a vector at
//!   multiples of [`Packing::values_per_step`] and chaining gives the same
//!   digest, which is how chunk proofs chain.
//!
//! Weights use [`WEIGHTS`] (24 bits, 10 per element); inverse-Fisher blocks use
//! [`FISHER`] (16 bits, 15 per element) over their lower triangle only
//! ([`lower_triangle`]): the blocks are symmetric, so the triangle binds them.

use ff::Field;
use halo2_poseidon::{self as poseidon, ConstantLength};

use crate::h2::{ACell, RegionExt};
use crate::poseidon::P128Pow5T3Bn254;
use halo2_axiom::{
    circuit::{Layouter, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Selector},
    poly::Rotation,
};

use crate::field::{fp_from_i128, pow2};
use crate::poseidon::{PoseidonChip, PoseidonConfig, H16_INPUTS};
use crate::range::RangeCheckChip;
use crate::{Fp, ZkError};

/// How one vector's values are packed into field elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    /// Signed bit width of a value.
    pub bits: usize,
    /// Values per field element (`bits·per_element` ≤ 253).
    pub per_element: usize,
}

/// Weights before and after the step.
pub const WEIGHTS: Packing = Packing {
    bits: 24,
    per_element: 10,
};
/// Inverse-Fisher entries.
pub const FISHER: Packing = Packing {
    bits: 16,
    per_element: 15,
};

/// Packed elements absorbed per chain step (the 16th input is the accumulator).
pub const ELEMENTS_PER_STEP: usize = 15;
const STEP_INPUTS: usize = ELEMENTS_PER_STEP + 1;
const _: () = assert!(STEP_INPUTS == H16_INPUTS);

impl Packing {
    /// Smallest committed value.
    pub fn min(&self) -> i64 {
        -(1 << (self.bits - 1))
    }

    /// One past the largest committed value.
    pub fn end(&self) -> i64 {
        1 << (self.bits - 1)
    }

    /// Values per chain step: chunk proofs split vectors at multiples of this.
    pub fn values_per_step(&self) -> usize {
        self.per_element * ELEMENTS_PER_STEP
    }

    fn offset(&self) -> Fp {
        pow2(self.bits - 1)
    }

    fn pack_native(&self, group: &[i64]) -> Fp {
        group.iter().rev().fold(Fp::ZERO, |acc, v| {
            acc * pow2(self.bits) + fp_from_i128(*v as i128) + self.offset()
        })
    }
}

/// Digest of a whole vector: [`commit_chain`] from `acc = len`.
pub fn commit(values: &[i64], packing: Packing) -> Result<Fp, ZkError> {
    commit_chain(initial_acc(values.len()), values, packing)
}

/// The starting accumulator of a vector of `len` values.
pub fn initial_acc(len: usize) -> Fp {
    Fp::from(len as u64)
}

/// Continues the digest chain from `acc` over `values`.
pub fn commit_chain(acc: Fp, values: &[i64], packing: Packing) -> Result<Fp, ZkError> {
    let (lo, hi) = (packing.min(), packing.end());
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !(lo..hi).contains(*v)) {
        return Err(ZkError::Invalid(format!(
            "value {v} at index {i} is outside the committed range [{lo}, {hi})"
        )));
    }
    let packed: Vec<Fp> = values
        .chunks(packing.per_element)
        .map(|g| packing.pack_native(g))
        .collect();
    let mut acc = acc;
    for step in packed.chunks(ELEMENTS_PER_STEP) {
        let mut msg = [Fp::ZERO; STEP_INPUTS];
        msg[0] = acc;
        msg[1..=step.len()].copy_from_slice(step);
        acc = poseidon::Hash::<Fp, P128Pow5T3Bn254, ConstantLength<STEP_INPUTS>, 3, 2>::init().hash(msg);
    }
    Ok(acc)
}

/// The lower triangle (`j ≤ i`, row-major) of each B×B block of `a`, which
/// must be symmetric: what a Fisher commitment covers.
pub fn lower_triangle(a: &[i64], block: usize) -> Result<Vec<i64>, ZkError> {
    if block == 0 || !a.len().is_multiple_of(block * block) {
        return Err(ZkError::Invalid(format!(
            "{} Fisher entries are not whole blocks of {block}×{block}",
            a.len()
        )));
    }
    let mut out = Vec::with_capacity(a.len() / block * (block + 1) / 2);
    for (blk, m) in a.chunks(block * block).enumerate() {
        for i in 0..block {
            for j in 0..=i {
                if m[i * block + j] != m[j * block + i] {
                    return Err(ZkError::Invalid(format!(
                        "Fisher block {blk} is not symmetric: A[{i},{j}] = {} but A[{j},{i}] = {}",
                        m[i * block + j],
                        m[j * block + i]
                    )));
                }
                out.push(m[i * block + j]);
            }
        }
    }
    Ok(out)
}

/// Index of `A[i,j]` in one block's [`lower_triangle`].
pub fn triangle_index(i: usize, j: usize) -> usize {
    let (hi, lo) = if i >= j { (i, j) } else { (j, i) };
    hi * (hi + 1) / 2 + lo
}

type Cell = ACell;

#[derive(Clone, Debug)]
pub struct CommitConfig {
    packing: Packing,
    v: Column<Advice>,
    acc: Column<Advice>,
    /// First value of a group (`acc' = v + 2^(bits−1)`): no constant 0 to start from.
    q_pack_first: Selector,
    q_pack: Selector,
    poseidon: PoseidonConfig,
}

/// Range-checks values to the packing's width, packs them and hashes the
/// packed elements into a chain accumulator.
#[derive(Clone, Debug)]
pub struct CommitChip {
    config: CommitConfig,
    range: RangeCheckChip,
}

impl CommitChip {
    /// `pack` = (value, accumulator) columns of the packing gate; `state` and
    /// `aux` are the Poseidon chip's columns ([`crate::poseidon`]). Each
    /// commit chip has columns of its own so the floor planner can run
    /// packing, hashing and other chips' work side by side. Adds 6 fixed
    /// columns for round constants.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        packing: Packing,
        pack: [Column<Advice>; 2],
        state: [Column<Advice>; 3],
        aux: [Column<Advice>; 3],
    ) -> CommitConfig {
        assert!(
            packing.bits * packing.per_element <= 253,
            "{packing:?} does not fit a field element"
        );
        let [v, acc] = pack;
        meta.enable_equality(v);
        meta.enable_equality(acc);
        let q_pack_first = meta.selector();
        let q_pack = meta.selector();
        // Two gates: the first row has no accumulator cell to query.
        meta.create_gate("pack first: acc' = v + 2^(bits−1)", |m| {
            let q = m.query_selector(q_pack_first);
            let v = m.query_advice(v, Rotation::cur());
            let a_next = m.query_advice(acc, Rotation::next());
            vec![q * (a_next - v - Expression::Constant(packing.offset()))]
        });
        meta.create_gate("pack: acc' = acc·2^bits + v + 2^(bits−1)", |m| {
            let q = m.query_selector(q_pack);
            let v = m.query_advice(v, Rotation::cur());
            let a = m.query_advice(acc, Rotation::cur());
            let a_next = m.query_advice(acc, Rotation::next());
            let shifted = a * Expression::Constant(pow2(packing.bits)) + v + Expression::Constant(packing.offset());
            vec![q * (a_next - shifted)]
        });
        let poseidon = PoseidonChip::configure(meta, state, aux);
        CommitConfig {
            packing,
            v,
            acc,
            q_pack_first,
            q_pack,
            poseidon,
        }
    }

    /// `range` checks the values (a clone shares its lane rotation).
    pub fn construct(config: CommitConfig, range: RangeCheckChip) -> Self {
        Self { config, range }
    }

    /// Assigns and range-checks `values`, then continues the chain from
    /// `acc_in`. Returns the value cells and the final accumulator.
    pub fn witness_and_commit(
        &self,
        layouter: &mut impl Layouter<Fp>,
        values: &[Value<Fp>],
        acc_in: ACell,
    ) -> Result<(Vec<Cell>, Cell), Error> {
        let bits = self.config.packing.bits;
        let cells = values
            .iter()
            .map(|v| self.range.witness_checked(layouter, *v, bits, true))
            .collect::<Result<Vec<_>, _>>()?;
        let acc = self.commit_cells(layouter, &cells, acc_in)?;
        Ok((cells, acc))
    }

    /// Continues the chain over cells the caller has already range-checked to
    /// the packing's width (packing is injective only under that check).
    pub fn commit_cells(
        &self,
        layouter: &mut impl Layouter<Fp>,
        cells: &[ACell],
        acc_in: ACell,
    ) -> Result<ACell, Error> {
        let mut packed = cells
            .chunks(self.config.packing.per_element)
            .map(|g| self.pack(layouter, g))
            .collect::<Result<Vec<_>, _>>()?;
        let n_pad = (ELEMENTS_PER_STEP - packed.len() % ELEMENTS_PER_STEP) % ELEMENTS_PER_STEP;
        if n_pad > 0 {
            let zero = layouter.assign_region(
                || "zero padding",
                |mut region| region.advice_from_constant(|| "0", self.config.acc, 0, Fp::ZERO),
            )?;
            packed.extend(std::iter::repeat_n(zero, n_pad));
        }
        let chip = PoseidonChip::construct(self.config.poseidon.clone());
        let mut acc = acc_in;
        for step in packed.chunks(ELEMENTS_PER_STEP) {
            let msg: [ACell; STEP_INPUTS] = std::iter::once(acc)
                .chain(step.iter().cloned())
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
            acc = chip.hash16(layouter, &msg)?;
        }
        Ok(acc)
    }

    fn pack(&self, layouter: &mut impl Layouter<Fp>, group: &[ACell]) -> Result<ACell, Error> {
        let cfg = &self.config;
        let (scale, offset) = (pow2(cfg.packing.bits), cfg.packing.offset());
        layouter.assign_region(
            || "pack",
            |mut region| {
                let mut acc: Option<Cell> = None;
                // Most significant value first (Horner).
                for (row, cell) in group.iter().rev().enumerate() {
                    let v = cell.copy_advice(|| "v", &mut region, cfg.v, row)?;
                    let next = match &acc {
                        None => {
                            cfg.q_pack_first.enable(&mut region, row)?;
                            v.value().map(|v| *v + offset)
                        }
                        Some(a) => {
                            cfg.q_pack.enable(&mut region, row)?;
                            a.value().zip(v.value()).map(|(a, v)| *a * scale + *v + offset)
                        }
                    };
                    acc = Some(region.advice(|| "acc", cfg.acc, row + 1, || next)?);
                }
                Ok(acc.expect("a group of at least one value"))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, permutation, region_names};
    use crate::range::RangeCheckChip;
    use halo2_axiom::{
        dev::{FailureLocation, MockProver, VerifyFailure},
        plonk::{Any, Circuit, Instance},
    };

    const K: u32 = 11;

    /// Commits `values` with [`WEIGHTS`] or, with `fisher`, [`FISHER`].
    #[derive(Clone, Default)]
    struct TestCircuit {
        values: Vec<i64>,
        acc_in: Fp,
        fisher: bool,
    }

    #[derive(Clone, Debug)]
    struct Cfg {
        weights: CommitConfig,
        fisher: CommitConfig,
        range: crate::range::RangeCheckConfig,
        instance: Column<Instance>,
        advice: [Column<Advice>; 17],
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = Cfg;
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Cfg {
            let advice = [(); 17].map(|_| meta.advice_column());
            let constants = meta.fixed_column();
            let range = RangeCheckChip::configure(meta, &[advice[16]], constants);
            let chip = |meta: &mut ConstraintSystem<Fp>, packing, c: &[Column<Advice>]| {
                CommitChip::configure(meta, packing, [c[0], c[1]], [c[2], c[3], c[4]], [c[5], c[6], c[7]])
            };
            let weights = chip(meta, WEIGHTS, &advice[..8]);
            let fisher = chip(meta, FISHER, &advice[8..16]);
            let instance = meta.instance_column();
            meta.enable_equality(instance);
            Cfg {
                weights,
                fisher,
                range,
                instance,
                advice,
            }
        }
        fn synthesize(&self, cfg: Cfg, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let range = RangeCheckChip::construct(cfg.range.clone());
            range.load_table(&mut layouter)?;
            let acc_in = layouter.assign_region(
                || "acc_in",
                |mut r| r.advice(|| "acc_in", cfg.advice[0], 0, || Value::known(self.acc_in)),
            )?;
            let vals: Vec<Value<Fp>> = self
                .values
                .iter()
                .map(|v| Value::known(fp_from_i128(*v as i128)))
                .collect();
            let config = if self.fisher { cfg.fisher } else { cfg.weights };
            let (_, acc) = CommitChip::construct(config, range).witness_and_commit(&mut layouter, &vals, acc_in)?;
            layouter.constrain_instance(acc.cell(), cfg.instance, 0);
            Ok(())
        }
    }

    fn values(n: usize, packing: Packing) -> Vec<i64> {
        (0..n as i64)
            .map(|i| {
                let spread = if i % 5 == 0 { packing.min() / 2 } else { 0 };
                (i * 7919 % 20011) - 10005 + spread
            })
            .collect()
    }

    fn circuit(values: Vec<i64>, fisher: bool) -> TestCircuit {
        TestCircuit {
            acc_in: initial_acc(values.len()),
            values,
            fisher,
        }
    }

    fn verify(values: Vec<i64>, fisher: bool, digest: Fp) -> Result<(), Vec<VerifyFailure>> {
        MockProver::run(K, &circuit(values, fisher), vec![vec![digest]])
            .unwrap()
            .verify()
    }

    #[test]
    fn in_circuit_digest_equals_native_commit() {
        for (packing, fisher) in [(WEIGHTS, false), (FISHER, true)] {
            for n in [1usize, 10, 13, 150, 170] {
                let vals = values(n, packing);
                let digest = commit(&vals, packing).unwrap();
                assert_eq!(verify(vals, fisher, digest), Ok(()), "{packing:?}, n = {n}");
            }
        }
    }

    #[test]
    fn chained_halves_equal_whole() {
        for packing in [WEIGHTS, FISHER] {
            let vals = values(400, packing);
            let cut = packing.values_per_step();
            let mid = commit_chain(initial_acc(400), &vals[..cut], packing).unwrap();
            assert_eq!(
                commit_chain(mid, &vals[cut..], packing).unwrap(),
                commit(&vals, packing).unwrap()
            );
        }
    }

    #[test]
    fn digest_changes_with_any_value_length_and_packing() {
        let vals = values(20, FISHER);
        let d = commit(&vals, WEIGHTS).unwrap();
        let mut other = vals.clone();
        other[19] += 1;
        assert_ne!(commit(&other, WEIGHTS).unwrap(), d);
        // Trailing zeros-after-offset must not collide with a shorter vector.
        let mut longer = vals.clone();
        longer.push(WEIGHTS.min());
        assert_ne!(commit(&longer, WEIGHTS).unwrap(), d);
        assert_ne!(commit(&vals, FISHER).unwrap(), d);
    }

    #[test]
    fn rejects_out_of_range_values_natively() {
        for packing in [WEIGHTS, FISHER] {
            assert!(commit(&[packing.end()], packing).is_err());
            assert!(commit(&[packing.min() - 1], packing).is_err());
        }
    }

    #[test]
    fn lower_triangle_needs_symmetric_blocks() {
        let a = [1, 2, 2, 5, 7, 0, 1, 9];
        assert!(lower_triangle(&a, 2).is_err(), "block 1 is not symmetric");
        let a = [1, 2, 2, 5, 7, 3, 3, 9];
        assert_eq!(lower_triangle(&a, 2).unwrap(), vec![1, 2, 5, 7, 3, 9]);
        assert_eq!(triangle_index(0, 1), 1);
        assert_eq!(triangle_index(1, 1), 2);
        assert!(lower_triangle(&a[..5], 2).is_err());
    }

    #[test]
    fn wrong_digest_or_out_of_range_value_fails_mock_prover() {
        // The test circuit's columns: W's state_0 is advice 2, A's advice 10.
        for (packing, fisher, state_0) in [(WEIGHTS, false, 2), (FISHER, true, 10)] {
            let vals = values(13, packing);
            let digest = commit(&vals, packing).unwrap();

            // Another value: the chain computes another digest, and only the copy
            // of the H16's last state_0 cell to instance row 0 breaks, reported
            // at both of its cells.
            let mut other = vals.clone();
            other[3] += 1;
            let c = circuit(other, fisher);
            let h16 = nth_region(&region_names(&c), "poseidon H16", 0);
            assert_failures(
                failures(K, &c, vec![vec![digest]]),
                vec![
                    permutation((Any::advice(), state_0), at(h16, crate::poseidon::H16_ROWS - 1)),
                    permutation((Any::Instance, 0), FailureLocation::OutsideRegion { row: 0 }),
                ],
            );

            // A value out of range cannot be smuggled in, even with the "right"
            // packing: its digest matches, and its range check (lane 0, gate 0)
            // ends in z_m = 1 on its last row.
            let mut bad = vals.clone();
            bad[0] = packing.end();
            let mut packed_equiv = bad.clone();
            packed_equiv[0] = packing.min(); // u = 2^bits wraps into the next slot's low bit
            packed_equiv[1] += 1;
            let d2 = commit(&packed_equiv, packing).unwrap();
            let c = circuit(bad, fisher);
            let name = format!("range check {} bits", packing.bits);
            let check = nth_region(&region_names(&c), &name, 0);
            assert_failures(
                failures(K, &c, vec![vec![d2]]),
                vec![constraint(
                    (0, "range: last z = 0"),
                    (0, ""),
                    at(check, packing.bits / 8),
                )],
            );
        }
    }
}
