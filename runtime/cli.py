"""The `edgetrain` command line.

Results go to stdout: aligned text, or with ``--json`` one JSON object on the
last line (strict JSON: a value that is not finite is null). Progress and notes
go to stderr (bars only on a terminal; nothing but errors with ``--json``).
Exit codes: 0 done; 1 a check that ran and said no (``verify``: the proof does
not verify, and which check failed); 2 an error in the arguments or input files,
one line on stderr naming the argument, found before any work; 130 Ctrl-C. A
command that fails or is interrupted leaves no output file behind (a training
checkpoint of a finished epoch stays). Host commands import the host package
lazily, so the device install (numpy and onnx) runs every other command; there
a host command exits 2 naming the extra to install.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time

import numpy as np

from . import cli_io, datasets, progress
from .cli_io import HOST_EXTRA, PROVIDER_EXTRA, Outputs, data, host
from .trainer import DEFAULTS


def cache_dir() -> str:
    """Where the provider keeps its reference string and verifying keys by default: ``$EDGETRAIN_CACHE``,
    else ``$XDG_CACHE_HOME/edgetrain``, else ``~/.cache/edgetrain``."""
    if os.environ.get("EDGETRAIN_CACHE"):
        return os.environ["EDGETRAIN_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgetrain")


def _model(path: str):
    from . import load
    return load(cli_io.input_file(path, "MODEL"))


# -- host: data, models -----------------------------------------------------------

def cmd_data(args, out: Outputs) -> dict:
    """A built-in set as an .npz (x, y): a split, its first samples, some classes, shifted."""
    path = out.file(args.output, "-o")
    x, y = data(args.name, "NAME", split=args.split)
    if args.first is not None:
        x, y = x[:args.first], y[:args.first]
    if args.only is not None:
        x, y = x[np.isin(y, args.only)], y[np.isin(y, args.only)]
    if args.without is not None:
        x, y = x[~np.isin(y, args.without)], y[~np.isin(y, args.without)]
    if len(x) == 0:
        raise ValueError(f"--only {args.only} / --without {args.without} leave no sample of {args.name!r}")
    if args.shift:
        x = host("export.datasets", "--shift").shifted(x, args.shift)
    with open(path, "wb") as f:  # np.savez(path) would append .npz to a name without it
        np.savez(f, x=x, y=y)
    return {"data": args.output, "samples": len(x), "classes": np.bincount(y).tolist(), "shape": list(x.shape[1:])}


def cmd_export(args, out: Outputs) -> dict:
    export = host("export.onnx_export", "export")
    from .export.train_torch import train
    from .export.zoo import ZOO
    path = out.file(args.output, "-o")
    module = export.load_module(args.source, args.seed)
    x, y = data(args.train, "--train", labels=True) if args.train else (None, None)
    real = data("mnist", "--check-mnist", split="test")[0][:64] if args.check_mnist else None
    trained = None
    if args.train:
        train(module, x, y, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=not args.json)
        trained = {"data": args.train, "epochs": args.epochs, "samples": len(x)}
    elif args.source in ZOO:
        _note(args, f"note: {args.source} is exported with its initial, untrained weights (about 10 % accuracy); "
                    f"add --train mnist to train it first")
    result = export.export_onnx(module, path, opset=args.opset, check=not args.no_check, real_inputs=real,
                                seed=args.seed)
    return {**result, "path": args.output, "trained": trained}


def cmd_quantize(args, out: Outputs) -> dict:
    quantize = host("export.quantization", "quantize", PROVIDER_EXTRA).quantize
    path = out.file(args.output, "-o")
    x, _ = data(args.calib, "--calib")
    result = quantize(cli_io.input_file(args.model, "MODEL"), path, x[:args.samples], method=args.method,
                      per_channel=not args.per_tensor, fmt=args.format, percentile=args.percentile)
    return {**result, "path": args.output}


def cmd_compress(args, out: Outputs) -> dict:
    """LR²VQ / PQ / clustering (fine-tuned with torch) or EvoPress (a level per layer); every
    argument checked before any work, the file (and EvoPress's config) written at the end."""
    import warnings
    vq = host("export.compress.vq", "compress")
    evopress = host("export.compress.evopress", "compress")
    flags = {"lr2vq": ("k", "m", "d", "epochs", "skip"), "pq": ("k", "m", "epochs", "skip"),
             "cluster": ("k", "epochs", "skip"), "evopress": ("bits", "sparsity", "search", "generations", "config",
                                                              "cache")}[args.method]
    foreign = [f"--{k}" for k in ("k", "m", "d", "epochs", "skip", "bits", "sparsity", "search", "generations",
                                  "config", "cache") if getattr(args, k) is not None and k not in flags]
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: --method {args.method} takes "
                         f"{', '.join('--' + f for f in flags)}")
    model = _model(args.model)
    if args.method == "evopress":
        evopress.check_budget(args.bits, args.sparsity, args.search or "evo")
    else:
        vq.check_settings(args.method, 256 if args.k is None else args.k, args.m, args.d, args.epochs or 3)
    path = out.file(args.output, "-o")
    config = out.file(args.config or f"{args.output}.json", "--config") if args.method == "evopress" else None
    x, y = data(args.data, "--data", model, labels=args.method != "evopress")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", vq.SkippedLayerWarning)
        if args.method == "evopress":
            cache = args.cache if args.cache is not None else cache_dir()
            result = evopress.evopress(args.model, path, (x, y), bits=args.bits, sparsity=args.sparsity,
                                       search=args.search or "evo", seed=args.seed,
                                       generations=args.generations or evopress.GENERATIONS, cache=cache,
                                       config_path=config, progress=not args.json)
            result["config"] = args.config or f"{args.output}.json"
            for bulky in ("kl_trace", "weights"):  # the trace is in the config file
                result.pop(bulky, None)
        else:
            result = vq.compress(args.model, path, (x, y), method=args.method, k=256 if args.k is None else args.k,
                                 m=args.m, d=args.d, epochs=args.epochs or 3, seed=args.seed, skip=args.skip or (),
                                 progress=not args.json)
            result.pop("codebooks")
    notes = [str(w.message) for w in caught if issubclass(w.category, vq.SkippedLayerWarning)]
    for text in notes:
        _note(args, f"warning: {text}")
    return {"model": args.model, "path": args.output, **result, **({"warnings": notes} if notes else {})}


