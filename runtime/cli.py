"""The `edgetrain` command line.

Every command takes ``--json``: its results then go to stdout as one JSON
object on the last line, and everything else to stderr. Exit codes: 0 done,
1 a negative outcome (``verify``: the proof does not verify, ``"verified":
false``), 2 an error in the arguments or files. Host commands (export,
quantize, demo) and the built-in data sets import the host package lazily, so
the device-side install (numpy and onnx) runs every other command; there a
host command exits 2 with one line naming the extra to install.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time

import numpy as np

from . import datasets
from .trainer import DEFAULTS

HOST_EXTRA = 'pip install "edgetrain[host]"'


def _log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def _host(module: str, what: str):
    """``edgetrain.{module}`` from the host package; on a device install (no torch,
    onnxruntime, ...) an ImportError in one line naming the extra."""
    try:
        return importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] == __package__:
            raise  # our own module is missing: a broken install, not a device
        raise ImportError(f"{what} needs the host tools ({e.name} is not installed): {HOST_EXTRA}") from None


def _data(spec: str, *, split: str = "train", need_labels: bool = False):
    """``(x, y)`` from a built-in set's ``split`` (host side) or an ``.npz`` file."""
    if spec in datasets.BUILTIN:
        s = _host("export.datasets", f"the built-in data set {spec!r}").load(spec)
        return (s.x_train, s.y_train) if split == "train" else (s.x_test, s.y_test)
    return datasets.load_npz(spec, need_labels=need_labels)


# -- commands ------------------------------------------------------------------

def cmd_export(args) -> dict:
    export = _host("export", "export")
    real = _data("mnist", split="test")[0][:64] if args.check_mnist else None
    return export.export_onnx(args.source, args.output, opset=args.opset, check=not args.no_check,
                              real_inputs=real, seed=args.seed)


