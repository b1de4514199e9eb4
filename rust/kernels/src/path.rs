//! Which instruction-set path runs the integer GEMM: chosen at run time from what the
//! CPU offers, or forced by name (tests force each one in turn).
//!
//! Every path computes the same exact integers; they differ in speed only. None of
//! them can saturate: AVX2 without VNNI uses `vpmaddwd` on 16-bit values (never
//! `vpmaddubsw`, whose 16-bit pair sums saturate), and NEON without the dot product
//! widens each single product to 16 bits (`smull`) before adding pairs into 32 (`sadalp`).

/// A kernel path. `Scalar` runs everywhere and is the reference the others are tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Scalar,
    /// x86_64 AVX2: bytes widened to 16 bits, `vpmaddwd` (8 MACs per instruction per 128 bits).
    Avx2,
    /// x86_64 AVX-512 VNNI: `vpdpbusd` on zmm (64 u8×s8 MACs per instruction); the store
    /// and the int64 products use AVX-512 F/BW/DQ/VL, which every VNNI CPU has.
    Avx512Vnni,
    /// aarch64 NEON (every aarch64 CPU; Raspberry Pi 4): `smull` + `sadalp` (see `neon`).
    Neon,
    /// aarch64 NEON with the dot product (FEAT_DotProd; Raspberry Pi 5): `sdot` by lane.
    Dotprod,
}

impl Path {
    /// Slowest first within each architecture.
    pub const ALL: [Path; 5] = [Path::Scalar, Path::Avx2, Path::Avx512Vnni, Path::Neon, Path::Dotprod];

    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512Vnni => "avx512-vnni",
            Path::Neon => "neon",
            Path::Dotprod => "dotprod",
        }
    }

    pub fn parse(name: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Path::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Path::Dotprod => std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod"),
            _ => false,
        }
    }

    /// The paths this CPU runs, slowest first.
    pub fn available() -> Vec<Path> {
        Path::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The fastest path this CPU runs.
    pub fn best() -> Path {
        *Path::available().last().expect("the scalar path is always available")
    }
}

/// Runs `body` inlined into a function compiled for `path`'s instruction set, so the
/// compiler vectorises plain loops (im2col, the requantising store, int64 products) with
/// the same instructions the path's GEMM uses. The code is the same on every path.
/// Callers mark the closure `#[inline(always)]`: with three call sites here it would
/// otherwise stay a function of its own, compiled for the baseline instruction set.
#[inline(always)]
pub fn vectorized<R>(path: Path, body: impl FnOnce() -> R) -> R {
    assert!(path.supported(), "kernel path {} is not supported by this CPU", path.name());
    match path {
        // SAFETY (both): `path.supported()` checked every feature these functions enable.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => unsafe { x86::avx512(body) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { x86::avx2(body) },
        _ => body(),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
        body()
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
        body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scalar_is_always_there() {
        for p in Path::ALL {
            assert_eq!(Path::parse(p.name()), Some(p));
        }
        assert_eq!(Path::parse("sve"), None);
        assert_eq!(Path::available()[0], Path::Scalar);
        assert!(Path::best().supported());
        #[cfg(target_arch = "aarch64")] // NEON is part of every aarch64 Linux CPU
        assert!(Path::Neon.supported() && Path::available().contains(&Path::Neon));
    }
}
