//! Poseidon commitment over packed signed integers, natively and in-circuit.
//!
//! Convention (identical on both sides):
//! * each value v must lie in `[−2^23, 2^23)`; it is offset to `u = v + 2^23`
//!   (24 bits);
//! * 8 consecutive values pack into one field element `Σ_k u_k·2^(24k)`
//!   (192 bits < 254, so packing is injective); a last partial group packs
//!   the values present;
//! * packed elements are zero-padded to a multiple of 8 and hashed as
//!   `acc ← H2(acc, H8(chunk))`, with `H8`, `H2` the constant-length
//!   Pow5 Poseidon P128Pow5T3 hashes (width 3, rate 2) of 8 and 2 elements;
//! * a whole vector starts from `acc = n` (its length), so the digest binds the
//!   length. [`commit_chain`] continues from any `acc`: splitting a vector at
//!   multiples of [`VALUES_PER_CHUNK`] and chaining gives the same digest, which
//!   is how chunk proofs chain.

use ff::Field;
use halo2_gadgets::poseidon::{
    primitives::{self as poseidon, ConstantLength, P128Pow5T3},
    Hash as PoseidonHash, Pow5Chip, Pow5Config,
};
use halo2_proofs::{
    circuit::{AssignedCell, Layouter, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Selector},
    poly::Rotation,
};

use crate::field::{fp_from_i128, pow2};
use crate::range::{RangeCheckChip, RangeCheckConfig};
use crate::{Fp, ZkError};

/// Bit width of a committed value (signed).
pub const VALUE_BITS: usize = 24;
/// Values packed into one field element.
pub const VALUES_PER_ELEMENT: usize = 8;
/// Packed elements per inner hash.
pub const ELEMENTS_PER_CHUNK: usize = 8;
/// Values per inner hash: chunk proofs must split vectors at multiples of this.
pub const VALUES_PER_CHUNK: usize = VALUES_PER_ELEMENT * ELEMENTS_PER_CHUNK;

/// Smallest and one-past-largest committed value.
pub const VALUE_MIN: i64 = -(1 << (VALUE_BITS - 1));
pub const VALUE_END: i64 = 1 << (VALUE_BITS - 1);

fn value_offset() -> Fp {
    pow2(VALUE_BITS - 1)
}

/// Digest of a whole vector: [`commit_chain`] from `acc = len`.
pub fn commit(values: &[i64]) -> Result<Fp, ZkError> {
    commit_chain(initial_acc(values.len()), values)
}

/// The starting accumulator of a vector of `len` values.
pub fn initial_acc(len: usize) -> Fp {
    Fp::from(len as u64)
}

/// Continues the digest chain from `acc` over `values`.
pub fn commit_chain(acc: Fp, values: &[i64]) -> Result<Fp, ZkError> {
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(VALUE_MIN..VALUE_END).contains(*v))
    {
        return Err(ZkError::Invalid(format!(
            "value {v} at index {i} is outside the committed range [{VALUE_MIN}, {VALUE_END})"
        )));
    }
    let packed: Vec<Fp> = values.chunks(VALUES_PER_ELEMENT).map(pack_native).collect();
    let mut acc = acc;
    for chunk in packed.chunks(ELEMENTS_PER_CHUNK) {
        let mut msg = [Fp::ZERO; ELEMENTS_PER_CHUNK];
        msg[..chunk.len()].copy_from_slice(chunk);
        let d = poseidon::Hash::<Fp, P128Pow5T3, ConstantLength<ELEMENTS_PER_CHUNK>, 3, 2>::init().hash(msg);
        acc = poseidon::Hash::<Fp, P128Pow5T3, ConstantLength<2>, 3, 2>::init().hash([acc, d]);
    }
    Ok(acc)
}

fn pack_native(group: &[i64]) -> Fp {
    group.iter().rev().fold(Fp::ZERO, |acc, v| {
        acc * pow2(VALUE_BITS) + fp_from_i128(*v as i128) + value_offset()
    })
}

type Cell = AssignedCell<Fp, Fp>;

#[derive(Clone, Debug)]
pub struct CommitConfig {
    range: RangeCheckConfig,
    v: Column<Advice>,
    acc: Column<Advice>,
    q_pack: Selector,
    poseidon: Pow5Config<Fp, 3, 2>,
}

/// Range-checks values to [`VALUE_BITS`], packs them and hashes the packed
/// elements into a chain accumulator.
#[derive(Clone, Debug)]
pub struct CommitChip {
    config: CommitConfig,
}

