"""Host-side compression (DESIGN.md §5): LR²VQ with the PQ and clustering baselines
(:mod:`.vq`), and EvoPress with its uniform, DP and Hessian-trace baselines
(:mod:`.evopress`). Both write standard ONNX files whose decode subgraphs rebuild the
weights (:mod:`edgetrain.decode`), which onnxruntime runs as they are and
``edgetrain.load`` folds at load.

Each name loads its module on first use (PEP 562): both need torch.
"""
import importlib

_MODULES = {"lr2vq": "vq", "pq": "vq", "cluster": "vq", "compress_vq": "vq", "SkippedLayerWarning": "vq",
            "evopress": "evopress"}

__all__ = sorted(_MODULES)


def lr2vq(model_path, out_path, data, *, k=256, m=8, d=None, epochs=3, seed=0, skip=(), progress=True) -> dict:
    """LR²VQ (:func:`edgetrain.export.compress.vq.compress` with ``method="lr2vq"``)."""
    return _vq().compress(model_path, out_path, data, method="lr2vq", k=k, m=m, d=d, epochs=epochs, seed=seed,
                          skip=skip, progress=progress)


def pq(model_path, out_path, data, *, k=256, m=8, epochs=3, seed=0, skip=(), progress=True) -> dict:
    """Product quantisation of the raw sub-vectors, PQF-style (``method="pq"``)."""
    return _vq().compress(model_path, out_path, data, method="pq", k=k, m=m, epochs=epochs, seed=seed, skip=skip,
                          progress=progress)


def cluster(model_path, out_path, data, *, k=16, epochs=3, seed=0, skip=(), progress=True) -> dict:
    """Per-layer scalar k-means, as TFMOT's weight clustering (``method="cluster"``)."""
    return _vq().compress(model_path, out_path, data, method="cluster", k=k, epochs=epochs, seed=seed, skip=skip,
                          progress=progress)


def _vq():
    return importlib.import_module(f"{__name__}.vq")


def __getattr__(name):
    if name in ("compress_vq", "SkippedLayerWarning"):
        module = _vq()
        return module.compress if name == "compress_vq" else module.SkippedLayerWarning
    if name == "evopress":
        return importlib.import_module(f"{__name__}.evopress").evopress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MODULES])
