"""The command line of deployment: ``devices``, ``keygen``, ``deploy``, ``device …``
(on the device), ``remote TARGET …`` (the device's commands from the provider's
shell) and ``export-tflite``. Registered by :func:`edgetrain.cli.build_parser`;
same rules as every command there (inputs checked first, exit 2 with one line
naming the argument, outputs atomic through ``Outputs``).

The device commands are the existing ``train``, ``unlearn`` and ``prove`` with
their files fixed by the release layout (:mod:`edgetrain.devices.device`): the
release's model and trainer configuration in, ``ROOT/results/ID/`` out.
"""
from __future__ import annotations

import argparse
import json
import os

from .. import cli_io, devices
from ..cli_io import PROVIDER_EXTRA, Outputs
from . import device as dev

ROOT_ENV = "EDGETRAIN_DEVICE_ROOT"


# -- provider: profiles, keys, deploy ----------------------------------------------------

def cmd_devices(args, out: Outputs) -> dict:
    """The known device profiles (or one, with --device)."""
    names = [args.device] if args.device else devices.known()
    return {"devices": [devices.profile(n) for n in names]}


def cmd_keygen(args, out: Outputs) -> dict:
    from . import keys
    from .bundle import fingerprint
    path = out.file(args.output, "-o")
    pub_path = out.file(f"{args.output}.pub", "-o (its .pub)")
    if os.path.exists(args.output) and not args.force:
        raise ValueError(f"-o {args.output!r} exists; a provider keeps one key (devices pin it): --force replaces it")
    pem, public = keys.keygen()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(pub_path, "w") as f:
        f.write(keys.public_line(public))
    return {"key": args.output, "public_key": f"{args.output}.pub", "fingerprint": fingerprint(public)}


def _targets(args):
    from . import targets
    options = {"ssh_config": args.ssh_config, "accept_new_host_key": args.accept_new_host_key}
    if args.target and args.targets:
        raise ValueError("give --target or --targets, not both")
    if args.targets:
        return targets.read_targets(args.targets, **options)
    return [targets.parse(args.target, **options)] if args.target else []


def _fleet(rows: list[dict], what: str) -> dict:
    """One target: its row, or its error (exit 2). Many: every row, and ok only if all are."""
    if len(rows) == 1:
        if not rows[0]["ok"]:
            raise ValueError(rows[0]["error"])
        return rows[0]
    failed = [r for r in rows if not r["ok"]]
    result = {"ok": not failed, "devices": rows, "succeeded": len(rows) - len(failed)}
    if failed:
        result["failed"] = f"{what} failed on {len(failed)} of {len(rows)} devices: " + "; ".join(
            r["error"] for r in failed)
    return result


def cmd_deploy(args, out: Outputs) -> dict:
    from . import deploy, keys
    from .. import Trainer, load
    targets = _targets(args)
    if args.rollback:
        if args.model or not targets:
            raise ValueError("--rollback takes --target (or --targets) and no MODEL")
        return _fleet(deploy.deploy_many(targets, lambda t: t.device(["rollback"], "rolling back"),
                                         args.parallel), "rollback")
    if not args.model:
        raise ValueError("MODEL is missing: edgetrain deploy MODEL --device NAME --target TARGET")
    if not targets and not args.output:
        raise ValueError("--target, --targets or -o BUNDLE is needed: where the bundle goes")
    profile = devices.profile(args.device)
    model = load(cli_io.input_file(args.model, "MODEL"))
    method = args.method or ("elasticzo-int8" if model.integer_only else "elasticzo")
    trainer = Trainer(model, method=method, cut=args.cut, batch_size=args.batch_size, seed=args.seed)
    memory = deploy.fit_memory(model, profile, method, trainer.cut, args.batch_size, args.device)
    wheels = [deploy.check_wheel(w, profile) for w in args.wheel or ()]
    sign, public = keys.load(args.key or keys.default_path())
    bundle_path = out.file(args.output, "-o") if args.output else None
    train = {"method": method, "cut": trainer.cut, "batch_size": args.batch_size, "seed": args.seed}
    data, manifest, wheel = deploy.make_bundle(args.model, profile, train, sign, public, wheels)
    if bundle_path:
        with open(bundle_path, "wb") as f:
            f.write(data)
    summary = {"release": manifest["release"], "device": profile["name"], "bundle_bytes": len(data),
               "model_bytes": manifest["files"]["model.onnx"]["bytes"], **memory, "train": train}
    if not targets:
        return {**summary, "bundle": args.output}
    show = not args.json and len(targets) == 1
    rows = deploy.deploy_many(targets, lambda t: deploy.push_and_install(
        t, data, manifest, wheel, show=show, limit_kib_s=args.limit_rate), args.parallel)
    return {**summary, **_fleet(rows, "deploy")}