# -- device: run, train --------------------------------------------------------------

def cmd_info(args, out: Outputs) -> dict:
    model = _model(args.model)
    return {"path": args.model, "inputs": {n: ["N" if d is None else d for d in s] for n, s, _ in model.inputs},
            "ops": dict(model.op_counts()), "integer_only": model.integer_only,
            "n_params": int(sum(np.size(v) for v in model.params.values())),
            "backend": model.backend.name}  # who runs the integer kernels (edgetrain.backend)


def cmd_run(args, out: Outputs) -> dict:
    """Run a model over a data set; report accuracy when labels exist, and time per sample."""
    model = _model(args.model)
    x, y = data(args.data, "--data", model, split=args.split)
    start = time.perf_counter()
    with progress.bar(not args.json, total=len(x), desc="run", unit="sample") as bar:
        logits = []
        for i in range(0, len(x), args.batch_size):
            logits.append(model.run(x[i:i + args.batch_size]))
            bar.update(len(logits[-1]))
    logits = np.concatenate(logits)
    seconds = time.perf_counter() - start
    result = {"model": args.model, "samples": len(x), "seconds": seconds, "ms_per_sample": 1e3 * seconds / len(x)}
    if y is not None:
        result["accuracy"] = float((logits.argmax(1) == y).mean())
    return result


TRAIN_CONFIG = ("method", "cut", "batch_size", "seed", "lr", "zo_lr", "eps", "q", "zo_layers", "lr_bits", "zo_bits",
                "eps_lsb")


