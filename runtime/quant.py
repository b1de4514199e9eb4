"""Integer quantisation arithmetic: the one place that owns rounding.

Follows the TFLite/gemmlowp int8 scheme: a real multiplier ``M`` is turned once,
at load time, into a Q31 mantissa and a power-of-two exponent
(``M ≈ multiplier_q31 · 2^(shift − 31)``); at run time it is applied with one
64-bit integer product and one rounding right shift. Every kernel calls these
helpers and never re-derives them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return ``(multiplier_q31, shift)`` with ``real ≈ multiplier_q31 · 2^(shift − 31)``.

    ``multiplier_q31`` lies in ``[2^30, 2^31)`` (or is 0 for ``real == 0``);
    the mantissa is rounded half away from zero, as TFLite's
    ``QuantizeMultiplier``. ``real`` must be finite, ≥ 0 and < 2^31.
    """
    if not math.isfinite(real) or not 0 <= real < 2.0 ** 31:
        raise ValueError(f"multiplier must be finite and in [0, 2^31), got {real!r}")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)  # real = q * 2^shift, q in [0.5, 1)
    q_fixed = int(math.floor(q * (1 << 31) + 0.5))  # q > 0: half away from zero
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:  # too small to represent: flushes to zero
        return 0, 0
    return q_fixed, shift


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: int64 mantissas and shifts."""
    pairs = [quantize_multiplier(float(r)) for r in np.ravel(reals)]
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(np.shape(reals))
    shift = np.array([p[1] for p in pairs], dtype=np.int64).reshape(np.shape(reals))
    return mult, shift


def quantize_multipliers_shared(reals: list[float]) -> tuple[list[int], int]:
    """Mantissas for several multipliers over one shared exponent: ``real_i ≈ m_i · 2^(shift − 31)``.

    The largest gets a full Q31 mantissa; a weighted sum ``Σ m_i·x_i`` can then
    be rescaled with a single rounding (see :func:`rounding_shift_right`).
    """
    _, shift = quantize_multiplier(max(reals))
    mults = [int(math.floor(r * 2.0 ** (31 - shift) + 0.5)) for r in reals]
    return mults, shift


def fixed_point_ratios(reals, bits: int) -> np.ndarray:
    """Positive reals as Q``bits`` int64, rounded half away from zero (as
    :func:`quantize_multiplier` rounds its mantissa); computed once, at load, from the
    model's scales."""
    return np.array([math.floor(float(r) * 2.0 ** bits + 0.5) for r in np.ravel(reals)], dtype=np.int64)


