"""The `edgetrain` command line.

Every command takes ``--json``: its results then go to stdout as one JSON
object on the last line, and everything else to stderr. Host commands
(export, quantize, demo) import torch/onnxruntime lazily, so the device-side
install runs ``run`` and ``info`` with numpy and onnx alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import datasets


def _log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# -- commands ------------------------------------------------------------------

def cmd_export(args) -> dict:
    from .export import export_onnx
    real = datasets.load("mnist").x_test[:64] if args.check_mnist else None
    return export_onnx(args.source, args.output, opset=args.opset, check=not args.no_check,
                       real_inputs=real, seed=args.seed)


def cmd_quantize(args) -> dict:
    from .export import quantize
    x, _ = datasets.load_arrays(args.calib)
    if args.samples < 1:
        raise ValueError(f"--samples={args.samples} must be ≥ 1")
    return quantize(args.model, args.output, x[:args.samples], method=args.method,
                    per_channel=not args.per_tensor, fmt=args.format, percentile=args.percentile)


def cmd_info(args) -> dict:
    from . import load
    model = load(args.model)
    return {"path": args.model, "inputs": [{"name": n, "shape": list(s)} for n, s, _ in model.inputs],
            "ops": dict(model.op_counts()), "integer_only": model.integer_only,
            "n_params": int(sum(np.size(v) for v in model.params.values()))}


def cmd_run(args) -> dict:
    """Run a model over a data set; report accuracy when labels exist, and time per sample."""
    from . import load
    model = load(args.model)
    x, y = datasets.load_arrays(args.data, split=args.split)
    start = time.perf_counter()
    logits = np.concatenate([model.run(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
    seconds = time.perf_counter() - start
    result = {"model": args.model, "samples": len(x), "seconds": seconds,
              "ms_per_sample": 1e3 * seconds / len(x)}
    if y is not None:
        result["accuracy"] = float((logits.argmax(1) == y).mean())
    return result


def cmd_demo(args) -> dict:
    from .export.demo import run_demo
    return run_demo(workdir=args.workdir, epochs=args.epochs, seed=args.seed)


def cmd_train(args) -> dict:
    """Train a model on the device runtime; optional checkpoint/resume and ONNX export."""
    from . import Trainer, load
    x, y = datasets.load_arrays(args.data, split="train", need_labels=True)
    val = datasets.load_arrays(args.val, split="test", need_labels=True) if args.val else None
    if args.resume:
        trainer = Trainer.load(args.resume)
    else:
        trainer = Trainer(load(args.model), method=args.method, cut=args.cut, lr=args.lr, zo_lr=args.zo_lr,
                          eps=args.eps, batch_size=args.batch_size, seed=args.seed, q=args.q)
    history = trainer.fit(x, y, epochs=args.epochs, val=val, checkpoint=args.checkpoint)
    result = {"model": args.model, "method": trainer.method, "cut": trainer.cut, "steps": trainer.step_count,
              "history": history}
    if args.output:
        trainer.export(args.output)
        result["exported"] = args.output
    return result


def _not_yet(issue: int, what: str):
    def cmd(args):
        raise NotImplementedError(f"{what} is not built yet (issue #{issue})")
    return cmd


# -- parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgetrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--json", action="store_true", help="print results as one JSON object (last stdout line)")
        s.set_defaults(func=func)
        return s

    s = add("demo", cmd_demo, "the whole pipeline on the built-in MNIST set: train, export, quantise, run int8")
    s.add_argument("--workdir", default="edgetrain-demo", help="where the model files go (default: %(default)s)")
    s.add_argument("--epochs", type=int, default=5, help="host training epochs (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)

    s = add("export", cmd_export, "torch module (zoo name or package.module:callable) → ONNX, checked with onnxruntime")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check")
    s.add_argument("--check-mnist", action="store_true", help="also check on 64 MNIST test images")

    s = add("quantize", cmd_quantize, "static int8 post-training quantisation with a calibration set")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--calib", required=True, help=f"an .npz with x, or a built-in set {datasets.BUILTIN}")
    s.add_argument("--samples", type=int, default=256, help="calibration samples used (default: %(default)s)")
    s.add_argument("--method", default="minmax", choices=["minmax", "percentile"])
    s.add_argument("--percentile", type=float, default=99.999)
    s.add_argument("--format", default="qoperator", choices=["qoperator", "qdq"])
    s.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")

    s = add("info", cmd_info, "what a model holds and how the runtime will run it")
    s.add_argument("model")

    s = add("run", cmd_run, "run a model on our runtime over a data set")
    s.add_argument("model")
    s.add_argument("--data", required=True, help=f"an .npz with x [and y], or a built-in set {datasets.BUILTIN}")
    s.add_argument("--split", default="test", choices=["train", "test"], help="split of a built-in set")
    s.add_argument("--batch-size", type=int, default=64)

    s = add("train", cmd_train, "train a model on the device runtime (bp, zo, elasticzo, elasticzo-int8)")
    s.add_argument("model")
    s.add_argument("--data", required=True, help=f"an .npz with x and y, or a built-in set {datasets.BUILTIN}")
    s.add_argument("--val", help="validation data (.npz with x, y, or a built-in set's test split)")
    s.add_argument("--method", default="elasticzo", choices=["bp", "zo", "elasticzo", "elasticzo-int8"])
    s.add_argument("--cut", type=int, default=1, help="trailing layers trained with backprop (default: %(default)s)")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--lr", type=float, help="BP step (int8: update bits); default per method")
    s.add_argument("--zo-lr", type=float, help="ZO step (int8: a power of two); default per method")
    s.add_argument("--eps", type=float, help="ZO perturbation (int8: in weight LSBs)")
    s.add_argument("--q", type=int, default=1, help="ZO directions per step")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", help="save a checkpoint here after every epoch")
    s.add_argument("--resume", help="continue from this checkpoint (MODEL is then only a label)")
    s.add_argument("-o", "--output", help="export the trained model as ONNX here")
    for name, issue in (("unlearn", 4), ("prove", 4), ("verify", 4)):
        add(name, _not_yet(issue, f"`edgetrain {name}`"), f"ZK-APEX {name} (issue #{issue}, not built yet)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        _log(f"edgetrain {args.command}: error: {e}")
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        return 2
    if args.json:
        print(json.dumps({"ok": True, **result}, default=_jsonable))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