def cmd_train(args, out: Outputs) -> dict:
    """Train on the device runtime; checkpoints, resume, ONNX export and a plot of the curves."""
    from . import Trainer
    if (args.model is None) == (args.resume is None):
        raise ValueError("give MODEL to start training, or --resume CHECKPOINT to continue (not both)")
    given = [f"--{k.replace('_', '-')}" for k in TRAIN_CONFIG if getattr(args, k) is not None]
    if args.resume and given:
        raise ValueError(f"{', '.join(given)}: with --resume the checkpoint's configuration is used; "
                         "start a new run from MODEL to change it")
    model = trainer = None
    if args.resume:
        trainer = Trainer.load(cli_io.input_file(args.resume, "--resume"))
        model = trainer.model
    else:
        model = _model(args.model)
    x, y = data(args.data, "--data", model, labels=True, split="train")
    val = data(args.val, "--val", model, labels=True, split="test") if args.val else None
    exported = out.file(args.output, "-o") if args.output else None
    plot = out.file(args.plot, "--plot") if args.plot else None
    if plot:
        plots = host("export.plots", "--plot", 'pip install matplotlib (or "edgetrain[host]")')
        plots.check_format(args.plot, "--plot")
    if args.checkpoint:
        cli_io.check_writable(args.checkpoint, "--checkpoint")
    if trainer is None:
        config = {k: getattr(args, k) for k in TRAIN_CONFIG if getattr(args, k) is not None}
        config.setdefault("method", "elasticzo")
        trainer = Trainer(model, **config)
    per_epoch = len(x) // trainer.batch_size
    if per_epoch == 0:
        raise ValueError(f"--data {args.data!r}: {len(x)} samples make no batch of --batch-size {trainer.batch_size}")
    done = trainer.step_count // per_epoch  # --epochs counts the epochs of this run
    try:
        history = trainer.fit(x, y, epochs=done + args.epochs, val=val, checkpoint=args.checkpoint,
                              progress=not args.json)
    except KeyboardInterrupt:
        kept = (f"the checkpoint {args.checkpoint!r} holds the last whole epoch (--resume it)"
                if args.checkpoint and os.path.exists(args.checkpoint) else "no checkpoint was written")
        raise KeyboardInterrupt(kept) from None
    result = {"model": args.model or args.resume, "method": trainer.method, "cut": trainer.cut,
              "steps": trainer.step_count, "epochs_done": trainer.step_count // per_epoch, "history": history}
    diverged = [h["epoch"] for h in history if not math.isfinite(h["loss"])]
    if sum(h["rolled_back"] for h in history) == per_epoch * len(history):
        result["warning"] = "every step was rolled back (its loss or update was not finite): nothing was trained"
    elif diverged:
        result["warning"] = f"the loss is not finite in epoch(s) {diverged}: the step size is too large"
    if "warning" in result:
        _note(args, f"warning: {result['warning']}")
    if exported:
        trainer.export(exported)
        result["exported"] = args.output
    if plot:
        plots.training_curves(history, plot, title=f"{result['model']}: {trainer.method}")
        result["plot"] = args.plot
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
    arrays = datasets.read_npz(path, "--mask")
    if not arrays:
        raise ValueError(f"--mask {path!r} holds no arrays; expected one bool array per weight name")
    wrong = [n for n, a in arrays.items() if a.dtype.kind != "b"]
    if wrong:
        raise ValueError(f"--mask {path!r}: {wrong} are not bool arrays; expected the file `edgetrain mask` writes")
    return arrays


def _key_cache(args) -> str | None:
    """--key-cache, checked; by default :func:`cache_dir`, or None (no cache) if it cannot be made."""
    if args.key_cache is not None:
        if not os.path.isdir(args.key_cache):
            raise ValueError(f"--key-cache {args.key_cache!r} is not a folder")
        from .prover import proof
        cli_io.check_writable(os.path.join(args.key_cache, proof.SRS_FILE), "--key-cache")
        return args.key_cache
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        return cache_dir()
    except OSError:
        return None


def cmd_mask(args, out: Outputs) -> dict:
    """Provider: score the target weights on forget vs retain data and save the mask."""
    from .prover import make_mask, target_layers
    model = _model(args.model)
    path = out.file(args.output, "-o")
    forget = data(args.forget, "--forget", model, labels=True)
    retain = data(args.retain, "--retain", model, labels=True)
    layers = args.layers or target_layers(model)[-1:]
    mask = make_mask(model, forget=forget, retain=retain, fraction=args.fraction, layers=layers,
                     progress=not args.json)
    with open(path, "wb") as f:  # np.savez(path) would append .npz to a name without it
        np.savez(f, **mask)
    return {"mask": args.output, "layers": {n: {"shape": list(m.shape), "masked": int(m.sum())}
                                            for n, m in mask.items()}}


def cmd_unlearn(args, out: Outputs) -> dict:
    """Device: the group-OBS step on the masked layers; writes the new model and the witness."""
    import onnx
    from .prover import LayerWitness, unlearn
    model = _model(args.model)
    mask = _load_mask(args.mask)
    path = out.file(args.output, "-o")
    witness = args.witness or f"{args.output}.witness.npz"
    witness_path = out.file(witness, "--witness")
    x, y = data(args.data, "--data", model, labels=True)
    start = time.perf_counter()
    new, witnesses = unlearn(model, mask, data=(x, y), block=args.block, damp=args.damp, progress=not args.json)
    seconds = time.perf_counter() - start
    onnx.save(new.to_proto(), path)
    LayerWitness.save(witness_path, witnesses)
    return {"model": args.output, "witness": witness, "samples": len(x), "block": args.block,
            "seconds": seconds, "layers": {w.name: {"weights": w.size, "masked": int((~w.keep).sum())}
                                           for w in witnesses}}


def cmd_prove(args, out: Outputs) -> dict:
    """Device: prove the step recorded in a witness; writes proof, public inputs and key."""
    from .prover import LayerWitness, ProofFormatError, commitments, describe, plan, prove
    witnesses = LayerWitness.load(cli_io.input_file(args.witness, "--witness"), "--witness")
    srs_where = f"--params {args.params!r}"
    srs = _srs_arg(cli_io.read_bytes(args.params, "--params"), srs_where)
    paths = [out.file(p, "-o") for p in _proof_files(args.output)]
    with _binding_errors(), progress.bar(not args.json, desc="prove: sizing the circuit") as bar:
        todo = progress.wait(plan, witnesses, args.blocks_per_proof, ticking=bar)
    for flag, limit, need, unit in (("--max-minutes", args.max_minutes, todo["seconds"] / 60, (1, "min")),
                                    ("--max-memory", args.max_memory, todo["memory_bytes"], (2**20, "MiB"))):
        if limit is not None and need > limit:
            raise ValueError(f"{flag} {limit / unit[0]:g} {unit[1]}: proving takes {describe(todo)}; raise {flag}, "
                             "or prove fewer weights (mask fewer layers)")
    try:
        with _binding_errors():
            proof = prove(witnesses, todo["blocks_per_proof"], params=srs, progress=not args.json)
            digests = commitments(witnesses, proof["blocks_per_proof"])
    except ProofFormatError as e:  # the one encoding read here is the reference string's
        raise ValueError(f"{srs_where}: {e}") from None
    for path, key in zip(paths, ("proof", "public_inputs", "verifying_key")):
        with open(path, "wb") as f:
            f.write(proof[key])
    plan_out = {k: v for k, v in todo.items() if k != "verifying_key"}
    return {"proof": args.output, "public_inputs": f"{args.output}.inputs", "verifying_key": f"{args.output}.vk",
            "proof_bytes": len(proof["proof"]), "weights": proof["weights"], "chunks": proof["chunks"],
            "blocks_per_proof": proof["blocks_per_proof"], "prove_seconds": proof["prove_seconds"],
            "setup_seconds": proof["setup_seconds"], "plan": plan_out,
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


def _provider_srs(args, cache) -> tuple[bytes, str]:
    """The provider's reference string, --params else the key cache's (``edgetrain setup``),
    and where it came from, for messages."""
    if args.params is not None:
        data, where = cli_io.read_bytes(args.params, "--params"), f"--params {args.params!r}"
    else:
        from .prover import proof
        path = os.path.join(cache or cache_dir(), proof.SRS_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"no reference string in {os.path.dirname(path)!r}: make yours with `edgetrain "
                             "setup` (once; send its file to the devices), or pass --params FILE")
        data, where = cli_io.read_bytes(path, "the key cache's reference string"), repr(path)
    return _srs_arg(data, where), where


def _srs_arg(data: bytes, where: str) -> bytes:
    """Reference-string bytes, checked to be one (ValueError naming ``where`` if not)."""
    from .prover import ProofFormatError, proof
    try:
        with _binding_errors():
            proof.srs_sizes(data)
    except ProofFormatError as e:
        raise ValueError(f"{where}: not a reference string from `edgetrain setup` ({e})") from None
    return data


def cmd_setup(args, out: Outputs) -> dict:
    """Provider: the structured reference string its devices prove under (KZG)."""
    from .prover import proof
    cache = _key_cache(args)
    if args.output is None and cache is None:
        raise ValueError(f"-o is missing and the key cache {cache_dir()!r} cannot be made")
    target = args.output or os.path.join(cache, proof.SRS_FILE)
    path = out.file(target, "-o")  # written whole or not at all
    start = time.perf_counter()
    with _binding_errors():
        data = proof.setup(args.k, progress=not args.json)
        k_min, k_max = proof.srs_sizes(data)
    with open(path, "wb") as f:
        f.write(data)
    return {"params": target, "bytes": len(data), "k_min": k_min, "k_max": k_max,
            "seconds": time.perf_counter() - start}


def cmd_verify(args, out: Outputs) -> dict:
    """Provider: does the proof show the masked weights removed as prescribed, each of
    them inside a proven segment? verified false (exit 1, naming the check that
    failed) when not; files that are not a mask, proof, public inputs or key are
    errors (exit 2)."""
    from .prover import ProofFormatError, proof, proof_info, verify_failure
    if len(args.proof) not in (1, 3):
        raise ValueError(f"PROOF: expected PROOF (with PROOF.inputs, PROOF.vk beside it) or PROOF INPUTS KEY, got "
                         f"{len(args.proof)} paths")
    paths = _proof_files(args.proof[0]) if len(args.proof) == 1 else tuple(args.proof)
    mask = _load_mask(args.mask)
    expected = {key: _digests(getattr(args, key), f"--{key.replace('_', '-')}", mask)
                for key in ("h_w", "h_w_new", "h_a")}
    blobs = [cli_io.read_bytes(p, what) for p, what in zip(paths, ("PROOF", "public inputs", "verifying key"))]
    cache = _key_cache(args)
    params, params_where = _provider_srs(args, cache)
    try:
        with _binding_errors():
            # The provider's own key for the device's descriptor: stored in the key cache the
            # first time, read from it (no key generation) every time after.
            key = proof.verifying_key(blobs[2], params, cache, progress=not args.json)
            start = time.perf_counter()
            failed = verify_failure(blobs[0], blobs[1], key, mask=mask, params=params, progress=not args.json,
                                    **expected)
            seconds = time.perf_counter() - start
            proven = proof_info(blobs[1])
    except ProofFormatError as e:  # its message starts with the kind of file it is about
        kinds = zip(("proof", "public inputs", "verifying key", "params"), (*map(repr, paths), params_where))
        where = next((w for kind, w in kinds if str(e).startswith(kind)), ", ".join(map(repr, paths)))
        raise ValueError(f"{where}: {e}") from None
    result = {"ok": failed is None, "verified": failed is None, "seconds": seconds,
              "weights": sum(s["weights"] for s in proven),
              "masked": sum(int(m.sum()) for m in mask.values()), "proof_bytes": len(blobs[0])}
    if failed:
        result["failed"] = failed
    return result


def cmd_demo(args, out: Outputs) -> dict:
    demo = host("export.demo", "demo")
    target = args.out
    if target is None:
        target = os.path.join(cache_dir(), "demo")
        os.makedirs(cache_dir(), exist_ok=True)  # the default's parent; a given --out's must exist
    folder = out.folder(target, "--out")
    result = demo.run_demo(folder, epochs=args.epochs, seed=args.seed, key_cache=_key_cache(args),
                           show=not args.json)
    return {**result, "report": os.path.join(target, demo.REPORT)}


def _render_demo(result: dict) -> str:
    return host("export.demo", "demo").summary(result)


# -- parser ----------------------------------------------------------------------

class UsageError(Exception):
    """Arguments argparse rejects; main reports them like every other input error."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{' '.join(message.split())} (see {prog} --help)")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(self.prog, message)


def _positive(kind):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'positive int' if kind is int else 'finite real > 0'}")
        return value
    return check


def _size(text: str) -> int:
    """A memory size: a number and a unit K, M or G, binary (2G, 2GB and 2GiB are 2·2^30 bytes)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMG])(?:I?B)?\s*", text, re.IGNORECASE)
    if not found or float(found[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size > 0 such as 2G or 512M")
    return int(float(found[1]) * 2 ** (10 * "KMG".index(found[2].upper()) + 10))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgetrain", description=__doc__.splitlines()[0],
                epilog=f"(host): needs the host tools, {HOST_EXTRA}; so do the built-in data sets "
                       f"{datasets.BUILTIN}. (provider): {PROVIDER_EXTRA}, no torch. Every other command runs on a "
                       "device install; prove and verify need the binding (pip install ./rust).")
    sub = p.add_subparsers(dest="command", required=True)
    pos = _positive(int)

    def add(name, func, help_, extra=None, render=None):
        help_ = f"({extra}) {help_}" if extra else help_
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--json", action="store_true", help="print results as one JSON object (last stdout line)")
        s.set_defaults(func=func, render=render)
        return s

    s = add("demo", cmd_demo, "the whole pipeline on the built-in MNIST set: train, export, quantise, compress, "
                              "run int8, personalise the compressed model, unlearn and prove; writes a report with "
                              "plots", "host", _render_demo)
    s.add_argument("--out", help=f"folder for the models, report.md and plots (default: {cache_dir()}/demo)")
    s.add_argument("--epochs", type=pos, default=5, help="host training epochs (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--key-cache", help="the provider's folder for its reference string and keys (default: the "
                                       "verify cache)")

    s = add("data", cmd_data, "a built-in data set written as an .npz (x, y) to train, run, mask or unlearn with",
            "host")
    s.add_argument("name", choices=datasets.BUILTIN)
    s.add_argument("-o", "--output", required=True, help="the .npz to write")
    s.add_argument("--split", default="train", choices=["train", "test"])
    s.add_argument("--first", type=pos, help="keep the first N samples of the split (before the class filters)")
    s.add_argument("--only", type=int, nargs="+", metavar="CLASS", help="keep only these classes")
    s.add_argument("--without", type=int, nargs="+", metavar="CLASS", help="drop these classes")
    s.add_argument("--shift", type=int, default=0, help="move the images right by this many pixels (a 'user' "
                                                        "distribution, as in the demo)")

    s = add("export", cmd_export, "torch module (zoo name or package.module:callable) → ONNX, checked with "
                                  "onnxruntime; --train trains it first", "host")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--train", metavar="DATA", help=f"train with torch first on an .npz (x, y) or a built-in set "
                                                   f"{datasets.BUILTIN} (its train split)")
    s.add_argument("--epochs", type=pos, default=5, help="epochs of --train (default: %(default)s)")
    s.add_argument("--lr", type=_positive(float), default=2e-3, help="Adam's step for --train (default: %(default)s)")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check")
    s.add_argument("--check-mnist", action="store_true", help="also check on 64 MNIST test images")

    s = add("quantize", cmd_quantize, "static int8 post-training quantisation of an fp32 ONNX model with a "
                                      "calibration set", "provider")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--calib", required=True, help=f"an .npz with x, or a built-in set {datasets.BUILTIN}")
    s.add_argument("--samples", type=pos, default=256, help="calibration samples used (default: %(default)s)")
    s.add_argument("--method", default="minmax", choices=["minmax", "percentile"])
    s.add_argument("--percentile", type=_positive(float), default=99.999)
    s.add_argument("--format", default="qoperator", choices=["qoperator", "qdq"])
    s.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")

    s = add("compress", cmd_compress, "compress an fp32 ONNX model: LR²VQ (or the baselines pq, cluster), fine-tuned "
                                      "with torch; or EvoPress, a bit-width or sparsity per layer (int8 output)",
            "host")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="the compressed ONNX file")
    s.add_argument("--method", required=True, choices=["lr2vq", "pq", "cluster", "evopress"])
    s.add_argument("--data", required=True, help=f"training / calibration data: an .npz with x (and y: lr2vq, pq, "
                                                 f"cluster need labels) or a built-in set {datasets.BUILTIN}")
    s.add_argument("--seed", type=int, default=0)
    g = s.add_argument_group("lr2vq, pq, cluster")
    g.add_argument("--k", type=int, help="codewords per layer, a power of two ≤ 256 (default 256)")
    g.add_argument("--m", type=int, help="weights per sub-vector (default 8; cluster: 1)")
    g.add_argument("--d", type=int, help="lr2vq: clustering dimensionality ≤ m (default: estimated)")
    g.add_argument("--epochs", type=pos, help="fine-tuning epochs (default 3; lr2vq: a third low-rank pre-training)")
    g.add_argument("--skip", nargs="+", metavar="LAYER", help="layers (node or weight names) to leave uncompressed")
    g = s.add_argument_group("evopress")
    g.add_argument("--bits", type=float, help="average weight bits, 2 to 8")
    g.add_argument("--sparsity", type=float, help="share of zero weights, 0 to 0.95 (instead of --bits)")
    g.add_argument("--search", choices=["evo", "uniform", "dp", "hessian"], help="(default: evo)")
    g.add_argument("--generations", type=pos, help="evolution generations (default 150)")
    g.add_argument("--config", help="the per-layer JSON config (default: OUTPUT.json)")
    g.add_argument("--cache", help=f"folder caching the level database (default: {cache_dir()})")

    s = add("info", cmd_info, "what a model holds and how the runtime will run it")
    s.add_argument("model")

    s = add("run", cmd_run, "run a model on our runtime over a data set")
    s.add_argument("model")
    s.add_argument("--data", required=True, help=f"an .npz with x [and y], or a built-in set {datasets.BUILTIN}")
    s.add_argument("--split", default="test", choices=["train", "test"], help="split of a built-in set")
    s.add_argument("--batch-size", type=pos, default=64)

    s = add("train", cmd_train, "train a model on the device runtime (bp, zo, elasticzo, elasticzo-int8)")
    s.add_argument("model", nargs="?", help="the model to start from (or --resume a checkpoint instead)")
    s.add_argument("--data", required=True, help=f"an .npz with x and y, or a built-in set {datasets.BUILTIN}")
    s.add_argument("--val", help="validation data (.npz with x, y, or a built-in set's test split)")
    s.add_argument("--method", choices=list(DEFAULTS), help="(default: elasticzo)")
    s.add_argument("--cut", type=int, help="trailing layers trained with backprop (default: 1)")
    s.add_argument("--epochs", type=pos, default=1,
                   help="epochs to run now; with --resume, further epochs after the checkpoint's (default: 1)")
    s.add_argument("--batch-size", type=pos, help="(default: 32)")
    fp32, int8 = DEFAULTS["elasticzo"], DEFAULTS["elasticzo-int8"]
    for flag, kind, what in (("--lr", float, "fp32 methods: the BP step"),
                             ("--zo-lr", float, "fp32 methods: the ZO step, relative to each layer's weight rms"),
                             ("--eps", float, "fp32 methods: the ZO perturbation, relative to each layer's weight rms"),
                             ("--q", int, "ZO directions per step"),
                             ("--zo-layers", int, "ZO methods: the head's first layers the ZO trains (0: all)"),
                             ("--lr-bits", int, "elasticzo-int8: the BP tail's update bit-width"),
                             ("--zo-bits", int, "elasticzo-int8: the ZO update's bit-width (moves ≤ 2^bits LSBs)"),
                             ("--eps-lsb", int, "elasticzo-int8: the ZO perturbation in weight LSBs")):
        key = flag[2:].replace("-", "_")
        s.add_argument(flag, type=kind, help=f"{what} (default {fp32.get(key, int8.get(key))})")
    s.add_argument("--seed", type=int, help="(default: 0)")
    s.add_argument("--checkpoint", help="save a checkpoint here after every epoch")
    s.add_argument("--resume", metavar="CHECKPOINT", help="continue from this checkpoint, with its model and "
                                                          "configuration")
    s.add_argument("-o", "--output", help="export the trained model as ONNX here")
    s.add_argument("--plot", metavar="PNG", help="draw loss and accuracy per epoch (train, and --val) here")

    s = add("mask", cmd_mask, "provider: the ZK-APEX mask of the weights to remove (forget vs retain data)")
    s.add_argument("model")
    s.add_argument("--forget", required=True, help="data to forget (.npz with x, y, or a built-in set)")
    s.add_argument("--retain", required=True, help="data to keep (.npz with x, y, or a built-in set)")
    s.add_argument("-o", "--output", required=True, help="the mask, an .npz of bool arrays per weight name")
    s.add_argument("--fraction", type=float, default=0.1,
                   help="share of the target weights removed, in (0, 1) (default: %(default)s)")
    s.add_argument("--layers", nargs="+", help="weight names to target (default: the last fully connected layer's)")

    s = add("unlearn", cmd_unlearn, "device: remove the masked weights with the group-OBS step (ZK-APEX)")
    s.add_argument("model")
    s.add_argument("--mask", required=True, help="the provider's mask (.npz from `edgetrain mask`)")
    s.add_argument("--data", required=True, help="the device's own data for the Fisher (.npz with x, y, or built-in)")
    s.add_argument("-o", "--output", required=True, help="the unlearned model (ONNX)")
    s.add_argument("--witness", help="where the proof's witness goes (default: OUTPUT.witness.npz)")
    s.add_argument("--block", type=pos, default=8, help="weights per Fisher block, ≤ 64 (default: %(default)s)")
    s.add_argument("--damp", type=_positive(float), default=1.0,
                   help="Fisher damping relative to its mean diagonal (default: %(default)s)")

    s = add("prove", cmd_prove, "device: Halo2 proof of an unlearning step; writes PROOF, PROOF.inputs, PROOF.vk")
    s.add_argument("--witness", required=True, help="the witness .npz from `edgetrain unlearn`")
    s.add_argument("-o", "--output", required=True, help="the proof file; public inputs and key go beside it")
    s.add_argument("--blocks-per-proof", type=pos,
                   help="blocks per chunk proof (default: as many as one proof of 2^15 rows holds, at most a layer's)")
    s.add_argument("--params", required=True, help="the provider's reference string (its `edgetrain setup` file)")
    s.add_argument("--max-minutes", type=_positive(float), help="refuse, before proving, if the estimate is longer")
    s.add_argument("--max-memory", type=_size, help="refuse, before proving, if the estimated peak memory is more "
                                                    "(e.g. 2G, 512M)")

    s = add("verify", cmd_verify, "provider: check an unlearning proof against the mask; exit 0 iff it verifies, "
                                  "1 naming the check that failed")
    s.add_argument("proof", nargs="+", metavar="PROOF", help="PROOF (PROOF.inputs, PROOF.vk beside it) or PROOF INPUTS KEY")
    s.add_argument("--mask", required=True, help="the mask the provider sent (.npz)")
    for flag, what in (("--h-w", "before"), ("--h-w-new", "after"), ("--h-a", "of the Fisher blocks")):
        s.add_argument(flag, action="append", metavar="[NAME=]HEX",
                       help=f"published digest {what} of a layer (repeat per layer)")
    s.add_argument("--params", help="your reference string (default: the key cache's, from `edgetrain setup`)")
    s.add_argument("--key-cache", help=f"folder of your reference string and verifying keys (default: {cache_dir()})")

    s = add("setup", cmd_setup, "provider: make the reference string devices prove under (KZG; once, then send "
                                "its file to the devices)")
    s.add_argument("-k", type=pos, default=15, help="largest circuit, 2^K rows (default: %(default)s, the chunk "
                                                    "size `prove` uses unless told otherwise)")
    s.add_argument("-o", "--output", help="the file (default: the key cache's, where `verify` looks)")
    s.add_argument("--key-cache", help=f"the provider's folder (default: {cache_dir()})")

    from .devices import cli as devices_cli  # deploy and the device side (DESIGN.md §7)
    devices_cli.register(add, _positive, _size)
    return p


