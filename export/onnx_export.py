"""torch module → single-file ONNX model, checked against torch with onnxruntime."""
import collections
import importlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from . import zoo

RTOL = 1e-4  # max |onnxruntime − torch| relative to max |torch output|
CHECK_BATCHES = (1, 8)
OPSETS = range(17, 21)  # 20 is the TorchScript exporter's highest


class ExportMismatchError(ValueError):
    """onnxruntime's output differs from torch's by more than ``RTOL``."""


def load_module(source, seed: int = 0) -> nn.Module:
    """The module named by ``source``: a zoo name, "package.module:callable", or a module.

    Zoo models and callables are built under ``torch.manual_seed(seed)`` inside a
    forked RNG, so the caller's random state is untouched.
    """
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, str):
        raise TypeError(f"source={source!r} must be a zoo name, a 'package.module:callable' "
                        f"string or a torch.nn.Module, got {type(source).__name__}")
    if ":" not in source:
        return zoo.build(source, seed)
    module_name, _, attr = source.partition(":")
    if not module_name or not attr:
        raise ValueError(f"source={source!r} must look like 'package.module:callable'")
    try:
        target = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"source={source!r}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"source={source!r}: {target.__name__!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"source={source!r}: {attr!r} is not callable")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = target()
    if not isinstance(module, nn.Module):
        raise TypeError(f"source={source!r}: {attr}() returned {type(module).__name__}, "
                        "expected a torch.nn.Module")
    return module


def export_onnx(source, out_path, *, input_shape=None, opset=17, check=True,
                real_inputs=None, seed=0) -> dict:
    """Export ``source`` to ``out_path`` as one self-contained ONNX file.

    The graph has one input "input" of shape (batch, *input_shape) with a symbolic
    batch dimension and one output "logits"; it is traced in eval mode (BatchNorm
    uses its running statistics). ``input_shape`` is the per-sample shape,
    default ``zoo.INPUT_SHAPE``. With ``check``, onnxruntime and torch run on
    random inputs of batch 1 and 8 (drawn from ``seed``) and on ``real_inputs``
    (N × input_shape); a relative error above ``RTOL`` raises ExportMismatchError.

    Returns {"path", "opset", "ops" (op type → count), "max_rel_err" (None
    without check), "n_params", "input_shape"}.
    """
    module = load_module(source, seed)
    input_shape = tuple(zoo.INPUT_SHAPE if input_shape is None else input_shape)
    if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape={input_shape!r} must be a tuple of positive ints "
                         "(one sample, without the batch dimension)")
    if opset not in OPSETS:
        raise ValueError(f"opset={opset!r} must be an int from {OPSETS[0]} to {OPSETS[-1]}")
    if real_inputs is not None:
        real_inputs = np.asarray(real_inputs, dtype=np.float32)
        if real_inputs.shape[1:] != input_shape or len(real_inputs) == 0:
            raise ValueError(f"real_inputs has shape {real_inputs.shape}, expected "
                             f"(N, {', '.join(map(str, input_shape))}) with N >= 1")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    was_training = module.training
    module.eval()
    try:
        # batch 2 for tracing: a batch of 1 lets the tracer specialise size-1 broadcasts
        example = torch.from_numpy(rng.standard_normal((2, *input_shape), dtype=np.float32))
        with torch.no_grad():
            if not isinstance(module(example), torch.Tensor):
                raise TypeError(f"source={source!r}: forward() must return one tensor")
            _trace(module, example, out_path, opset)
        model = onnx.load(out_path)
        onnx.checker.check_model(model, full_check=True)
        max_rel_err = None
        if check:
            batches = [rng.standard_normal((b, *input_shape), dtype=np.float32)
                       for b in CHECK_BATCHES]
            if real_inputs is not None:
                batches.append(real_inputs)
            max_rel_err = _max_rel_err(module, out_path, batches)
            if max_rel_err > RTOL:
                raise ExportMismatchError(
                    f"onnxruntime and torch outputs of {out_path} differ: max relative "
                    f"error {max_rel_err:.3g} > {RTOL:g}")
    finally:
        module.train(was_training)

    return {
        "path": str(out_path),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ops": dict(collections.Counter(n.op_type for n in model.graph.node)),
        "max_rel_err": max_rel_err,
        "n_params": sum(p.numel() for p in module.parameters()),
        "input_shape": list(input_shape),
    }


def _trace(module, example, out_path, opset):
    # The TorchScript exporter: the dynamo one refuses opset < 18 and turns
    # AdaptiveAvgPool2d(1) into ReduceMean, which has no QLinear form.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            module, (example,), str(out_path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True)


def _max_rel_err(module, onnx_path, batches) -> float:
    """Largest ``max|ort − torch| / max|torch|`` over the batches."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in batches:
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        got = session.run(None, {"input": x})[0]
        if got.shape != expected.shape:
            return float("inf")
        scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.abs(got - expected).max()) / scale)
    return worst
