//! The unlearning circuit of DESIGN.md §6 for `n_blocks` blocks of B weights.
//!
//! Private: W, W', the A blocks, y, δ, remainders r, residuals e.
//! Public (one instance column, see [`PublicInputs::to_instance`]):
//! `[h_W in, h_W out, h_W' in, h_W' out, h_A in, h_A out, s, τ, keep_0 … keep_{n−1}]`.
//! The "in" values are digest-chain accumulators (`commit::initial_acc(len)`
//! for a whole vector, or the previous chunk's "out"), so chunk proofs of a
//! large layer chain through their digests. h_A covers the lower triangles of
//! the (symmetric) A blocks, [`commit::lower_triangle`].
//!
//! The mask enters as public keep bits, so one verifying key serves every mask
//! of a given shape. y therefore has one entry per weight (zero where kept,
//! enforced by the update chip) and the MAC runs over full rows of A: B² products
//! per block instead of B·|S|, in exchange for a mask-independent circuit.
//!
//! Layout: every chip has columns of its own — a commitment chip for the
//! weights, one for A, [`RANGE_LANES`] range-check lanes and the arithmetic
//! (MAC, floor, update, solve) — so the floor planner runs them side by side
//! and the circuit's height is that of its busiest group, not their sum.

use crate::h2::{ACell, RegionExt};
use halo2_axiom::{
    circuit::{Layouter, Value},
    plonk::{Advice, Circuit, Column, ConstraintSystem, Error, Fixed, Instance},
};

use crate::commit::{self, CommitChip, CommitConfig, FISHER, WEIGHTS};
use crate::field::fp_from_i128;
use crate::fixed_point::{FixedPointChip, FixedPointConfig};
use crate::range::{RangeCheckChip, RangeCheckConfig};
use crate::solve::{tol_bits, SolveCheckChip, SolveCheckConfig};
use crate::update::{MaskedUpdateChip, MaskedUpdateConfig};
use crate::witness::Witness;
use crate::{Fp, ZkError};

/// Instance rows.
pub const ROW_W_IN: usize = 0;
pub const ROW_W_OUT: usize = 1;
pub const ROW_W_NEW_IN: usize = 2;
pub const ROW_W_NEW_OUT: usize = 3;
pub const ROW_A_IN: usize = 4;
pub const ROW_A_OUT: usize = 5;
pub const ROW_SCALE: usize = 6;
pub const ROW_TOL: usize = 7;
pub const ROW_MASK: usize = 8;

/// Range-check lanes: range checks are the most rows, so they get the most columns.
pub const RANGE_LANES: usize = 6;
const COMMIT_COLUMNS: usize = 8;
const ARITH_COLUMNS: usize = 9;
const ADVICE_COLUMNS: usize = 2 * COMMIT_COLUMNS + RANGE_LANES + ARITH_COLUMNS;

/// Everything that fixes the circuit (besides k): changing any field changes
/// the verifying key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Weights per block B.
    pub block: usize,
    pub n_blocks: usize,
    /// Fixed-point scale exponent s.
    pub scale_bits: usize,
    /// Solve residual bound τ (at product scale 2^(2s)), a power of two.
    pub tol: u64,
    /// Signed bit width of y.
    pub y_bits: usize,
}

impl Shape {
    pub fn n_weights(&self) -> usize {
        self.block * self.n_blocks
    }

    /// Committed A entries: the lower triangle of every block.
    pub fn n_fisher(&self) -> usize {
        self.n_blocks * self.block * (self.block + 1) / 2
    }

