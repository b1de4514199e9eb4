//! Native integer kernels for edgetrain's runtime (`edgetrain_kernels` in Python).
//!
//! The numpy code in `runtime/` is the reference: every function here returns the same
//! bits, on every input, whichever [`Path`] runs it. `gemm` is the exact s8 × u8 → i32
//! product with its instruction-set paths (`neon` the aarch64 ones); `qlinear` builds the integer layers on it
//! (im2col, zero-point corrections, fused requantisation from `requant`); `pool` holds
//! the integer pools; `exact` the int64 products of the training tail; `zo` the ZO head's passes
//! with the counter PRNG.

pub mod elementwise;
pub mod exact;
pub mod gemm;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod path;
pub mod pool;
pub mod qlinear;
pub mod requant;
pub mod zo;
#[cfg(feature = "python")]
mod python;

pub use path::Path;
