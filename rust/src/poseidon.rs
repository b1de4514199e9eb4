//! The Poseidon permutation over BN254's scalar field ([`P128Pow5T3Bn254`]:
//! width 3, rate 2, x⁵ S-box, 8 full and 58 partial rounds) and the
//! constant-length 16-input sponge `H16` of
//! [`crate::commit`], in-circuit with gates of degree ≤ 4.
//!
//! Why a chip of our own: halo2_gadgets' `Pow5Chip` constrains `(x + rc)⁵`
//! in one gate, degree 5 × selector = 6, which forces an 8× extended domain
//! on the whole circuit. Here every S-box input `t` gets its square `t²` as a
//! witness (`aux = t²`, degree 2 × selector), and the S-box output is
//! `aux²·t` (degree 3), which only ever enters linear (MDS) constraints:
//!
//! * full round (one row): `aux_k = (x_k + a_k)²` for k = 0, 1, 2 and
//!   `x'_j = Σ_k M_jk·aux_k²·(x_k + a_k)`;
//! * two partial rounds (one row), with `t = x_0 + a_0`:
//!   `aux_0 = t²`, `y = M·(aux_0²·t, x_1 + a_1, x_2 + a_2)` (degree 3),
//!   `aux_1 = y_0`, `aux_2 = (aux_1 + b_0)²` and
//!   `x'_j = Σ M_j0·aux_2²·(aux_1 + b_0) + M_j1·(y_1 + b_1) + M_j2·(y_2 + b_2)`;
//! * absorption: `x'_0 = x_0 + aux_0`, `x'_1 = x_1 + aux_1`, `x'_2 = x_2`.
//!
//! `a` and `b` are the round constants in fixed columns. Every auxiliary cell
//! is a function of the row's state, so a row's constraints determine the next
//! state exactly: the chip computes the same function as the native hash,
//! which the tests check against `halo2_poseidon`.
//! * initial state: `x = (0, 0, 16·2^64)` (ConstantLength's capacity element).
//!
//! One permutation takes 4 + 29 + 4 = 37 rows plus its output row, which is
//! also where the next two inputs are absorbed; an `H16` is [`H16_ROWS`] rows.

use std::sync::OnceLock;

use crate::h2::{ACell, RegionExt};
use ff::{Field, PrimeField};
use halo2_axiom::{
    circuit::{Layouter, Region, Value},
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Fixed, Selector},
    poly::Rotation,
};
use halo2_poseidon::{generate_constants, Mds, Spec};

use crate::Fp;

const WIDTH: usize = 3;
const RATE: usize = 2;
/// Inputs of one `H16` (the accumulator and 15 packed elements).
pub const H16_INPUTS: usize = 16;
const HALF_FULL_ROUNDS: usize = 4;
const PARTIAL_ROUNDS: usize = 58;
const ROUND_ROWS: usize = 2 * HALF_FULL_ROUNDS + PARTIAL_ROUNDS / 2;
const PERMUTATIONS: usize = H16_INPUTS / RATE;
/// Rows of one `H16` region: the initial state, then per permutation the
/// absorbed state and 36 round rows; the last row holds the output.
pub const H16_ROWS: usize = 1 + PERMUTATIONS * (ROUND_ROWS + 1);

type State = [Fp; WIDTH];

/// Poseidon over BN254's scalar field: width 3, rate 2, x⁵ S-box, 8 full
/// rounds and 58 partial ones, round constants and MDS matrix from the
/// reference Grain LFSR (`halo2_poseidon::generate_constants`, as zcash's Pasta
/// instance). 57 partial rounds are the published minimum for 128-bit security
/// at this width over a 254-bit field; 58 keeps the count even, which the chip's
/// two partial rounds per row need (more rounds only add margin).
#[derive(Debug, Clone, Copy)]
pub struct P128Pow5T3Bn254;

type SpecConstants = (Vec<State>, Mds<Fp, WIDTH>, Mds<Fp, WIDTH>);

impl Spec<Fp, WIDTH, RATE> for P128Pow5T3Bn254 {
    fn full_rounds() -> usize {
        2 * HALF_FULL_ROUNDS
    }

    fn partial_rounds() -> usize {
        PARTIAL_ROUNDS
    }

    fn sbox(val: Fp) -> Fp {
        val.pow_vartime([5])
    }

