"""On-device training: ``Trainer.step()`` with backprop, ZO (SPSA), ElasticZO
and ElasticZO-INT8, on a model that :func:`edgetrain.load` returned.

Notation as in DESIGN.md §4: parametrised layers 1..L; the last ``cut``
train with backprop (the tail), the rest zeroth-order. A step never stores a
perturbation direction: it is regenerated from a per-step seed derived from
``(seed, step)``, and so are batch orders, so ``(weights, step)`` is the whole
training state and a resumed run is bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx

from . import autodiff, prng, quant
from .errors import TrainingError
from .int_loss import IntCrossEntropy
from .model import Model

METHODS = ("bp", "zo", "elasticzo", "elasticzo-int8")
# op type → (weight input position, bias input position or None)
_WEIGHTED = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1, None),
             "QLinearConv": (3, 8), "QGemm": (3, 6), "QLinearMatMul": (3, None)}
# ops the integer BP tail can differentiate
_INT_TAIL_OPS = {"QGemm", "QLinearMatMul", "Flatten", "Reshape"}
_DEFAULTS = {  # method → (lr, zo_lr, eps)
    "bp": (0.05, None, None),
    "zo": (None, 1e-4, 1e-3),
    "elasticzo": (0.05, 1e-4, 1e-3),
    # int8: lr = update bits of the BP tail's normalised step, zo_lr = 2^−shift on ΔL·z, eps in LSBs
    "elasticzo-int8": (3, 2.0 ** -20, 1),
}


@dataclass
class Layer:
    """A parametrised node: its index in ``model.nodes`` and its weight / bias names."""
    index: int
    name: str
    weight: str
    bias: str | None


@dataclass
class Plan:
    """Which nodes a method trains over and how its layers split at the cut."""
    first: int           # nodes first:last are trained through (int8: inside the quantise/dequantise pair)
    last: int
    layers: list         # trainable parametrised layers, in graph order
    cut: int             # how many trailing layers train with BP
    zo_layers: list
    bp_layers: list
    tail_start: int      # index of the first BP node (len(nodes) without a tail)


def plan(model: Model, method: str, cut: int | str = 1, trainable=None) -> Plan:
    """The training structure of ``model`` for ``method``: boundaries, layers, cut.

    Integer models train between the input QuantizeLinear and the output
    DequantizeLinear; fp32 models over the whole graph. Raises TrainingError
    naming the argument when the model, ``trainable`` or ``cut`` do not fit.
    """
    nodes = model.nodes
    if method == "elasticzo-int8":
        if not model.integer_only or nodes[0].op_type != "QuantizeLinear" or nodes[-1].op_type != "DequantizeLinear":
            raise TrainingError("method='elasticzo-int8' needs an integer-only int8 model "
                                "(QuantizeLinear … DequantizeLinear); quantise it first")
        first, last = 1, len(nodes) - 1
    else:
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
            raise TrainingError(f"method={method!r} trains fp32 models; this one is quantised "
                                "(use method='elasticzo-int8')")
        first, last = 0, len(nodes)
    layers = _find_layers(model, trainable)
    n_tail = _resolve_cut(layers, method, cut)
    zo, bp = layers[:len(layers) - n_tail], layers[len(layers) - n_tail:]
    return Plan(first, last, layers, n_tail, zo, bp, bp[0].index if bp else len(nodes))


def _find_layers(model, trainable):
    layers = []
    for i, node in enumerate(model.nodes):
        if node.op_type in _WEIGHTED:
            w, b = _WEIGHTED[node.op_type]
            if node.inputs[w] in model.params:
                bias = node.inputs[b] if b is not None and len(node.inputs) > b and node.inputs[b] else None
                layers.append(Layer(i, node.name, node.inputs[w], bias))
    if not layers:
        raise TrainingError("the model has no parametrised layers (Conv, Gemm, MatMul and their int8 forms)")
    if trainable is not None:
        wanted = set(trainable)
        known = {l.name for l in layers} | {l.weight for l in layers} | {l.bias for l in layers if l.bias}
        unknown = sorted(wanted - known)
        if unknown:
            raise TrainingError(f"trainable={unknown} names no parametrised layer or parameter; "
                                f"layers: {[l.name for l in layers]}")
        layers = [l for l in layers if wanted & {l.name, l.weight, l.bias}]
    return layers


def _resolve_cut(layers, method, cut):
    n = len(layers)
    if method == "bp":
        return n
    if method == "zo":
        return 0
    if isinstance(cut, str):
        names = [l.name for l in layers]
        if cut not in names:
            raise TrainingError(f"cut={cut!r} is not a trainable layer; layers: {names}")
        return n - 1 - names.index(cut)
    if not isinstance(cut, (int, np.integer)) or not 0 <= cut <= n:
        raise TrainingError(f"cut={cut!r} must be an int in [0, {n}] (trailing layers trained with BP)")
    return int(cut)


class Trainer:
    """Train ``model`` in place. See the module docstring for the methods.

    ``cut``: how many trailing parametrised layers train with backprop (an int), or
    the name of the last zeroth-order layer's node. Ignored by ``bp`` (all BP) and
    ``zo`` (none). ``trainable``: node or parameter names to train (default all);
    the rest stay frozen. ``lr`` is the BP step, ``zo_lr`` the ZO step, ``eps`` the
    perturbation (for ``elasticzo-int8``: ``lr`` is the tail's update bit-width,
    ``zo_lr`` a power of two scaling the int32 ``ΔL·z``, ``eps`` in weight LSBs).
    ``q``: ZO directions per step. ``float_gemm`` (``elasticzo-int8`` only): run the
    integer GEMMs through exact float32 BLAS (bit-identical, faster, see
    :func:`edgetrain.quant.int_matmul`) instead of numpy's integer matmul; off by
    default so that a step creates no float array at all.
    """

    def __init__(self, model: Model, method: str = "elasticzo", cut: int | str = 1, lr: float | None = None,
                 zo_lr: float | None = None, eps: float | None = None, batch_size: int = 32, seed: int = 0,
                 trainable=None, q: int = 1, float_gemm: bool = False):
        if not isinstance(model, Model):
            raise TrainingError(f"model must be an edgetrain Model (from edgetrain.load), got {type(model).__name__}")
        if method not in METHODS:
            raise TrainingError(f"method={method!r} must be one of {METHODS}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise TrainingError(f"batch_size={batch_size!r} must be a positive int")
        if not isinstance(q, int) or q < 1:
            raise TrainingError(f"q={q!r} must be a positive int")
        self.model, self.method, self.batch_size, self.seed, self.q = model, method, batch_size, int(seed), q
        d_lr, d_zo_lr, d_eps = _DEFAULTS[method]
        self.lr = d_lr if lr is None else lr
        self.zo_lr = d_zo_lr if zo_lr is None else zo_lr
        self.eps = d_eps if eps is None else eps
        self.step_count = 0
        self.int8 = method == "elasticzo-int8"
        self.float_gemm = bool(float_gemm)
        p = plan(model, method, cut, trainable)
        self.first, self.last, self.layers, self.cut = p.first, p.last, p.layers, p.cut
        self.zo_layers, self.bp_layers, self.tail_start = p.zo_layers, p.bp_layers, p.tail_start
        if self.int8:
            self._prepare_int8()
        self.n_classes = self._probe_classes()
        self.config = {"method": method, "cut": self.cut, "lr": self.lr, "zo_lr": self.zo_lr, "eps": self.eps,
                       "batch_size": batch_size, "seed": self.seed, "q": q, "float_gemm": self.float_gemm,
                       "trainable": [l.name for l in self.layers]}

    # -- structure ----------------------------------------------------------------
    def _probe_classes(self):
        name, shape, _ = self.model.inputs[0]
        probe = np.zeros((1,) + tuple(1 if d is None else d for d in shape[1:]), dtype=np.float32)
        out = self.model.run(probe)
        if out.ndim != 2:
            raise TrainingError(f"training needs (batch, classes) logits; the model outputs shape {out.shape}")
        return out.shape[1]

    # -- input validation -------------------------------------------------------------
    def _check_batch(self, x, y):
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
        if y.shape != (len(x),) or len(x) == 0:
            raise TrainingError(f"y has shape {y.shape}; expected ({len(x)},) to match x (and ≥ 1 sample)")
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
        x, y = self._check_batch(x, y)
        start = time.perf_counter()
        seed = prng.step_seed(self.seed, self.step_count)
        if self.int8:
            metrics = self._step_int8(x, y, seed)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite losses are rolled back below
                metrics = self._step_fp32(x, y, seed)
        if not metrics.get("rolled_back"):
            self.step_count += 1
        metrics["step_time_s"] = time.perf_counter() - start
        metrics["step"] = self.step_count
        return metrics

    def _forward_loss(self, x, y, keep=False):
        env = self.model.run_all(x, keep=keep)
        logits = env[self.model.output_names[0]]
        loss, dlogits = autodiff.cross_entropy(logits, y)
        return loss, dlogits, logits, env

    def _step_fp32(self, x, y, seed):
        params = self.model.params
        updates = {}
        metrics = {}
        if self.bp_layers:
            # clean pass; keep only what the BP tail reads (the tail's activations)
            keep = {i for n in self.model.nodes[self.tail_start:] for i in n.inputs if i}
            loss, dlogits, logits, env = self._forward_loss(x, y, keep=keep)
            if not math.isfinite(loss):
                return {"loss": loss, "accuracy": _accuracy(logits, y), "rolled_back": True,
                        "reason": "loss is not finite"}
            wrt = {n for l in self.bp_layers for n in (l.weight, l.bias) if n}
            grads = autodiff.backward(self.model, env, dlogits, wrt=wrt, start=self.tail_start)
            del env  # the ZO passes below need none of it
            for name in list(grads):
                updates[name] = params[name] - np.float32(self.lr) * grads.pop(name)
            metrics.update(loss=loss, accuracy=_accuracy(logits, y))
        if self.zo_layers:
            zo = self._zo_fp32(x, y, seed)
            if zo is None:
                return {**metrics, "rolled_back": True, "reason": "perturbed loss is not finite"}
            metrics.setdefault("loss", zo["loss"])
            metrics.setdefault("accuracy", zo["accuracy"])
            metrics["zo_grad"] = zo["g"]
            updates.update(zo["updates"])
        if not all(np.all(np.isfinite(u)) for u in updates.values()):
            return {**metrics, "rolled_back": True, "reason": "update is not finite"}
        for name, value in updates.items():
            params[name][...] = value
        return metrics

    def _zo_params(self):
        return [n for l in self.zo_layers for n in (l.weight, l.bias) if n]

    def _zo_fp32(self, x, y, seed):
        """SPSA over the ZO layers, ``q`` directions; returns the updates (not applied)."""
        names, params = self._zo_params(), self.model.params
        loss = lambda: self._forward_loss(x, y)[::2]  # (loss, logits)
        losses, accs, gs = [], [], []
        for d in range(self.q):
            s = prng.step_seed(seed, d, salt=1)
            g, (lp, logits_p), (lm, logits_m) = spsa_gradient(params, names, s, self.eps, loss)
            if not math.isfinite(g):
                return None
            gs.append((s, g))
            losses.append((lp + lm) / 2)
            accs.append((_accuracy(logits_p, y) + _accuracy(logits_m, y)) / 2)
        updates = {}
        for k, name in enumerate(names):
            u = params[name].copy()
            for s, g in gs:
                u -= np.float32(self.zo_lr * g / self.q) * gaussian_direction(s, k, u.shape)
            updates[name] = u
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                "g": float(np.mean([g for _, g in gs])), "updates": updates}

    # -- int8 -------------------------------------------------------------------------------
    def _prepare_int8(self):
        nodes, params = self.model.nodes, self.model.params
        for node in nodes[self.tail_start:self.last]:
            if node.op_type not in _INT_TAIL_OPS:
                raise TrainingError(f"elasticzo-int8: the BP tail holds {node.op_type} (node {node.name!r}); "
                                    f"integer BP supports {sorted(_INT_TAIL_OPS)} — use a smaller cut")
        for node in nodes[self.tail_start:self.last]:
            if node.op_type == "QGemm" and not node.attrs.get("transB", 0):
                raise TrainingError(f"elasticzo-int8: QGemm {node.name!r} without transB is not supported")
        dq = nodes[-1]
        self.loss_fn = IntCrossEntropy(float(params[dq.inputs[1]]), int(params[dq.inputs[2]].reshape(-1)[0]))
        self.model.set_exact_float(self.float_gemm)
        limit = 127 - int(self.eps)
        for l in self.layers:  # keep |w| ≤ 127 − ε so that w ± ε·z never saturates
            np.clip(params[l.weight], -limit, limit, out=params[l.weight])
        self.int_limit = limit

    def _int_forward(self, xq, keep=False):
        env = {self.model.nodes[0].outputs[0]: xq}
        env = self.model.execute(env, start=self.first, stop=self.last, keep=keep)
        return env, env[self.model.nodes[self.last - 1].outputs[0]]

    def _step_int8(self, x, y, seed):
        xq = self.model.kernels[0].run(x, None, None)  # the graph's own input QuantizeLinear
        return self._step_int8_core(xq, y, seed)

    def _step_int8_core(self, xq, y, seed):
        """Everything after the input quantisation: integers only."""
        params = self.model.params
        updates = {}
        metrics = {}
        if self.bp_layers:
            keep = {i for n in self.model.nodes[self.tail_start:self.last] for i in n.inputs if i}
            env, logits = self._int_forward(xq, keep=keep)
            loss, err, correct = self.loss_fn(logits, y)
            updates.update(self._int_backward(env, err, seed))
            del env, logits, err  # the ZO passes below need none of it
            metrics.update(loss_q16=loss, correct=correct)
        if self.zo_layers:
            names, eps = [l.weight for l in self.zo_layers], int(self.eps)
            _int_perturb(params, names, seed, +eps)
            lp, _, cp = self.loss_fn(self._int_forward(xq)[1], y)
            _int_perturb(params, names, seed, -2 * eps)
            lm, _, cm = self.loss_fn(self._int_forward(xq)[1], y)
            _int_perturb(params, names, seed, +eps)
            delta = lp - lm
            shift = int(round(-math.log2(self.zo_lr)))
            for k, name in enumerate(names):  # applied at once, in place: integers cannot overflow here
                _int_zo_update(params[name], seed, k, delta, shift, self.int_limit)
            metrics.setdefault("loss_q16", (lp + lm) // 2)
            metrics.setdefault("correct", (cp + cm) // 2)
            metrics["zo_delta_loss_q16"] = delta
        for name, value in updates.items():
            params[name][...] = value
        n = len(y)
        return {"loss": metrics["loss_q16"] * math.log(2) / (n << 16), "accuracy": metrics["correct"] / n,
                **metrics}

    def _int_backward(self, env, err, seed):
        """Integer BP through the tail (QGemm/QLinearMatMul, Flatten/Reshape): int8 error
        signals, int32 weight-gradient accumulators, a normalised update of ``lr`` bits."""
        nodes, kernels, params = self.model.nodes, self.model.kernels, self.model.params
        bits = int(self.lr)
        updates = {}
        g = err  # error w.r.t. the current node's output, int64 holding int8-range values
        for idx in range(self.last - 1, self.tail_start - 1, -1):
            node, kernel = nodes[idx], kernels[idx]
            x = env[node.inputs[0]]
            if node.op_type in ("Flatten", "Reshape"):
                g = g.reshape(x.shape)
                continue
            yq = kernel.yq
            out = env[node.outputs[0]]
            g = np.where((out == yq.qmin) | (out == yq.qmax), 0, g)  # saturated (incl. folded Relu): no gradient
            w = params[node.inputs[3]]
            w_t = w if node.op_type == "QGemm" else w.T  # as (N, K)
            g = g.astype(np.int32)  # int8-range errors; the sums below fit int32 (|g·a|·B < 2^31)
            a = x.astype(np.int32)
            a -= np.int32(kernel.aq.zp)
            grad_w = g.T @ a  # int32 accumulators, (N, K)
            shift = max(0, quant.bit_length(grad_w) - bits)
            updates[node.inputs[3]] = _int_tail_update(w_t, grad_w, shift, seed, 2000 + idx, self.int_limit,
                                                       transposed=node.op_type != "QGemm")
            if idx > self.tail_start:
                ga = g @ w_t.astype(np.int32)  # error w.r.t. the input, before renormalising to int8
                shift = max(0, quant.bit_length(ga) - 7)
                noise = prng.uniform_below_pow2(seed, 3000 + idx, ga.size, shift).reshape(ga.shape)
                g = quant.stochastic_shift_right(ga, shift, noise)
        return updates

    # -- memory -------------------------------------------------------------------------------
    def memory_report(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Measured peak memory of one training step on ``(x, y)`` and of inference on ``x``.

        ``*_traced_bytes``: tracemalloc's peak (numpy's buffers and Python objects
        allocated during the call, over what was live before it). ``*_rss_growth_bytes``:
        how far the process's resident set rose above its level before the call (Linux:
        the peak is reset through /proc/self/clear_refs first), or None where that is not
        possible; a warmed-up process may reuse resident heap and show less. The step is
        real: it trains.
        """
        x, y = self._check_batch(x, y)
        infer_traced, infer_rss = measure_peak(lambda: self.model.run(x))
        step_traced, step_rss = measure_peak(lambda: self.step(x, y))
        return {"step_traced_bytes": step_traced, "inference_traced_bytes": infer_traced,
                "step_rss_growth_bytes": step_rss, "inference_rss_growth_bytes": infer_rss,
                "batch_size": len(x), "method": self.method, "cut": self.cut}

    # -- loops ------------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict:
        """Mean cross-entropy and accuracy on ``(x, y)`` (no weight changes)."""
        x, y = self._check_batch(x, y)
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
        Returns per-epoch metrics (with ``val_loss``/``val_accuracy`` if ``val``)."""
        x, y = self._check_batch(x, y)
        if not isinstance(epochs, int) or epochs < 1:
            raise TrainingError(f"epochs={epochs!r} must be a positive int")
        per_epoch = len(x) // self.batch_size
        if per_epoch == 0:
            raise TrainingError(f"{len(x)} samples make no batch of batch_size={self.batch_size}")
        history = []
        while self.step_count < epochs * per_epoch:
            epoch, start_batch = divmod(self.step_count, per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(len(x))
            t0, losses, accs, rolled = time.perf_counter(), [], [], 0
            for b in range(start_batch, per_epoch):
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                m = self.step(x[idx], y[idx])
                if m.get("rolled_back"):
                    rolled += 1
                    self.step_count += 1  # skip the bad batch so the run goes on
                losses.append(m["loss"])
                accs.append(m["accuracy"])
                if progress:
                    _progress(epoch + 1, epochs, b + 1, per_epoch, float(np.mean(losses)), float(np.mean(accs)))
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                      "seconds": time.perf_counter() - t0, "rolled_back": rolled}
            if val is not None:
                v = self.evaluate(*val)
                record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
            history.append(record)
            if progress:
                extra = f"  val acc {record['val_accuracy']:.4f}" if val is not None else ""
                print(f"\repoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}"
                      f"{extra}  {record['seconds']:.1f}s", file=sys.stderr, flush=True)
            if checkpoint:
                self.save(checkpoint)
        return history

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write a checkpoint atomically: temp file in the same folder, fsync, rename."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        arrays = {f"param/{n}": self.model.params[n] for l in self.layers for n in (l.weight, l.bias) if n}
        state = {"config": self.config, "step": self.step_count, "format": 1}
        buf = io.BytesIO()
        np.savez(buf, model=np.frombuffer(self.model.to_proto().SerializeToString(), dtype=np.uint8),
                 state=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8), **arrays)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str) -> "Trainer":
        """A trainer exactly as :meth:`save` left it (weights, step count, configuration)."""
        try:
            with np.load(os.fspath(path)) as f:
                proto = onnx.load_model_from_string(f["model"].tobytes())
                state = json.loads(f["state"].tobytes())
                arrays = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
        except (OSError, ValueError, KeyError) as e:
            raise TrainingError(f"{path}: not a readable edgetrain checkpoint ({e})") from None
        model = Model(proto, source=os.fspath(path))
        cfg = dict(state["config"])
        trainer = cls(model, method=cfg["method"], cut=cfg["cut"], lr=cfg["lr"], zo_lr=cfg["zo_lr"],
                      eps=cfg["eps"], batch_size=cfg["batch_size"], seed=cfg["seed"],
                      trainable=cfg["trainable"], q=cfg["q"], float_gemm=cfg["float_gemm"])
        for name, value in arrays.items():
            model.params[name][...] = value
        trainer.step_count = int(state["step"])
        return trainer

    def export(self, path: str) -> None:
        """Write the trained model as ONNX (int8 stays int8) that onnxruntime runs."""
        onnx.save(self.model.to_proto(), os.fspath(path))


# int8 perturbations and updates walk each tensor in slices of this many weights, so their
# 64-bit temporaries stay small.
INT_CHUNK = 1 << 13


def _int_perturb(params: dict, names: list, seed: int, eps: int) -> None:
    """w ← w + eps·z in place, z = ±1 from ``(seed, tensor number)``; exact in int8
    because |w| ≤ 127 − |eps| is kept as an invariant."""
    for k, name in enumerate(names):
        flat = params[name].reshape(-1)
        for start in range(0, flat.size, INT_CHUNK):
            n = min(INT_CHUNK, flat.size - start)
            flat[start:start + n] += (eps * prng.rademacher(seed, k, n, start)).astype(np.int8)


def _int_tail_update(w_t, grad_w, shift, seed, stream, limit, transposed):
    """clip(w − SR(G / 2^shift)) for the (N, K) weight ``w_t`` and int32 gradient ``G``, a slab of
    rows at a time (the rounding noise is indexed by position, so slabs do not change it)."""
    new = np.empty(w_t.shape, dtype=np.int8)
    k = w_t.shape[1]
    rows = max(1, INT_CHUNK // k)
    for r in range(0, w_t.shape[0], rows):
        part = grad_w[r:r + rows]
        noise = prng.uniform_below_pow2(seed, stream, part.size, shift, start=r * k).reshape(part.shape)
        step = quant.stochastic_shift_right(part, shift, noise)
        new[r:r + rows] = np.clip(w_t[r:r + rows] - step, -limit, limit)
    return new.T if transposed else new


def _int_zo_update(w: np.ndarray, seed: int, k: int, delta: int, shift: int, limit: int) -> None:
    """w ← clip(w − SR(ΔL·z / 2^shift)) in place: the int32 loss difference times the
    ±1 direction, shifted down with stochastic rounding (the shift is the learning rate)."""
    flat = w.reshape(-1)
    for start in range(0, flat.size, INT_CHUNK):
        n = min(INT_CHUNK, flat.size - start)
        z = prng.rademacher(seed, k, n, start).astype(np.int64)
        noise = prng.uniform_below_pow2(seed, 1000 + k, n, shift, start)
        u = quant.stochastic_shift_right(delta * z, shift, noise)
        flat[start:start + n] = np.clip(flat[start:start + n] - u, -limit, limit)


def gaussian_direction(seed: int, stream: int, shape) -> np.ndarray:
    """The ZO direction z ~ N(0, I) for tensor number ``stream``, regenerated from ``seed``."""
    return np.random.default_rng([seed, stream]).standard_normal(shape, dtype=np.float32)


def perturb(params: dict, names: list, seed: int, scale: float) -> None:
    """θ ← θ + scale·z in place, for each named tensor (its own stream of ``seed``)."""
    for k, name in enumerate(names):
        params[name] += np.float32(scale) * gaussian_direction(seed, k, params[name].shape)


def spsa_gradient(params: dict, names: list, seed: int, eps: float, loss):
    """MeZO's two-point estimate of the directional derivative along z(seed).

    Perturbs in place (+ε, −2ε, +ε back) and returns
    ``((L⁺ − L⁻)/2ε, L⁺ result, L⁻ result)`` where ``loss()`` returns a tuple
    whose first element is the loss.
    """
    perturb(params, names, seed, +eps)
    plus = loss()
    perturb(params, names, seed, -2 * eps)
    minus = loss()
    perturb(params, names, seed, +eps)
    return (plus[0] - minus[0]) / (2 * eps), plus, minus


def measure_peak(fn):
    """(tracemalloc peak, RSS growth or None) of one call ``fn()``; tracing is started and
    stopped here, and the RSS peak is reset first (Linux /proc/self/clear_refs)."""
    import tracemalloc
    rss_reset = _reset_peak_rss()
    before = _status_bytes("VmRSS:")
    tracemalloc.start()
    try:
        fn()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    peak = _status_bytes("VmHWM:") if rss_reset else None
    return traced, (None if peak is None or before is None else max(0, peak - before))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _accuracy(logits, y) -> float:
    return float((logits.argmax(1) == y).mean())


def _progress(epoch, epochs, b, n, loss, acc):
    width = 24
    filled = width * b // n
    print(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] {b}/{n}  "
          f"loss {loss:.4f}  acc {acc:.4f}", end="", file=sys.stderr, flush=True)
