"""The command line as a user meets it: --json puts one strict JSON object on the last stdout line;
every bad input exits 2 with one line naming the argument, before any work and leaving no file; a
proof that does not verify exits 1 naming the check; text output is aligned, never a repr."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgetrain
from conftest import run_json, strict_json
from edgetrain.cli import main


def test_export_quantize_info_run_chain(capsys, tmp_path, mnist):
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    code, r = run_json(capsys, "export", "mlp", "-o", str(fp32), "--check-mnist")
    assert code == 0 and r["ok"] and r["max_rel_err"] <= 1e-4 and r["trained"] is None
    np.savez(tmp_path / "calib.npz", x=mnist.x_train[:64])
    code, r = run_json(capsys, "quantize", str(fp32), "-o", str(int8), "--calib", str(tmp_path / "calib.npz"),
                       "--method", "percentile")
    assert code == 0 and r["n_samples"] == 64 and r["method"] == "percentile" and "QGemm" in r["ops"]
    code, r = run_json(capsys, "info", str(int8))
    assert code == 0 and r["integer_only"] and r["inputs"] == {"input": ["N", 1, 28, 28]}
    np.savez(tmp_path / "test.npz", x=mnist.x_test[:100], y=mnist.y_test[:100])
    code, r = run_json(capsys, "run", str(int8), "--data", str(tmp_path / "test.npz"), "--batch-size", "32")
    # the CLI's batches of 32 against one call of the Python API on the same 100 samples
    predicted = edgetrain.load(int8).run(mnist.x_test[:100]).argmax(1)
    assert code == 0 and r["samples"] == 100 and r["accuracy"] == float((predicted == mnist.y_test[:100]).mean())
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "m.int8.onnx", "m.onnx", "test.npz"]  # no temp files

    # without --json: aligned `key  value` lines and the ops as dotted keys, no dict reprs
    assert main(["run", str(int8), "--data", str(tmp_path / "test.npz")]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "accuracy" in out
    values = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert values["samples"] == "100" and float(values["accuracy"]) == pytest.approx(r["accuracy"], abs=1e-4)
    assert len({line.index(line.split()[1]) for line in out.splitlines()}) == 1  # one column of values


def test_export_says_a_zoo_model_is_untrained(capsys, tmp_path):
    """(--train is the walk-through's: tests/test_walkthrough.py.)"""
    code, r = run_json(capsys, "export", "mlp", "-o", str(tmp_path / "raw.onnx"))
    assert code == 0 and r["trained"] is None and capsys.readouterr().err == ""  # --json: nothing on stderr
    assert main(["export", "mlp", "-o", str(tmp_path / "raw.onnx")]) == 0
    assert capsys.readouterr().err == ("note: mlp is exported with its initial, untrained weights (about 10 % "
                                       "accuracy); add --train mnist to train it first\n")


# -- bad inputs × commands -------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist, trained_onnx, int8_onnx, srs):
    """A folder of input files, good and bad, named by what is wrong with them (and the
    provider's reference string, srs.bin; the session's key cache holds it too)."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "srs.bin").write_bytes(srs)
    x, y = mnist.x_test[:64], mnist.y_test[:64]
    np.savez(folder / "good.npz", x=x, y=y)
    np.savez(folder / "x_only.npz", x=x)
    np.savez(folder / "empty.npz")
    np.savez(folder / "zero.npz", x=x[:0], y=y[:0])
    np.savez(folder / "labels10.npz", x=x[:4], y=np.array([0, 1, 10, 2]))
    np.savez(folder / "labels_neg.npz", x=x[:4], y=np.array([0, -1, 2, 3]))
    np.savez(folder / "labels_float.npz", x=x[:4], y=np.array([0.0, 1.5, 2.0, 3.0]))
    np.savez(folder / "nan.npz", x=np.where(x == 0, np.nan, x), y=y)
    np.savez(folder / "inf.npz", x=np.where(x == 0, np.inf, x), y=y)
    np.savez(folder / "shape.npz", x=x[:, 0], y=y)
    np.save(folder / "array.npy", x)
    (folder / "trunc.npz").write_bytes((folder / "good.npz").read_bytes()[:5000])
    (folder / "random.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "folder").mkdir()
    fp32 = trained_onnx("mlp16")
    last = edgetrain.prover.target_layers(edgetrain.load(fp32))[-1]
    mask = np.zeros((10, 16), bool)
    mask[3, :4] = True
    np.savez(folder / "mask.npz", **{last: mask})
    np.savez(folder / "mask_float.npz", **{last: mask.astype(np.float32)})
    _, witnesses = edgetrain.prover.unlearn(edgetrain.load(fp32), {last: mask}, data=(x, y), block=8)
    edgetrain.prover.LayerWitness.save(folder / "witness.npz", witnesses)
    kept = np.argwhere(witnesses[0].keep)[0]
    witnesses[0].w_new[tuple(kept)] += 1  # a device that reports another result than its step gives
    edgetrain.prover.LayerWitness.save(folder / "tampered.npz", witnesses)
    edgetrain.Trainer(edgetrain.load(fp32), method="bp").save(folder / "ck.npz")
    (folder / "ck_trunc.npz").write_bytes((folder / "ck.npz").read_bytes()[:4000])
    return {"root": folder, "fp32": str(fp32), "int8": str(int8_onnx("lenet5"))}


def _argv(template, inputs):
    """``{name}`` → the path of the input file ``name``; ``{fp32}``, ``{int8}`` → the models."""
    out = []
    for a in template:
        if a.startswith("{") and a.endswith("}"):
            key = a[1:-1]
            a = inputs[key] if key in inputs else str(inputs["root"] / key)
        out.append(a)
    return out


GOOD, M, Q = "{good.npz}", "{fp32}", "{int8}"
BAD_INPUTS = {
    # data files (.npz), as each command that reads one meets them
    "run-empty": (["run", M, "--data", "{empty.npz}"], ["--data", "empty.npz", "no array 'x'"]),
    "run-zero-samples": (["run", M, "--data", "{zero.npz}"], ["--data", "zero.npz", "0 samples"]),
    "run-truncated": (["run", M, "--data", "{trunc.npz}"], ["--data", "trunc.npz", "truncated"]),
    "run-not-a-zip": (["run", M, "--data", "{random.bin}"], ["--data", "random.bin", "not an .npz file"]),
    "run-npy": (["run", M, "--data", "{array.npy}"], ["--data", "array.npy", "single .npy"]),
    "run-folder": (["run", M, "--data", "{folder}"], ["--data", "folder", "is a directory"]),
    "run-missing": (["run", M, "--data", "nowhere.npz"], ["--data", "nowhere.npz", "does not exist"]),
    "run-label-10": (["run", M, "--data", "{labels10.npz}"], ["--data", "labels10.npz", "labels up to 10",
                                                              "10 classes"]),
    "run-label-negative": (["run", M, "--data", "{labels_neg.npz}"], ["--data", "labels_neg.npz", "negative"]),
    "run-label-float": (["run", M, "--data", "{labels_float.npz}"], ["--data", "labels_float.npz", "float64",
                                                                     "integer class labels"]),
    "run-nan": (["run", M, "--data", "{nan.npz}"], ["--data", "nan.npz", "NaN or infinite"]),
    "run-inf": (["run", M, "--data", "{inf.npz}"], ["--data", "inf.npz", "NaN or infinite"]),
    "run-sample-shape": (["run", M, "--data", "{shape.npz}"], ["--data", "shape.npz", "(64, 28, 28)",
                                                               "(N, 1, 28, 28)"]),
    "train-empty": (["train", M, "--data", "{empty.npz}"], ["--data", "empty.npz", "no array 'x'"]),
    "train-no-labels": (["train", M, "--data", "{x_only.npz}"], ["--data", "x_only.npz", "no array 'y'"]),
    "train-val-truncated": (["train", M, "--data", GOOD, "--val", "{trunc.npz}"], ["--val", "trunc.npz"]),
    "train-resume-truncated": (["train", "--resume", "{ck_trunc.npz}", "--data", GOOD],
                               ["checkpoint", "ck_trunc.npz", "truncated"]),
    "train-resume-not-a-zip": (["train", "--resume", "{random.bin}", "--data", GOOD],
                               ["checkpoint", "random.bin", "not an .npz file"]),
    "train-resume-folder": (["train", "--resume", "{folder}", "--data", GOOD], ["--resume", "directory"]),
    "mask-forget-empty": (["mask", M, "--forget", "{empty.npz}", "--retain", GOOD, "-o", "m.npz"],
                          ["--forget", "empty.npz"]),
    "mask-retain-truncated": (["mask", M, "--forget", GOOD, "--retain", "{trunc.npz}", "-o", "m.npz"],
                              ["--retain", "trunc.npz", "truncated"]),
    "unlearn-data-label-10": (["unlearn", M, "--mask", "{mask.npz}", "--data", "{labels10.npz}", "-o", "u.onnx"],
                              ["--data", "labels10.npz", "labels up to 10"]),
    "unlearn-mask-truncated": (["unlearn", M, "--mask", "{trunc.npz}", "--data", GOOD, "-o", "u.onnx"],
                               ["--mask", "trunc.npz"]),
    "prove-witness-truncated": (["prove", "--witness", "{trunc.npz}", "-o", "p.bin", "--params", "{srs.bin}"],
                                ["--witness", "trunc.npz"]),
    "prove-witness-folder": (["prove", "--witness", "{folder}", "-o", "p.bin", "--params", "{srs.bin}"],
                             ["--witness", "directory"]),
    "prove-witness-tampered": (["prove", "--witness", "{tampered.npz}", "-o", "p.bin", "--params", "{srs.bin}"],
                               ["--witness", "tampered.npz", "w_new is not the step"]),
    "quantize-calib-truncated": (["quantize", M, "-o", "q.onnx", "--calib", "{trunc.npz}"], ["--calib", "trunc.npz"]),
    "export-train-truncated": (["export", "mlp", "-o", "m.onnx", "--train", "{trunc.npz}"], ["--train", "trunc.npz"]),
    # model files
    "info-missing": (["info", "missing.onnx"], ["MODEL", "missing.onnx", "does not exist"]),
    "train-model-missing": (["train", "missing.onnx", "--data", GOOD], ["MODEL", "missing.onnx", "does not exist"]),
    "unlearn-model-missing": (["unlearn", "missing.onnx", "--mask", "{mask.npz}", "--data", GOOD, "-o", "u.onnx"],
                              ["MODEL", "missing.onnx", "does not exist"]),
    "prove-witness-missing": (["prove", "--witness", "missing.npz", "-o", "p.bin", "--params", "{srs.bin}"],
                              ["--witness", "missing.npz", "does not exist"]),
    "info-not-onnx": (["info", "{random.bin}"], ["random.bin", "ONNX"]),
    "info-folder": (["info", "{folder}"], ["MODEL", "directory"]),
    "quantize-not-onnx": (["quantize", "{random.bin}", "-o", "q.onnx", "--calib", GOOD],
                          ["random.bin", "not an ONNX model"]),
    "quantize-int8": (["quantize", Q, "-o", "q.onnx", "--calib", GOOD], ["lenet5.int8.onnx", "already quantised"]),
    # numbers and combinations
    "train-lr-nan": (["train", M, "--data", GOOD, "--method", "bp", "--lr", "nan"], ["lr=nan", "finite real > 0"]),
    "train-lr-inf": (["train", M, "--data", GOOD, "--method", "bp", "--lr", "inf"], ["lr=inf", "finite real > 0"]),
    "train-lr-zero": (["train", M, "--data", GOOD, "--method", "bp", "--lr", "0"], ["lr=0.0", "finite real > 0"]),
    "train-lr-negative": (["train", M, "--data", GOOD, "--lr", "-1"], ["lr=-1.0", "finite real > 0"]),
    "train-zo-lr-nan": (["train", M, "--data", GOOD, "--method", "zo", "--zo-lr", "nan"], ["zo_lr=nan"]),
    "train-zo-layers-negative": (["train", M, "--data", GOOD, "--zo-layers", "-1"], ["zo_layers=-1", "[0, 64]"]),
    "train-zo-layers-on-bp": (["train", M, "--data", GOOD, "--method", "bp", "--zo-layers", "1"],
                              ["zo_layers=1", "method='bp' takes"]),
    "train-lr-on-int8": (["train", Q, "--data", GOOD, "--method", "elasticzo-int8", "--lr", "0.1"],
                         ["lr=0.1", "elasticzo-int8"]),
    "train-epochs-0": (["train", M, "--data", GOOD, "--epochs", "0"], ["--epochs", "'0'", "positive int"]),
    "train-model-and-resume": (["train", M, "--resume", "{ck.npz}", "--data", GOOD], ["MODEL", "--resume"]),
    "train-resume-with-lr": (["train", "--resume", "{ck.npz}", "--data", GOOD, "--lr", "0.1"], ["--lr", "--resume"]),
    "train-batch-too-large": (["train", M, "--data", GOOD, "--batch-size", "100"], ["--data", "--batch-size 100"]),
    "mask-fraction": (["mask", M, "--forget", GOOD, "--retain", GOOD, "--fraction", "1.5", "-o", "m.npz"],
                      ["fraction=1.5"]),
    "mask-layers": (["mask", M, "--forget", GOOD, "--retain", GOOD, "--layers", "nope", "-o", "m.npz"], ["'nope'"]),
    "unlearn-damp-nan": (["unlearn", M, "--mask", "{mask.npz}", "--data", GOOD, "-o", "u.onnx", "--damp", "nan"],
                         ["--damp", "'nan'"]),
    "unlearn-block-0": (["unlearn", M, "--mask", "{mask.npz}", "--data", GOOD, "-o", "u.onnx", "--block", "0"],
                        ["--block", "'0'"]),
    "unlearn-mask-float": (["unlearn", M, "--mask", "{mask_float.npz}", "--data", GOOD, "-o", "u.onnx"],
                           ["--mask", "mask_float.npz", "bool"]),
    "prove-max-memory": (["prove", "--witness", "{witness.npz}", "-o", "p.bin", "--params", "{srs.bin}",
                          "--max-memory", "2T"],
                         ["--max-memory", "'2T'"]),
    "prove-blocks-0": (["prove", "--witness", "{witness.npz}", "-o", "p.bin", "--params", "{srs.bin}",
                        "--blocks-per-proof", "0"],
                       ["--blocks-per-proof", "'0'"]),
    "prove-params-missing": (["prove", "--witness", "{witness.npz}", "-o", "p.bin", "--params", "nowhere.bin"],
                             ["--params", "nowhere.bin", "does not exist"]),
    "prove-params-not-a-reference-string": (["prove", "--witness", "{witness.npz}", "-o", "p.bin", "--params",
                                             "{random.bin}"], ["--params", "random.bin", "not a reference string"]),
    "export-lr-nan": (["export", "mlp", "-o", "m.onnx", "--train", GOOD, "--lr", "nan"], ["--lr", "'nan'"]),
    "export-unknown-model": (["export", "no_such_model", "-o", "m.onnx"], ["no_such_model"]),
    "data-no-sample-left": (["data", "mnist", "--only", "42", "-o", "d.npz"], ["--only", "no sample"]),
    "compress-k-1": (["compress", M, "-o", "c.onnx", "--method", "lr2vq", "--data", GOOD, "--k", "1"],
                     ["k=1", "power of two"]),
    "compress-bits-1.5": (["compress", M, "-o", "c.onnx", "--method", "evopress", "--data", GOOD, "--bits", "1.5"],
                          ["bits=1.5", "cannot be met"]),
    "compress-sparsity-0.99": (["compress", M, "-o", "c.onnx", "--method", "evopress", "--data", GOOD,
                                "--sparsity", "0.99"], ["sparsity=0.99", "cannot be met"]),
    "compress-m-not-dividing": (["compress", M, "-o", "c.onnx", "--method", "pq", "--data", GOOD, "--k", "16",
                                 "--m", "7"], ["m=7", "160 weights"]),
    "compress-flag-of-another-method": (["compress", M, "-o", "c.onnx", "--method", "pq", "--data", GOOD, "--bits",
                                         "3"], ["--bits", "--method pq"]),
    "compress-int8-model": (["compress", Q, "-o", "c.onnx", "--method", "cluster", "--data", GOOD, "--k", "16"],
                            ["already quantised"]),
    "compress-no-labels": (["compress", M, "-o", "c.onnx", "--method", "lr2vq", "--data", "{x_only.npz}"],
                           ["--data", "no array 'y'"]),
    # outputs: checked before any work
    "train-output-folder-missing": (["train", M, "--data", GOOD, "-o", "/nonexistent/t.onnx"],
                                    ["-o", "/nonexistent/t.onnx", "does not exist"]),
    "train-output-is-folder": (["train", M, "--data", GOOD, "-o", "{folder}"], ["-o", "folder", "directory"]),
    "train-checkpoint-folder-missing": (["train", M, "--data", GOOD, "--checkpoint", "/nonexistent/ck.npz"],
                                        ["--checkpoint", "/nonexistent/ck.npz"]),
    "train-plot-format": (["train", M, "--data", GOOD, "--plot", "curve.txt"], ["--plot", "curve.txt", ".png"]),
    "mask-output-is-folder": (["mask", M, "--forget", GOOD, "--retain", GOOD, "-o", "{folder}"], ["-o", "directory"]),
    "unlearn-witness-folder-missing": (["unlearn", M, "--mask", "{mask.npz}", "--data", GOOD, "-o", "u.onnx",
                                        "--witness", "/nonexistent/w.npz"], ["--witness", "/nonexistent/w.npz"]),
    "prove-output-folder-missing": (["prove", "--witness", "{witness.npz}", "-o", "/nonexistent/p.bin", "--params",
                                     "{srs.bin}"], ["-o", "/nonexistent/p.bin"]),
    "quantize-output-is-folder": (["quantize", M, "-o", "{folder}", "--calib", GOOD], ["-o", "directory"]),
    "export-output-folder-missing": (["export", "mlp", "-o", "/nonexistent/m.onnx"], ["-o", "/nonexistent/m.onnx"]),
    "data-output-is-folder": (["data", "mnist", "-o", "{folder}"], ["-o", "directory"]),
    "compress-output-folder-missing": (["compress", M, "-o", "/nonexistent/c.onnx", "--method", "cluster", "--data",
                                        GOOD, "--k", "16"], ["-o", "/nonexistent/c.onnx", "does not exist"]),
    "demo-out-is-a-file": (["demo", "--out", GOOD], ["--out", "good.npz", "is a file"]),
    # the provider's files
    "verify-proof-missing": (["verify", "nowhere.bin", "--mask", "{mask.npz}"], ["PROOF", "nowhere.bin",
                                                                                  "does not exist"]),
    "verify-mask-missing": (["verify", "p.bin", "--mask", "nowhere.npz"], ["--mask", "nowhere.npz", "does not exist"]),
    "verify-mask-float": (["verify", "p.bin", "--mask", "{mask_float.npz}"], ["--mask", "bool"]),
    "verify-bad-hex": (["verify", "p.bin", "--mask", "{mask.npz}", "--h-w", "xyz"], ["--h-w", "'xyz'", "hex"]),
    "verify-key-not-a-key": (["verify", "{random.bin}", "{random.bin}", "{random.bin}", "--mask", "{mask.npz}"],
                             ["random.bin", "verifying key"]),
    "verify-params-not-a-reference-string": (["verify", "{random.bin}", "{random.bin}", "{random.bin}", "--mask",
                                              "{mask.npz}", "--params", "{witness.npz}"],
                                             ["--params", "witness.npz", "not a reference string"]),
    "setup-k-too-small": (["setup", "-k", "9", "-o", "s.bin"], ["k = 9", "10..="]),
}


def _files(*folders):
    return {folder: sorted(os.listdir(folder)) for folder in folders}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_exits_2_with_one_line_naming_it_and_leaves_no_file(case, inputs, tmp_path, monkeypatch,
                                                                         capsys):
    template, expected = BAD_INPUTS[case]
    argv = _argv(template, inputs)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path, inputs["root"], inputs["root"] / "folder")
    code, r = run_json(capsys, *argv)  # one stderr line, strict JSON (no traceback: it would fail the test)
    assert code == 2 and not r["ok"]
    for text in expected:
        assert text in r["error"], (text, r["error"])
    assert _files(tmp_path, inputs["root"], inputs["root"] / "folder") == before


def test_json_never_holds_nan(capsys, tmp_path, mnist, trained_onnx):
    """A step size that blows the loss up: the history's NaN is null, and a warning says why."""
    np.savez(tmp_path / "d.npz", x=mnist.x_train[:64], y=mnist.y_train[:64])
    code, r = run_json(capsys, "train", str(trained_onnx("lenet5")), "--data", str(tmp_path / "d.npz"),
                       "--method", "bp", "--lr", "1e9", "--epochs", "2")
    assert code == 0 and [h["loss"] for h in r["history"]] == [None, None] and "not finite" in r["warning"]


# -- train: checkpoints, resume, plots ------------------------------------------------

def test_train_checkpoint_resume_and_export(capsys, tmp_path, mnist, int8_onnx):
    int8 = int8_onnx()
    np.savez(tmp_path / "user.npz", x=mnist.x_train[:128], y=mnist.y_train[:128])
    np.savez(tmp_path / "val.npz", x=mnist.x_test[:100], y=mnist.y_test[:100])
    code, r = run_json(capsys, "train", str(int8), "--data", str(tmp_path / "user.npz"), "--val",
                       str(tmp_path / "val.npz"), "--method", "elasticzo-int8", "--cut", "2", "--epochs", "1",
                       "--checkpoint", str(tmp_path / "ck.npz"), "-o", str(tmp_path / "out.onnx"),
                       "--plot", str(tmp_path / "curve.png"))
    assert code == 0 and r["steps"] == 4 and len(r["history"]) == 1 and r["plot"] == str(tmp_path / "curve.png")
    # validation ran after the last step: it is the accuracy of the exported model on the same data
    trained = edgetrain.load(tmp_path / "out.onnx")
    predicted = trained.run(mnist.x_test[:100]).argmax(1)
    assert trained.integer_only and r["history"][0]["val_accuracy"] == float((predicted == mnist.y_test[:100]).mean())
    # --epochs counts this run's epochs: one more after the checkpoint's one
    code, r = run_json(capsys, "train", "--resume", str(tmp_path / "ck.npz"), "--data", str(tmp_path / "user.npz"),
                       "--epochs", "1")
    assert code == 0 and r["steps"] == 8 and r["epochs_done"] == 2 and r["method"] == "elasticzo-int8"
    assert [h["epoch"] for h in r["history"]] == [2]


def test_train_plot_draws_loss_and_accuracy_per_epoch(capsys, tmp_path, mnist, trained_onnx):
    import matplotlib.image
    np.savez(tmp_path / "d.npz", x=mnist.x_train[:96], y=mnist.y_train[:96])
    code, r = run_json(capsys, "train", str(trained_onnx("mlp16")), "--data", str(tmp_path / "d.npz"), "--val",
                       str(tmp_path / "d.npz"), "--method", "bp", "--epochs", "3", "--plot", str(tmp_path / "c.png"))
    assert code == 0 and [h["epoch"] for h in r["history"]] == [1, 2, 3]
    image = matplotlib.image.imread(tmp_path / "c.png")
    assert image.shape[0] > 200 and image.shape[1] > 2 * image.shape[0] - 200  # two panels side by side
    assert sorted(os.listdir(tmp_path)) == ["c.png", "d.npz"]


# -- the provider's checks ---------------------------------------------------------------

def test_prove_refuses_above_its_limits_with_the_numbers(capsys, tmp_path, inputs):
    code, r = run_json(capsys, "prove", "--witness", str(inputs["root"] / "witness.npz"), "-o",
                       str(tmp_path / "p.bin"), "--max-memory", "100M", "--params", str(inputs["root"] / "srs.bin"))
    assert code == 2 and r["error"].startswith("--max-memory 100 MiB: proving takes 1 chunk proof(s) of 20 blocks "
                                               "(160 weights) in a circuit of 2^11 rows: about ")
    assert os.listdir(tmp_path) == []


def test_setup_writes_the_reference_string_verify_looks_for(capsys, tmp_path, monkeypatch, inputs):
    from edgetrain.prover import proof
    code, r = run_json(capsys, "setup", "-k", "10", "-o", str(tmp_path / "s.bin"))
    assert code == 0 and r["params"] == str(tmp_path / "s.bin") and (r["k_min"], r["k_max"]) == (10, 10)
    assert proof.srs_sizes((tmp_path / "s.bin").read_bytes()) == (10, 10) and os.listdir(tmp_path) == ["s.bin"]
    monkeypatch.setenv("EDGETRAIN_CACHE", str(tmp_path / "cache"))  # a provider that has made none
    code, r = run_json(capsys, "verify", *[str(inputs["root"] / "random.bin")] * 3, "--mask",
                       str(inputs["root"] / "mask.npz"))
    assert code == 2 and "no reference string" in r["error"] and "edgetrain setup" in r["error"]
    code, r = run_json(capsys, "setup", "-k", "10")  # into the key cache, where verify looks
    assert code == 0 and r["params"] == str(tmp_path / "cache" / proof.SRS_FILE)
    code, r = run_json(capsys, "verify", *[str(inputs["root"] / "random.bin")] * 3, "--mask",
                       str(inputs["root"] / "mask.npz"))
    assert code == 2 and "verifying key" in r["error"]  # past the reference string, on to the device's files


def _raise_runtime_error(*args, **kwargs):
    raise RuntimeError("prover error: Synthesis\n  at circuit.rs:42")  # as the binding's backend errors read


def test_a_binding_runtime_error_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, srs):
    import edgetrain_zk
    from edgetrain.prover import LayerWitness, proof
    wit = LayerWitness("fc.weight", (8,), 8, 16, np.zeros((1, 8), np.int64), np.eye(8, dtype=np.int64)[None],
                       np.ones((1, 8), bool), np.zeros((1, 8), np.int64))
    LayerWitness.save(tmp_path / "w.npz", [wit])
    proof.keygen.cache_clear()  # a key of this shape cached by an earlier test would skip the patched keygen
    monkeypatch.setattr(edgetrain_zk, "keygen", _raise_runtime_error)
    (tmp_path / "srs.bin").write_bytes(srs)
    assert main(["prove", "--witness", str(tmp_path / "w.npz"), "-o", str(tmp_path / "p.bin"),
                 "--blocks-per-proof", "1", "--params", str(tmp_path / "srs.bin")]) == 2
    err = capsys.readouterr().err
    one_line = "error: the prover failed: prover error: Synthesis at circuit.rs:42\n"
    assert err == f"edgetrain prove: {one_line}"

    head = {"name": "fc.weight", "size": 8, "digests": (b"\0" * 32,) * 3}
    (tmp_path / "p.bin").write_bytes(proof._encode_proof([[b"chunk"]]))
    (tmp_path / "p.bin.inputs").write_bytes(proof._encode_public([(head, [b"chunk"])]))
    (tmp_path / "p.bin.vk").write_bytes(b"ETZKV\x01\x02\x0b")
    np.savez(tmp_path / "mask.npz", **{"fc.weight": np.zeros(8, bool)})
    proof._verifier.cache_clear()
    monkeypatch.setattr(edgetrain_zk, "Verifier", _raise_runtime_error)
    monkeypatch.setattr(edgetrain_zk, "verifying_key", _raise_runtime_error)  # the provider's stored key
    assert main(["verify", str(tmp_path / "p.bin"), "--mask", str(tmp_path / "mask.npz")]) == 2
    assert capsys.readouterr().err == f"edgetrain verify: {one_line}"


