"""edgetrain: an edge / on-device training runtime.

The device side (this package's core) needs numpy and onnx only:
``edgetrain.load(path)`` gives a :class:`Model` that runs fp32 or integer-only
int8 ONNX graphs; :class:`Trainer` trains it on the device (backprop, ZO,
ElasticZO, ElasticZO-INT8); :func:`estimate_memory` predicts a step's peak.
Host tools live in ``edgetrain.export`` (torch, onnxruntime). Provable
unlearning lives in ``edgetrain.prover``; :func:`verify_proof` is the provider's
check (it needs the ``edgetrain_zk`` binding, ``pip install ./rust``).
"""
from .kernels import supported_ops
from .memory import estimate_memory
from .model import Model, ModelFormatError, load
from .trainer import Trainer, TrainingError
from .prover import ProofFormatError, verify_proof  # the binding itself is imported on first use

__all__ = ["load", "Model", "ModelFormatError", "supported_ops", "Trainer", "TrainingError", "estimate_memory",
           "verify_proof", "ProofFormatError"]
__version__ = "0.1.0"