    fn secure_mds() -> usize {
        0
    }

    fn constants() -> SpecConstants {
        static C: OnceLock<SpecConstants> = OnceLock::new();
        C.get_or_init(generate_constants::<Fp, Self, WIDTH, RATE>).clone()
    }
}

struct Constants {
    rc: Vec<State>,
    mds: [State; WIDTH],
}

fn constants() -> &'static Constants {
    static C: OnceLock<Constants> = OnceLock::new();
    C.get_or_init(|| {
        let (rc, mds, _) = <P128Pow5T3Bn254 as Spec<Fp, WIDTH, RATE>>::constants();
        assert_eq!(rc.len(), 2 * HALF_FULL_ROUNDS + PARTIAL_ROUNDS);
        Constants { rc, mds }
    })
}

fn mds_mul(m: &[State; WIDTH], v: State) -> State {
    [0, 1, 2].map(|j| (0..WIDTH).map(|k| m[j][k] * v[k]).sum())
}

/// One full round natively: the auxiliary squares and the next state.
fn full_round(x: State, a: State) -> (State, State) {
    let t = [0, 1, 2].map(|k| x[k] + a[k]);
    let sq = t.map(|t| t.square());
    let s = [0, 1, 2].map(|k| sq[k].square() * t[k]);
    (sq, mds_mul(&constants().mds, s))
}

/// Two partial rounds natively: `aux = (t², y_0, (y_0 + b_0)²)` and the next state.
fn partial_rounds(x: State, a: State, b: State) -> (State, State) {
    let m = &constants().mds;
    let t = x[0] + a[0];
    let sq0 = t.square();
    let y = mds_mul(m, [sq0.square() * t, x[1] + a[1], x[2] + a[2]]);
    let u = y[0] + b[0];
    let sq1 = u.square();
    let next = mds_mul(m, [sq1.square() * u, y[1] + b[1], y[2] + b[2]]);
    ([sq0, y[0], sq1], next)
}

/// The permutation natively, through the same steps as the gates.
pub fn permute(mut x: State) -> State {
    let rc = &constants().rc;
    let (first, rest) = rc.split_at(HALF_FULL_ROUNDS);
    let (partial, last) = rest.split_at(PARTIAL_ROUNDS);
    for &c in first {
        x = full_round(x, c).1;
    }
    for pair in partial.chunks_exact(2) {
        x = partial_rounds(x, pair[0], pair[1]).1;
    }
    for &c in last {
        x = full_round(x, c).1;
    }
    x
}

/// The capacity element of a constant-length hash of [`H16_INPUTS`] inputs (`L·2^64`).
fn capacity() -> Fp {
    Fp::from_u128((H16_INPUTS as u128) << 64)
}

/// `H16` natively, through [`permute`].
pub fn hash16(msg: &[Fp; H16_INPUTS]) -> Fp {
    let mut x = [Fp::ZERO, Fp::ZERO, capacity()];
    for pair in msg.chunks(RATE) {
        x[0] += pair[0];
        x[1] += pair[1];
        x = permute(x);
    }
    x[0]
}

#[derive(Clone, Debug)]
pub struct PoseidonConfig {
    state: [Column<Advice>; WIDTH],
    aux: [Column<Advice>; WIDTH],
    rc_a: [Column<Fixed>; WIDTH],
    rc_b: [Column<Fixed>; WIDTH],
    q_full: Selector,
    q_partial: Selector,
    q_absorb: Selector,
    q_init: Selector,
}

#[derive(Clone, Debug)]
pub struct PoseidonChip {
    config: PoseidonConfig,
    /// Tests only: (region offset, aux column, value added) of a wrong witness.
    #[cfg(test)]
    tamper: Option<(usize, usize, Fp)>,
    /// Tests only: added to the initial capacity element.
    #[cfg(test)]
    tamper_capacity: Option<Fp>,
}

type Cell = ACell;

