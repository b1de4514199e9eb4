"""Integer cross-entropy for int8 logits (NITI-style, base 2).

Logits ``s·(q − zp)`` are moved to base 2 as Q16 fixed point (multiplied by
``s·log2 e``, a constant fixed at construction); ``2^(−d)`` comes from a
256-entry Q15 table on the fraction and a shift by the integer part;
``log2`` from the leading-bit position and a 256-entry table. The loss of a
sample is ``log2(Σ_j 2^(t_j − t_y))`` in Q16 "bits"; the error signal
``p − onehot`` is returned in Q7 so it fits int8.
"""
from __future__ import annotations

import math

import numpy as np

from . import quant

FRAC_BITS = 16   # loss and base-2 logits are Q16
EXP_BITS = 15    # 2^(−d) table entries are Q15
ERR_BITS = 7     # error p − onehot is Q7 (|err| ≤ 127)

# Built once, at import: 2^(−k/256) in Q15 and log2(1 + k/256) in Q16.
_EXP2_Q15 = np.array([round(2 ** (-k / 256) * (1 << EXP_BITS)) for k in range(256)], dtype=np.int64)
_LOG2_Q16 = np.array([round(math.log2(1 + k / 256) * (1 << FRAC_BITS)) for k in range(256)], dtype=np.int64)


def log2_q16(v: np.ndarray) -> np.ndarray:
    """``log2(v)`` in Q16 for positive int64 ``v`` (table on the 8 bits after the leading one)."""
    msb = quant.leading_bit(v)
    # normalise to 9 significant bits: the leading one plus an 8-bit table index
    shift = msb - 8
    top = np.where(shift >= 0, v >> np.maximum(shift, 0), v << np.maximum(-shift, 0))
    return (msb << FRAC_BITS) + _LOG2_Q16[top & 255]


class IntCrossEntropy:
    """Cross-entropy of int8 logits with scale ``scale`` and zero-point ``zero_point``."""

    def __init__(self, scale: float, zero_point: int):
        self.zero_point = int(zero_point)
        self.to_base2_q16 = round(float(scale) * math.log2(math.e) * (1 << FRAC_BITS))
        if self.to_base2_q16 < 1:
            raise ValueError(f"logit scale {scale!r} too small for Q16 base-2 logits")

    def __call__(self, logits_q: np.ndarray, y: np.ndarray):
        """Returns ``(loss_sum_q16, error_q7, correct)``: the batch's summed loss
        (int, Q16 bits), ``p − onehot`` per logit (int64 in [−127, 127]) and the
        number of samples whose arg-max is the label."""
        t = (logits_q.astype(np.int64) - self.zero_point) * self.to_base2_q16
        d = t.max(axis=1, keepdims=True) - t                      # ≥ 0, Q16
        whole, frac = d >> FRAC_BITS, (d >> (FRAC_BITS - 8)) & 255
        e = _EXP2_Q15[frac] >> np.minimum(whole, 62)              # 2^(−d), Q15
        total = e.sum(axis=1)                                     # ≥ 2^15 (the max term)
        rows = np.arange(len(y))
        loss = d[rows, y] + log2_q16(total) - (EXP_BITS << FRAC_BITS)
        p = quant.div_round_half_up(e << ERR_BITS, total[:, None])  # Q7
        err = p
        err[rows, y] -= 1 << ERR_BITS
        correct = int((d[rows, y] == 0).sum())  # the label's logit is a maximum
        return int(loss.sum()), np.clip(err, -127, 127), correct