impl CommitChip {
    /// `pack` = (value, accumulator) columns of the packing gate; `state` and
    /// `partial_sbox` are the Pow5 Poseidon columns (all equality-enabled).
    /// Packing columns apart from the Poseidon ones let the floor planner
    /// place packing beside hashing. Adds 6 fixed columns for round constants.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        range: RangeCheckConfig,
        pack: [Column<Advice>; 2],
        state: [Column<Advice>; 3],
        partial_sbox: Column<Advice>,
    ) -> CommitConfig {
        let [v, acc] = pack;
        meta.enable_equality(v);
        meta.enable_equality(acc);
        let q_pack = meta.selector();
        meta.create_gate("pack: acc' = acc·2^24 + v + 2^23", |m| {
            let q = m.query_selector(q_pack);
            let v = m.query_advice(v, Rotation::cur());
            let a = m.query_advice(acc, Rotation::cur());
            let a_next = m.query_advice(acc, Rotation::next());
            vec![q * (a_next - a * Expression::Constant(pow2(VALUE_BITS)) - v - Expression::Constant(value_offset()))]
        });
        let rc_a = [(); 3].map(|_| meta.fixed_column());
        let rc_b = [(); 3].map(|_| meta.fixed_column());
        let poseidon = Pow5Chip::configure::<P128Pow5T3>(meta, state, partial_sbox, rc_a, rc_b);
        CommitConfig {
            range,
            v,
            acc,
            q_pack,
            poseidon,
        }
    }

    pub fn construct(config: CommitConfig) -> Self {
        Self { config }
    }

    fn range(&self) -> RangeCheckChip {
        RangeCheckChip::construct(self.config.range.clone())
    }

    /// Assigns and range-checks `values`, then continues the chain from
    /// `acc_in`. Returns the value cells and the final accumulator.
    pub fn witness_and_commit(
        &self,
        layouter: &mut impl Layouter<Fp>,
        values: &[Value<Fp>],
        acc_in: AssignedCell<Fp, Fp>,
    ) -> Result<(Vec<Cell>, Cell), Error> {
        let range = self.range();
        let cells = values
            .iter()
            .map(|v| range.witness_checked(layouter, *v, VALUE_BITS, true))
            .collect::<Result<Vec<_>, _>>()?;
        let acc = self.commit_cells(layouter, &cells, acc_in)?;
        Ok((cells, acc))
    }

    /// Continues the chain over cells the caller has already range-checked to
    /// [`VALUE_BITS`] signed (packing is injective only under that check).
    pub fn commit_cells(
        &self,
        layouter: &mut impl Layouter<Fp>,
        cells: &[AssignedCell<Fp, Fp>],
        acc_in: AssignedCell<Fp, Fp>,
    ) -> Result<AssignedCell<Fp, Fp>, Error> {
        let mut packed = cells
            .chunks(VALUES_PER_ELEMENT)
            .map(|g| self.pack(layouter, g))
            .collect::<Result<Vec<_>, _>>()?;
        let n_pad = (ELEMENTS_PER_CHUNK - packed.len() % ELEMENTS_PER_CHUNK) % ELEMENTS_PER_CHUNK;
        if n_pad > 0 {
            let zero = layouter.assign_region(
                || "zero padding",
                |mut region| region.assign_advice_from_constant(|| "0", self.config.acc, 0, Fp::ZERO),
            )?;
            packed.extend(std::iter::repeat_n(zero, n_pad));
        }
        let mut acc = acc_in;
        for (c, chunk) in packed.chunks(ELEMENTS_PER_CHUNK).enumerate() {
            let msg: [AssignedCell<Fp, Fp>; ELEMENTS_PER_CHUNK] = chunk.to_vec().try_into().unwrap();
            let chip = Pow5Chip::construct(self.config.poseidon.clone());
            let d = PoseidonHash::<_, _, P128Pow5T3, ConstantLength<ELEMENTS_PER_CHUNK>, 3, 2>::init(
                chip,
                layouter.namespace(|| format!("H8 chunk {c}")),
            )?
            .hash(layouter.namespace(|| format!("H8 chunk {c}")), msg)?;
            let chip = Pow5Chip::construct(self.config.poseidon.clone());
            acc = PoseidonHash::<_, _, P128Pow5T3, ConstantLength<2>, 3, 2>::init(
                chip,
                layouter.namespace(|| format!("H2 chain {c}")),
            )?
            .hash(layouter.namespace(|| format!("H2 chain {c}")), [acc, d])?;
        }
        Ok(acc)
    }

    fn pack(
        &self,
        layouter: &mut impl Layouter<Fp>,
        group: &[AssignedCell<Fp, Fp>],
    ) -> Result<AssignedCell<Fp, Fp>, Error> {
        let cfg = &self.config;
        layouter.assign_region(
            || "pack",
            |mut region| {
                let mut acc = region.assign_advice_from_constant(|| "acc_0", cfg.acc, 0, Fp::ZERO)?;
                // Most significant value first (Horner).
                for (row, cell) in group.iter().rev().enumerate() {
                    cfg.q_pack.enable(&mut region, row)?;
                    let v = cell.copy_advice(|| "v", &mut region, cfg.v, row)?;
                    let next = acc
                        .value()
                        .zip(v.value())
                        .map(|(a, v)| *a * pow2(VALUE_BITS) + *v + value_offset());
                    acc = region.assign_advice(|| "acc", cfg.acc, row + 1, || next)?;
                }
                Ok(acc)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::RangeCheckChip;
    use halo2_proofs::{
        circuit::SimpleFloorPlanner,
        dev::MockProver,
        plonk::{Circuit, Instance},
    };

    #[derive(Clone, Default)]
    struct TestCircuit {
        values: Vec<i64>,
        acc_in: Fp,
    }

    #[derive(Clone, Debug)]
    struct Cfg {
        commit: CommitConfig,
        range: RangeCheckConfig,
        instance: Column<Instance>,
        advice: [Column<Advice>; 7],
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = Cfg;
        type FloorPlanner = SimpleFloorPlanner;
        fn without_witnesses(&self) -> Self {
            self.clone()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Cfg {
            let advice = [(); 7].map(|_| meta.advice_column());
            let constants = meta.fixed_column();
            let range = RangeCheckChip::configure(meta, &[advice[6]], constants);
            let commit = CommitChip::configure(
                meta,
                range.clone(),
                [advice[0], advice[1]],
                [advice[2], advice[3], advice[4]],
                advice[5],
            );
            let instance = meta.instance_column();
            meta.enable_equality(instance);
            Cfg {
                commit,
                range,
                instance,
                advice,
            }
        }
        fn synthesize(&self, cfg: Cfg, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            RangeCheckChip::construct(cfg.range.clone()).load_table(&mut layouter)?;
            let acc_in = layouter.assign_region(
                || "acc_in",
                |mut r| r.assign_advice(|| "acc_in", cfg.advice[0], 0, || Value::known(self.acc_in)),
            )?;
            let vals: Vec<Value<Fp>> = self
                .values
                .iter()
                .map(|v| Value::known(fp_from_i128(*v as i128)))
                .collect();
            let chip = CommitChip::construct(cfg.commit.clone());
            let (_, acc) = chip.witness_and_commit(&mut layouter, &vals, acc_in)?;
            layouter.constrain_instance(acc.cell(), cfg.instance, 0)
        }
    }

    fn values(n: usize) -> Vec<i64> {
        (0..n as i64)
            .map(|i| {
                let spread = if i % 5 == 0 { VALUE_MIN / 2 } else { 0 };
                (i * 7919 % 20011) - 10005 + spread
            })
            .collect()
    }

    #[test]
    fn in_circuit_digest_equals_native_commit() {
        for n in [1usize, 8, 13, 64, 70] {
            let vals = values(n);
            let digest = commit(&vals).unwrap();
            let c = TestCircuit {
                values: vals,
                acc_in: initial_acc(n),
            };
            let p = MockProver::run(11, &c, vec![vec![digest]]).unwrap();
            assert_eq!(p.verify(), Ok(()), "n = {n}");
        }
    }

    #[test]
    fn chained_halves_equal_whole() {
        let vals = values(150);
        let mid = commit_chain(initial_acc(150), &vals[..VALUES_PER_CHUNK]).unwrap();
        assert_eq!(
            commit_chain(mid, &vals[VALUES_PER_CHUNK..]).unwrap(),
            commit(&vals).unwrap()
        );
    }

    #[test]
    fn digest_changes_with_any_value_and_with_length() {
        let vals = values(20);
        let d = commit(&vals).unwrap();
        let mut other = vals.clone();
        other[19] += 1;
        assert_ne!(commit(&other).unwrap(), d);
        // Trailing zeros-after-offset must not collide with a shorter vector.
        let mut longer = vals.clone();
        longer.push(VALUE_MIN);
        assert_ne!(commit(&longer).unwrap(), d);
    }

    #[test]
    fn rejects_out_of_range_values_natively() {
        assert!(commit(&[VALUE_END]).is_err());
        assert!(commit(&[VALUE_MIN - 1]).is_err());
    }

    #[test]
    fn wrong_digest_or_out_of_range_value_fails_mock_prover() {
        let vals = values(13);
        let digest = commit(&vals).unwrap();
        let mut other = vals.clone();
        other[3] += 1;
        let c = TestCircuit {
            values: other,
            acc_in: initial_acc(13),
        };
        assert!(MockProver::run(11, &c, vec![vec![digest]]).unwrap().verify().is_err());
        // A value out of range cannot be smuggled in, even with the "right" packing.
        let mut bad = vals.clone();
        bad[0] = VALUE_END;
        let c = TestCircuit {
            values: bad.clone(),
            acc_in: initial_acc(13),
        };
        let mut packed_equiv = bad;
        packed_equiv[0] = VALUE_MIN; // u = 2^24 wraps into the next slot's low bit
        packed_equiv[1] += 1;
        let d2 = commit(&packed_equiv).unwrap();
        assert!(MockProver::run(11, &c, vec![vec![d2]]).unwrap().verify().is_err());
    }
}