impl PoseidonChip {
    /// Three gates (full round, two partial rounds, absorption) over `state`
    /// and `aux`; adds six fixed columns for round constants. `state` and the
    /// first two `aux` columns are equality-enabled (inputs are copied in, the
    /// digest out); the caller's circuit must have a constant column
    /// (`enable_constant`) for the capacity element.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        state: [Column<Advice>; WIDTH],
        aux: [Column<Advice>; WIDTH],
    ) -> PoseidonConfig {
        // Inputs are copied into aux_0 and aux_1 and the digest out of state_0;
        // the initial state is pinned by a gate, so state_1, state_2 and aux_2
        // need no copies (each equality column costs the proof a third of a
        // permutation product).
        for c in [state[0], aux[0], aux[1]] {
            meta.enable_equality(c);
        }
        let rc_a = [(); WIDTH].map(|_| meta.fixed_column());
        let rc_b = [(); WIDTH].map(|_| meta.fixed_column());
        let (q_full, q_partial, q_absorb, q_init) =
            (meta.selector(), meta.selector(), meta.selector(), meta.selector());
        let mds = constants().mds.map(|row| row.map(Expression::Constant));
        let mds_mul = |v: [Expression<Fp>; WIDTH]| -> [Expression<Fp>; WIDTH] {
            [0, 1, 2].map(|j| {
                (1..WIDTH).fold(mds[j][0].clone() * v[0].clone(), |acc, k| {
                    acc + mds[j][k].clone() * v[k].clone()
                })
            })
        };

        meta.create_gate("poseidon full round", |m| {
            let q = m.query_selector(q_full);
            let x = state.map(|c| m.query_advice(c, Rotation::cur()));
            let sq = aux.map(|c| m.query_advice(c, Rotation::cur()));
            let next = state.map(|c| m.query_advice(c, Rotation::next()));
            let t = [0, 1, 2].map(|k| x[k].clone() + m.query_fixed(rc_a[k], Rotation::cur()));
            let s = [0, 1, 2].map(|k| sq[k].clone() * sq[k].clone() * t[k].clone());
            let out = mds_mul(s);
            let squares = (0..WIDTH).map(|k| sq[k].clone() - t[k].clone() * t[k].clone());
            let linear = (0..WIDTH).map(|j| next[j].clone() - out[j].clone());
            squares.chain(linear).map(|e| q.clone() * e).collect::<Vec<_>>()
        });

        meta.create_gate("poseidon two partial rounds", |m| {
            let q = m.query_selector(q_partial);
            let x = state.map(|c| m.query_advice(c, Rotation::cur()));
            let [sq0, y0, sq1] = aux.map(|c| m.query_advice(c, Rotation::cur()));
            let next = state.map(|c| m.query_advice(c, Rotation::next()));
            let a = rc_a.map(|c| m.query_fixed(c, Rotation::cur()));
            let b = rc_b.map(|c| m.query_fixed(c, Rotation::cur()));
            let t = x[0].clone() + a[0].clone();
            let y = mds_mul([
                sq0.clone() * sq0.clone() * t.clone(),
                x[1].clone() + a[1].clone(),
                x[2].clone() + a[2].clone(),
            ]);
            let u = y0.clone() + b[0].clone();
            let z = mds_mul([
                sq1.clone() * sq1.clone() * u.clone(),
                y[1].clone() + b[1].clone(),
                y[2].clone() + b[2].clone(),
            ]);
            let mut c = vec![sq0 - t.clone() * t, y0 - y[0].clone(), sq1 - u.clone() * u];
            c.extend((0..WIDTH).map(|j| next[j].clone() - z[j].clone()));
            c.into_iter().map(|e| q.clone() * e).collect::<Vec<_>>()
        });

        meta.create_gate("poseidon absorb", |m| {
            let q = m.query_selector(q_absorb);
            let x = state.map(|c| m.query_advice(c, Rotation::cur()));
            let inp = [aux[0], aux[1]].map(|c| m.query_advice(c, Rotation::cur()));
            let next = state.map(|c| m.query_advice(c, Rotation::next()));
            vec![
                q.clone() * (next[0].clone() - x[0].clone() - inp[0].clone()),
                q.clone() * (next[1].clone() - x[1].clone() - inp[1].clone()),
                q * (next[2].clone() - x[2].clone()),
            ]
        });

        meta.create_gate("poseidon initial state (0, 0, capacity)", |m| {
            let q = m.query_selector(q_init);
            let x = state.map(|c| m.query_advice(c, Rotation::cur()));
            vec![
                q.clone() * x[0].clone(),
                q.clone() * x[1].clone(),
                q * (x[2].clone() - Expression::Constant(capacity())),
            ]
        });

        PoseidonConfig {
            state,
            aux,
            rc_a,
            rc_b,
            q_full,
            q_partial,
            q_absorb,
            q_init,
        }
    }

    pub fn construct(config: PoseidonConfig) -> Self {
        Self {
            config,
            #[cfg(test)]
            tamper: None,
            #[cfg(test)]
            tamper_capacity: None,
        }
    }

    /// `H16(msg)` in one region of [`H16_ROWS`] rows; returns the digest cell.
    pub fn hash16(&self, layouter: &mut impl Layouter<Fp>, msg: &[Cell; H16_INPUTS]) -> Result<Cell, Error> {
        let cfg = &self.config;
        layouter.assign_region(
            || "poseidon H16",
            |mut region| {
                cfg.q_init.enable(&mut region, 0)?;
                #[allow(unused_mut)]
                let mut init = [Fp::ZERO, Fp::ZERO, capacity()];
                #[cfg(test)]
                if let Some(d) = self.tamper_capacity {
                    init[2] += d;
                }
                let mut x = self.assign_state(&mut region, 0, Value::known(init))?;
                let mut row = 0;
                for p in 0..PERMUTATIONS {
                    cfg.q_absorb.enable(&mut region, row)?;
                    let m0 = msg[2 * p].copy_advice(|| "m", &mut region, cfg.aux[0], row)?;
                    let m1 = msg[2 * p + 1].copy_advice(|| "m", &mut region, cfg.aux[1], row)?;
                    let vals = state_value(&x).zip(m0.value().zip(m1.value()));
                    let next = vals.map(|(s, (m0, m1))| [s[0] + m0, s[1] + m1, s[2]]);
                    row += 1;
                    x = self.assign_state(&mut region, row, next)?;
                    x = self.permutation(&mut region, row, x)?;
                    row += ROUND_ROWS;
                }
                debug_assert_eq!(row + 1, H16_ROWS);
                Ok(x[0].clone())
            },
        )
    }

    /// The 36 round rows from `row` on, state `x` already at `row`; returns the
    /// output state (at `row + 36`).
    fn permutation(
        &self,
        region: &mut Region<'_, Fp>,
        row: usize,
        mut x: [Cell; WIDTH],
    ) -> Result<[Cell; WIDTH], Error> {
        let cfg = &self.config;
        let rc = &constants().rc;
        let mut r = 0; // round index
        for offset in 0..ROUND_ROWS {
            let at = row + offset;
            let full = !(HALF_FULL_ROUNDS..ROUND_ROWS - HALF_FULL_ROUNDS).contains(&offset);
            let cur = state_value(&x);
            let (aux, next) = if full {
                cfg.q_full.enable(region, at)?;
                self.assign_constants(region, at, cfg.rc_a, rc[r])?;
                r += 1;
                let a = rc[r - 1];
                let out = cur.map(|s| full_round(s, a));
                (out.map(|o| o.0), out.map(|o| o.1))
            } else {
                cfg.q_partial.enable(region, at)?;
                self.assign_constants(region, at, cfg.rc_a, rc[r])?;
                self.assign_constants(region, at, cfg.rc_b, rc[r + 1])?;
                let (a, b) = (rc[r], rc[r + 1]);
                r += 2;
                let out = cur.map(|s| partial_rounds(s, a, b));
                (out.map(|o| o.0), out.map(|o| o.1))
            };
            for k in 0..WIDTH {
                #[allow(unused_mut)]
                let mut v = aux.map(|v| v[k]);
                #[cfg(test)]
                if let Some((o, c, d)) = self.tamper {
                    if (o, c) == (at, k) {
                        v = v.map(|v| v + d);
                    }
                }
                region.advice(|| "aux", cfg.aux[k], at, || v)?;
            }
            x = self.assign_state(region, at + 1, next)?;
        }
        Ok(x)
    }

    fn assign_state(&self, region: &mut Region<'_, Fp>, row: usize, v: Value<State>) -> Result<[Cell; WIDTH], Error> {
        let c = &self.config.state;
        Ok([
            region.advice(|| "x_0", c[0], row, || v.map(|v| v[0]))?,
            region.advice(|| "x_1", c[1], row, || v.map(|v| v[1]))?,
            region.advice(|| "x_2", c[2], row, || v.map(|v| v[2]))?,
        ])
    }

    fn assign_constants(
        &self,
        region: &mut Region<'_, Fp>,
        row: usize,
        cols: [Column<Fixed>; WIDTH],
        v: State,
    ) -> Result<(), Error> {
        for k in 0..WIDTH {
            region.fixed(|| "rc", cols[k], row, || Value::known(v[k]))?;
        }
        Ok(())
    }
}