    /// Rejects shapes whose arithmetic could wrap in the field or that are
    /// absurdly large for a single proof.
    pub fn validate(&self) -> Result<(), ZkError> {
        let bad = |m: String| Err(ZkError::Invalid(m));
        if self.block == 0 || self.block > 1024 {
            return bad(format!("block = {} must be in 1..=1024", self.block));
        }
        if self.n_blocks == 0 || self.n_blocks * self.block * self.block > 1 << 22 {
            return bad(format!(
                "n_blocks = {} must be ≥ 1 with n_blocks·B² ≤ 2^22",
                self.n_blocks
            ));
        }
        if !(1..=32).contains(&self.scale_bits) {
            return bad(format!("scale_bits = {} must be in 1..=32", self.scale_bits));
        }
        if !(2..=64).contains(&self.y_bits) {
            return bad(format!("y_bits = {} must be in 2..=64", self.y_bits));
        }
        if self.tol >= 1 << 62 || tol_bits(self.tol).is_none() {
            return bad(format!("tol = {} must be a power of two below 2^62", self.tol));
        }
        Ok(())
    }
}

/// Public inputs of one proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicInputs {
    pub w_in: Fp,
    pub w_out: Fp,
    pub w_new_in: Fp,
    pub w_new_out: Fp,
    pub a_in: Fp,
    pub a_out: Fp,
    pub scale_bits: u32,
    pub tol: u64,
    pub keep: Vec<bool>,
}

impl PublicInputs {
    /// Digests of a witness, continuing from `acc_in = [W, W', A]`
    /// (None: whole vectors, each starting from its length).
    pub fn from_witness(shape: &Shape, wit: &Witness, acc_in: Option<[Fp; 3]>) -> Result<Self, ZkError> {
        let tri = commit::lower_triangle(&wit.a, shape.block)?;
        let [w_in, w_new_in, a_in] = acc_in.unwrap_or([
            commit::initial_acc(wit.w.len()),
            commit::initial_acc(wit.w_new.len()),
            commit::initial_acc(tri.len()),
        ]);
        Ok(PublicInputs {
            w_in,
            w_out: commit::commit_chain(w_in, &wit.w, WEIGHTS)?,
            w_new_in,
            w_new_out: commit::commit_chain(w_new_in, &wit.w_new, WEIGHTS)?,
            a_in,
            a_out: commit::commit_chain(a_in, &tri, FISHER)?,
            scale_bits: shape.scale_bits as u32,
            tol: shape.tol,
            keep: wit.keep.clone(),
        })
    }

    /// Names of [`Self::digests`], in the same order.
    pub const DIGEST_NAMES: [&'static str; 6] = ["w_in", "w_out", "w_new_in", "w_new_out", "a_in", "a_out"];

    /// The six chain digests in instance-row (and byte) order: `ROW_W_IN` … `ROW_A_OUT`.
    pub fn digests(&self) -> [Fp; 6] {
        [
            self.w_in,
            self.w_out,
            self.w_new_in,
            self.w_new_out,
            self.a_in,
            self.a_out,
        ]
    }

    pub fn to_instance(&self) -> Vec<Fp> {
        let mut v = self.digests().to_vec();
        v.extend([Fp::from(self.scale_bits as u64), Fp::from(self.tol)]);
        v.extend(self.keep.iter().map(|k| Fp::from(*k as u64)));
        v
    }
}

#[derive(Clone, Debug)]
pub struct UnlearnConfig {
    advice: [Column<Advice>; ADVICE_COLUMNS],
    instance: Column<Instance>,
    /// The circuit's one constant column.
    pub constants: Column<Fixed>,
    range: RangeCheckConfig,
    commit_w: CommitConfig,
    commit_a: CommitConfig,
    fixed_point: FixedPointConfig,
    solve: SolveCheckConfig,
    update: MaskedUpdateConfig,
}

/// The circuit; `witness = None` for key generation.
#[derive(Clone, Debug)]
pub struct UnlearnCircuit {
    pub shape: Shape,
    pub witness: Option<Witness>,
}

impl UnlearnCircuit {
    fn values(&self, f: impl Fn(&Witness) -> Vec<i64>, len: usize) -> Vec<Value<Fp>> {
        match &self.witness {
            Some(w) => f(w)
                .into_iter()
                .map(|x| Value::known(fp_from_i128(x as i128)))
                .collect(),
            None => vec![Value::unknown(); len],
        }
    }
}

impl Circuit<Fp> for UnlearnCircuit {
    type Config = UnlearnConfig;
    type FloorPlanner = crate::h2::Planner;

