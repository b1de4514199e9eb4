"""Integer cross-entropy for int8 logits (NITI-style, base 2).

Logits ``s·(q − zp)`` are moved to base 2 as Q16 fixed point (multiplied by
``s·log2 e``, a constant fixed at construction); ``2^(−d)`` comes from a
256-entry Q15 table on the fraction and a shift by the integer part;
``log2`` from the leading-bit position and a 256-entry table. The loss of a
sample is ``log2(Σ_j 2^(t_j − t_y))`` in Q16 "bits"; the error signal
``p − onehot`` is returned in Q7 so it fits int8.

Accuracy, per sample of n logits, against exact arithmetic on ``x = s·(q − zp)``
(``CE = logsumexp(x) − x_y`` in nats, ``p = softmax(x)``); ``r = 2^(1/256) − 1``:

* loss, in bits (× ln 2 for nats; −0.00553 ≤ · ≤ +0.00393 nats at n = 10)::

      −255/2^17 + log2(1 − (n−1)/2^15) − log2(257/256) − 2^−17
          ≤ loss/2^16 − CE/ln 2 ≤
      255/2^17 + log2(1 + r·(1 − 1/n) + (n−1)/2^16) + 2^−17

  term by term: the constant ``c = round(c*)``, ``c* = s·log2 e·2^16``, scales
  the logits by ``c/c*``, which moves the loss by at most
  ``|c − c*|·(q_max − q_min)/2^16 ≤ 255/2^17`` (its derivative along the
  scaling is bounded by the widest logit gap). The maximum's term is exactly
  2^15; any other ``e_j`` lies in ``[a_j − 1, a_j·2^(1/256) + 1/2]`` of
  ``a_j = 2^15·2^(−d_j)`` (fraction cut to 8 bits: ×[1, 2^(1/256)); table
  rounding ±1/2; the shift floors), so ``log2(total/Σa)`` lies in
  ``[log2(1 − (n−1)/2^15), log2(1 + r·(1 − 1/n) + (n−1)/2^16)]`` as
  ``Σa ≥ 2^15``. The log table reads the 8 bits after the leading one,
  which underestimates by less than ``log2(257/256)``, its entries rounded
  by ±2^−17. Both ends are nearly reached (tests/test_int_loss.py).
* error, in Q7 units, where no clipping acts::

      |err − 128·(p − onehot)| ≤ 1/2 + 128·(r/2·2^15/(2^15 − n + 1) + (n−1)/2^15 + 255·ln 2/2^19)

  (0.752 at n = 10): the rounded division, the exponentials' errors above
  relative to the total, and the constant (``p_j`` moves by at most a quarter
  of the spread ``|c − c*|·(q_max − q_min)·ln 2/2^16``). Clipping to
  ±127 (a label with ``p_y`` rounded to 0, or another logit with ``p_j``
  rounded to 1) moves an entry by one more unit toward 0: there the error
  is at most ``max(1, B − 1)`` units for the bound B above.
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
