"""Training checkpoints: one ``.npz`` file written atomically and checked when read.

The file holds the model as it runs (ONNX bytes), the trainer's state as JSON
(``format``, ``config``, ``step``), the trained tensors as ``param/<name>`` and a
SHA-256 over all of it. Writing goes to a temp file in the same folder, is
fsynced and renamed over the target, so a crash leaves the old checkpoint or
the new one, never a mix; reading verifies the digest, so a damaged file is a
``TrainingError``, never a silently different model.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import onnx

from .datasets import read_npz
from .errors import TrainingError

FORMAT = 4  # 3: ZO steps relative to each layer (zo_lr, eps), int8 zo_bits and q; 4: zo_layers


def _digest(model: bytes, state: bytes, params: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for part in (model, state):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.digest()


def save(path: str | os.PathLike, model: onnx.ModelProto, config: dict, step: int,
         params: dict[str, np.ndarray]) -> None:
    """Write a checkpoint atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    model_bytes = model.SerializeToString()
    state = json.dumps({"format": FORMAT, "config": config, "step": int(step)}).encode()
    buf = io.BytesIO()
    np.savez(buf, model=np.frombuffer(model_bytes, dtype=np.uint8), state=np.frombuffer(state, dtype=np.uint8),
             sha256=np.frombuffer(_digest(model_bytes, state, params), dtype=np.uint8),
             **{f"param/{n}": v for n, v in params.items()})
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # named by the checkpoint's path, not the temp file's
        raise TrainingError(f"checkpoint {path!r} cannot be written ({e.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict, int, dict[str, np.ndarray]]:
    """``(model, config, step, params)`` of a checkpoint that :func:`save` wrote.
    TrainingError, naming the file, for anything else: missing, truncated, damaged
    (digest), another format version."""
    path = os.fspath(path)
    try:
        arrays = read_npz(path, "checkpoint")
    except ValueError as e:
        raise TrainingError(str(e)) from None
    missing = sorted({"model", "state", "sha256"} - set(arrays))
    if missing:
        raise TrainingError(f"checkpoint {path!r} is not an edgetrain checkpoint: it lacks {missing}")
    model_bytes, state_bytes, digest = (arrays[k].tobytes() for k in ("model", "state", "sha256"))
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    if digest != _digest(model_bytes, state_bytes, params):
        raise TrainingError(f"checkpoint {path!r} is damaged: its contents do not match its SHA-256")
    try:
        state = json.loads(state_bytes)
        version, config, step = state["format"], state["config"], int(state["step"])
        model = onnx.load_model_from_string(model_bytes)
    except Exception as e:
        raise TrainingError(f"checkpoint {path!r} has an unreadable state ({type(e).__name__}: {e})") from None
    if version != FORMAT:
        raise TrainingError(f"checkpoint {path!r} has format {version!r}; this edgetrain reads format {FORMAT}")
    return model, config, step, params
