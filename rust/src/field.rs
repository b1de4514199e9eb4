//! Conversions between signed integers and the circuit field.

use ff::{Field, PrimeField};

use crate::Fp;

/// Maps a signed integer into the field (negative values wrap to p − |x|).
pub fn fp_from_i128(x: i128) -> Fp {
    let mag = Fp::from_u128(x.unsigned_abs());
    if x < 0 {
        -mag
    } else {
        mag
    }
}

/// 2^bits as a field element (bits < 255).
pub fn pow2(bits: usize) -> Fp {
    Fp::from(2u64).pow_vartime([bits as u64])
}

/// The low 128 bits of the canonical representative.
pub fn low_u128(x: &Fp) -> u128 {
    let repr = x.to_repr();
    let mut b = [0u8; 16];
    b.copy_from_slice(&repr.as_ref()[..16]);
    u128::from_le_bytes(b)
}

/// Canonical 32-byte little-endian encoding.
pub fn to_bytes(x: &Fp) -> [u8; 32] {
    x.to_repr()
}

/// Decodes 32 little-endian bytes; None if not a canonical field element.
pub fn from_bytes(b: &[u8; 32]) -> Option<Fp> {
    Option::from(Fp::from_repr(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_integers_are_additive_inverses() {
        assert_eq!(fp_from_i128(-5) + fp_from_i128(5), Fp::ZERO);
        assert_eq!(low_u128(&fp_from_i128(1 << 70)), 1u128 << 70);
        assert_eq!(pow2(10), Fp::from(1024u64));
    }
}
