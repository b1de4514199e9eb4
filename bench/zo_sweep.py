"""The sweep behind the ZO head's defaults (issue #11): personalisation accuracy of one
ElasticZO configuration after 1 and ``--passes`` passes over 500 user samples, beside the
frozen head (the tail alone) and backprop restricted to chosen layers (an oracle: what
the exact gradient of those layers would buy in the same steps).

Same models, data and batch order as ``bench/train.py`` (its ``prepare``: lenet5
pretrained on clean MNIST with torch, fp32 and int8 ONNX; a permutation per pass from
``default_rng([seed, pass])``, batches of 32). Each configuration is a JSON object of
Trainer arguments plus ``heads``: ``"tail"`` (frozen head), ``"bp"`` (full backprop),
``"bp:0,4"`` (backprop on those layer indices only; both on the fp32 model) or omitted (the Trainer's defaults).

    python bench/zo_sweep.py '{"method": "elasticzo", "cut": 1}' \\
        '{"method": "elasticzo", "cut": 1, "heads": "tail"}' \\
        '{"method": "elasticzo", "cut": 1, "zo_layers": 0, "zo_lr": 0.02}' --seeds 3 --shifts invert contrast

Without configurations it runs ``GRID``, the levers the defaults were chosen from
(about an hour on one core). Prints one JSON line per configuration: mean accuracy %
over the seeds after 1 pass and after the last, per shift.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as bench_train  # noqa: E402  (bench/train.py: prepare, batch order)

BATCH = bench_train.BATCH
_E, _I = "elasticzo", "elasticzo-int8"
GRID = [
    {"method": _E, "cut": 1, "heads": "bp"},
    *({"method": m, "cut": c, "heads": "tail"} for m in (_E, _I) for c in (1, 2)),
    # where the gain lives: backprop on the tail plus one head layer
    *({"method": _E, "cut": 1, "heads": f"bp:{i},4"} for i in range(4)),
    # dense ZO (every head layer) at the steps before and after: the old defaults and larger
    *({"method": _E, "cut": c, "zo_layers": 0, "zo_lr": lr} for c in (1, 2) for lr in (0.02, 0.05, 0.1)),
    *({"method": _E, "cut": 1, "zo_layers": 0, "zo_lr": 0.02, "q": q} for q in (4,)),
    # sparse ZO: the head's first layer(s)
    *({"method": _E, "cut": c, "zo_layers": k, "zo_lr": lr} for c in (1, 2) for k in (1, 2)
      for lr in (0.02, 0.05, 0.1, 0.2)),
    *({"method": _E, "cut": 1, "zo_layers": 1, "zo_lr": 0.05, "q": q} for q in (1, 4)),
    *({"method": _I, "cut": c, "zo_layers": 0, "zo_bits": b} for c in (1, 2) for b in (1, 3)),
    *({"method": _I, "cut": c, "zo_layers": k, "zo_bits": b} for c in (1, 2) for k in (1, 2) for b in (3, 4, 5)),
]


def run(workdir: Path, cfg: dict, shift: str, seed: int, passes: int) -> list[float]:
    """Accuracy on the shift's test set after the first pass and after the last."""
    import edgetrain
    from edgetrain.trainer import Trainer
    cfg = dict(cfg)
    method, cut, heads = cfg.pop("method"), cfg.pop("cut"), cfg.pop("heads", None)
    int8 = method == _I and not (heads or "").startswith("bp")  # backprop runs on the fp32 model
    model = edgetrain.load(str(workdir / f"pretrained_{seed}.{'int8.' if int8 else ''}onnx"), float_gemm=not int8)
    names = [l.name for l in model.layers()]
    trainable = None
    if heads == "tail":
        trainable = names[-cut:]
    elif heads == "bp":
        method = "bp"
    elif heads and heads.startswith("bp:"):
        method, trainable = "bp", [names[int(i)] for i in heads[3:].split(",")]
    if method == "bp":
        cfg = {}
    trainer = Trainer(model, method=method, cut=cut, batch_size=BATCH, seed=seed, trainable=trainable, **cfg)
    d = np.load(workdir / "data.npz")
    x, y, xt, yt = (d[f"{k}_{shift}"] for k in ("x_user", "y_user", "x_test", "y_test"))
    per_epoch, accs = len(x) // BATCH, []
    for e in range(passes):
        order = np.random.default_rng([seed, e]).permutation(len(x))
        for b in range(per_epoch):
            idx = order[b * BATCH:(b + 1) * BATCH]
            trainer.step(x[idx], y[idx])
        if e in (0, passes - 1):
            accs.append(trainer.evaluate(xt, yt)["accuracy"])
    return accs * (3 - len(accs))  # one pass: its accuracy is the first and the last


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", help="JSON Trainer arguments (+ heads); default: GRID")
    p.add_argument("--shifts", nargs="+", default=["invert", "contrast"], choices=bench_train.SHIFTS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--pretrain-epochs", type=int, default=5)
    args = p.parse_args(argv)
    configs = [json.loads(c) for c in args.configs] or GRID
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="edgetrain-zo-sweep-") as tmp:
        workdir = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):
            bench_train.prepare(workdir, seeds, args.pretrain_epochs, args.shifts)
        for cfg in configs:
            res = {}
            for shift in args.shifts:
                runs = [run(workdir, cfg, shift, s, args.passes) for s in seeds]
                res[shift] = [round(100 * float(np.mean([r[i] for r in runs])), 1) for i in range(2)]
            print(json.dumps({"config": cfg, "accuracy_1_and_last": res}), flush=True)


if __name__ == "__main__":
    main()
