//! What the chips need from halo2-axiom that it does not provide as zcash
//! `halo2_proofs` did.
//!
//! halo2-axiom's `SimpleFloorPlanner` places every region at row 0 (its
//! region offsets are absolute rows: the fork's own circuits manage rows
//! themselves), and its V1 planner is compiled out. Our chips are written as
//! regions with relative offsets that a planner stacks per column, so
//! [`Planner`] restores zcash's `SimpleFloorPlanner` rule: a region starts at
//! the first row where all of its columns (and selectors) are free. It runs the
//! circuit's `synthesize` twice, first to measure every region's shape (the
//! shapes do not depend on the witness) and then to assign it at the planned
//! rows, shifting each region's offsets by its start. Cells carry absolute rows.
//!
//! [`RegionExt`] and [`ACell`] give regions the assignment calls the chips
//! were written with (an annotation, a closure for the value, a `Result`), over
//! halo2-axiom's (no annotation, the value itself, no `Result`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use halo2_axiom::circuit::layouter::{RegionColumn, RegionLayouter};
use halo2_axiom::circuit::{AssignedCell, Cell, Layouter, Region, SimpleFloorPlanner, Table, Value};
use halo2_axiom::plonk::{
    Advice, Any, Assigned, Assignment, Challenge, Circuit, Column, ConstraintSystem, Error, Fixed, FloorPlanner,
    Instance, Selector,
};

use crate::Fp;

/// Where each region of a circuit starts, found by a measuring pass.
#[derive(Debug, Default)]
struct Plan {
    /// First free row per column (selectors count as columns).
    free: HashMap<RegionColumn, usize>,
    starts: Vec<usize>,
    next: usize,
}

/// The columns and rows one region touches.
#[derive(Debug, Default)]
struct Shape {
    columns: HashSet<RegionColumn>,
    rows: usize,
}

/// zcash `halo2_proofs`' `SimpleFloorPlanner` placement over halo2-axiom's
/// single-pass layouter (see the module docs).
#[derive(Debug)]
pub struct Planner;

impl FloorPlanner for Planner {
    fn synthesize<F: ff::Field, CS: Assignment<F>, C: Circuit<F>>(
        cs: &mut CS,
        circuit: &C,
        config: C::Config,
        constants: Vec<Column<Fixed>>,
    ) -> Result<(), Error> {
        let plan = RefCell::new(Plan::default());
        let measure = Planned {
            circuit,
            plan: &plan,
            measuring: true,
        };
        SimpleFloorPlanner::synthesize(&mut NullAssignment, &measure, config.clone(), constants.clone())?;
        let assign = Planned {
            circuit,
            plan: &plan,
            measuring: false,
        };
        SimpleFloorPlanner::synthesize(cs, &assign, config, constants)
    }
}

/// The circuit with its layouter wrapped in a [`PlannedLayouter`].
struct Planned<'a, C> {
    circuit: &'a C,
    plan: &'a RefCell<Plan>,
    measuring: bool,
}

impl<F: ff::Field, C: Circuit<F>> Circuit<F> for Planned<'_, C> {
    type Config = C::Config;
    type FloorPlanner = SimpleFloorPlanner;

    fn without_witnesses(&self) -> Self {
        // Only `FloorPlanner::synthesize` sees this wrapper, and it never asks.
        unreachable!("Planned is only synthesised")
    }

    fn configure(meta: &mut ConstraintSystem<F>) -> Self::Config {
        C::configure(meta)
    }

    fn synthesize(&self, config: Self::Config, layouter: impl Layouter<F>) -> Result<(), Error> {
        self.circuit.synthesize(
            config,
            PlannedLayouter {
                inner: layouter,
                plan: self.plan,
                measuring: self.measuring,
            },
        )
    }
}

struct PlannedLayouter<'a, L> {
    inner: L,
    plan: &'a RefCell<Plan>,
    measuring: bool,
}

