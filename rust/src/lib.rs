//! Halo2 (`halo2-axiom`, KZG over BN254) proof that a committed model was
//! transformed by the ZK-APEX unlearning step of DESIGN.md §6.
//!
//! Chips, one constraint family each: [`range`], [`fixed_point`], [`solve`],
//! [`update`], [`commit`]. They compose into [`circuit::UnlearnCircuit`];
//! [`witness`] computes an honest witness from plain integers and [`proof`]
//! runs keygen / prove / verify and the versioned byte formats.

pub mod circuit;
pub mod commit;
pub mod field;
pub mod fixed_point;
pub mod h2;
#[cfg(test)]
mod mock;
pub mod poseidon;
pub mod proof;
pub mod range;
pub mod solve;
pub mod update;
pub mod witness;

#[cfg(feature = "python")]
mod python;

/// The circuit field: the scalar field of BN254, whose G1 carries the KZG
/// commitments (see README: Trust).
pub type Fp = halo2_axiom::halo2curves::bn256::Fr;

/// The curve of the KZG commitments (G1 of BN254).
pub type Curve = halo2_axiom::halo2curves::bn256::G1Affine;

/// Errors crossing the public API. Every message names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZkError {
    /// Bytes that are not a proof / key / public-input encoding of this version.
    Format(String),
    /// Arguments that violate a documented precondition.
    Invalid(String),
    /// halo2 refused to synthesise or prove.
    Backend(String),
}

impl std::fmt::Display for ZkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZkError::Format(m) => write!(f, "format error: {m}"),
            ZkError::Invalid(m) => write!(f, "invalid argument: {m}"),
            ZkError::Backend(m) => write!(f, "prover error: {m}"),
        }
    }
}

impl std::error::Error for ZkError {}
