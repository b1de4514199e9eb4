"""IntCrossEntropy against torch's float64 cross-entropy and softmax, within the
per-sample bounds that ``edgetrain.int_loss``'s docstring derives."""
import math

import numpy as np
import pytest
import torch

from edgetrain import int_loss
from edgetrain.int_loss import IntCrossEntropy

LN2 = math.log(2)
LOG2E = math.log2(math.e)
R = 2 ** (1 / 256) - 1      # an exponential whose fraction is cut to 8 bits is ×[1, 2^(1/256))
FLOAT_SLACK = 1e-9          # float64 log-softmax of |x| ≤ 510 is good to ~1e-13


def loss_bounds(n):
    """(lower, upper) of ``loss·ln2/2^16 − CE`` in nats for n logits, as int_loss derives them."""
    constant = 255 / 2 ** 17
    upper = constant + math.log2(1 + R * (1 - 1 / n) + (n - 1) / 2 ** 16) + 2 ** -17
    lower = -constant + math.log2(1 - (n - 1) / 2 ** 15) - math.log2(257 / 256) - 2 ** -17
    return lower * LN2 - FLOAT_SLACK, upper * LN2 + FLOAT_SLACK


def error_bound(n):
    """Bound on ``|err − 128·(p − onehot)|`` in Q7 units where no clipping acts."""
    relative = R / 2 * 2 ** 15 / (2 ** 15 - n + 1) + (n - 1) / 2 ** 15 + 255 * LN2 / 2 ** 19
    return 0.5 + 128 * relative + FLOAT_SLACK


def scale_for(c_star):
    """The logit scale whose exact base-2 Q16 constant is ``c_star``."""
    return c_star / (LOG2E * 2 ** 16)


def real_logits(q, zero_point, scale):
    return scale * (np.asarray(q, dtype=np.float64) - zero_point)


def reference(x, y):
    """torch float64: per-sample cross-entropy (nats) and softmax of the real logits ``x``."""
    x, target = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    return torch.nn.functional.cross_entropy(x, target, reduction="none").numpy(), torch.softmax(x, dim=1).numpy()


def per_sample_loss(fn, q, y):
    """The integer loss of each sample (one call per sample: the batch's comes summed)."""
    return np.array([fn(q[i:i + 1], y[i:i + 1])[0] for i in range(len(y))], dtype=np.float64)


def loss_errors(q, zero_point, scale, y):
    """``loss·ln2/2^16 − CE`` per sample."""
    loss = per_sample_loss(IntCrossEntropy(scale, zero_point), q, y)
    return loss * LN2 / 2 ** 16 - reference(real_logits(q, zero_point, scale), y)[0]


def random_logits(rng, kind, count, n):
    """int8 logit rows: uniform, a few high above a floor at −128, saturated ±127/−128, or all equal."""
    if kind == "uniform":
        return rng.integers(-128, 128, size=(count, n))
    if kind == "peaked":
        q = np.full((count, n), -128)
        for row in q:
            hot = rng.choice(n, size=min(n, rng.integers(1, 4)), replace=False)
            row[hot] = rng.integers(-20, 128, size=len(hot))
        return q
    if kind == "saturated":
        return rng.choice([-128, 127], size=(count, n))
    return np.repeat(rng.integers(-128, 128, size=(count, 1)), n, axis=1)  # all equal


def test_docstring_figures_follow_from_the_bounds():
    lower, upper = loss_bounds(10)
    assert (round(lower, 5), round(upper, 5)) == (-0.00553, 0.00393)
    assert round(error_bound(10), 3) == 0.752


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000])
def test_loss_and_error_stay_within_the_derived_bounds(n):
    rng = np.random.default_rng(n)
    count = 100 if n < 1000 else 20
    # c* from the smallest accepted (0.5: c = 1) through 2·10^5 (s ≈ 3, logit gaps up to 770 nats);
    # the first five round by about 1/2, the constant's worst case.
    c_stars = [0.5 + 1e-9, 0.9, 1.5, 7.49, 60.5] + list(np.exp(rng.uniform(np.log(100), np.log(2e5), 7)))
    x, labels, loss, err = [], [], [], []
    for c_star in c_stars:
        for kind in ("uniform", "peaked", "saturated", "equal"):
            zero_point = int(rng.choice([-128, 0, 127, rng.integers(-128, 128)]))
            q = random_logits(rng, kind, count, n)
            y = rng.integers(0, n, size=count)
            fn = IntCrossEntropy(scale_for(c_star), zero_point)
            _, e, correct = fn(q, y)
            assert correct == int((q[np.arange(count), y] == q.max(axis=1)).sum())  # ties count
            x.append(real_logits(q, zero_point, scale_for(c_star)))
            labels.append(y)
            loss.append(per_sample_loss(fn, q, y))
            err.append(e)
    x, y, loss, err = (np.concatenate(a) for a in (x, labels, loss, err))
    ce, p = reference(x, y)

    lower, upper = loss_bounds(n)
    diff = loss * LN2 / 2 ** 16 - ce
    assert lower <= diff.min() and diff.max() <= upper, (diff.min(), diff.max(), lower, upper)

    assert err.dtype == np.int64 and np.abs(err).max() <= 127
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1
    off = np.abs(err - 128 * (p - onehot))
    clipped = np.abs(err) == 127
    assert off[~clipped].max() <= error_bound(n)
    assert off[clipped].max(initial=0) <= max(1, error_bound(n) - 1)
    # For few classes the error bound is mostly the rounding's half unit, and half
    # of it is exceeded; the (n − 1)/2^15 term needs a construction (below).
    assert n == 1 or n > 10 or off[~clipped].max() > error_bound(n) / 2