    fn without_witnesses(&self) -> Self {
        UnlearnCircuit {
            shape: self.shape,
            witness: None,
        }
    }

    fn configure(meta: &mut ConstraintSystem<Fp>) -> UnlearnConfig {
        let advice = [(); ADVICE_COLUMNS].map(|_| meta.advice_column());
        let instance = meta.instance_column();
        meta.enable_equality(instance);
        let constants = meta.fixed_column();
        let (commit_cols, rest) = advice.split_at(2 * COMMIT_COLUMNS);
        let (lanes, arith) = rest.split_at(RANGE_LANES);
        let range = RangeCheckChip::configure(meta, lanes, constants);
        let commit = |meta: &mut ConstraintSystem<Fp>, packing, c: &[Column<Advice>]| {
            CommitChip::configure(meta, packing, [c[0], c[1]], [c[2], c[3], c[4]], [c[5], c[6], c[7]])
        };
        let commit_w = commit(meta, WEIGHTS, &commit_cols[..COMMIT_COLUMNS]);
        let commit_a = commit(meta, FISHER, &commit_cols[COMMIT_COLUMNS..]);
        let fixed_point = FixedPointChip::configure(meta, arith.try_into().unwrap());
        let solve = SolveCheckChip::configure(meta, arith[..5].try_into().unwrap());
        let update = MaskedUpdateChip::configure(meta, arith[..5].try_into().unwrap(), instance);
        UnlearnConfig {
            advice,
            instance,
            constants,
            range,
            commit_w,
            commit_a,
            fixed_point,
            solve,
            update,
        }
    }