impl<F: ff::Field, L: Layouter<F>> Layouter<F> for PlannedLayouter<'_, L> {
    type Root = Self;

    fn assign_region<A, AR, N, NR>(&mut self, name: N, assignment: A) -> Result<AR, Error>
    where
        A: FnOnce(Region<'_, F>) -> Result<AR, Error>,
        N: Fn() -> NR,
        NR: Into<String>,
    {
        if self.measuring {
            let shape = RefCell::new(Shape::default());
            let out = self.inner.assign_region(name, |region| {
                let mut s = Shifted {
                    region,
                    start: 0,
                    shape: Some(&shape),
                };
                assignment(Region::from(&mut s as &mut dyn RegionLayouter<F>))
            })?;
            let shape = shape.into_inner();
            let mut plan = self.plan.borrow_mut();
            let start = shape
                .columns
                .iter()
                .map(|c| plan.free.get(c).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            for c in shape.columns {
                plan.free.insert(c, start + shape.rows);
            }
            plan.starts.push(start);
            Ok(out)
        } else {
            let start = {
                let mut plan = self.plan.borrow_mut();
                let i = plan.next;
                plan.next += 1;
                *plan
                    .starts
                    .get(i)
                    .expect("the circuit assigns the regions it was measured with")
            };
            self.inner.assign_region(name, |region| {
                let mut s = Shifted {
                    region,
                    start,
                    shape: None,
                };
                assignment(Region::from(&mut s as &mut dyn RegionLayouter<F>))
            })
        }
    }

    fn assign_table<A, N, NR>(&mut self, name: N, assignment: A) -> Result<(), Error>
    where
        A: FnMut(Table<'_, F>) -> Result<(), Error>,
        N: Fn() -> NR,
        NR: Into<String>,
    {
        self.inner.assign_table(name, assignment)
    }

    fn constrain_instance(&mut self, cell: Cell, column: Column<Instance>, row: usize) {
        self.inner.constrain_instance(cell, column, row)
    }

    fn next_phase(&mut self) {
        self.inner.next_phase()
    }

    fn get_challenge(&self, challenge: Challenge) -> Value<F> {
        self.inner.get_challenge(challenge)
    }

    fn get_root(&mut self) -> &mut Self::Root {
        self
    }

    fn push_namespace<NR, N>(&mut self, name_fn: N)
    where
        NR: Into<String>,
        N: FnOnce() -> NR,
    {
        self.inner.get_root().push_namespace(name_fn)
    }

    fn pop_namespace(&mut self, gadget_name: Option<String>) {
        self.inner.get_root().pop_namespace(gadget_name)
    }
}

/// A region whose offsets are shifted by `start` (and, when measuring,
/// recorded into `shape`). Cells it returns carry absolute rows.
struct Shifted<'r, 's, F: ff::Field> {
    region: Region<'r, F>,
    start: usize,
    shape: Option<&'s RefCell<Shape>>,
}

impl<F: ff::Field> std::fmt::Debug for Shifted<'_, '_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shifted").field("start", &self.start).finish()
    }
}

impl<F: ff::Field> Shifted<'_, '_, F> {
    fn touch(&self, column: RegionColumn, offset: usize) -> usize {
        if let Some(shape) = self.shape {
            let mut s = shape.borrow_mut();
            s.columns.insert(column);
            s.rows = s.rows.max(offset + 1);
        }
        self.start + offset
    }
}

impl<F: ff::Field> RegionLayouter<F> for Shifted<'_, '_, F> {
    fn enable_selector<'v>(
        &'v mut self,
        _: &'v (dyn Fn() -> String + 'v),
        selector: &Selector,
        offset: usize,
    ) -> Result<(), Error> {
        let row = self.touch((*selector).into(), offset);
        selector.enable(&mut self.region, row)
    }

    fn name_column<'v>(&'v mut self, annotation: &'v (dyn Fn() -> String + 'v), column: Column<Any>) {
        self.region.name_column(annotation, column)
    }

    fn assign_advice<'v>(
        &mut self,
        column: Column<Advice>,
        offset: usize,
        to: Value<Assigned<F>>,
    ) -> AssignedCell<&'v Assigned<F>, F> {
        let row = self.touch(Column::<Any>::from(column).into(), offset);
        self.region.assign_advice(column, row, to)
    }

    fn assign_advice_from_constant<'v>(
        &'v mut self,
        _: &'v (dyn Fn() -> String + 'v),
        column: Column<Advice>,
        offset: usize,
        constant: Assigned<F>,
    ) -> Result<Cell, Error> {
        let row = self.touch(Column::<Any>::from(column).into(), offset);
        let cell = self.region.assign_advice(column, row, Value::known(constant)).cell();
        self.region.constrain_constant(cell, constant)?;
        Ok(cell)
    }

    fn assign_advice_from_instance<'v>(
        &mut self,
        _: &'v (dyn Fn() -> String + 'v),
        instance: Column<Instance>,
        row: usize,
        advice: Column<Advice>,
        offset: usize,
    ) -> Result<(Cell, Value<F>), Error> {
        let at = self.touch(Column::<Any>::from(advice).into(), offset);
        let c = self
            .region
            .assign_advice_from_instance(|| "", instance, row, advice, at)?;
        Ok((c.cell(), c.value().copied()))
    }

    fn instance_value(&mut self, instance: Column<Instance>, row: usize) -> Result<Value<F>, Error> {
        self.region.instance_value(instance, row)
    }

    fn assign_fixed(&mut self, column: Column<Fixed>, offset: usize, to: Assigned<F>) -> Cell {
        let row = self.touch(Column::<Any>::from(column).into(), offset);
        self.region.assign_fixed(column, row, to)
    }

    fn constrain_constant(&mut self, cell: Cell, constant: Assigned<F>) -> Result<(), Error> {
        self.region.constrain_constant(cell, constant)
    }

    fn constrain_equal(&mut self, left: Cell, right: Cell) {
        self.region.constrain_equal(left, right)
    }

    fn get_challenge(&self, challenge: Challenge) -> Value<F> {
        self.region.get_challenge(challenge)
    }

    fn next_phase(&mut self) {
        self.region.next_phase()
    }
}