def test_console_script_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgetrain.cli", "export", "mlp", "-o", str(tmp_path / "m.onnx"),
                          "--json"], capture_output=True, text=True, check=True)
    assert strict_json(out.stdout.strip().splitlines()[-1])["ops"]["Gemm"] == 2


# -- Ctrl-C ----------------------------------------------------------------------------

def _interrupt(argv, cwd, ready, timeout=120):
    """Runs ``edgetrain ARGV`` in a subprocess, sends SIGINT once ``ready(stderr so far)``
    holds, returns (exit code, stderr, seconds from the signal to the exit)."""
    child = subprocess.Popen([sys.executable, "-m", "edgetrain.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.extend(child.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready("".join(err)) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, f"it ended before the signal: {''.join(err)}"
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    child.wait(timeout=timeout)
    seconds = time.monotonic() - sent
    reader.join(timeout=10)
    return child.returncode, "".join(err), seconds


def test_ctrl_c_during_train_keeps_the_last_checkpoint_and_writes_nothing_else(tmp_path, mnist, int8_onnx):
    np.savez(tmp_path / "user.npz", x=mnist.x_train[:640], y=mnist.y_train[:640])
    ck = tmp_path / "ck.npz"
    code, err, _ = _interrupt(["train", str(int8_onnx()), "--data", "user.npz", "--method", "elasticzo-int8",
                               "--cut", "2", "--epochs", "50", "--checkpoint", "ck.npz", "-o", "out.onnx",
                               "--plot", "c.png"], tmp_path, ready=lambda _: ck.exists())
    lines = err.splitlines()
    assert code == 130 and all(line.startswith("epoch ") for line in lines[:-1])  # a note per epoch, then one line
    assert lines[-1] == ("edgetrain train: interrupted (Ctrl-C): the checkpoint 'ck.npz' holds the last whole epoch "
                         "(--resume it)")
    trainer = edgetrain.Trainer.load(ck)  # whole, and at the end of an epoch
    assert trainer.step_count > 0 and trainer.step_count % 20 == 0
    assert sorted(os.listdir(tmp_path)) == ["ck.npz", "user.npz"]


def test_ctrl_c_during_compress_leaves_no_output(tmp_path, mnist, trained_onnx):
    np.savez(tmp_path / "d.npz", x=mnist.x_train[:640], y=mnist.y_train[:640])
    code, err, _ = _interrupt(["compress", str(trained_onnx("mlp16")), "-o", "c.onnx", "--method", "cluster",
                               "--k", "16", "--data", "d.npz", "--epochs", "50"], tmp_path,
                              ready=lambda e: "fine-tune 1/50" in e)
    assert code == 130 and err.splitlines()[-1].startswith("edgetrain compress: interrupted (Ctrl-C)")
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_ctrl_c_during_prove_exits_130_at_once_and_writes_nothing(tmp_path, inputs):
    planned = []

    def proving(err):  # the plan is out: parameters, keys and chunks follow; signal a second into them
        if "proving 1 chunk proof(s)" in err and not planned:
            planned.append(time.monotonic())
        return bool(planned) and time.monotonic() - planned[0] > 1.0

    code, err, seconds = _interrupt(["prove", "--witness", str(inputs["root"] / "witness.npz"), "-o", "p.bin",
                                     "--params", str(inputs["root"] / "srs.bin")],
                                    tmp_path, ready=proving)
    assert code == 130 and seconds < 3, seconds  # not after the native call it interrupted
    assert err.splitlines()[-1] == "edgetrain prove: interrupted (Ctrl-C): no output was written"
    assert len(err.splitlines()) == 2 and os.listdir(tmp_path) == []


# -- the demo's plumbing (the demo itself runs in the README's first command) -------

def _fake_demo_result():
    acc = {"before": 0.95, "mask_only": 0.0, "after": 0.0}
    return {"torch_fp32_accuracy": 0.94, "edgetrain_fp32_accuracy": 0.94, "edgetrain_int8_accuracy": 0.941,
            "onnxruntime_int8_accuracy": 0.941, "int8_integer_only": True,
            "int8_argmax_agreement_with_onnxruntime": 1.0, "int8_outputs_identical_to_onnxruntime": 0.9998,
            "int8_ms_per_sample_batch1000": 0.4, "seconds": 100.0,
            "compression": {"model": "lenet5.evopress.onnx", "bits": 3.0, "generations": 30, "search_seconds": 30.0,
                            "layer_bits": [3, 3, 3, 3, 3], "used_bits": 184410, "budget_bits": 184410,
                            "stored_bytes": {"fp32": 246824, "int8": 63000, "compressed": 25451},
                            "file_bytes": {"fp32": 248433, "int8": 67773, "compressed": 31552},
                            "edgetrain_accuracy": 0.93, "onnxruntime_accuracy": 0.93,
                            "outputs_identical_to_onnxruntime": 0.9999},
            "personalisation": {"cut": 3, "user_samples": 500, "shifted_accuracy_before": 0.72,
                                "shifted_accuracy_after": 0.89, "recovered_fraction": 0.77,
                                "clean_accuracy_before": 0.94, "clean_accuracy_after": 0.92,
                                "step_peak_bytes": 900 << 10, "inference_peak_bytes": 750 << 10,
                                "estimated_step_peak_bytes": 820 << 10},
            "unlearning": {"forget_class": 3, "layer": "11.weight", "masked_weights": 84, "block": 8,
                           "forget_set_accuracy": acc, "forget_class_test_accuracy": acc,
                           "retain_test_accuracy": {"before": 0.94, "mask_only": 0.95, "after": 0.95},
                           "proof_weights": 840, "model_weights": 61706, "proof_chunks": 1, "proof_bytes": 9144,
                           "prove_seconds": 8.0, "setup_seconds": 15.0, "srs_seconds": 13.0, "verified": True,
                           "verify_seconds": 0.3,
                           "verify_key_and_proof_seconds": 4.0, "bundle_bytes": 399360},
            "unlearning_int8": {"forget_class": 3, "layer": "11.weight_quantized", "model": "lenet5.personal.onnx",
                                "weights_dtype": "int16", "scale_bits": 16, "masked_weights": 84, "block": 8,
                                "mask_c": 2.0, "mask_c_tried": [{"c": 0.5, "user_images_recognised": 0.7},
                                                                {"c": 2.0, "user_images_recognised": 0.0}],
                                "with_default_mask": {"c": 0.5, "forget_class_test_accuracy": 0.6,
                                                      "retain_test_accuracy": 0.85},
                                "forget_set_accuracy": acc, "forget_class_test_accuracy": acc,
                                "retain_test_accuracy": {"before": 0.92, "mask_only": 0.91, "after": 0.935},
                                "onnxruntime_argmax_agreement": 1.0, "unlearned_model": "unlearned.int8.onnx",
                                "proof_weights": 840, "proof_chunks": 1, "proof_bytes": 9144, "prove_seconds": 8.0,
                                "verified": True, "verify_seconds": 0.3}}


def test_demo_prints_its_summary_once_and_writes_only_into_out(capsys, tmp_path, monkeypatch):
    from edgetrain.export import demo

    def fake(out, epochs, seed, key_cache, show):
        (Path(out) / demo.REPORT).write_text("# report\n")
        return _fake_demo_result()
    monkeypatch.setattr(demo, "run_demo", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "d"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("test accuracy on 1000 MNIST images") == 1 and captured.err == ""
    assert "other digits in the test set        92.0% ->  93.5%   (masking alone, no compensation: 91.0%)   fp32 " \
           "path: 95.0%" in captured.out  # the int8 request's figures beside the fp32 path's
    assert captured.out.rstrip().endswith(f"report with charts: {os.path.join('d', demo.REPORT)}")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == [demo.REPORT]

    def failing(out, **kwargs):
        (Path(out) / "lenet5.onnx").write_bytes(b"half")
        raise ValueError("a stage failed")
    monkeypatch.setattr(demo, "run_demo", failing)
    code, r = run_json(capsys, "demo", "--out", "e")
    assert code == 2 and r["error"] == "a stage failed" and os.listdir(tmp_path) == ["d"]