fn state_value(x: &[Cell; WIDTH]) -> Value<State> {
    x[0].value()
        .zip(x[1].value())
        .zip(x[2].value())
        .map(|((a, b), c)| [*a, *b, *c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{assert_failures, at, constraint, failures, nth_region, permutation, region_names, Failure};
    use halo2_axiom::{
        dev::{FailureLocation, MockProver},
        plonk::{Any, Circuit, Instance},
    };
    use halo2_poseidon::{self as poseidon, ConstantLength};

    const K: u32 = 10;
    const FULL: (usize, &str) = (0, "poseidon full round");
    const PARTIAL: (usize, &str) = (1, "poseidon two partial rounds");

    fn native_reference(msg: &[Fp; H16_INPUTS]) -> Fp {
        poseidon::Hash::<Fp, super::P128Pow5T3Bn254, ConstantLength<H16_INPUTS>, 3, 2>::init().hash(*msg)
    }

    fn message(seed: u64) -> [Fp; H16_INPUTS] {
        std::array::from_fn(|i| Fp::from(seed * 1_000_003 + i as u64).square() + Fp::from(i as u64))
    }

    /// Hashes `msg` (advice cells) and exposes the digest as instance row 0;
    /// `tamper` as in [`PoseidonChip`].
    #[derive(Clone, Default)]
    struct TestCircuit {
        msg: [Fp; H16_INPUTS],
        tamper: Option<(usize, usize, Fp)>,
        tamper_capacity: Option<Fp>,
    }

    #[derive(Clone, Debug)]
    struct Cfg {
        poseidon: PoseidonConfig,
        input: Column<Advice>,
        instance: Column<Instance>,
    }

    impl Circuit<Fp> for TestCircuit {
        type Config = Cfg;
        type FloorPlanner = crate::h2::Planner;
        fn without_witnesses(&self) -> Self {
            Self::default()
        }
        fn configure(meta: &mut ConstraintSystem<Fp>) -> Cfg {
            let cols = [(); 7].map(|_| meta.advice_column());
            let constants = meta.fixed_column();
            meta.enable_constant(constants);
            meta.enable_equality(cols[6]);
            let instance = meta.instance_column();
            meta.enable_equality(instance);
            Cfg {
                poseidon: PoseidonChip::configure(meta, [cols[0], cols[1], cols[2]], [cols[3], cols[4], cols[5]]),
                input: cols[6],
                instance,
            }
        }
        fn synthesize(&self, cfg: Cfg, mut layouter: impl Layouter<Fp>) -> Result<(), Error> {
            let cells: Vec<Cell> = layouter.assign_region(
                || "message",
                |mut r| {
                    (0..H16_INPUTS)
                        .map(|i| r.advice(|| "m", cfg.input, i, || Value::known(self.msg[i])))
                        .collect()
                },
            )?;
            let mut chip = PoseidonChip::construct(cfg.poseidon.clone());
            chip.tamper = self.tamper;
            chip.tamper_capacity = self.tamper_capacity;
            let digest = chip.hash16(&mut layouter, &cells.try_into().unwrap())?;
            layouter.constrain_instance(digest.cell(), cfg.instance, 0);
            Ok(())
        }
    }

    fn h16_region(c: &TestCircuit) -> (usize, &'static str) {
        nth_region(&region_names(c), "poseidon H16", 0)
    }

    #[test]
    fn native_steps_equal_halo2_poseidon() {
        for seed in 0..4 {
            let msg = message(seed);
            assert_eq!(hash16(&msg), native_reference(&msg), "seed {seed}");
        }
        // The capacity element is ConstantLength's: another length hashes differently.
        let msg = message(5);
        let short = poseidon::Hash::<Fp, super::P128Pow5T3Bn254, ConstantLength<15>, 3, 2>::init()
            .hash(msg[..15].try_into().unwrap());
        assert_ne!(hash16(&msg), short);
    }

    #[test]
    fn in_circuit_digest_equals_halo2_poseidon() {
        for seed in 0..2 {
            let msg = message(seed);
            let c = TestCircuit {
                msg,
                ..Default::default()
            };
            let p = MockProver::run(K, &c, vec![vec![native_reference(&msg)]]).unwrap();
            assert_eq!(p.verify(), Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn gates_have_degree_four() {
        let mut cs = ConstraintSystem::<Fp>::default();
        TestCircuit::configure(&mut cs);
        // Permutation argument 3, gates: selector × aux²·t = 4.
        assert_eq!(cs.degree(), 4);
    }

    #[test]
    fn other_message_or_digest_fails() {
        let msg = message(9);
        let c = TestCircuit {
            msg,
            ..Default::default()
        };
        let h = h16_region(&c);
        // The copy of state_0's last cell to instance row 0 breaks, at both cells.
        let digest_copy = || {
            vec![
                permutation((Any::advice(), 0), at(h, H16_ROWS - 1)),
                permutation((Any::Instance, 0), FailureLocation::OutsideRegion { row: 0 }),
            ]
        };
        assert_failures(
            failures(K, &c, vec![vec![native_reference(&msg) + Fp::ONE]]),
            digest_copy(),
        );
        let mut other = msg;
        other[15] += Fp::ONE;
        let c = TestCircuit {
            msg: other,
            ..Default::default()
        };
        assert_failures(failures(K, &c, vec![vec![native_reference(&msg)]]), digest_copy());
    }

    #[test]
    fn wrong_auxiliary_cells_fail_their_gate() {
        let msg = message(3);
        let digest = vec![vec![native_reference(&msg)]];
        let at_row = |c: &TestCircuit, row| at(h16_region(c), row);
        // Full round 0 (row 1, after the initial state), aux_1 = t_1² + 1: its
        // square constraint (1) and all three next-state constraints (3–5) fail
        // on that row; later rows are honest.
        let c = TestCircuit {
            msg,
            tamper: Some((1, 1, Fp::ONE)),
            ..Default::default()
        };
        let expected: Vec<Failure> = [1, 3, 4, 5]
            .iter()
            .map(|i| constraint(FULL, (*i, ""), at_row(&c, 1)))
            .collect();
        assert_failures(failures(K, &c, digest.clone()), expected);
        // The partial-round row 4 of the third permutation (offset 1 + 2·37 + 4 + 4):
        // y_0 off by one breaks its own constraint (1), the square of y_0 + b_0 (2)
        // and the next state (3–5).
        let row = 1 + 2 * (ROUND_ROWS + 1) + HALF_FULL_ROUNDS + 4;
        let c = TestCircuit {
            msg,
            tamper: Some((row, 1, Fp::ONE)),
            ..Default::default()
        };
        let expected: Vec<Failure> = (1..6).map(|i| constraint(PARTIAL, (i, ""), at_row(&c, row))).collect();
        assert_failures(failures(K, &c, digest.clone()), expected);
        // A wrong first square (t² + 7) breaks its constraint (0) and, through
        // the S-box output, y_0 (1) and the next state (3–5).
        let c = TestCircuit {
            msg,
            tamper: Some((row, 0, Fp::from(7))),
            ..Default::default()
        };
        let expected: Vec<Failure> = [0, 1, 3, 4, 5]
            .iter()
            .map(|i| constraint(PARTIAL, (*i, ""), at_row(&c, row)))
            .collect();
        assert_failures(failures(K, &c, digest), expected);
    }

    #[test]
    fn another_initial_state_fails_the_init_gate() {
        // A capacity element other than ConstantLength<16>'s (another hash
        // domain): the init gate's third constraint fails on row 0, and the
        // chain then reaches another digest, whose copy out breaks.
        let msg = message(4);
        let c = TestCircuit {
            msg,
            tamper_capacity: Some(Fp::ONE),
            ..Default::default()
        };
        let h = h16_region(&c);
        assert_failures(
            failures(K, &c, vec![vec![native_reference(&msg)]]),
            vec![
                constraint((3, "poseidon initial state (0, 0, capacity)"), (2, ""), at(h, 0)),
                permutation((Any::advice(), 0), at(h, H16_ROWS - 1)),
                permutation((Any::Instance, 0), FailureLocation::OutsideRegion { row: 0 }),
            ],
        );
    }
}
