//! What MockProver reports for a wrong witness, in a form tests can compare.
//!
//! A negative test must fail for the reason it claims: a wrong witness is
//! rejected by the gate, lookup or copy constraint that exists to reject it,
//! at the region and offset where the wrong value sits. So tests compare the
//! whole list of [`VerifyFailure`]s with the expected one (as halo2_gadgets'
//! tests do) instead of asserting only that verification failed — a witness
//! rejected for another reason, or for more reasons, fails the test.
//!
//! halo2-axiom's MockProver locates a failure in a region only through the
//! fixed cells the region assigns (its advice assignments do not extend a
//! region), so it reports some failures outside any region and offsets from a
//! region's first fixed cell. [`failures`] therefore records the circuit's
//! layout ([`LayoutPass`]) and [`assert_failures`] compares every location as
//! an absolute row: an expected `at(region, offset)` is the region's first row
//! plus the offset, a reported one is converted with the same layout.

use halo2_axiom::{
    dev::{metadata, FailureLocation, MockProver, VerifyFailure},
    plonk::{Any, Circuit, ConstraintSystem, FloorPlanner},
};

use crate::proof::LayoutPass;
use crate::Fp;

/// A [`VerifyFailure`] without the cell values of a failed constraint (they
/// restate the witness), comparable with `==`.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    Constraint {
        constraint: metadata::Constraint,
        location: FailureLocation,
    },
    Lookup {
        lookup_index: usize,
        location: FailureLocation,
    },
    Permutation {
        column: metadata::Column,
        location: FailureLocation,
    },
    /// Unassigned cells or poisoned constraints: a broken test circuit, never expected.
    Other(VerifyFailure),
    /// Appended by [`failures`]: the region starts of its circuit (any cell, fixed
    /// cell), which [`assert_failures`] takes to compare rows. Not a failure.
    Layout(Vec<(Option<usize>, Option<usize>)>),
}

impl Failure {
    fn location_mut(&mut self) -> Option<&mut FailureLocation> {
        match self {
            Failure::Constraint { location, .. }
            | Failure::Lookup { location, .. }
            | Failure::Permutation { location, .. } => Some(location),
            _ => None,
        }
    }

    /// The location as `OutsideRegion { row }` (absolute): regions start at
    /// `starts[index]`.
    fn absolute(mut self, starts: impl Fn(usize) -> usize) -> Self {
        if let Some(loc) = self.location_mut() {
            if let FailureLocation::InRegion { region, offset } = loc {
                let index = format!("{region:?}");
                // metadata::Region prints as "Region <index> ('<name>')".
                let index: usize = index
                    .split_whitespace()
                    .nth(1)
                    .and_then(|i| i.parse().ok())
                    .expect("a region index");
                *loc = FailureLocation::OutsideRegion {
                    row: starts(index) + *offset,
                };
            }
        }
        self
    }
}

impl From<VerifyFailure> for Failure {
    fn from(f: VerifyFailure) -> Self {
        match f {
            VerifyFailure::ConstraintNotSatisfied {
                constraint, location, ..
            } => Failure::Constraint { constraint, location },
            VerifyFailure::Lookup {
                lookup_index, location, ..
            } => Failure::Lookup { lookup_index, location },
            VerifyFailure::Permutation { column, location } => Failure::Permutation { column, location },
            other => Failure::Other(other),
        }
    }
}

/// Constraint `(index, name)` of gate `(index, name)`, not satisfied at `location`.
pub fn constraint(
    gate: (usize, &'static str),
    constraint: (usize, &'static str),
    location: FailureLocation,
) -> Failure {
    Failure::Constraint {
        constraint: (gate.into(), constraint.0, constraint.1).into(),
        location,
    }
}

/// Lookup `lookup_index` (in configure order) whose input is not in its table at `location`.
pub fn lookup(lookup_index: usize, location: FailureLocation) -> Failure {
    Failure::Lookup { lookup_index, location }
}

/// A copy constraint broken at a cell of `column` at `location`. MockProver
/// reports each cell of a copy cycle whose successor holds another value, so
/// one broken equality between two cells shows up twice.
pub fn permutation(column: (Any, usize), location: FailureLocation) -> Failure {
    Failure::Permutation {
        column: column.into(),
        location,
    }
}

/// `offset` rows into region `(index, name)`; region indices count
/// `assign_region` calls in synthesis order (see [`region_names`]).
pub fn at(region: (usize, &str), offset: usize) -> FailureLocation {
    FailureLocation::InRegion {
        region: region.into(),
        offset,
    }
}

/// The failures MockProver reports, in its order (gates by index then row,
/// lookups, copies); panics if the circuit is satisfied or cannot be laid out.
pub fn failures<C: Circuit<Fp>>(k: u32, circuit: &C, instance: Vec<Vec<Fp>>) -> Vec<Failure> {
    let prover = MockProver::run(k, circuit, instance).expect("the circuit lays out");
    let starts = layout(circuit).region_starts;
    let mut out: Vec<Failure> = match prover.verify() {
        Ok(()) => panic!("MockProver accepted a witness that should be rejected"),
        Err(fs) => fs.into_iter().map(Failure::from).collect(),
    };
    out.push(Failure::Layout(starts));
    out
}

/// Asserts that `actual` holds exactly the `expected` failures, in any order
/// (the order is MockProver's iteration, not part of what a test claims).
#[track_caller]
pub fn assert_failures(mut actual: Vec<Failure>, expected: Vec<Failure>) {
    let starts = match actual.pop() {
        Some(Failure::Layout(s)) => s,
        _ => panic!("assert_failures takes what `failures` returns"),
    };
    let start = |fixed: bool| {
        let starts = &starts;
        move |i: usize| {
            let (any, fx) = starts[i];
            if fixed { fx } else { any }.expect("a region that assigns cells")
        }
    };
    let actual: Vec<Failure> = actual.into_iter().map(|f| f.absolute(start(true))).collect();
    let expected: Vec<Failure> = expected.into_iter().map(|f| f.absolute(start(false))).collect();
    let mut unexpected: Vec<&Failure> = actual.iter().collect();
    let mut missing = vec![];
    for e in &expected {
        match unexpected.iter().position(|a| *a == e) {
            Some(i) => {
                unexpected.remove(i);
            }
            None => missing.push(e),
        }
    }
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "MockProver's failures differ from the expected ones\nmissing: {missing:#?}\nunexpected: {unexpected:#?}"
    );
}

/// The names of the regions (and tables) `circuit` assigns, indexed as
/// MockProver indexes them: the floor planner enters each once, in synthesis order.
pub fn region_names<C: Circuit<Fp>>(circuit: &C) -> Vec<String> {
    layout(circuit).regions.unwrap_or_default()
}

fn layout<C: Circuit<Fp>>(circuit: &C) -> LayoutPass {
    let mut cs = ConstraintSystem::default();
    let config = C::configure(&mut cs);
    // Constants land outside regions, so any fixed column serves to list names.
    let constants = vec![cs.fixed_column()];
    let mut layout = LayoutPass {
        regions: Some(vec![]),
        ..Default::default()
    };
    C::FloorPlanner::synthesize(&mut layout, circuit, config, constants).expect("the circuit lays out");
    layout
}

/// Index of the `nth` (from 0) region named `name`, with its name, as [`at`] takes it.
pub fn nth_region<'a>(names: &[String], name: &'a str, nth: usize) -> (usize, &'a str) {
    let index = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.as_str() == name)
        .nth(nth)
        .unwrap_or_else(|| panic!("no region {nth} named {name:?}"))
        .0;
    (index, name)
}