def test_equal_logits_give_log_n_and_uniform_error():
    for n in (1, 2, 3, 4, 10, 128, 256):
        q = np.full((1, n), 17)
        loss, err, correct = IntCrossEntropy(0.1, 5)(q, np.array([0]))
        if n & (n - 1) == 0:  # a total of n·2^15 is a log-table point: exact
            assert loss == int(math.log2(n)) << 16
        lower, upper = loss_bounds(n)
        assert lower <= loss * LN2 / 2 ** 16 - math.log(n) <= upper
        p = math.floor(128 / n + 0.5)  # 128/n rounded, halves up
        assert err[0].tolist() == [p - 128] + [p] * (n - 1) and correct == 1


def test_a_confidently_wrong_sample_costs_the_logit_gap():
    # Scale ≈ 1 and the label 255 steps below the maximum: CE ≈ 255 nats, p ≈ onehot of
    # the maximum, so p − onehot = (1, −1, 0) is clipped to (127, −127, 0).
    q, y = np.array([[127, -128, -128]]), np.array([1])
    scale = scale_for(94548.6)
    loss, err, correct = IntCrossEntropy(scale, 0)(q, y)
    ce, _ = reference(real_logits(q, 0, scale), y)
    lower, upper = loss_bounds(3)
    assert 254 < ce[0] < 256 and lower <= loss * LN2 / 2 ** 16 - ce[0] <= upper
    assert err[0].tolist() == [127, -127, 0] and correct == 0


def test_a_scale_below_half_a_q16_step_is_refused():
    IntCrossEntropy(scale_for(0.5 + 1e-9), 0)
    with pytest.raises(ValueError, match="too small"):
        IntCrossEntropy(scale_for(0.49), 0)


# Both ends of the loss bound are nearly reached, so it cannot be halved.

def test_lower_bound_is_reached_by_a_label_far_below_and_a_total_under_a_table_step():
    # c* = 2058.4999 rounds down by ~1/2: with the label 255 below the other logit
    # the loss loses ≈ 255/2^17 bits. d = 2058·255 = 8 + 0.0077 bits gives e = 32679 >> 8 = 127,
    # so the total 2^15 + 127 sits just under the first log-table step (2^15 + 128):
    # the log is cut by ≈ log2(257/256).
    q, y = np.array([[127, -128]]), np.array([1])
    scale = scale_for(2058.4999)
    assert IntCrossEntropy(scale, 0).to_base2_q16 == 2058
    lower, _ = loss_bounds(2)
    diff = loss_errors(q, 0, scale, y)[0]
    assert lower <= diff <= 0.98 * lower


def test_upper_bound_is_nearly_reached_by_truncated_near_ties():
    # c = 4351 = 17·256 − 1 (c* rounded up by ~1/2, the label 255 below the maximum):
    # seven logits one step below the maximum have d = 4351 Q16, whose low byte 255 the
    # fraction cut drops, so each counts ×2^(255/65536) too much; the two at −128 vanish.
    # The total 2^15 + 7·31379 = 2^17·(1 + 237.01/256) sits just above a log-table step.
    q, y = np.array([[127] + [126] * 7 + [-128, -128]]), np.array([9])
    scale = scale_for(4350.5001)
    assert IntCrossEntropy(scale, 0).to_base2_q16 == 4351
    _, upper = loss_bounds(10)
    diff = loss_errors(q, 0, scale, y)[0]
    assert 0.9 * upper <= diff <= upper


def test_error_bound_is_nearly_reached_by_many_vanishing_terms():
    # 999 logits 100 steps below the label's with c = 9833: d = 983300 Q16 = 15 + 0.004 bits,
    # so each a_j = 2^15·2^(−d) ≈ 0.997 but e_j = EXP[1] >> 15 = 0. The total is 2^15 alone,
    # p_y = 128 exactly, while the true p_y = 1/(1 + 999·0.997/2^15): the (n − 1)/2^15 term.
    n = 1000
    q, y = np.array([[127] + [27] * (n - 1)]), np.array([0])
    scale = scale_for(9833.0)
    _, err, _ = IntCrossEntropy(scale, 0)(q, y)
    _, p = reference(real_logits(q, 0, scale), y)
    assert err[0, 0] == 0 and not err[0, 1:].any()
    off = abs(err[0, 0] - 128 * (p[0, 0] - 1))
    assert 0.8 * error_bound(n) <= off <= error_bound(n)


def test_an_off_by_one_log_table_breaks_the_bound(monkeypatch):
    # log2(1 + (k+1)/256) instead of log2(1 + k/256): a plausible slip that
    # overestimates the log by up to log2(257/256) bits, more than the bound allows.
    shifted = np.array([round(math.log2(1 + (k + 1) / 256) * 2 ** 16) for k in range(256)], dtype=np.int64)
    monkeypatch.setattr(int_loss, "_LOG2_Q16", shifted)
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, size=(300, 10))
    y = rng.integers(0, 10, size=300)
    diff = loss_errors(q, 0, scale_for(4000.0), y)
    assert diff.max() > loss_bounds(10)[1]