/// An [`Assignment`] that keeps nothing: the measuring pass.
struct NullAssignment;

impl<F: ff::Field> Assignment<F> for NullAssignment {
    fn enter_region<NR: Into<String>, N: FnOnce() -> NR>(&mut self, _: N) {}
    fn annotate_column<A: FnOnce() -> AR, AR: Into<String>>(&mut self, _: A, _: Column<Any>) {}
    fn exit_region(&mut self) {}
    fn enable_selector<A: FnOnce() -> AR, AR: Into<String>>(
        &mut self,
        _: A,
        _: &Selector,
        _: usize,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn query_instance(&self, _: Column<Instance>, _: usize) -> Result<Value<F>, Error> {
        Ok(Value::unknown())
    }
    fn assign_advice<'v>(&mut self, _: Column<Advice>, _: usize, _: Value<Assigned<F>>) -> Value<&'v Assigned<F>> {
        Value::unknown()
    }
    fn assign_fixed(&mut self, _: Column<Fixed>, _: usize, _: Assigned<F>) {}
    fn copy(&mut self, _: Column<Any>, _: usize, _: Column<Any>, _: usize) {}
    fn fill_from_row(&mut self, _: Column<Fixed>, _: usize, _: Value<Assigned<F>>) -> Result<(), Error> {
        Ok(())
    }
    fn get_challenge(&self, _: Challenge) -> Value<F> {
        Value::unknown()
    }
    fn push_namespace<NR: Into<String>, N: FnOnce() -> NR>(&mut self, _: N) {}
    fn pop_namespace(&mut self, _: Option<String>) {}
}

/// An assigned advice cell: its absolute position and its value.
#[derive(Clone, Debug)]
pub struct ACell {
    cell: Cell,
    value: Value<Fp>,
}

impl ACell {
    pub fn value(&self) -> Value<&Fp> {
        self.value.as_ref()
    }

    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// Copies the value into `column` at `offset` of `region`, constrained equal.
    pub fn copy_advice<A>(
        &self,
        _: A,
        region: &mut Region<'_, Fp>,
        column: Column<Advice>,
        offset: usize,
    ) -> Result<ACell, Error> {
        let c = region.advice(|| "", column, offset, || self.value)?;
        region.constrain_equal(c.cell, self.cell);
        Ok(c)
    }
}

/// zcash-style assignment calls (see the module docs).
pub trait RegionExt {
    fn advice<A>(
        &mut self,
        annotation: A,
        column: Column<Advice>,
        offset: usize,
        to: impl FnOnce() -> Value<Fp>,
    ) -> Result<ACell, Error>;
    fn fixed<A>(
        &mut self,
        annotation: A,
        column: Column<Fixed>,
        offset: usize,
        to: impl FnOnce() -> Value<Fp>,
    ) -> Result<(), Error>;
    fn advice_from_constant<A>(
        &mut self,
        annotation: A,
        column: Column<Advice>,
        offset: usize,
        constant: Fp,
    ) -> Result<ACell, Error>;
    fn advice_from_instance<A>(
        &mut self,
        annotation: A,
        instance: Column<Instance>,
        row: usize,
        column: Column<Advice>,
        offset: usize,
    ) -> Result<ACell, Error>;
    fn equal(&mut self, left: Cell, right: Cell) -> Result<(), Error>;
}

impl RegionExt for Region<'_, Fp> {
    fn advice<A>(
        &mut self,
        _: A,
        column: Column<Advice>,
        offset: usize,
        to: impl FnOnce() -> Value<Fp>,
    ) -> Result<ACell, Error> {
        let value = to();
        let cell = self.assign_advice(column, offset, value).cell();
        Ok(ACell { cell, value })
    }

    fn fixed<A>(
        &mut self,
        _: A,
        column: Column<Fixed>,
        offset: usize,
        to: impl FnOnce() -> Value<Fp>,
    ) -> Result<(), Error> {
        // Fixed values are known by construction; an unknown one is a bug.
        let mut v = None;
        to().map(|x| v = Some(x));
        let v = v.ok_or(Error::Synthesis)?;
        self.assign_fixed(column, offset, v);
        Ok(())
    }

    fn advice_from_constant<A>(
        &mut self,
        _: A,
        column: Column<Advice>,
        offset: usize,
        constant: Fp,
    ) -> Result<ACell, Error> {
        let c = self.assign_advice_from_constant(|| "", column, offset, constant)?;
        Ok(ACell {
            cell: c.cell(),
            value: Value::known(constant),
        })
    }

    fn advice_from_instance<A>(
        &mut self,
        _: A,
        instance: Column<Instance>,
        row: usize,
        column: Column<Advice>,
        offset: usize,
    ) -> Result<ACell, Error> {
        let c = self.assign_advice_from_instance(|| "", instance, row, column, offset)?;
        Ok(ACell {
            cell: c.cell(),
            value: c.value().copied(),
        })
    }

    fn equal(&mut self, left: Cell, right: Cell) -> Result<(), Error> {
        self.constrain_equal(left, right);
        Ok(())
    }
}