    fn synthesize(&self, cfg: UnlearnConfig, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
        let sh = self.shape;
        let (b, n) = (sh.block, sh.n_weights());
        let range = RangeCheckChip::construct(cfg.range.clone());
        range.load_table(&mut layouter)?;
        // One lane rotation for every chip's range checks.
        let commit_w = CommitChip::construct(cfg.commit_w.clone(), range.clone());
        let commit_a = CommitChip::construct(cfg.commit_a.clone(), range.clone());
        let fixed_point = FixedPointChip::construct(cfg.fixed_point.clone(), sh.scale_bits, range.clone());
        let solve = SolveCheckChip::construct(cfg.solve.clone(), sh.scale_bits, sh.tol, range.clone());
        let update = MaskedUpdateChip::construct(cfg.update.clone());

        // s and τ are circuit constants that the public inputs must repeat.
        let (s_cell, tol_cell) = layouter.assign_region(
            || "scale and tolerance",
            |mut r| {
                let s = r.advice_from_constant(|| "s", cfg.advice[0], 0, Fp::from(sh.scale_bits as u64))?;
                let t = r.advice_from_constant(|| "τ", cfg.advice[1], 0, Fp::from(sh.tol))?;
                Ok((s, t))
            },
        )?;
        layouter.constrain_instance(s_cell.cell(), cfg.instance, ROW_SCALE);
        layouter.constrain_instance(tol_cell.cell(), cfg.instance, ROW_TOL);

        let w = commit_vector(
            &mut layouter,
            &cfg,
            &commit_w,
            self.values(|x| x.w.clone(), n),
            ROW_W_IN,
            ROW_W_OUT,
        )?;
        let w_new = commit_vector(
            &mut layouter,
            &cfg,
            &commit_w,
            self.values(|x| x.w_new.clone(), n),
            ROW_W_NEW_IN,
            ROW_W_NEW_OUT,
        )?;
        let tri = |x: &Witness| commit::lower_triangle(&x.a, b).expect("a symmetric witness (honest_witness checks)");
        let a = commit_vector(
            &mut layouter,
            &cfg,
            &commit_a,
            self.values(tri, sh.n_fisher()),
            ROW_A_IN,
            ROW_A_OUT,
        )?;

        let y = self
            .values(|x| x.y.clone(), n)
            .into_iter()
            .map(|v| range.witness_checked(&mut layouter, v, sh.y_bits, true))
            .collect::<Result<Vec<_>, _>>()?;
        let delta = self.values(|x| x.delta.clone(), n);
        let rem = self.values(|x| x.remainder.clone(), n);
        let res = self.values(|x| x.residual.clone(), n);

        let tri_len = b * (b + 1) / 2;
        for blk in 0..sh.n_blocks {
            let y_blk = &y[blk * b..(blk + 1) * b];
            let a_blk = &a[blk * tri_len..(blk + 1) * tri_len];
            for i in 0..b {
                let g = blk * b + i;
                let a_row: Vec<_> = (0..b).map(|j| a_blk[commit::triangle_index(i, j)].clone()).collect();
                let p = fixed_point.dot(&mut layouter, &a_row, y_blk)?;
                // δ is bounded by the update: w' = w + δ with both weights range-checked.
                let d = fixed_point.floor_rescale(&mut layouter, &p, delta[g], rem[g])?;
                let keep = update.apply(&mut layouter, ROW_MASK + g, &w[g], &d, &w_new[g], &y[g])?;
                solve.check(&mut layouter, &keep, &p, &w[g], res[g])?;
            }
        }
        Ok(())
    }
}

/// Continues the digest chain from instance row `row_in` over fresh values
/// and exposes the result at `row_out`.
fn commit_vector(
    layouter: &mut impl Layouter<Fp>,
    cfg: &UnlearnConfig,
    commit: &CommitChip,
    vals: Vec<Value<Fp>>,
    row_in: usize,
    row_out: usize,
) -> Result<Vec<ACell>, Error> {
    let start = assign_from_instance(layouter, cfg, row_in)?;
    let (cells, out) = commit.witness_and_commit(layouter, &vals, start)?;
    layouter.constrain_instance(out.cell(), cfg.instance, row_out);
    Ok(cells)
}

fn assign_from_instance(layouter: &mut impl Layouter<Fp>, cfg: &UnlearnConfig, row: usize) -> Result<ACell, Error> {
    layouter.assign_region(
        || "chain accumulator in",
        |mut r| r.advice_from_instance(|| "acc in", cfg.instance, row, cfg.advice[0], 0),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, permutation, region_names, Failure};
    use crate::poseidon::H16_ROWS;
    use crate::witness::honest_witness;
    use halo2_axiom::dev::{FailureLocation, MockProver};
    use halo2_axiom::plonk::Any;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    pub const K: u32 = 11;

    // Gate indices in configure order: six range lanes (0–5), the W and A
    // commitment chips (pack first, pack and Poseidon's four gates each: 6–17),
    // then MAC first, MAC, floor (18–20), solve (21), update (22).
    const FLOOR: (usize, &str) = (20, "floor: 2^s·δ + r + P = 0");
    const SOLVE: (usize, &str) = (21, "solve: (1−keep)(P − 2^s·w − e) = 0, e+τ");
    const UPDATE: (usize, &str) = (22, "update: keep bool, w' = keep(w+δ), keep·y = 0");
    /// Constraint 0 of the solve gate; constraint 1 of the update gate.
    const SOLVE_EQ: (usize, &str) = (0, "");
    const W_NEW_EQ: (usize, &str) = (1, "");

    /// Advice columns of each commitment chip's Pow5 state_0, which ends in the digest.
    const W_STATE_0: usize = 2;
    const A_STATE_0: usize = COMMIT_COLUMNS + 2;

    /// A region of `UnlearnCircuit` by name and occurrence.
    struct Layout(Vec<String>);

    impl Layout {
        fn of(sh: Shape) -> Self {
            Layout(region_names(&UnlearnCircuit {
                shape: sh,
                witness: None,
            }))
        }

        fn at(&self, name: &str, nth: usize, offset: usize) -> FailureLocation {
            at(nth_region(&self.0, name, nth), offset)
        }

        /// The copy of a digest to its instance row (`ROW_W_OUT`, `ROW_W_NEW_OUT`
        /// or `ROW_A_OUT`) broken, at both cells: the instance cell and state_0
        /// on the last row of the vector's (only) H16.
        fn digest_mismatch(&self, row: usize) -> [Failure; 2] {
            let vector = row / 2; // W, W', A in synthesis order
            let state_0 = if row == ROW_A_OUT { A_STATE_0 } else { W_STATE_0 };
            [
                permutation((Any::advice(), state_0), self.at("poseidon H16", vector, H16_ROWS - 1)),
                permutation((Any::Instance, 0), FailureLocation::OutsideRegion { row }),
            ]
        }
    }

    pub fn small_shape() -> Shape {
        Shape {
            block: 8,
            n_blocks: 1,
            scale_bits: 12,
            tol: 1 << 16,
            y_bits: 32,
        }
    }

    /// A diagonally dominant symmetric A (like a damped inverse Fisher) and
    /// weights, at scale 2^12; mask two of eight weights.
    pub fn example(seed: u64) -> (Shape, Vec<i64>, Vec<i64>, Vec<bool>) {
        let sh = small_shape();
        let b = sh.block;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut small = |m: u32| (rng.next_u32() % (2 * m + 1)) as i64 - m as i64;
        let w: Vec<i64> = (0..b).map(|_| small(3000)).collect();
        let mut a = vec![0i64; b * b];
        for i in 0..b {
            for j in 0..=i {
                let v = if i == j { 8192 + small(2000) } else { small(600) };
                a[i * b + j] = v;
                a[j * b + i] = v;
            }
        }
        let keep = (0..b).map(|i| i != 2 && i != 5).collect();
        (sh, w, a, keep)
    }

    fn circuit(sh: Shape, wit: Witness) -> UnlearnCircuit {
        UnlearnCircuit {
            shape: sh,
            witness: Some(wit),
        }
    }

    /// Asserts that `wit` under `public` fails exactly `expected`.
    #[track_caller]
    fn assert_rejected(sh: Shape, wit: Witness, public: &PublicInputs, expected: Vec<Failure>) {
        assert_failures(failures(K, &circuit(sh, wit), vec![public.to_instance()]), expected);
    }

    #[test]
    fn honest_witness_satisfies_the_circuit() {
        for seed in 0..3 {
            let (sh, w, a, keep) = example(seed);
            let wit = honest_witness(&sh, &w, &a, &keep).unwrap();
            assert_eq!(wit.w_new[2], 0);
            assert_ne!(wit.w_new[0], wit.w[0], "kept weights are compensated");
            let public = PublicInputs::from_witness(&sh, &wit, None).unwrap();
            let prover = MockProver::run(K, &circuit(sh, wit), vec![public.to_instance()]).unwrap();
            assert_eq!(prover.verify(), Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn cheating_witnesses_fail_mock_prover() {
        let (sh, w, a, keep) = example(7);
        let honest = honest_witness(&sh, &w, &a, &keep).unwrap();
        let public = PublicInputs::from_witness(&sh, &honest, None).unwrap();
        let layout = Layout::of(sh);
        let b = sh.block;

        // (a) zero the mask without compensating, with self-consistent digests:
        // δ = r = 0 breaks the floor equation of every weight whose P = Σ A·y ≠ 0
        // (all of them here); the update w' = keep·(w + 0) and the solve hold.
        let mut lazy = honest.clone();
        lazy.delta = vec![0; w.len()];
        lazy.remainder = vec![0; w.len()];
        lazy.w_new = w.iter().zip(&keep).map(|(w, k)| if *k { *w } else { 0 }).collect();
        let lazy_public = PublicInputs::from_witness(&sh, &lazy, None).unwrap();
        assert!((0..b).all(|i| (0..b).map(|j| a[i * b + j] * honest.y[j]).sum::<i64>() != 0));
        let floors = || -> Vec<Failure> {
            (0..b)
                .map(|i| constraint(FLOOR, (0, ""), layout.at("floor rescale", i, 0)))
                .collect()
        };
        assert_rejected(sh, lazy.clone(), &lazy_public, floors());
        // Under the honest digests, W' (instance row 3) does not match either.
        let mut expected = floors();
        expected.extend(layout.digest_mismatch(ROW_W_NEW_OUT));
        assert_rejected(sh, lazy, &public, expected);

        // (b) one weight changed after the update: weight 0's w' = keep·(w + δ)
        // fails, and W' no longer matches the honest digest.
        let mut tweaked = honest.clone();
        tweaked.w_new[0] += 1;
        let update_0 = || constraint(UPDATE, W_NEW_EQ, layout.at("masked update", 0, 0));
        let mut expected = vec![update_0()];
        expected.extend(layout.digest_mismatch(ROW_W_NEW_OUT));
        assert_rejected(sh, tweaked.clone(), &public, expected);
        let tweaked_public = PublicInputs::from_witness(&sh, &tweaked, None).unwrap();
        assert_rejected(sh, tweaked, &tweaked_public, vec![update_0()]);

        // (c) a different A than committed, witness recomputed honestly for it:
        // every gate holds, the A digest (row 5) does not, nor W' (row 3), which
        // the other A moved.
        let mut a2 = a.clone();
        a2[2 * 8 + 2] += 64;
        let other_a = honest_witness(&sh, &w, &a2, &keep).unwrap();
        assert_ne!(other_a.w_new, honest.w_new);
        let mut expected = Vec::from(layout.digest_mismatch(ROW_W_NEW_OUT));
        expected.extend(layout.digest_mismatch(ROW_A_OUT));
        assert_rejected(sh, other_a, &public, expected);

        // (d) another mask claimed for the honest witness: weight 3 is now
        // masked, so its nonzero w' breaks the update and its P − 2^s·w (with
        // e = 0, as kept rows carry) breaks the solve equation.
        let mut other_mask = public.clone();
        other_mask.keep[3] = false;
        assert_rejected(
            sh,
            honest.clone(),
            &other_mask,
            vec![
                constraint(SOLVE, SOLVE_EQ, layout.at("solve check", 3, 0)),
                constraint(UPDATE, W_NEW_EQ, layout.at("masked update", 3, 0)),
            ],
        );

        // Scale or tolerance other than the circuit's: the constant's copy cycle
        // (fixed constant → advice cell → instance row) breaks on both sides of
        // the instance cell, whose value alone differs.
        let constant_copied = |column, row| {
            vec![
                permutation((Any::advice(), column), layout.at("scale and tolerance", 0, 0)),
                permutation((Any::Instance, 0), FailureLocation::OutsideRegion { row }),
            ]
        };
        let mut other_scale = public.clone();
        other_scale.scale_bits += 1;
        assert_rejected(sh, honest.clone(), &other_scale, constant_copied(0, ROW_SCALE));
        let mut other_tol = public.clone();
        other_tol.tol += 1;
        assert_rejected(sh, honest, &other_tol, constant_copied(1, ROW_TOL));
    }

    #[test]
    fn two_blocks_chain_like_one_vector() {
        let (mut sh, w, a, keep) = example(3);
        let (_, w2, a2, keep2) = example(4);
        sh.n_blocks = 2;
        let cat = |x: &[i64], y: &[i64]| [x, y].concat();
        let keep_all: Vec<bool> = [keep, keep2].concat();
        let wit = honest_witness(&sh, &cat(&w, &w2), &cat(&a, &a2), &keep_all).unwrap();
        let public = PublicInputs::from_witness(&sh, &wit, None).unwrap();
        assert_eq!(public.w_out, commit::commit(&wit.w, WEIGHTS).unwrap());
        let c = UnlearnCircuit {
            shape: sh,
            witness: Some(wit),
        };
        assert_eq!(
            MockProver::run(12, &c, vec![public.to_instance()]).unwrap().verify(),
            Ok(())
        );
    }
}