def _note(args, text: str) -> None:
    progress.note(not args.json, text)


# The exceptions that mean "this input or argument is wrong": one line, exit 2. Anything
# else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, TypeError, OSError, NotImplementedError, ImportError, ProverError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _fail(e.prog, "--json" in argv, "error", str(e), 2)
    out = Outputs()
    try:
        result = args.func(args, out)
        out.commit()
    except KeyboardInterrupt as e:
        out.discard()
        return _fail(f"edgetrain {args.command}", args.json, "interrupted (Ctrl-C)",
                     str(e) or "no output was written", 130)
    except INPUT_ERRORS as e:
        out.discard()
        return _fail(f"edgetrain {args.command}", args.json, "error", " ".join(str(e).split()), 2)  # one line
    except BaseException:
        out.discard()
        raise
    result = {"ok": True, **result}  # a command reports a negative outcome (verify) with ok False: exit 1
    if not result["ok"]:
        print(f"edgetrain {args.command}: not verified: {result['failed']}", file=sys.stderr, flush=True)
    if args.json:
        print(cli_io.to_json(result))
    else:
        print((args.render or cli_io.render)(result))
    return 0 if result["ok"] else 1


def _fail(prog: str, json_out: bool, what: str, message: str, code: int) -> int:
    """One line on stderr, ``{prog}: {what}: {message}``; with --json also the result."""
    print(f"{prog}: {what}: {message}", file=sys.stderr, flush=True)
    if json_out:
        print(cli_io.to_json({"ok": False, "error": message, **({"interrupted": True} if code == 130 else {})}))
    return code


def entry() -> None:
    """The ``edgetrain`` command: :func:`main`, then exit with its code. After a Ctrl-C a
    native call (a proof) may still run in a daemon thread; at the interpreter's shutdown
    that thread, coming back for the GIL, is ended by a forced unwind through Rust frames,
    which aborts the process (SIGABRT instead of 130). Nothing is left to write, so leave at once."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
