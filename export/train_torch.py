"""Host-side torch training (Adam, cross-entropy) for zoo models."""
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import progress as _progress


def _as_tensors(x, y):
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same number (≥ 1) of samples, "
                         f"got {len(x)} and {len(y)}")
    return x, y


def train(module: nn.Module, x, y, *, epochs=1, batch_size=64, lr=1e-3, seed=0,
          progress=True) -> list:
    """Train ``module`` in place on ``(x, y)`` with Adam and cross-entropy.

    Same seed, same data, same thread count → same weights: the batch order
    comes from a generator seeded with ``seed``, and any randomness inside the
    module from ``torch.manual_seed(seed)`` in a forked RNG (the caller's
    global state is left untouched). With ``progress``, a bar over the batches and
    one line per epoch go to stderr (:mod:`edgetrain.progress`). Returns one {"epoch", "loss", "acc", "seconds"} per epoch
    (loss and accuracy averaged over the epoch's batches, as trained).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive int")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a finite real > 0")
    x, y = _as_tensors(x, y)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    was_training = module.training
    history = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module.train()
            for epoch in range(1, epochs + 1):
                batches = torch.randperm(len(x), generator=order).split(batch_size)
                with _progress.bar(progress, total=len(batches), desc=f"torch epoch {epoch}/{epochs}",
                                   unit="batch") as bar:
                    history.append({"epoch": epoch, **_epoch(module, optimizer, x, y, batches, bar.update)})
                h = history[-1]
                _progress.note(progress, f"torch epoch {epoch}/{epochs}  loss {h['loss']:.4f}  acc {h['acc']:.4f}  "
                                         f"{h['seconds']:.1f}s")
    finally:
        module.train(was_training)
    return history


def _epoch(module, optimizer, x, y, batches, tick) -> dict:
    """One pass over ``batches`` (index tensors): mean loss, accuracy, seconds;
    ``tick(1)`` after each batch."""
    start = time.perf_counter()
    loss_sum, correct = 0.0, 0
    for idx in batches:
        logits = module(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == y[idx]).sum().item()
        tick(1)
    return {"loss": loss_sum / len(x), "acc": correct / len(x),
            "seconds": time.perf_counter() - start}


def accuracy(module: nn.Module, x, y, batch_size=512) -> float:
    """Fraction of samples whose argmax logit equals the label (eval mode)."""
    x, y = _as_tensors(x, y)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        correct = sum((module(xb).argmax(1) == yb).sum().item()
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    module.train(was_training)
    return correct / len(x)
