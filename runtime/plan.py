"""Which nodes a training method trains over and how its layers split at the cut
(DESIGN.md §4): shared by the Trainer and the memory predictor."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import compressed, int_autodiff
from .errors import ModelFormatError, TrainingError
from .model import Layer, Model

METHODS = ("bp", "zo", "elasticzo", "elasticzo-int8")


@dataclass
class Plan:
    """The training structure of a model for one method."""
    first: int           # nodes first:last are trained through (int8: inside the quantise/dequantise pair)
    last: int
    layers: list[Layer]  # trainable parametrised layers, in graph order
    cut: int             # how many trailing layers train with BP
    zo_layers: list[Layer]
    bp_layers: list[Layer]
    tail_start: int      # index of the first BP node (``last`` without a tail)
    zo_params: list[str]  # the tensors the ZO head perturbs and updates
    bp_params: list[str]  # the tensors the BP tail updates

    @property
    def tensors(self) -> list[str]:
        """Every tensor a step may change: the layers' weights and biases, and the codebooks
        and projections that codebook weights train through."""
        return list(dict.fromkeys([n for l in self.layers for n in (l.weight, l.bias) if n]
                                  + self.zo_params + self.bp_params))


def plan(model: Model, method: str, cut: int | str = 1, trainable=None, zo_layers: int = 0) -> Plan:
    """The training structure of ``model`` for ``method``: boundaries, layers, cut.

    Integer models train between the input QuantizeLinear and the output
    DequantizeLinear, and their BP tail must be one the integer backward passes;
    fp32 models train over the whole graph. ``trainable="codebooks"`` trains the
    codebooks and projections of a compressed file's codebook weights and nothing
    else; a codebook weight always trains through them (:mod:`edgetrain.compressed`).
    ``zo_layers``: the ZO head perturbs and trains only its first ``zo_layers`` layers (sparse
    ZO; 0: all of them), the rest of the head stays frozen. Raises TrainingError naming the
    argument when the model, ``trainable`` or ``cut`` do not fit.
    """
    if method not in METHODS:
        raise TrainingError(f"method={method!r} must be one of {METHODS}")
    if method == "elasticzo-int8":
        try:
            first, last = model.integer_span()
        except ModelFormatError:
            raise TrainingError("method='elasticzo-int8' needs an integer-only int8 model "
                                "(QuantizeLinear … DequantizeLinear); quantise it first") from None
    else:
        if any(k.numeric != "float" and k.numeric != "any" for k in model.kernels):
            raise TrainingError(f"method={method!r} trains fp32 models; this one is quantised "
                                "(use method='elasticzo-int8')")
        first, last = 0, len(model.nodes)
    layers = _trainable(model, trainable)
    n_tail = _resolve_cut(layers, method, cut)
    zo, bp = layers[:len(layers) - n_tail], layers[len(layers) - n_tail:]
    if zo_layers:
        zo = zo[:zo_layers]
        layers = zo + bp
    tail_start = bp[0].index if bp else last
    if method == "elasticzo-int8":
        for node, kernel in zip(model.nodes[tail_start:last], model.kernels[tail_start:last]):
            if not int_autodiff.differentiable(kernel):
                raise TrainingError(f"cut={cut!r}: the BP tail holds {node.op_type} (node {node.name!r}); integer "
                                    f"BP supports {int_autodiff.supported_ops()} — use a smaller cut")
    codebooks_only = trainable == "codebooks"
    return Plan(first, last, layers, n_tail, zo, bp, tail_start, _tensors(model, zo, codebooks_only),
                _tensors(model, bp, codebooks_only))


def _tensors(model, layers, codebooks_only):
    """What training changes in ``layers``: a weight (or its codebook and projection) and,
    unless ``codebooks_only``, the bias."""
    names = [t for l in layers for t in compressed.trainable_tensors(model, l.weight)
             + ([l.bias] if l.bias and not codebooks_only else [])]
    return list(dict.fromkeys(names))


def _trainable(model, trainable):
    layers = model.layers()
    if not layers:
        raise TrainingError("the model has no parametrised layers (Conv, Gemm, MatMul and their int8 forms)")
    if trainable is None:
        return layers
    if trainable == "codebooks":
        coded = [l for l in layers if isinstance(model.compressed.get(l.weight), compressed.Codebook)]
        if not coded:
            raise TrainingError("trainable='codebooks': the model stores no weight as a codebook (compress it with "
                                "edgetrain compress --method lr2vq, pq or cluster)")
        return coded
    if isinstance(trainable, str):
        raise TrainingError(f"trainable={trainable!r} must be a list of names or 'codebooks', not another string")
    wanted = set(trainable)
    known = {l.name for l in layers} | {l.weight for l in layers} | {l.bias for l in layers if l.bias}
    unknown = sorted(wanted - known)
    if unknown:
        raise TrainingError(f"trainable={unknown} names no parametrised layer or parameter; "
                            f"layers: {[l.name for l in layers]}")
    return [l for l in layers if wanted & {l.name, l.weight, l.bias}]


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
    if isinstance(cut, bool) or not isinstance(cut, (int, np.integer)) or not 0 <= cut <= n:
        raise TrainingError(f"cut={cut!r} must be an int in [0, {n}] (trailing layers trained with BP)")
    return int(cut)
