"""The fixed-point helpers against hand-computed vectors and exact rational arithmetic."""
from fractions import Fraction

import numpy as np
import pytest

from edgetrain import quant


@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),              # 0.5 = 2^30 · 2^(0−31)
    (1.0, (1 << 30, 1)),
    (0.75, (3 << 29, 0)),
    (0.1, (1717986918, -3)),          # frexp: 0.8·2^−3, 0.8·2^31 = 1717986918.4
    (0.0, (0, 0)),
    (2.0 ** -40, (0, 0)),             # below 2^−32: flushes to zero
    (1 - 2.0 ** -40, (1 << 30, 1)),   # mantissa rounds up to 2^31: renormalised
])
def test_quantize_multiplier_hand_vectors(real, expected):
    assert quant.quantize_multiplier(real) == expected


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 2.0 ** 31])
def test_quantize_multiplier_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="multiplier"):
        quant.quantize_multiplier(bad)


@pytest.mark.parametrize("x, real, expected", [
    (3, 0.5, 2), (-3, 0.5, -2),       # ties round away from zero
    (5, 0.5, 3), (-5, 0.5, -3),
    (4, 0.5, 2), (7, 0.25, 2), (-7, 0.25, -2), (6, 0.25, 2),
    (5, 0.1, 0),                      # the Q31 value of 0.1 is just below it: 0.4999999999
    (1000, 0.1, 100),
    (-(1 << 31), 0.5, -(1 << 30)),    # INT32_MIN does not overflow in the 64-bit product
    ((1 << 31) - 1, 1.0, (1 << 31) - 1),
])
def test_multiply_by_quantized_multiplier_hand_vectors(x, real, expected):
    m, shift = quant.quantize_multiplier(real)
    assert int(quant.multiply_by_quantized_multiplier(np.int64(x), m, shift)) == expected


def _exact_round_half_away(num: Fraction) -> int:
    sign = -1 if num < 0 else 1
    return sign * int((abs(num) + Fraction(1, 2)) // 1)


def test_multiply_by_quantized_multiplier_matches_exact_rationals():
    rng = np.random.default_rng(0)
    reals = np.exp(rng.uniform(np.log(1e-6), np.log(4.0), 300))
    xs = rng.integers(-(1 << 31), 1 << 31, size=(300, 50), dtype=np.int64)
    for real, row in zip(reals, xs):
        m, shift = quant.quantize_multiplier(float(real))
        # the mantissa is within half a Q31 unit of the real multiplier
        assert abs(Fraction(m, 1 << 31) * Fraction(2) ** shift - Fraction(float(real))) \
            <= Fraction(2) ** (shift - 32)
        got = quant.multiply_by_quantized_multiplier(row, m, shift)
        want = [_exact_round_half_away(Fraction(int(x) * m) * Fraction(2) ** (shift - 31)) for x in row]
        assert got.tolist() == want


def test_requantize_per_channel_and_saturation():
    out = quant.QParams.from_consts(np.float32(0.5), np.int8(-128), "y")
    mult, shift = quant.quantize_multipliers(np.array([0.5, 0.25]))
    acc = np.array([[10, 10], [1000, -1000], [-300, 7]], dtype=np.int64)
    y = quant.requantize(acc, mult, shift, out)
    assert y.dtype == np.int8
    # 10·0.5 − 128, 10·0.25 → 2.5 → 3 − 128; 500 − 128 saturates at 127; −250 − 128 at −128
    assert y.tolist() == [[-123, -125], [127, -128], [-128, -126]]


def test_shared_multipliers_sum_with_one_rounding():
    (ma, mb), shift = quant.quantize_multipliers_shared([0.3, 0.0123])
    a = np.arange(-255, 256, dtype=np.int64)
    b = a[::-1].copy()
    got = quant.rounding_shift_right(ma * a + mb * b, 31 - shift)
    exact = [_exact_round_half_away(Fraction(ma * int(x) + mb * int(z), 1 << (31 - shift)))
             for x, z in zip(a, b)]
    assert got.tolist() == exact
    assert np.abs(got - (0.3 * a + 0.0123 * b)).max() <= 0.5 + 1e-6


def test_quantize_float_matches_onnx_rounding():
    qp = quant.QParams.from_consts(np.float32(0.5), np.int8(3), "x")
    x = np.array([0.25, 0.75, -0.25, 1.25, 100.0, -100.0], dtype=np.float32)
    # x/0.5 = 0.5, 1.5, −0.5, 2.5 round half to even → 0, 2, −0, 2; then + 3 and clamp
    assert quant.quantize_float(x, qp).tolist() == [3, 5, 3, 5, 127, -128]


@pytest.mark.parametrize("k", [7, 256, 257, 1000])
def test_int_matmul_float_path_is_bit_exact(k):
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, (33, k)) - rng.integers(-128, 128)  # int8 minus a zero-point
    b = rng.integers(-128, 128, (k, 17))
    a[0] = 255  # the extreme products
    b[:, 0] = -128
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(quant.int_matmul(a.astype(np.int16), b.astype(np.int16)), exact)
    assert np.array_equal(quant.int_matmul(a.astype(np.int16), b.astype(np.int16), float_gemm=False), exact)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_qparams_reject_bad_scales(scale):
    with pytest.raises(ValueError, match="scales must be finite and > 0"):
        quant.QParams.from_consts(np.float32(scale), np.int8(0), "node 'c1' x")