def cmd_quantize(args) -> dict:
    export = _host("export", "quantize")
    x, _ = _data(args.calib)
    if args.samples < 1:
        raise ValueError(f"--samples={args.samples} must be ≥ 1")
    return export.quantize(args.model, args.output, x[:args.samples], method=args.method,
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
    x, y = _data(args.data, split=args.split)
    start = time.perf_counter()
    logits = np.concatenate([model.run(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
    seconds = time.perf_counter() - start
    result = {"model": args.model, "samples": len(x), "seconds": seconds,
              "ms_per_sample": 1e3 * seconds / len(x)}
    if y is not None:
        result["accuracy"] = float((logits.argmax(1) == y).mean())
    return result


def cmd_demo(args) -> dict:
    return _host("export.demo", "demo").run_demo(workdir=args.workdir, epochs=args.epochs, seed=args.seed)


def cmd_train(args) -> dict:
    """Train a model on the device runtime; optional checkpoint/resume and ONNX export."""
    from . import Trainer, load
    x, y = _data(args.data, split="train", need_labels=True)
    val = _data(args.val, split="test", need_labels=True) if args.val else None
    if args.resume:
        trainer = Trainer.load(args.resume)
    else:
        hyper = {k: getattr(args, k) for k in ("lr", "zo_lr", "eps", "q", "lr_bits", "zo_bits", "eps_lsb")
                 if getattr(args, k) is not None}
        trainer = Trainer(load(args.model), method=args.method, cut=args.cut, batch_size=args.batch_size,
                          seed=args.seed, **hyper)
    history = trainer.fit(x, y, epochs=args.epochs, val=val, checkpoint=args.checkpoint)
    result = {"model": args.model, "method": trainer.method, "cut": trainer.cut, "steps": trainer.step_count,
              "history": history}
    if args.output:
        trainer.export(args.output)
        result["exported"] = args.output
    return result


# -- provable unlearning (DESIGN.md §6) ------------------------------------------
# Files: a mask is an .npz of bool arrays keyed by weight name (True = remove); a
# witness is the versioned .npz of LayerWitness.save; `prove -o P` writes three
# files: P (proof), P.inputs (public inputs) and P.vk (verifying key), each in
# prover.proof's versioned byte format.

class ProverError(Exception):
    """The binding's backend failed (halo2, or a Rust panic it caught): its RuntimeError."""


@contextlib.contextmanager
def _binding_errors():
    """Calls into the edgetrain_zk binding: its RuntimeError becomes a ProverError, which
    main reports in one line (exit 2) like any other error."""
    try:
        yield
    except RuntimeError as e:
        raise ProverError(f"the prover failed: {e}") from None


def _proof_files(proof: str) -> tuple[str, str, str]:
    return proof, f"{proof}.inputs", f"{proof}.vk"


def _load_mask(path: str) -> dict[str, np.ndarray]:
    mask = {name: a.astype(bool) for name, a in datasets.read_npz(path, "--mask").items()}
    if not mask:
        raise ValueError(f"--mask {path!r} holds no arrays; expected one bool array per weight name")
    return mask


def cmd_mask(args) -> dict:
    """Provider: score the target weights on forget vs retain data and save the mask."""
    from . import load
    from .prover import make_mask
    model = load(args.model)
    forget = _data(args.forget, need_labels=True)
    retain = _data(args.retain, need_labels=True)
    mask = make_mask(model, forget=forget, retain=retain, fraction=args.fraction, layers=args.layers)
    with open(args.output, "wb") as f:  # np.savez(path) would append .npz to another name
        np.savez(f, **mask)
    return {"mask": args.output, "layers": {n: {"shape": list(m.shape), "masked": int(m.sum())}
                                            for n, m in mask.items()}}


def cmd_unlearn(args) -> dict:
    """Device: the group-OBS step on the masked layers; writes the new model and the witness."""
    import onnx
    from . import load
    from .prover import LayerWitness, unlearn
    model = load(args.model)
    mask = _load_mask(args.mask)
    data = _data(args.data, need_labels=True)
    start = time.perf_counter()
    new, witnesses = unlearn(model, mask, data=data, block=args.block, damp=args.damp)
    seconds = time.perf_counter() - start
    onnx.save(new.to_proto(), args.output)
    witness = args.witness or f"{args.output}.witness.npz"
    LayerWitness.save(witness, witnesses)
    return {"model": args.output, "witness": witness, "samples": len(data[0]), "block": args.block,
            "seconds": seconds, "layers": {w.name: {"weights": w.size, "masked": int((~w.keep).sum())}
                                           for w in witnesses}}


def cmd_prove(args) -> dict:
    """Device: prove the step recorded in a witness; writes proof, public inputs and key."""
    from .prover import LayerWitness, commitments, prove
    witnesses = LayerWitness.load(args.witness)
    if args.blocks_per_proof is not None and args.blocks_per_proof < 1:
        raise ValueError(f"--blocks-per-proof={args.blocks_per_proof} must be ≥ 1")
    with _binding_errors():
        out = prove(witnesses, blocks_per_proof=args.blocks_per_proof, params_cache=args.params_cache)
        digests = commitments(witnesses, out["blocks_per_proof"])
    paths = _proof_files(args.output)
    for path, key in zip(paths, ("proof", "public_inputs", "verifying_key")):
        with open(path, "wb") as f:
            f.write(out[key])
    return {"proof": paths[0], "public_inputs": paths[1], "verifying_key": paths[2],
            "proof_bytes": len(out["proof"]), "weights": out["weights"], "blocks_per_proof": out["blocks_per_proof"],
            "prove_seconds": out["prove_seconds"], "setup_seconds": out["setup_seconds"],
            "commitments": {n: {k: v.hex() for k, v in d.items()} for n, d in digests.items()}}


def _digests(values: list[str] | None, flag: str, layers) -> dict[str, bytes] | None:
    """``--h-w NAME=HEX`` (repeatable), or one bare HEX when the mask has one layer."""
    if not values:
        return None
    out = {}
    for v in values:
        name, _, hexed = v.rpartition("=")
        if not name:
            if len(layers) != 1:
                raise ValueError(f"{flag} {v!r}: the mask has layers {list(layers)}; write NAME=HEX")
            name = next(iter(layers))
        try:
            digest = bytes.fromhex(hexed)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{flag} {v!r}: expected a 64-digit hex digest")
        out[name] = digest
    return out


def cmd_verify(args) -> dict:
    """Provider: does the proof show the masked weights removed as prescribed, each of
    them inside a proven segment? verified false (exit 1) when not; files that are
    not a mask, proof, public inputs or key are errors (exit 2)."""
    from .prover import ProofFormatError, proof_info, uncovered, verify_proof
    if len(args.proof) not in (1, 3):
        raise ValueError(f"expected PROOF (with PROOF.inputs, PROOF.vk beside it) or PROOF INPUTS KEY, got "
                         f"{len(args.proof)} paths")
    paths = _proof_files(args.proof[0]) if len(args.proof) == 1 else tuple(args.proof)
    mask = _load_mask(args.mask)
    expected = {key: _digests(getattr(args, key), f"--{key.replace('_', '-')}", mask)
                for key in ("h_w", "h_w_new", "h_a")}
    blobs = []
    for path in paths:
        with open(path, "rb") as f:
            blobs.append(f.read())
    try:
        with _binding_errors():
            start = time.perf_counter()
            verified = verify_proof(*blobs, mask=mask, **expected)
            seconds = time.perf_counter() - start
            proven = proof_info(blobs[1])
            outside = uncovered(blobs[1], mask)
    except ProofFormatError as e:
        raise ValueError(f"{e} (in {', '.join(paths)})") from None
    result = {"ok": verified, "verified": verified, "seconds": seconds,
              "weights": sum(s["weights"] for s in proven),
              "masked": sum(int(m.sum()) for m in mask.values()), "proof_bytes": len(blobs[0])}
    if outside:
        result["error"] = f"masked weights outside the proof: {outside}"
    return result


# -- parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgetrain", description=__doc__.splitlines()[0],
                                epilog=f"(host): needs the host tools, {HOST_EXTRA}; so do the built-in data sets "
                                       f"{datasets.BUILTIN}. Every other command runs on a device install.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, func, help_, host=False):
        help_ = f"(host) {help_}" if host else help_
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--json", action="store_true", help="print results as one JSON object (last stdout line)")
        s.set_defaults(func=func)
        return s

    s = add("demo", cmd_demo, "the whole pipeline on the built-in MNIST set: train, export, quantise, run int8",
            host=True)
    s.add_argument("--workdir", default="edgetrain-demo", help="where the model files go (default: %(default)s)")
    s.add_argument("--epochs", type=int, default=5, help="host training epochs (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)

    s = add("export", cmd_export,
            "torch module (zoo name or package.module:callable) → ONNX, checked with onnxruntime", host=True)
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check")
    s.add_argument("--check-mnist", action="store_true", help="also check on 64 MNIST test images")

    s = add("quantize", cmd_quantize, "static int8 post-training quantisation with a calibration set", host=True)
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
    s.add_argument("--method", default="elasticzo", choices=list(DEFAULTS))
    s.add_argument("--cut", type=int, default=1, help="trailing layers trained with backprop (default: %(default)s)")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=32)
    fp32, int8 = DEFAULTS["elasticzo"], DEFAULTS["elasticzo-int8"]
    for flag, kind, what in (("--lr", float, "fp32 methods: the BP step"),
                             ("--zo-lr", float, "fp32 methods: the ZO step, relative to each layer's weight rms"),
                             ("--eps", float, "fp32 methods: the ZO perturbation, relative to each layer's weight rms"),
                             ("--q", int, "ZO directions per step"),
                             ("--lr-bits", int, "elasticzo-int8: the BP tail's update bit-width"),
                             ("--zo-bits", int, "elasticzo-int8: the ZO update's bit-width (moves < 2^bits LSBs)"),
                             ("--eps-lsb", int, "elasticzo-int8: the ZO perturbation in weight LSBs")):
        key = flag[2:].replace("-", "_")
        s.add_argument(flag, type=kind, help=f"{what} (default {fp32.get(key, int8.get(key))})")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", help="save a checkpoint here after every epoch")
    s.add_argument("--resume", help="continue from this checkpoint (MODEL is then only a label)")
    s.add_argument("-o", "--output", help="export the trained model as ONNX here")

    s = add("mask", cmd_mask, "provider: the ZK-APEX mask of the weights to remove (forget vs retain data)")
    s.add_argument("model")
    s.add_argument("--forget", required=True, help="data to forget (.npz with x, y, or a built-in set)")
    s.add_argument("--retain", required=True, help="data to keep (.npz with x, y, or a built-in set)")
    s.add_argument("-o", "--output", required=True, help="the mask, an .npz of bool arrays per weight name")
    s.add_argument("--fraction", type=float, default=0.04, help="share of target weights removed (default: %(default)s)")
    s.add_argument("--layers", nargs="+", help="weight names to target (default: every fully connected weight)")

    s = add("unlearn", cmd_unlearn, "device: remove the masked weights with the group-OBS step (ZK-APEX)")
    s.add_argument("model")
    s.add_argument("--mask", required=True, help="the provider's mask (.npz from `edgetrain mask`)")
    s.add_argument("--data", required=True, help="the device's own data for the Fisher (.npz with x, y, or built-in)")
    s.add_argument("-o", "--output", required=True, help="the unlearned model (ONNX)")
    s.add_argument("--witness", help="where the proof's witness goes (default: OUTPUT.witness.npz)")
    s.add_argument("--block", type=int, default=64, help="weights per Fisher block, ≤ 64 (default: %(default)s)")
    s.add_argument("--damp", type=float, default=1.0,
                   help="Fisher damping relative to its mean diagonal (default: %(default)s)")

    s = add("prove", cmd_prove, "device: Halo2 proof of an unlearning step; writes PROOF, PROOF.inputs, PROOF.vk")
    s.add_argument("--witness", required=True, help="the witness .npz from `edgetrain unlearn`")
    s.add_argument("-o", "--output", required=True, help="the proof file; public inputs and key go beside it")
    s.add_argument("--blocks-per-proof", type=int,
                   help="blocks per chunk proof (default: as many as one proof of the default circuit size "
                        "holds for the witness's block size, found at run time and reported as blocks_per_proof)")
    s.add_argument("--params-cache", help="directory caching the IPA parameters between runs")

    s = add("verify", cmd_verify, "provider: check an unlearning proof against the mask; exit 0 iff it verifies")
    s.add_argument("proof", nargs="+", metavar="PROOF", help="PROOF (PROOF.inputs, PROOF.vk beside it) or PROOF INPUTS KEY")
    s.add_argument("--mask", required=True, help="the mask the provider sent (.npz)")
    for flag, what in (("--h-w", "before"), ("--h-w-new", "after"), ("--h-a", "of the Fisher blocks")):
        s.add_argument(flag, action="append", metavar="[NAME=]HEX",
                       help=f"published digest {what} of a layer (repeat per layer)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, TypeError, OSError, NotImplementedError, ImportError, ProverError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception held
        _log(f"edgetrain {args.command}: error: {message}")
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        return 2
    result = {"ok": True, **result}  # a command reports a negative outcome (verify) with ok False: exit 1
    if not result["ok"]:
        _log(f"edgetrain {args.command}: failed" + (f": {result['error']}" if "error" in result else ""))
    if args.json:
        print(json.dumps(result, default=_jsonable))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if result["ok"] else 1


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