def rounding_shift_right(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``x / 2^bits`` rounded to nearest, ties away from zero (int64 in, int64 out).

    Computed as ``(x + 2^(bits−1) − [x < 0]) >> bits`` (an arithmetic, flooring
    shift), which equals ``−((−x + 2^(bits−1)) >> bits)`` for negative ``x``.
    """
    out = np.array(x, dtype=np.int64)  # a fresh array, updated in place below
    return _round_shift_inplace(out, np.asarray(bits, dtype=np.int64))


def _round_shift_inplace(v: np.ndarray, bits: np.ndarray) -> np.ndarray:
    negative = v < 0
    v += (np.int64(1) << bits) >> 1  # half; 0 when bits == 0
    v -= negative
    v >>= bits
    return v


def divide_round_half_even(num: np.ndarray, den: np.ndarray, add: int = 0) -> np.ndarray:
    """``num / den + add`` rounded to nearest, ties to even (int64 in and out, ``den > 0``,
    ``add`` an integer: it moves which results are even, so ties can go either way).

    The rounding of ``rint`` applied to the exact quotient: floor division, then up
    when the remainder is over half, or exactly half with an odd result. ``2·den``
    must fit int64.
    """
    q, r = np.divmod(np.asarray(num, dtype=np.int64), np.asarray(den, dtype=np.int64))
    q += add
    twice = 2 * r
    q += (twice > den) | ((twice == den) & (q % 2 == 1))
    return q


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier_q31: np.ndarray,
                                     shift: np.ndarray) -> np.ndarray:
    """``round(x · multiplier_q31 · 2^(shift − 31))`` for int32 ``x``, in int64 arithmetic.

    One 64-bit product (|x|, m < 2^31, so it cannot overflow) and one rounding
    shift. TFLite's gemmlowp form rounds twice (after a high multiply, then
    after the shift); rounding once is simpler and exact to the Q31 multiplier,
    which keeps us within 1 LSB of onnxruntime's float32 requantisation on
    far fewer values.
    """
    prod = np.multiply(x, multiplier_q31, dtype=np.int64)
    return _round_shift_inplace(prod, 31 - np.asarray(shift, dtype=np.int64))


# requantize works in slabs of about this many values (its int64 temporaries stay small)
REQUANT_SLAB = 1 << 13


def requantize(acc: np.ndarray, multiplier_q31: np.ndarray, shift: np.ndarray,
               out: "QParams", block: int = REQUANT_SLAB) -> np.ndarray:
    """int32 accumulator → 8-bit output: scale by ``M``, add the zero-point, clamp.

    Works through ``acc`` in slabs along its first axis of about ``block``
    values, so the 64-bit temporaries stay small whatever the tensor size.
    ``multiplier_q31``/``shift`` broadcast against ``acc``; when their first
    axis matches ``acc``'s (per-channel, channels first), they are sliced too.
    """
    y = np.empty(acc.shape, dtype=out.dtype)
    if acc.ndim == 0 or acc.size == 0:
        y[...] = _requantize_block(acc, multiplier_q31, shift, out)
        return y
    mult, shift = np.asarray(multiplier_q31), np.asarray(shift)
    per_row = mult.ndim == acc.ndim and mult.shape[0] == acc.shape[0] > 1
    rows = max(1, block // max(1, acc[0].size))
    for r in range(0, acc.shape[0], rows):
        part = slice(r, r + rows)
        y[part] = _requantize_block(acc[part], mult[part] if per_row else mult,
                                    shift[part] if per_row else shift, out)
    return y


def requantize_workspace(n_out: int) -> int:
    """Bytes :func:`requantize` allocates for ``n_out`` values: the 8-bit result plus one
    slab's int64 product, its sign mask and the ufunc's int64 cast buffer for that mask."""
    return n_out + 17 * min(n_out, REQUANT_SLAB)


def _requantize_block(acc, mult, shift, out):
    scaled = multiply_by_quantized_multiplier(acc, mult, shift)  # a fresh int64 array
    scaled += out.zp
    return np.clip(scaled, out.qmin, out.qmax, out=scaled)


def saturate(x: np.ndarray, out: "QParams") -> np.ndarray:
    """Clamp integers to the output's range and store them in its dtype."""
    return np.clip(x, out.qmin, out.qmax).astype(out.dtype)


