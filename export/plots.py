"""Pictures for people: training curves (``edgetrain train --plot``) and the demo
report's charts. matplotlib only (off-screen, the Agg backend); each function
writes one file in the format its extension names.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FORMATS = (".png", ".svg", ".pdf")


def check_format(path, flag: str) -> None:
    """A ValueError naming ``flag`` unless ``path`` ends in a format we write."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{flag} {os.fspath(path)!r}: expected a file name ending in {', '.join(FORMATS)}")


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, format=os.path.splitext(os.fspath(path))[1][1:].lower(), dpi=120)
    plt.close(fig)


def training_curves(history: list[dict], path, title: str = "") -> None:
    """Loss and accuracy per epoch, on the training batches and (if the history has
    them) on the validation set, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "loss", "cross-entropy"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [h[key] for h in history], "o-", label="train (during the epoch)")
        if "val_" + key in history[0]:
            ax.plot(epochs, [h["val_" + key] for h in history], "s--", label="validation (after the epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def bars(groups: dict[str, list[float]], labels: list[str], path, *, ylabel: str, title: str,
         percent: bool = False) -> None:
    """Grouped bars: one colour per entry of ``groups`` (e.g. before / after), one
    group per label (e.g. per class)."""
    fig, ax = plt.subplots(figsize=(min(10, 2 + 0.3 * len(labels) * len(groups)), 3.5))
    width = 0.8 / len(groups)
    for i, (series, values) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [100 * v if percent else v for v in values], width, label=series)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars reach the top
    _save(fig, path)