# -- device ------------------------------------------------------------------------------

def _root(args) -> str:
    root = args.root or os.environ.get(ROOT_ENV)
    if not root:
        raise ValueError(f"--root is missing: the device folder (or ${ROOT_ENV})")
    return dev.check_root(root)


def _release(args):
    root = _root(args)
    rid, folder = dev.release_dir(root)
    return root, rid, folder, dev.results_dir(root)


def _history(res: str) -> list:
    path = os.path.join(res, "history.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def device_install(args, out):
    return dev.install(_root(args), args.bundle)


def device_rollback(args, out):
    return dev.rollback(_root(args))


def device_status(args, out):
    return dev.status(_root(args))


def device_train(args, out):
    """``train`` on the release's model and configuration; the checkpoint in results/
    (continued by the next ``device train``), the run appended to history.json."""
    from .. import cli
    from ..datasets import load_npz
    root, rid, folder, res = _release(args)
    ck = os.path.join(res, "checkpoint.npz")
    resume = os.path.exists(ck)
    config = dev._train_config(folder)
    history_path = out.file(os.path.join(res, "history.json"), "history.json")
    ns = argparse.Namespace(model=None if resume else os.path.join(folder, "model.onnx"),
                            resume=ck if resume else None, data=args.data, val=None, epochs=args.epochs,
                            output=None, plot=None, checkpoint=ck, json=args.json,
                            **{k: None if resume else config.get(k) for k in cli.TRAIN_CONFIG})
    result = cli.cmd_train(ns, out)
    x, _ = load_npz(args.data, "--data", labels=True)
    runs = _history(res) + [{"data": os.path.abspath(args.data), "samples": len(x), "epochs": args.epochs,
                             "steps": result["steps"], "history": result["history"]}]
    with open(history_path, "w") as f:
        json.dump(cli_io.plain(runs), f, indent=1)
    return {"release": rid, "checkpoint": os.path.relpath(ck, root), **result}


def device_export(args, out):
    """The trained model (the checkpoint's) as ONNX: results/ID/trained.onnx."""
    from .. import Trainer
    root, rid, folder, res = _release(args)
    ck = os.path.join(res, "checkpoint.npz")
    if not os.path.exists(ck):
        raise ValueError(f"release {rid} has no training yet: run `edgetrain device train --data FILE` first")
    path = out.file(os.path.join(res, "trained.onnx"), "trained.onnx")
    trainer = Trainer.load(ck)
    trainer.export(path)
    return {"release": rid, "model": os.path.relpath(os.path.join(res, "trained.onnx"), root),
            "steps": trainer.step_count}


def device_unlearn(args, out):
    """``unlearn`` on the device's model (the exported trained one, else the release's),
    with the Fisher of ``--data`` (default: the data of the last ``device train``)."""
    from .. import cli
    root, rid, folder, res = _release(args)
    trained = os.path.join(res, "trained.onnx")
    model = trained if os.path.exists(trained) else os.path.join(folder, "model.onnx")
    data = args.data
    if data is None:
        runs = _history(res)
        if not runs:
            raise ValueError("--data is missing: no `device train` ran to take the data from")
        data = runs[-1]["data"]
    mask = cli_io.read_bytes(args.mask, "--mask")
    mask_copy = out.file(os.path.join(res, "mask.npz"), "mask.npz")
    ns = argparse.Namespace(model=model, mask=args.mask, data=data, output=os.path.join(res, "unlearned.onnx"),
                            witness=None, block=args.block, damp=args.damp, json=args.json)
    result = cli.cmd_unlearn(ns, out)
    with open(mask_copy, "wb") as f:
        f.write(mask)
    return {"release": rid, "from": os.path.relpath(model, root), "data": data,
            **{k: os.path.relpath(v, root) if k in ("model", "witness") else v for k, v in result.items()}}


def device_prove(args, out):
    """``prove`` of the last ``device unlearn``: proof.bin, .inputs, .vk and the layers'
    digests (commitments.json) in results/."""
    from .. import cli
    root, rid, folder, res = _release(args)
    witness = os.path.join(res, "unlearned.onnx.witness.npz")
    if not os.path.exists(witness):
        raise ValueError(f"release {rid} has no unlearning to prove: run `edgetrain device unlearn --mask FILE` "
                         "first")
    digests = out.file(os.path.join(res, "commitments.json"), "commitments.json")
    ns = argparse.Namespace(witness=witness, output=os.path.join(res, "proof.bin"), blocks_per_proof=None,
                            params=args.params, max_minutes=args.max_minutes, max_memory=args.max_memory,
                            json=args.json)
    result = cli.cmd_prove(ns, out)
    with open(digests, "w") as f:
        json.dump(result["commitments"], f, indent=1)
    return {"release": rid, **{k: os.path.relpath(v, root) if k in ("proof", "public_inputs", "verifying_key")
                               else v for k, v in result.items()}}


# -- remote ------------------------------------------------------------------------------

def cmd_remote(args, out: Outputs) -> dict:
    """A device command over SSH (or on a dir: target); fetch brings results back."""
    from . import deploy, targets
    target = targets.parse(args.target, ssh_config=args.ssh_config, accept_new_host_key=args.accept_new_host_key,
                           flag="TARGET")
    command = args.remote_command
    if command == "fetch":
        folder = out.folder(args.output, "-o")
        names = deploy.PUBLIC_RESULTS + (deploy.MODEL_RESULTS if args.models else ())
        result = deploy.fetch(target, names, lambda n: os.path.join(folder, n))
        return {"target": args.target, "folder": args.output, **result}
    forward = [command]
    for flag, dest in DEVICE_FLAGS[command]:
        value = getattr(args, dest)
        if value is None:
            continue
        if dest in ("mask", "params"):  # the provider's file: sent to the device first
            blob = cli_io.read_bytes(value, flag)
            stem, ext = ("mask", "npz") if dest == "mask" else ("srs", "bin")
            name = f"{stem}-{__import__('hashlib').sha256(blob).hexdigest()[:12]}.{ext}"
            target.send(blob, name, folder="inbox")
            value = f"{target.root}/inbox/{name}"
        forward += [flag, str(value)]
    return {"target": args.target, **{k: v for k, v in target.device(forward, command).items() if k != "ok"}}


# -- TFLite ------------------------------------------------------------------------------

def cmd_export_tflite(args, out: Outputs) -> dict:
    tflite = cli_io.host("export.tflite", "export-tflite", 'pip install flatbuffers (or "edgetrain[host]")')
    path = out.file(args.output, "-o")
    return {**tflite.write(cli_io.input_file(args.model, "MODEL"), path), "path": args.output}


# -- parsers -----------------------------------------------------------------------------

# Each device command's flags: (flag, dest, type, help). `remote` forwards them as given.
DEVICE_FLAGS_SPEC = {
    "status": [],
    "train": [("--data", "data", str, "the user's data on the device (.npz with x, y)"),
              ("--epochs", "epochs", int, "epochs to run now (default 1)")],
    "export": [],
    "unlearn": [("--mask", "mask", str, "the provider's mask (.npz from `edgetrain mask`)"),
                ("--data", "data", str, "data for the Fisher on the device (default: the last train's)"),
                ("--block", "block", int, "weights per Fisher block (default 8)"),
                ("--damp", "damp", float, "Fisher damping relative to its mean diagonal (default 1)")],
    "prove": [("--params", "params", str, "the provider's reference string (`edgetrain setup`'s file)"),
              ("--max-minutes", "max_minutes", float, "refuse, before proving, if the estimate is longer"),
              ("--max-memory", "max_memory", str, "refuse if the estimated peak memory is more (e.g. 2G)")],
}
DEVICE_FLAGS = {c: [(f, d) for f, d, _, _ in spec] for c, spec in DEVICE_FLAGS_SPEC.items()}
REQUIRED = {("train", "data"), ("unlearn", "mask"), ("prove", "params")}  # (command, dest)
DEVICE_HELP = {"install": "verify a bundle and make it the active release", "rollback": "swap back to the "
               "previous release", "status": "the active release, its model and what the commands wrote, with "
               "digests", "train": "train the release's model on data here (continues the last run)",
               "export": "write the trained model as ONNX", "unlearn": "remove the masked weights (ZK-APEX)",
               "prove": "the Halo2 proof of the last unlearning (needs the edgetrain_zk binding)"}


def register(add, positive, size) -> None:
    """Add this module's commands to the parser of ``edgetrain``: ``add`` is its helper,
    ``positive(kind)`` and ``size`` its argument types."""
    s = add("devices", cmd_devices, "the device profiles edgetrain knows (arch, cores, RAM, SIMD, Python, "
                                    "training memory budget)")
    s.add_argument("--device", help="one profile: a known name or a profile file")

    s = add("keygen", cmd_keygen, "make the provider's Ed25519 signing key (KEY and KEY.pub)", "provider")
    s.add_argument("-o", "--output", required=True, help="the private key file (KEY.pub goes beside it)")
    s.add_argument("--force", action="store_true", help="replace an existing key (devices will refuse bundles "
                                                        "it signs until their pin is reset)")

    def ssh_flags(p):
        p.add_argument("--ssh-config", help="an ssh_config file for ssh -F (keys, known_hosts, ports)")
        p.add_argument("--accept-new-host-key", action="store_true",
                       help="trust a host's key on first contact (ssh's accept-new); a changed key is always refused")

    s = add("deploy", cmd_deploy, "build a signed bundle (model, trainer configuration, device wheel) for a "
                                  "device profile and install it over SSH or into a folder", "provider")
    s.add_argument("model", nargs="?", help="the ONNX model to deploy")
    s.add_argument("--device", default="generic-aarch64", help="a profile name (`edgetrain devices`) or file "
                                                               "(default: %(default)s)")
    s.add_argument("--target", help="ssh://[user@]host[:port]/path or dir:/path (?python=CMD: the device's "
                                    "interpreter)")
    s.add_argument("--targets", metavar="HOSTS", help="a file of targets, one a line, to deploy to all")
    s.add_argument("--parallel", type=positive(int), default=4, help="devices at a time with --targets (default: 4)")
    s.add_argument("--rollback", action="store_true", help="swap the target(s) back to their previous release")
    s.add_argument("--method", help="training method on the device (default: elasticzo-int8 for an int8 model, "
                                    "else elasticzo)")
    s.add_argument("--cut", type=positive(int), default=1, help="trailing layers trained with backprop (default: 1)")
    s.add_argument("--batch-size", type=positive(int), default=32, help="(default: 32)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--key", help="the provider's signing key (default: $EDGETRAIN_KEY or "
                                 "~/.config/edgetrain/provider.key)")
    s.add_argument("--wheel", action="append", help="another wheel for the device (e.g. edgetrain_kernels built "
                                                    "for its arch); repeatable")
    s.add_argument("-o", "--output", metavar="BUNDLE", help="also write the signed bundle here (alone, without "
                                                            "a target: for another delivery engine)")
    s.add_argument("--limit-rate", type=positive(float), metavar="KIB_S", help="send at most this many KiB/s per device")
    ssh_flags(s)

    s = add("device", lambda a, o: DEVICE_COMMANDS[a.device_command](a, o),
            "on the device: install, rollback, status, train, export, unlearn, prove in the deployed folder")
    s.add_argument("--root", help=f"the device folder (default: ${ROOT_ENV})")
    dsub = s.add_subparsers(dest="device_command", required=True, parser_class=type(s))
    for name in ("install", "rollback", *DEVICE_FLAGS_SPEC):
        d = dsub.add_parser(name, help=DEVICE_HELP[name], description=DEVICE_HELP[name])
        d.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "install":
            d.add_argument("bundle")
        for flag, dest, kind, text in DEVICE_FLAGS_SPEC.get(name, ()):
            kind = size if dest == "max_memory" else positive(kind) if kind in (int, float) else kind
            d.add_argument(flag, dest=dest, type=kind, required=(name, dest) in REQUIRED, help=text)
        _defaults(d, name)

    s = add("remote", cmd_remote, "run a device command on a target from here, or fetch its results", "provider")
    s.add_argument("target", metavar="TARGET", help="ssh://[user@]host[:port]/path or dir:/path")
    ssh_flags(s)
    rsub = s.add_subparsers(dest="remote_command", required=True, parser_class=type(s))
    for name in (*DEVICE_FLAGS_SPEC, "fetch"):
        text = DEVICE_HELP.get(name, "bring the public results back (proof, its inputs and key, digests, "
                                     "history); --models adds the trained and unlearned models")
        r = rsub.add_parser(name, help=text, description=text)
        r.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for flag, dest, _, help_ in DEVICE_FLAGS_SPEC.get(name, ()):
            r.add_argument(flag, dest=dest, required=(name, dest) in REQUIRED, help=help_)
        if name == "fetch":
            r.add_argument("-o", "--output", required=True, help="the folder to write into")
            r.add_argument("--models", action="store_true", help="also the trained and unlearned models")

    s = add("export-tflite", cmd_export_tflite, "write an int8 ONNX model (QOperator) as a TFLite flatbuffer",
            "host")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="the .tflite file")


def _defaults(d, name):
    if name == "train":
        d.set_defaults(epochs=1)
    if name == "unlearn":
        d.set_defaults(block=8, damp=1.0)


DEVICE_COMMANDS = {"install": device_install, "rollback": device_rollback, "status": device_status,
                   "train": device_train, "export": device_export, "unlearn": device_unlearn, "prove": device_prove}
