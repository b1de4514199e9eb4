"""edgetrain: an edge / on-device training runtime.

The device side (this package's core) needs numpy and onnx only:
``edgetrain.load(path)`` gives a :class:`Model` that runs fp32 or integer-only
int8 ONNX graphs; :class:`Trainer` trains it on the device (backprop, ZO,
ElasticZO, ElasticZO-INT8); :func:`estimate_memory` predicts a step's peak.
Host tools live in ``edgetrain.export`` (torch, onnxruntime). Provable
unlearning lives in ``edgetrain.prover``; :func:`verify_proof` is the provider's
check (it needs the ``edgetrain_zk`` binding, ``pip install ./rust``).

``import edgetrain`` loads neither subpackage: ``edgetrain.prover``,
``edgetrain.export``, ``verify_proof`` and ``ProofFormatError`` are imported on
first access (a module ``__getattr__``, PEP 562).
"""
import importlib

from .kernels import supported_ops
from .memory import estimate_memory
from .model import Model, ModelFormatError, load
from .trainer import Trainer, TrainingError

_SUBPACKAGES = ("prover", "export")
_FROM_PROVER = ("verify_proof", "ProofFormatError")

__all__ = ["load", "Model", "ModelFormatError", "supported_ops", "Trainer", "TrainingError", "estimate_memory",
           *_FROM_PROVER]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FROM_PROVER:
        return getattr(importlib.import_module(f"{__name__}.prover"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBPACKAGES, *_FROM_PROVER])
