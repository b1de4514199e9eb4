"""On-device training: ``Trainer.step()`` with backprop, ZO (SPSA), ElasticZO and
ElasticZO-INT8, on a model that :func:`edgetrain.load` returned.

Notation as in DESIGN.md §4: parametrised layers 1..L; the last ``cut`` train
with backprop (the tail), the rest zeroth-order. The steps themselves live in
:mod:`edgetrain.fp32_step` and :mod:`edgetrain.int8_step`; this module checks the
configuration and the data, and runs the loops. A step never stores a
perturbation direction: it is regenerated from a per-step seed derived from
``(seed, step)``, and so are batch orders, so ``(weights, step)`` is the whole
training state and a resumed run is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from numbers import Integral, Real

import numpy as np
import onnx

from . import autodiff, checkpoint, memory, prng
from . import progress as _progress
from .errors import TrainingError
from .fp32_step import Fp32Step
from .int8_step import Int8Step
from .model import Model
from .plan import METHODS, plan

# Each method's step parameters and their defaults (bench/zo_sweep.py, bench/train.py and the
# README's "Choosing the ZO step" hold the measurements behind them; ``zo_layers`` 1: sparse ZO
# on the head's first layer, which absorbs input shifts and is small enough for q = 2). fp32 steps are real numbers; ``zo_lr`` and
# ``eps`` are relative to each layer's weight rms. The int8 step's are integers with units in
# their names: the BP tail's update bit-width, the ZO update's (no head weight moves by
# more than 2^zo_bits LSBs in a step), the perturbation in weight LSBs.
DEFAULTS = {
    "bp": {"lr": 0.05},
    "zo": {"zo_lr": 0.02, "eps": 0.01, "q": 2, "zo_layers": 0},
    "elasticzo": {"lr": 0.05, "zo_lr": 0.05, "eps": 0.01, "q": 2, "zo_layers": 1},
    "elasticzo-int8": {"lr_bits": 3, "zo_bits": 4, "eps_lsb": 4, "q": 2, "zo_layers": 1},
}
# parameter → (check, what it must be); declared once, checked at construction
_CONSTRAINTS = {
    "lr": (lambda v: _real(v) and v > 0, "a finite real > 0"),
    "zo_lr": (lambda v: _real(v) and 0 < v <= 1, "a real in (0, 1] (a step, relative to each layer's weight rms)"),
    "eps": (lambda v: _real(v) and 0 < v <= 1,
            "a real in (0, 1] (the perturbation, relative to each layer's weight rms)"),
    "zo_layers": (lambda v: _int(v) and 0 <= v <= 64,
                  "an int in [0, 64] (the head's first layers the ZO trains; 0: all)"),
    "q": (lambda v: _int(v) and 1 <= v <= 64, "an int in [1, 64] (ZO directions per step)"),
    "lr_bits": (lambda v: _int(v) and 1 <= v <= 7, "an int in [1, 7] (the tail's update bit-width)"),
    "zo_bits": (lambda v: _int(v) and -7 <= v <= 7,
                "an int in [-7, 7] (a ZO step moves a weight by at most 2^zo_bits LSBs)"),
    "eps_lsb": (lambda v: _int(v) and 1 <= v <= 63, "an int in [1, 63] (the perturbation in weight LSBs)"),
}


def _int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


class Trainer:
    """Train ``model`` in place with ``method`` (one of ``METHODS``).

    ``cut``: how many trailing parametrised layers train with backprop (an int), or the
    name of the last zeroth-order layer's node; ignored by ``bp`` (all BP) and ``zo``
    (none). ``trainable``: node or parameter names to train (default all), or
    ``"codebooks"``: only the codebooks and projections of a compressed file's codebook
    layers; the rest stay frozen. A compressed weight trains in its compressed form (a
    codebook weight through its codebook and projection, a low-bit weight inside its
    bit-width's range: :mod:`edgetrain.compressed`), so ``export`` writes a file of the
    same size. Step parameters (defaults in ``DEFAULTS``): fp32 methods take ``lr``
    (BP step), ``zo_lr`` (ZO step), ``eps`` (perturbation) and ``q`` (ZO directions per
    step); ``elasticzo-int8`` takes ``lr_bits``, ``zo_bits``, ``eps_lsb`` and ``q``. ZO methods
    take ``zo_layers``: only the head's first ``zo_layers`` layers are perturbed and trained
    (sparse ZO), the rest of the head stays frozen; 0: every head layer. A
    parameter the method does not use is an error, not ignored.

    Constructing a trainer changes nothing in the model. int8 GEMMs take the route the
    model was loaded with (``edgetrain.load(..., float_gemm=False)``: no float array at all).
    """

    def __init__(self, model: Model, method: str = "elasticzo", cut: int | str = 1, *, lr=None, zo_lr=None,
                 eps=None, q=None, zo_layers=None, lr_bits=None, zo_bits=None, eps_lsb=None, batch_size: int = 32,
                 seed: int = 0, trainable=None):
        if not isinstance(model, Model):
            raise TrainingError(f"model must be an edgetrain Model (from edgetrain.load), got {type(model).__name__}")
        if method not in METHODS:
            raise TrainingError(f"method={method!r} must be one of {METHODS}")
        if not _int(batch_size) or batch_size < 1:
            raise TrainingError(f"batch_size={batch_size!r} must be a positive int")
        if not _int(seed):
            raise TrainingError(f"seed={seed!r} must be an int")
        given = {k: v for k, v in dict(lr=lr, zo_lr=zo_lr, eps=eps, q=q, zo_layers=zo_layers, lr_bits=lr_bits,
                                       zo_bits=zo_bits, eps_lsb=eps_lsb).items() if v is not None}
        extra = sorted(set(given) - set(DEFAULTS[method]))
        if extra:
            raise TrainingError(f"{', '.join(f'{k}={given[k]!r}' for k in extra)}: method={method!r} takes "
                                f"{sorted(DEFAULTS[method])}")
        self.hyper = {**DEFAULTS[method], **given}
        for name, value in self.hyper.items():
            ok, what = _CONSTRAINTS[name]
            if not ok(value):
                raise TrainingError(f"{name}={value!r} must be {what}")
        self.model, self.method, self.batch_size, self.seed = model, method, int(batch_size), int(seed)
        self.plan = plan(model, method, cut, trainable, self.hyper.get("zo_layers", 0))
        self.layers, self.cut = self.plan.layers, self.plan.cut
        self.step_count = 0
        self._step = (Int8Step if method == "elasticzo-int8" else Fp32Step)(
            model, self.plan, **{k: v for k, v in self.hyper.items() if k != "zo_layers"})
        self.n_classes = self._probe_classes()
        self.config = {"method": method, "cut": self.cut, "batch_size": self.batch_size, "seed": self.seed,
                       "trainable": "codebooks" if trainable == "codebooks" else [l.name for l in self.layers],
                       **self.hyper}

    def _probe_classes(self):
        name, shape, _ = self.model.inputs[0]
        probe = np.zeros((1,) + tuple(1 if d is None else d for d in shape[1:]), dtype=np.float32)
        out = self.model.run(probe)
        if out.ndim != 2:
            raise TrainingError(f"training needs (batch, classes) logits; the model outputs shape {out.shape}")
        return out.shape[1]

    def check_batch(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` as float32 / int64 after checking them against the model; TrainingError
        naming what is wrong otherwise."""
        name, shape, _ = self.model.inputs[0]
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise TrainingError("x and y must be numpy arrays")
        if not np.issubdtype(x.dtype, np.floating):
            raise TrainingError(f"x must hold floats, got dtype {x.dtype}")
        if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape[1:], x.shape[1:])):
            raise TrainingError(f"x has shape {x.shape}; the model's input {name!r} takes "
                                f"{tuple('N' if d is None else d for d in shape)}")
        if not np.issubdtype(y.dtype, np.integer):
            raise TrainingError(f"y must hold integer class labels, got dtype {y.dtype}")
        if len(x) == 0:
            raise TrainingError("x holds no samples")
        if y.shape != (len(x),):
            raise TrainingError(f"y has shape {y.shape}; expected ({len(x)},), one label per sample of x")
        bad = (y < 0) | (y >= self.n_classes)
        if bad.any():
            raise TrainingError(f"labels must be in [0, {self.n_classes}); got {y[bad][:5].tolist()}")
        if not np.all(np.isfinite(x)):
            raise TrainingError(f"x has {int(np.size(x) - np.count_nonzero(np.isfinite(x)))} NaN/inf value(s)")
        return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)

    # -- one step -----------------------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray) -> dict:
        """One optimisation step on the batch ``(x, y)``; returns its metrics.

        A step whose loss is not finite, or whose update would make a weight
        non-finite, is rolled back (weights as before, up to the rounding of
        the ±ε perturbation in fp32; exactly in int8) and reported with
        ``rolled_back`` set.
        """
        x, y = self.check_batch(x, y)
        start = time.perf_counter()
        metrics = self._step(x, y, prng.step_seed(self.seed, self.step_count))
        if not metrics.get("rolled_back"):
            self.step_count += 1
        metrics["step_time_s"] = time.perf_counter() - start
        metrics["step"] = self.step_count
        return metrics

    # -- loops ------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict:
        """Mean cross-entropy and accuracy on ``(x, y)`` (no weight changes)."""
        x, y = self.check_batch(x, y)
        total, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            with np.errstate(over="ignore", invalid="ignore"):  # a diverged model reports inf/nan loss
                logits = self.model.run(x[i:i + batch_size])
            loss, _ = autodiff.cross_entropy(logits, y[i:i + batch_size])
            total += loss * len(logits)
            correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
        return {"loss": total / len(x), "accuracy": correct / len(x)}

    def fit(self, x, y, epochs: int = 1, val=None, checkpoint: str | None = None, progress: bool = True) -> list:
        """Train until ``epochs`` epochs in total have run (a resumed trainer continues
        where its step count says). Batches: a permutation per epoch from ``(seed, epoch)``;
        the last short batch is dropped. ``checkpoint``: saved after every epoch.
        ``progress``: a bar per epoch and a line after it on stderr (:mod:`edgetrain.progress`).
        Ctrl-C raises KeyboardInterrupt between two steps, never inside one, so the
        weights are those after a whole step and the checkpoint that of the last epoch.
        Returns per-epoch metrics (with ``val_loss``/``val_accuracy`` if ``val``)."""
        x, y = self.check_batch(x, y)
        if not _int(epochs) or epochs < 1:
            raise TrainingError(f"epochs={epochs!r} must be a positive int")
        per_epoch = len(x) // self.batch_size
        if per_epoch == 0:
            raise TrainingError(f"{len(x)} samples make no batch of batch_size={self.batch_size}")
        history = []
        with _interrupts_between_steps() as interrupted:
            while self.step_count < epochs * per_epoch:
                epoch, start_batch = divmod(self.step_count, per_epoch)
                order = np.random.default_rng([self.seed, epoch]).permutation(len(x))
                t0, losses, accs, rolled = time.perf_counter(), [], [], 0
                with _progress.bar(progress, total=per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{epochs}",
                                   unit="step") as bar:
                    for b in range(start_batch, per_epoch):
                        idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                        m = self.step(x[idx], y[idx])
                        if m.get("rolled_back"):
                            rolled += 1
                            self.step_count += 1  # skip the bad batch so the run goes on
                        losses.append(m.get("loss", math.nan))  # a rolled-back ZO step may have none
                        accs.append(m.get("accuracy", math.nan))
                        bar.set_postfix_str(f"loss {np.mean(losses):.4f}  acc {np.mean(accs):.4f}", refresh=False)
                        bar.update(1)
                        if interrupted():
                            raise KeyboardInterrupt
                record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                          "seconds": time.perf_counter() - t0, "rolled_back": rolled}
                if val is not None:
                    v = self.evaluate(*val)
                    record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
                history.append(record)
                extra = f"  val acc {record['val_accuracy']:.4f}" if val is not None else ""
                _progress.note(progress, f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  acc "
                                         f"{record['accuracy']:.4f}{extra}  {record['seconds']:.1f}s"
                                         + (f"  ({rolled} step(s) rolled back)" if rolled else ""))
                if checkpoint:
                    self.save(checkpoint)
                if interrupted():
                    raise KeyboardInterrupt
        return history

    # -- memory, persistence ----------------------------------------------------------------
    def memory_report(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Measured peak memory of one training step on ``(x, y)`` and of inference on ``x``
        (:func:`edgetrain.memory.measure_peak`). The step is real, but its effect is undone:
        weights and step count are as before."""
        x, y = self.check_batch(x, y)
        saved = {n: self.model.params[n].copy() for n in self.plan.tensors}
        count = self.step_count
        try:
            infer_traced, infer_rss = memory.measure_peak(lambda: self.model.run(x))
            step_traced, step_rss = memory.measure_peak(lambda: self.step(x, y))
        finally:
            for name, value in saved.items():
                self.model.params[name][...] = value
            self.step_count = count
        return {"step_traced_bytes": step_traced, "inference_traced_bytes": infer_traced,
                "step_rss_growth_bytes": step_rss, "inference_rss_growth_bytes": infer_rss,
                "batch_size": len(x), "method": self.method, "cut": self.cut}

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (:mod:`edgetrain.checkpoint`): the model as it runs,
        the configuration, the step count and the trained tensors."""
        params = {n: self.model.params[n] for n in self.plan.tensors}
        config = {**self.config, "float_gemm": self.model.float_gemm}
        checkpoint.save(path, self.model.to_proto(), config, self.step_count, params)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trainer":
        """A trainer exactly as :meth:`save` left it (weights, step count, configuration);
        TrainingError for a file that is not a whole, undamaged checkpoint."""
        proto, config, step, params = checkpoint.load(path)
        try:
            config = dict(config)
            model = Model(proto, float_gemm=config.pop("float_gemm"), source=os.fspath(path))
            trainer = cls(model, **config)
        except (TypeError, KeyError, ValueError) as e:
            raise TrainingError(f"checkpoint {os.fspath(path)!r}: its configuration does not make a trainer "
                                f"({type(e).__name__}: {e})") from None
        for name, value in params.items():
            model.params[name][...] = value
        trainer.step_count = step
        return trainer

    def export(self, path: str | os.PathLike) -> None:
        """Write the trained model as ONNX (int8 stays int8) that onnxruntime runs."""
        onnx.save(self.model.to_proto(), os.fspath(path))


@contextlib.contextmanager
def _interrupts_between_steps():
    """Holds a Ctrl-C (SIGINT) back while inside; yields ``interrupted()``, true once one
    came, for the loop to raise KeyboardInterrupt where the state is whole. Only where
    Python's own handler is in place (the main thread, Ctrl-C not ignored or taken)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return
    came = []
    signal.signal(signal.SIGINT, lambda *_: came.append(True))
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