def quantize_float(x: np.ndarray, out: "QParams", axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear: ``clip(rint(x / scale) + zp)``, divide in float32, ties to even.

    This runs where float data enters an integer graph (the input); it
    matches onnxruntime bit for bit.
    """
    scale, zp = _per_axis(out.scale, x.ndim, axis), _per_axis(out.zero_point, x.ndim, axis)
    q = np.asarray(x, dtype=np.float32) / scale  # one float32 temporary, updated in place
    np.rint(q, out=q)
    q += zp.astype(np.float32)
    return np.clip(q, out.qmin, out.qmax, out=q).astype(out.dtype)


def dequantize(q: np.ndarray, qp: "QParams", axis: int = 1) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q − zp) · scale`` in float32 (where results leave the graph)."""
    scale, zp = _per_axis(qp.scale, q.ndim, axis), _per_axis(qp.zero_point, q.ndim, axis)
    return (q.astype(np.int64) - zp).astype(np.float32) * scale


def _per_axis(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Shape a per-channel vector to broadcast along ``axis`` (scalars pass through)."""
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def int_matmul(a: np.ndarray, b: np.ndarray, float_gemm: bool = True) -> np.ndarray:
    """Exact ``a @ b`` as int32 for operands that are int8 values or int8 minus
    an 8-bit zero-point (so ``|a_ik|, |b_kj| ≤ 256``) and an inner dimension
    below 2^15 (so no sum of products reaches 2^31).

    numpy's integer matmul does not use BLAS, so by default the product runs
    through float32 BLAS over inner-dimension chunks of at most
    ``FLOAT32_EXACT_K`` terms: every partial sum then stays below 2^24 and is
    exact in float32, whatever order BLAS adds in. ``float_gemm=False`` runs
    numpy's integer matmul; a test shows both give identical bits.
    """
    k = a.shape[-1]
    if k >= 1 << 15:
        raise ValueError(f"int_matmul: inner dimension {k} ≥ 2^15 could overflow int32 sums")
    if not float_gemm:
        return np.matmul(a.astype(np.int32, copy=False), b.astype(np.int32, copy=False))
    af = a.astype(np.float32, copy=False)
    bf = b.astype(np.float32, copy=False)
    out = np.matmul(af[..., :FLOAT32_EXACT_K], bf[..., :FLOAT32_EXACT_K, :]).astype(np.int32)
    for start in range(FLOAT32_EXACT_K, k, FLOAT32_EXACT_K):
        out += np.matmul(af[..., start:start + FLOAT32_EXACT_K],
                         bf[..., start:start + FLOAT32_EXACT_K, :]).astype(np.int32)
    return out


# 2^24 / 2^16: the most terms of magnitude ≤ 256·256 a float32 sum holds exactly.
FLOAT32_EXACT_K = 256


@dataclass(frozen=True)
class QParams:
    """Quantisation parameters of one tensor: ``real = scale · (q − zero_point)``.

    ``scale`` and ``zero_point`` are scalars or per-channel vectors; the integer
    range comes from the zero-point's dtype (int8 or uint8), as in ONNX.
    """
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    dtype: np.dtype

    @classmethod
    def from_consts(cls, scale: np.ndarray, zero_point: np.ndarray | None,
                    where: str) -> "QParams":
        scale = np.asarray(scale, dtype=np.float32)
        scale = scale.reshape(()) if scale.size == 1 else scale  # a 1-element vector is per-tensor
        if scale.size == 0 or (zero_point is not None and np.size(zero_point) == 0):
            raise ValueError(f"{where}: empty scale or zero-point")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"{where}: scales must be finite and > 0, got {scale.ravel()[:8]}")
        if zero_point is None:  # ONNX default: uint8 zero-point 0
            zero_point = np.zeros((), dtype=np.uint8)
        zero_point = np.asarray(zero_point)
        zero_point = zero_point.reshape(()) if zero_point.size == 1 else zero_point
        if zero_point.dtype not in (np.int8, np.uint8, np.int16, np.int32):
            raise ValueError(f"{where}: zero-point dtype must be int8, uint8, int16 or int32, "
                             f"got {zero_point.dtype}")
        info = np.iinfo(zero_point.dtype)
        return cls(scale, zero_point.astype(np.int64), int(info.min), int(info.max),
                   zero_point.dtype)

    @property
    def zp(self) -> int:
        """The zero-point as a Python int (per-tensor parameters only)."""
        return int(self.zero_point.reshape(-1)[0])


def div_round_half_up(n: np.ndarray, d: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``n / d`` for integer ``n`` and positive integer ``d``, to nearest with ties toward +∞:
    ``⌊(n + ⌊d/2⌋) / d⌋`` (for odd ``d`` there are no ties). Needs ``|n| + d/2`` inside the
    dtype; ``out=n`` works in place."""
    out = np.add(n, np.asarray(d) >> 1, out=out)
    return np.floor_divide(out, d, out=out)


def shift_to_bits(x: np.ndarray, bits: int, noise=None) -> tuple[np.ndarray, int]:
    """Shift int64 ``x`` right by the fewest bits ``k`` that bring every ``|value|`` below
    ``2^bits`` before rounding (so to at most ``2^bits`` after it); returns ``(shifted, k)``.
    Rounds to nearest, ties away from zero
    (:func:`rounding_shift_right`), or stochastically when ``noise(k, shape)`` gives the
    uniform ``[0, 2^k)`` integers (:func:`stochastic_shift_right`)."""
    k = max(0, bit_length(x) - bits)
    if noise is None:
        return rounding_shift_right(x, k), k
    return stochastic_shift_right(x, k, noise(k, np.shape(x))), k


def stochastic_shift_right(x: np.ndarray, bits: int, noise: np.ndarray) -> np.ndarray:
    """``x / 2^bits`` with stochastic rounding: ``(x + r) >> bits`` for ``r`` uniform in
    ``[0, 2^bits)`` (``noise``, from :mod:`edgetrain.prng`). Unbiased: E[result] = x / 2^bits."""
    if bits <= 0:
        return np.asarray(x, dtype=np.int64) << -bits
    return (np.asarray(x, dtype=np.int64) + noise) >> bits


def bit_length(x: np.ndarray) -> int:
    """Bits needed for ``max |x|`` (0 for all zeros or empty); integers only, no copy."""
    if np.size(x) == 0:
        return 0
    return max(int(np.max(x)), -int(np.min(x))).bit_length()


def leading_bit(v: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of each positive int64 (binary search, integers only)."""
    v = np.asarray(v, dtype=np.int64)
    pos = np.zeros(v.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        higher = (v >> (pos + step)) > 0
        pos += higher * step
    return pos
