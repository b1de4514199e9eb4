"""EvoPress (Sieberling et al. 2024): per-layer compression levels under a global budget,
found by evolution on the KL divergence to the dense model; and the baselines it is held to.

1. **Database.** Every layer compressed at every level against its calibration inputs
   (:mod:`.gptq`): weight bit-widths 2..8 (per output channel scales), or unstructured
   sparsity 0, 5 … 95 % (OBS). Cached on disk under a SHA-256 of the model, the calibration
   images and the settings; a damaged or stale cache file is detected and rebuilt.
2. **Search** for one level per layer with total cost (weight bits, or non-zero weights)
   within the budget:

   * ``evo`` — (1+λ) evolution. An offspring is its parent after one *level switch*
     (:func:`mutate`): a layer a level up or down, and others the other way until the
     budget is used again without being exceeded. (EvoPress swaps levels between layers of
     equal size, which keeps the total exact; a small CNN has no two layers of one size.)
     Selection in stages (EvoPress's): all offspring ranked by KL on a few calibration
     images, the best few re-ranked on more, the last stage on the most with the parent
     among them (elitist).
   * ``uniform`` — every layer at the highest common level that fits.
   * ``dp`` — the dynamic program over per-layer errors (the KL when that layer alone is
     compressed), exact if errors add up across layers (they need not: EvoPress's point).
   * ``hessian`` — HAWQ-v2's sensitivity ``Tr(H_l)/n_l·‖W_l − Ŵ_l‖²`` (Hutchinson's trace of
     the loss Hessian per layer), allocated by the same dynamic program.

3. **Output.** An int8 model as ``quantize`` makes it (activations calibrated on the
   compressed weights), whose weights are the database's integers at their layer's level:
   below 8 bits packed as bit planes, sparse layers as a bit mask and their non-zeros, each
   rebuilt by a standard ONNX subgraph (:mod:`edgetrain.decode`); and a JSON config with
   each layer's level, error and bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from ... import progress as _progress
from ...decode import Builder
from ..quantization import fp32_model
from . import gptq, model_io
from .torch_graph import TorchGraph

BIT_LEVELS = tuple(range(2, 9))
# ordered as the bit-widths are, cheapest first: a level up keeps more weights
SPARSITY_LEVELS = tuple(round(0.95 - 0.05 * i, 2) for i in range(20))
SEARCHES = ("evo", "uniform", "dp", "hessian")
CACHE_VERSION = 1
CALIBRATION = 1024      # images the database and the search see (the first of the data)
QUANT_CALIBRATION = 256  # images that calibrate the activations of the int8 output, as `quantize`
# (survivors, images) per selection stage; the last stage keeps one
STAGES = ((8, 64), (2, 256), (1, 1024))
GENERATIONS = 150
OFFSPRING = 32
HUTCHINSON_SAMPLES = 32


@dataclass
class Database:
    """Each layer at each level: the compressed weight as it runs (float, stored shape), its
    cost and its relative output error; for bit-widths also the integers and scales."""
    kind: str                  # "bits" or "sparsity"
    levels: tuple
    layers: list               # model_io.Layer
    weights: list[list[np.ndarray]]
    costs: np.ndarray          # (layers, levels) int64: weight bits, or non-zero weights
    errors: np.ndarray         # (layers, levels) gptq.relative_error
    ints: list[list[tuple[np.ndarray, np.ndarray]]] | None = None  # bits: (q, scales) per level


# -- the database and its cache ---------------------------------------------------------------

def cache_key(model_bytes: bytes, calib: np.ndarray, kind: str) -> str:
    levels = BIT_LEVELS if kind == "bits" else SPARSITY_LEVELS
    settings = {"version": CACHE_VERSION, "kind": kind, "levels": list(levels),
                "damp": gptq.DAMP, "clip_grid": gptq.CLIP_GRID.tolist()}
    h = hashlib.sha256()
    for part in (model_bytes, np.ascontiguousarray(calib, np.float32).tobytes(), json.dumps(settings).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _digest(arrays: dict) -> bytes:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.digest()


def save_cache(path: Path, key: str, arrays: dict) -> None:
    """The database arrays, the key they were built for and a SHA-256 over both, written atomically."""
    arrays = {**arrays, "key": np.frombuffer(key.encode(), np.uint8)}
    buf = io.BytesIO()
    np.savez(buf, sha256=np.frombuffer(_digest(arrays), np.uint8), **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_io.atomic_write(path, buf.getvalue())


def load_cache(path: Path, key: str) -> tuple[dict | None, str]:
    """``(arrays, "")`` from a whole cache file built for ``key``; ``(None, why)`` when it is
    missing, damaged (unreadable, or its contents do not match their SHA-256) or stale
    (built for another model, data set or settings)."""
    if not path.exists():
        return None, "not built yet"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # a truncated or foreign file: zipfile, OSError, ValueError…
        return None, f"damaged ({type(e).__name__})"
    digest = arrays.pop("sha256", None)
    if digest is None or digest.tobytes() != _digest(arrays):
        return None, "damaged (its contents do not match their SHA-256)"
    if arrays.pop("key").tobytes().decode() != key:
        return None, "stale (built for another model, data set or settings)"
    return arrays, ""


def build_database(graph: TorchGraph, layers: list, calib: np.ndarray, kind: str, progress: bool) -> dict:
    """The database arrays: per layer the Hessian of its calibration inputs, then each level."""
    levels = BIT_LEVELS if kind == "bits" else SPARSITY_LEVELS
    with torch.no_grad():
        _, seen = graph(torch.from_numpy(calib), capture={l.node for l in layers})
    arrays = {}
    with _progress.bar(progress, total=len(layers) * len(levels), desc=f"database ({kind})", unit="level") as bar:
        for i, l in enumerate(layers):
            w = l.matrix(graph.tensors[l.weight].detach().numpy())
            h = gptq.hessian(_layer_inputs(l, graph, seen[l.node]))
            errors = []
            for j, level in enumerate(levels):
                if kind == "bits":
                    q, s = gptq.quantize(w, h, level)
                    arrays[f"q{i}.{j}"], arrays[f"s{i}.{j}"] = q, s
                    w_hat = s[:, None].astype(np.float64) * q
                else:
                    w_hat = arrays[f"w{i}.{j}"] = gptq.prune(w, h, level)
                errors.append(gptq.relative_error(w, w_hat, h))
                bar.update(1)
            arrays[f"e{i}"] = np.array(errors)
    return arrays


def _layer_inputs(layer, graph: TorchGraph, x: torch.Tensor) -> np.ndarray:
    """The rows of inputs the layer's (outputs × inputs) matrix multiplies: im2col patches of a
    Conv (in its weight's flat order), the input rows of Gemm / MatMul."""
    if layer.op == "Conv":
        attrs = next(a for n, op, _, _, a in graph.nodes if n == layer.node)
        pads = attrs.get("pads", [0, 0, 0, 0])
        cols = F.unfold(x, layer.shape[2:], dilation=attrs.get("dilations", [1, 1]), padding=pads[:2],
                        stride=attrs.get("strides", [1, 1]))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()
    return x.reshape(-1, x.shape[-1]).numpy()


def database(proto, layers, graph, calib, kind, cache: Path | None, progress: bool) -> tuple[Database, dict]:
    """The database, from the cache when a whole one for these inputs is there (else built
    and cached); with what happened to the cache."""
    key = cache_key(proto.SerializeToString(), calib, kind)
    path = None if cache is None else Path(cache) / "evopress" / f"{key[:24]}.npz"
    arrays, why = (None, "no cache folder") if path is None else load_cache(path, key)
    status = {"path": None if path is None else str(path), "hit": arrays is not None}
    if arrays is None:
        if path is not None and why != "not built yet":
            _progress.note(progress, f"note: the EvoPress cache {str(path)!r} is {why}; rebuilding it")
        status["rebuilt_because"] = why
        arrays = build_database(graph, layers, calib, kind, progress)
        if path is not None:
            save_cache(path, key, arrays)
    levels = BIT_LEVELS if kind == "bits" else SPARSITY_LEVELS
    weights, costs, ints = [], [], [] if kind == "bits" else None
    for i, l in enumerate(layers):
        row_w, row_c, row_i = [], [], []
        for j, level in enumerate(levels):
            if kind == "bits":
                q, s = arrays[f"q{i}.{j}"], arrays[f"s{i}.{j}"]
                row_i.append((q, s))
                row_w.append(l.from_matrix(s[:, None] * q.astype(np.float32)))
                row_c.append(l.size * level)
            else:
                w = arrays[f"w{i}.{j}"]
                row_w.append(l.from_matrix(w))
                row_c.append(int(np.count_nonzero(w)))
        weights.append(row_w)
        costs.append(row_c)
        if ints is not None:
            ints.append(row_i)
    errors = np.stack([arrays[f"e{i}"] for i in range(len(layers))])
    return Database(kind, levels, layers, weights, np.array(costs, np.int64), errors, ints), status


# -- fitness --------------------------------------------------------------------------------

class Fitness:
    """KL(dense ‖ candidate) of the softmax outputs, averaged over the chosen calibration
    images; a candidate is one level index per layer."""

    def __init__(self, graph: TorchGraph, db: Database, calib: np.ndarray):
        self.graph, self.db = graph, db
        self.x = torch.from_numpy(calib)
        with torch.no_grad():
            self.log_p = F.log_softmax(graph(self.x), dim=1)
        self.tensors = [[torch.from_numpy(np.ascontiguousarray(w, np.float32)) for w in row] for row in db.weights]
        self.evaluations = 0

    def __call__(self, levels, idx=None) -> float:
        idx = slice(None) if idx is None else torch.from_numpy(np.asarray(idx))
        weights = {l.weight: self.tensors[i][j] for i, (l, j) in enumerate(zip(self.db.layers, levels))}
        with torch.no_grad():
            log_q = F.log_softmax(self.graph(self.x[idx], weights), dim=1)
            log_p = self.log_p[idx]
        self.evaluations += 1
        return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


# -- the searches -----------------------------------------------------------------------------

def total_cost(costs: np.ndarray, levels) -> int:
    return int(costs[np.arange(len(costs)), list(levels)].sum())


def mutate(levels, costs: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
    """One level switch: a random layer moves a level up or down and the others, in random
    order, move the other way — down until the total cost is within ``budget`` again; then
    up, as long as it stays within, to spend what is left. Layers of different sizes cannot
    trade levels one for one, so a switch rebalances with as many as it takes; a candidate
    never exceeds the budget, and between layers of one size the switch is EvoPress's
    one-for-one trade. A move no other layer can balance gives the parent back unchanged."""
    new = list(levels)
    top = costs.shape[1] - 1
    i = int(rng.integers(len(new)))
    step = -1 if new[i] == top or (new[i] > 0 and rng.random() < 0.5) else 1
    new[i] += step
    others = [int(j) for j in rng.permutation(len(new)) if j != i]
    lowered = set()
    for j in others:  # pay for a move up
        if total_cost(costs, new) <= budget:
            break
        if new[j] > 0:
            new[j] -= 1
            lowered.add(j)
    if total_cost(costs, new) > budget:
        return list(levels)
    raised = step > 0
    while True:  # spend the rest
        more = False
        for j in others:
            if j not in lowered and new[j] < top:
                new[j] += 1
                if total_cost(costs, new) > budget:
                    new[j] -= 1
                else:
                    raised = more = True
        if not more:
            break
    return new if raised else list(levels)  # a move down that no other layer can take up is no switch


def uniform(costs: np.ndarray, budget: int) -> list[int]:
    """Every layer at the highest common level within the budget."""
    fits = [j for j in range(costs.shape[1]) if costs[:, j].sum() <= budget]
    if not fits:
        raise ValueError(f"no uniform level fits the budget of {budget}")
    return [max(fits, key=lambda j: costs[:, j].sum())] * len(costs)


def dynamic_program(costs: np.ndarray, errors: np.ndarray, budget: int) -> list[int]:
    """The levels minimising ``Σ errors[l, level_l]`` with ``Σ costs[l, level_l] ≤ budget``
    (a knapsack over the costs in units of their greatest common divisor)."""
    unit = int(np.gcd.reduce(costs.reshape(-1))) or 1
    c, cap = costs // unit, budget // unit
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    choice = []
    for l in range(len(costs)):
        new, pick = np.full(cap + 1, np.inf), np.full(cap + 1, -1)
        for j in range(costs.shape[1]):
            if c[l, j] > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c[l, j]:] = best[:cap + 1 - c[l, j]] + errors[l, j]
            better = cand < new
            new[better], pick[better] = cand[better], j
        best = new
        choice.append(pick)
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        raise ValueError(f"no choice of levels fits the budget of {budget}")
    levels = []
    for l in range(len(costs) - 1, -1, -1):
        j = int(choice[l][end])
        levels.append(j)
        end -= c[l, j]
    return levels[::-1]


def initial(costs, budget, rng, fitness, count=16) -> list[int]:
    """EvoPress's start: the uniform level if it uses the whole budget; otherwise ``count``
    candidates that start one level above it and step random layers down until they fit, the
    fittest on the first stage's images."""
    start = uniform(costs, budget)
    if total_cost(costs, start) == budget or start[0] == costs.shape[1] - 1:
        return start
    candidates = []
    for _ in range(count):
        levels = [start[0] + 1] * len(costs)
        while total_cost(costs, levels) > budget:
            lowerable = [i for i, v in enumerate(levels) if v > 0]
            levels[lowerable[rng.integers(len(lowerable))]] -= 1
        candidates.append(levels)
    idx = rng.choice(len(fitness.x), min(STAGES[0][1], len(fitness.x)), replace=False)
    return min(candidates, key=lambda c: fitness(c, idx))


def evolve(costs, budget, fitness: Fitness, seed: int, generations: int = GENERATIONS, offspring: int = OFFSPRING,
           progress: bool = True) -> tuple[list[int], list[float]]:
    """(1+λ) evolution with multi-stage selection; returns the levels and the parent's fitness on
    the last stage's images after each generation."""
    rng = np.random.default_rng(seed)
    parent = initial(costs, budget, rng, fitness)
    n = len(fitness.x)
    trace = []
    with _progress.bar(progress, total=generations, desc="EvoPress", unit="gen") as bar:
        for _ in range(generations):
            pool = [mutate(parent, costs, budget, rng) for _ in range(offspring)]
            for stage, (survivors, images) in enumerate(STAGES):
                idx = rng.choice(n, min(images, n), replace=False)
                if stage == len(STAGES) - 1:
                    pool = pool + [parent]  # elitist: the parent competes in the last stage
                scores = [fitness(c, idx) for c in pool]
                order = np.argsort(scores, kind="stable")[:survivors]
                pool, best = [pool[i] for i in order], scores[order[0]]
            parent = pool[0]
            trace.append(best)
            bar.set_postfix_str(f"KL {best:.4g}", refresh=False)
            bar.update(1)
    return parent, trace


def hessian_traces(graph: TorchGraph, layers, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Per layer, Hutchinson's estimate ``E[vᵀ H v]`` (Rademacher ``v``) of the trace of the
    cross-entropy's Hessian with respect to that layer's weights."""
    gen = torch.Generator().manual_seed(seed)
    params = [graph.tensors[l.weight] for l in layers]
    loss = F.cross_entropy(graph(torch.from_numpy(x)), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    traces = np.zeros(len(layers))
    for _ in range(HUTCHINSON_SAMPLES):
        vs = [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1 for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        traces += [float((v * h).sum()) for v, h in zip(vs, hv)]
    return traces / HUTCHINSON_SAMPLES


# -- the whole tool ---------------------------------------------------------------------------

def check_budget(bits, sparsity, search) -> str:
    """The kind of budget (``bits`` or ``sparsity``) after checking the arguments."""
    if (bits is None) == (sparsity is None):
        raise ValueError("give one budget: bits (average weight bits) or sparsity (share of zero weights)")
    if search not in SEARCHES:
        raise ValueError(f"search={search!r} must be one of {SEARCHES}")
    if bits is not None:
        if not isinstance(bits, (int, float)) or not math.isfinite(bits) or not BIT_LEVELS[0] <= bits <= BIT_LEVELS[-1]:
            raise ValueError(f"bits={bits!r} cannot be met: the levels are {BIT_LEVELS[0]} to {BIT_LEVELS[-1]} bits "
                             "per weight, so the average must lie in that range")
        return "bits"
    if not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity) or \
            not 0 <= sparsity <= max(SPARSITY_LEVELS):
        raise ValueError(f"sparsity={sparsity!r} cannot be met: the levels are 0 to {max(SPARSITY_LEVELS):.0%} zeros")
    return "sparsity"


def evopress(model_path, out_path, data, *, bits: float | None = None, sparsity: float | None = None,
             search: str = "evo", seed: int = 0, generations: int = GENERATIONS, offspring: int = OFFSPRING,
             cache=None, config_path=None, progress: bool = True) -> dict:
    """Compress the fp32 ONNX model at ``model_path`` to ``out_path`` at ``bits`` average weight
    bits or ``sparsity`` (share of zero weights), with ``search`` (:data:`SEARCHES`).
    ``data`` is ``x`` or ``(x, y)``: the first :data:`CALIBRATION` images calibrate (labels
    are used by the Hessian-trace baseline only; without them the dense model's own
    predictions stand in). ``cache``: a folder for the level database (None: no cache).
    ``config_path``: where the per-layer JSON goes (default ``OUT.json``). Returns the config,
    its path and (``weights``) the int8 weights the output's decode subgraphs rebuild."""
    kind = check_budget(bits, sparsity, search)
    for name, value in (("generations", generations), ("offspring", offspring)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    proto = fp32_model(model_path, "compress")
    x, y = data if isinstance(data, tuple) else (data, None)
    calib = np.ascontiguousarray(np.asarray(x, np.float32)[:CALIBRATION])
    layers = model_io.layers(proto)
    if not layers:
        raise ValueError(f"model {str(model_path)!r} has no Conv/Gemm/MatMul layer with an initializer weight")
    n_weights = sum(l.size for l in layers)
    budget = math.floor(bits * n_weights) if kind == "bits" else math.floor((1 - sparsity) * n_weights)
    graph = TorchGraph(proto)
    db, cache_status = database(proto, layers, graph, calib, kind, cache, progress)
    fitness = Fitness(graph, db, calib)

    start = time.perf_counter()
    trace = None
    if search == "evo":
        levels, trace = evolve(db.costs, budget, fitness, seed, generations, offspring, progress)
    elif search == "uniform":
        levels = uniform(db.costs, budget)
    elif search == "dp":  # each layer alone at each level, the others at the top one (8 bits, or dense)
        top = len(db.levels) - 1
        alone = np.array([[fitness([j if i == l else top for i in range(len(layers))]) for j in range(len(db.levels))]
                          for l in range(len(layers))])
        levels = dynamic_program(db.costs, alone, budget)
    else:
        labels = None if y is None else np.asarray(y)[:256]
        traces = hessian_traces(graph, layers, calib[:256], _labels(graph, calib[:256], labels), seed)
        dense = [graph.tensors[l.weight].detach().numpy() for l in layers]
        omega = np.array([[traces[i] / l.size * float(((db.weights[i][j] - dense[i]) ** 2).sum())
                           for j in range(len(db.levels))] for i, l in enumerate(layers)])
        levels = dynamic_program(db.costs, omega, budget)
    seconds = time.perf_counter() - start
    used = total_cost(db.costs, levels)
    assert used <= budget, (used, budget)

    layer_bytes, weights = _write(proto, db, levels, calib[:QUANT_CALIBRATION], out_path)
    config = {"search": search, "kind": kind, "seed": seed, "budget": budget, "used": used,
              "average": (used / n_weights) if kind == "bits" else 1 - used / n_weights,
              "target": bits if kind == "bits" else sparsity, "search_seconds": seconds,
              "fitness_evaluations": fitness.evaluations, "calibration_kl": fitness(levels),
              "generations": generations if search == "evo" else None, "cache": cache_status,
              "layers": [{"layer": l.node, "weights": l.size, ("bits" if kind == "bits" else "sparsity"): db.levels[j],
                          "error": float(db.errors[i, j]), "cost": int(db.costs[i, j]), **layer_bytes[i]}
                         for i, (l, j) in enumerate(zip(layers, levels))],
              **model_io.sizes(model_path, out_path)}
    if trace is not None:
        config["kl_trace"] = trace
    config_path = Path(f"{out_path}.json" if config_path is None else config_path)
    model_io.atomic_write(config_path, (json.dumps(config, indent=2) + "\n").encode())
    return {**config, "config": str(config_path), "weights": weights}


def _labels(graph, x, y):
    if y is not None:
        return np.asarray(y, np.int64)
    with torch.no_grad():
        return graph(torch.from_numpy(x)).argmax(1).numpy()


def _write(proto, db: Database, levels, calib: np.ndarray, out_path) -> list[dict]:
    """The int8 output: ``quantize`` calibrates activations on the model with the chosen
    compressed weights; then each layer's int8 weight, scales and int32 bias become the
    database's, packed below 8 bits (or as a sparse mask). Returns each layer's stored bytes,
    and the int8 weights by their name in the output."""
    from ..quantization import quantize
    fake = onnx.ModelProto()
    fake.CopyFrom(proto)
    chosen = {l.weight: db.weights[i][j] for i, (l, j) in enumerate(zip(db.layers, levels))}
    for t in fake.graph.initializer:
        if t.name in chosen:
            t.CopyFrom(numpy_helper.from_array(np.asarray(chosen[t.name], np.float32), t.name))
    biases = {l.bias: numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == l.bias))
              for l in db.layers if l.bias}
    with tempfile.TemporaryDirectory(prefix="edgetrain-evopress-") as tmp:
        onnx.save(fake, os.path.join(tmp, "fake.onnx"))
        quantize(os.path.join(tmp, "fake.onnx"), os.path.join(tmp, "int8.onnx"), calib)
        int8 = onnx.load(os.path.join(tmp, "int8.onnx"))
    qlayers = model_io.layers(int8)
    if [q.shape for q in qlayers] != [l.shape for l in db.layers]:
        raise RuntimeError("quantize changed the layers of the model; cannot map them")
    inits = {t.name: t for t in int8.graph.initializer}
    node_of = {n.name: n for n in int8.graph.node}
    builder = Builder()
    sizes, weights = [], {}
    for i, (l, q_l, j) in enumerate(zip(db.layers, qlayers, levels)):
        node = node_of[q_l.node]
        scale_name, x_scale = node.input[4], numpy_helper.to_array(inits[node.input[1]])
        if db.kind == "bits":
            q, s = db.ints[i][j]
        else:  # sparse float weights to int8, per output channel, zeros staying zero
            m = l.matrix(db.weights[i][j])
            s = (np.maximum(np.abs(m).max(1), 1e-12) / 127).astype(np.float32)
            q = np.clip(np.rint(m / s[:, None]), -127, 127).astype(np.int8)
        stored_q = weights[q_l.weight] = l.from_matrix(q)
        inits[scale_name].CopyFrom(numpy_helper.from_array(s.astype(np.float32), scale_name))
        if q_l.bias:
            b = np.rint(biases[l.bias].astype(np.float64) / (float(x_scale) * s.astype(np.float64)))
            inits[q_l.bias].CopyFrom(numpy_helper.from_array(b.astype(np.int32), q_l.bias))
        level = db.levels[j]
        before = set(builder.initializers)
        if db.kind == "bits" and level < 8:
            builder.int_weight(f"e{i}", q_l.weight, stored_q, level)
        elif db.kind == "sparsity" and -(-l.size // 8) + np.count_nonzero(q) + 1 < l.size:
            builder.sparse_weight(f"e{i}", q_l.weight, stored_q)
        else:
            inits[q_l.weight].CopyFrom(numpy_helper.from_array(stored_q, q_l.weight))
        weight_bytes = sum(numpy_helper.to_array(builder.initializers[n]).nbytes
                           for n in set(builder.initializers) - before if n.startswith(f"e{i}.")) or q.nbytes
        params = [node.input[k] for k in (4, 5)] + ([q_l.bias] if q_l.bias else [])
        sizes.append({"weight_bytes": weight_bytes,
                      "bytes": weight_bytes + sum(numpy_helper.to_array(inits[n]).nbytes for n in params)})
    model_io.write(int8, builder, out_path)
    return sizes, weights
