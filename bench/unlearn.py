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

int8 rows (``--int8``, on by default): both models quantised (onnxruntime's static
quantiser, MinMax on 256 training images, per channel and per tensor), and personalised
as the demo does (ElasticZO-INT8, cut 3, one pass over 468 of the first 500 training
images shifted 3 px right; the retrained model's pass skips the forget class). The device
step runs on the FC weights widened to int16 (``prover.unlearn``'s default, prover/int8.py);
"plain int8" is the step on the int8 weights themselves (``widen_bits=0``), where it fits
int8 at all (damp 100).

    python bench/unlearn.py [--forget-class 3] [--epochs 5] [--seed 0] [--no-int8] [--json]

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

# make_mask's c for the int8 rows: its default ½, and 2 (measured to forget on the personalised int8 models)
MASK_C = (0.5, 2.0)
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


def _int8_models(tmp, name, fp32_path, x_calib, user, forget_class, seed):
    """``{variant: path}``: the fp32 model quantised per channel / per tensor, and each
    personalised on the user's shifted images (without the forget class for the retrained one)."""
    from edgetrain import Trainer
    from edgetrain.export.quantization import quantize
    out = {}
    for per_channel in (True, False):
        kind = "per-channel" if per_channel else "per-tensor"
        q = str(Path(tmp) / f"{name}.{kind}.onnx")
        quantize(fp32_path, q, x_calib, per_channel=per_channel)
        out[f"int8 {kind}"] = q
        ux, uy = user
        if name == "retrained":
            ux, uy = ux[uy != forget_class], uy[uy != forget_class]
        trainer = Trainer(edgetrain.load(q), method="elasticzo-int8", cut=3, seed=seed)
        trainer.fit(ux[32:], uy[32:], epochs=1, progress=False)
        p = str(Path(tmp) / f"{name}.{kind}.personal.onnx")
        trainer.export(p)
        out[f"int8 {kind}, personalised"] = p
    return out


def _int8_rows(variant, model, retrained, sets, mask_forget, mask_retain, fisher_data) -> list[dict]:
    rows = [{"model": f"{variant}: original", **_accuracies(model, sets)},
            {"model": f"{variant}: retrained without the forget set", **_accuracies(retrained, sets)}]
    names = prover.target_layers(model)
    for (label, which, fraction), c in [(t, c) for t in TARGETS for c in MASK_C]:
        layers = names if which == "all" else names[-1:]
        mask = prover.make_mask(model, forget=mask_forget, retain=mask_retain, fraction=fraction, layers=layers, c=c)
        masked_only = edgetrain.Model(model.to_proto())
        for n, m in mask.items():
            masked_only.params[n][m] = 0
        label = f"{label}, mask c={c:g}"
        common = {"variant": variant, "target": label, "fraction": fraction, "c": c,
                  "weights": sum(m.size for m in mask.values()), "masked": sum(int(m.sum()) for m in mask.values())}
        rows.append({"model": f"{variant}: mask only, {label}", **common, **_accuracies(masked_only, sets)})
        for title, kwargs in ((f"group-OBS B=8 on int16-widened weights, damp 1, {label}", {"damp": 1.0}),
                              (f"group-OBS B=8 on plain int8 weights, damp 100, {label}",
                               {"damp": 100.0, "widen_bits": 0})):
            t0 = time.perf_counter()
            try:
                new, _ = prover.unlearn(model, mask, data=fisher_data, block=8, **kwargs)
            except ValueError as e:  # a compensated weight left its integer type
                rows.append({"model": f"{variant}: {title}", **common, "error": str(e).split(";")[0]})
                continue
            rows.append({"model": f"{variant}: {title}", **common, "block": 8,
                         "unlearn_seconds": time.perf_counter() - t0, **_accuracies(new, sets)})
    return rows


def _accuracies(model, sets) -> dict:
    return {name: float((model.run(x).argmax(1) == y).mean()) for name, (x, y) in sets.items()}


def run(forget_class=3, epochs=5, seed=0, mask_samples=300, fisher_samples=1000, int8=True) -> dict:
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

    int8_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = _torch_model(xt, yt, epochs, seed, Path(tmp) / "full.onnx")
        retrained = _torch_model(*retain, epochs, seed, Path(tmp) / "retrained.onnx")
        train_seconds = time.perf_counter() - t0
        if int8:
            user = (datasets.shifted(xt[:500]), yt[:500])
            full8 = _int8_models(tmp, "full", str(Path(tmp) / "full.onnx"), xt[:256], user, forget_class, seed)
            re8 = _int8_models(tmp, "retrained", str(Path(tmp) / "retrained.onnx"), xt[:256], user, forget_class,
                               seed)
            for variant, path in full8.items():
                int8_rows += _int8_rows(variant, edgetrain.load(path), edgetrain.load(re8[variant]), sets,
                                        mask_forget, mask_retain, fisher_data)
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
            "torch_train_seconds": train_seconds, "rows": rows + int8_rows}


def table(result) -> str:
    lines = [f"lenet5 / MNIST, forget class {result['forget_class']} ({result['forget_train_samples']} training "
             f"samples); mask from {result['mask_samples']} forget + retain samples, Fisher from "
             f"{result['fisher_samples']} retain samples",
             "", "| model | masked / target weights | forget set (train) | forget class (test) | retain (test) |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        share = f"{r['masked']} / {r['weights']}" if "masked" in r else "–"
        if "error" in r:
            lines.append(f"| {r['model']} | {share} | {r['error']} | | |")
            continue
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
    p.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.forget_class, args.epochs, args.seed, args.mask_samples, args.fisher_samples,
                 not args.no_int8)
    print(table(result), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
