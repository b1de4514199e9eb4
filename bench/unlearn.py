"""Unlearning benchmark: ZK-APEX (mask + group-OBS) on lenet5 / MNIST, one class forgotten.

A lenet5 trained with torch (Adam, ``--epochs`` epochs, the demo's recipe) on
the 4,000 training samples is asked to forget every training sample of class
``--forget-class``. The provider's mask (``make_mask``) scores the target
weights on up to ``--mask-samples`` forget and retain training samples; the
device's Fisher (``unlearn``) uses up to ``--fisher-samples`` retain samples.
For each target (all fully connected weights at ``fraction`` 4 %, the last one
at 10 %) and block size, the table gives accuracy on

* the forget set (the training samples of the class), the class in the test
  set, and the other classes of the test set (retain),

for the model before, after masking alone (no compensation), after the
group-OBS step (the fixed-point weights the proof is about), and for the gold
standard: the same recipe retrained by torch without the forget data.

    python bench/unlearn.py [--forget-class 3] [--epochs 5] [--seed 0] [--json]

The table goes to stderr; with --json one JSON object is the last stdout line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgetrain
from edgetrain import prover
from edgetrain.export import datasets

# (label, target layers: "all" FC weights or the "last" one, mask fraction)
TARGETS = (("all FC", "all", 0.04), ("last FC", "last", 0.10))
BLOCKS = (64, 8)


def _torch_model(x, y, epochs, seed, path):
    import torch
    from edgetrain.export import build, export_onnx
    from edgetrain.export.train_torch import train
    torch.set_num_threads(2)
    module = build("lenet5", seed=seed)
    train(module, x, y, epochs=epochs, lr=2e-3, seed=seed, progress=False)
    export_onnx(module, path, real_inputs=x[:64])
    return edgetrain.load(path)


def _accuracies(model, sets) -> dict:
    return {name: float((model.run(x).argmax(1) == y).mean()) for name, (x, y) in sets.items()}


def run(forget_class=3, epochs=5, seed=0, mask_samples=300, fisher_samples=1000) -> dict:
    data = datasets.load("mnist")
    xt, yt = data.x_train, data.y_train
    is_forget = yt == forget_class
    forget, retain = (xt[is_forget], yt[is_forget]), (xt[~is_forget], yt[~is_forget])
    sets = {"forget_train": forget,
            "forget_test": (data.x_test[data.y_test == forget_class], data.y_test[data.y_test == forget_class]),
            "retain_test": (data.x_test[data.y_test != forget_class], data.y_test[data.y_test != forget_class])}
    rng = np.random.default_rng(seed)
    pick = lambda xy, n: tuple(a[np.sort(rng.permutation(len(xy[0]))[:n])] for a in xy)
    mask_forget, mask_retain, fisher_data = pick(forget, mask_samples), pick(retain, mask_samples), \
        pick(retain, fisher_samples)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = _torch_model(xt, yt, epochs, seed, Path(tmp) / "full.onnx")
        retrained = _torch_model(*retain, epochs, seed, Path(tmp) / "retrained.onnx")
        train_seconds = time.perf_counter() - t0
    rows = [{"model": "original", **_accuracies(model, sets)},
            {"model": "retrained without the forget set (torch)", **_accuracies(retrained, sets)}]
    names = prover.target_layers(model)
    for label, which, fraction in TARGETS:
        layers = names if which == "all" else names[-1:]
        t0 = time.perf_counter()
        mask = prover.make_mask(model, forget=mask_forget, retain=mask_retain, fraction=fraction, layers=layers)
        mask_seconds = time.perf_counter() - t0
        masked_only = edgetrain.Model(model.to_proto())
        for n, m in mask.items():
            masked_only.params[n][m] = 0.0
        common = {"target": label, "fraction": fraction, "weights": sum(m.size for m in mask.values()),
                  "masked": sum(int(m.sum()) for m in mask.values())}
        rows.append({"model": f"mask only, {label}", **common, "mask_seconds": mask_seconds,
                     **_accuracies(masked_only, sets)})
        for block in BLOCKS:
            t0 = time.perf_counter()
            new, _ = prover.unlearn(model, mask, data=fisher_data, block=block)
            rows.append({"model": f"group-OBS B={block}, {label}", **common, "block": block,
                         "unlearn_seconds": time.perf_counter() - t0, **_accuracies(new, sets)})
    return {"forget_class": forget_class, "epochs": epochs, "seed": seed, "mask_samples": mask_samples,
            "fisher_samples": len(fisher_data[0]), "forget_train_samples": len(forget[0]),
            "torch_train_seconds": train_seconds, "rows": rows}


def table(result) -> str:
    lines = [f"lenet5 / MNIST, forget class {result['forget_class']} ({result['forget_train_samples']} training "
             f"samples); mask from {result['mask_samples']} forget + retain samples, Fisher from "
             f"{result['fisher_samples']} retain samples",
             "", "| model | masked / target weights | forget set (train) | forget class (test) | retain (test) |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        share = f"{r['masked']} / {r['weights']}" if "masked" in r else "–"
        lines.append(f"| {r['model']} | {share} | {r['forget_train']:.1%} | {r['forget_test']:.1%} | "
                     f"{r['retain_test']:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--forget-class", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-samples", type=int, default=300)
    p.add_argument("--fisher-samples", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.forget_class, args.epochs, args.seed, args.mask_samples, args.fisher_samples)
    print(table(result), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
