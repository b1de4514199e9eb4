"""The command line: --json puts one JSON object on the last stdout line; errors exit 2, a negative
outcome (a proof that does not verify) exits 1."""
import json
import subprocess
import sys

import numpy as np
import pytest

import edgetrain
from edgetrain.cli import main


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    if code == 2:  # the error goes to stderr too, naming the command
        assert f"edgetrain {argv[0]}: error:" in captured.err
    return code, result


def test_export_quantize_info_run_chain(capsys, tmp_path, mnist):
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    code, r = run_json(capsys, "export", "mlp", "-o", str(fp32), "--check-mnist")
    assert code == 0 and r["ok"] and r["max_rel_err"] <= 1e-4
    np.savez(tmp_path / "calib.npz", x=mnist.x_train[:64])
    code, r = run_json(capsys, "quantize", str(fp32), "-o", str(int8), "--calib", str(tmp_path / "calib.npz"),
                       "--method", "percentile")
    assert code == 0 and r["n_samples"] == 64 and r["method"] == "percentile" and "QGemm" in r["ops"]
    code, r = run_json(capsys, "info", str(int8))
    assert code == 0 and r["integer_only"] and r["inputs"][0]["shape"][1:] == [1, 28, 28]
    np.savez(tmp_path / "test.npz", x=mnist.x_test[:100], y=mnist.y_test[:100])
    code, r = run_json(capsys, "run", str(int8), "--data", str(tmp_path / "test.npz"), "--batch-size", "32")
    # the CLI's batches of 32 against one call of the Python API on the same 100 samples
    predicted = edgetrain.load(int8).run(mnist.x_test[:100]).argmax(1)
    assert code == 0 and r["samples"] == 100 and r["accuracy"] == float((predicted == mnist.y_test[:100]).mean())


@pytest.mark.parametrize("argv, match", [
    (["info", "missing.onnx"], "missing.onnx"),
    (["export", "no_such_model", "-o", "x.onnx"], "no_such_model"),
    (["run", "missing.onnx", "--data", "nowhere.npz"], "missing.onnx"),
    (["train", "missing.onnx", "--data", "mnist", "--method", "zo"], "missing.onnx"),
    (["unlearn", "missing.onnx", "--mask", "m.npz", "--data", "mnist", "-o", "x.onnx"], "missing.onnx"),
    (["prove", "--witness", "missing.npz", "-o", "p.bin"], "missing.npz"),
])
def test_errors_exit_2_with_a_json_error(capsys, argv, match):
    code, r = run_json(capsys, *argv)
    assert code == 2 and not r["ok"] and match in r["error"]


def test_train_checkpoint_resume_and_export(capsys, tmp_path, mnist, int8_onnx):
    int8 = int8_onnx()
    np.savez(tmp_path / "user.npz", x=mnist.x_train[:128], y=mnist.y_train[:128])
    np.savez(tmp_path / "val.npz", x=mnist.x_test[:100], y=mnist.y_test[:100])
    code, r = run_json(capsys, "train", str(int8), "--data", str(tmp_path / "user.npz"), "--val",
                       str(tmp_path / "val.npz"), "--method", "elasticzo-int8", "--cut", "2", "--epochs", "1",
                       "--checkpoint", str(tmp_path / "ck.npz"), "-o", str(tmp_path / "out.onnx"))
    assert code == 0 and r["steps"] == 4 and len(r["history"]) == 1
    # validation ran after the last step: it is the accuracy of the exported model on the same data
    trained = edgetrain.load(tmp_path / "out.onnx")
    predicted = trained.run(mnist.x_test[:100]).argmax(1)
    assert trained.integer_only and r["history"][0]["val_accuracy"] == float((predicted == mnist.y_test[:100]).mean())
    code, r = run_json(capsys, "train", "-", "--resume", str(tmp_path / "ck.npz"), "--data",
                       str(tmp_path / "user.npz"), "--epochs", "2")
    assert code == 0 and r["steps"] == 8 and r["method"] == "elasticzo-int8"


def test_console_script_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgetrain.cli", "export", "mlp", "-o", str(tmp_path / "m.onnx"),
                          "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["ops"]["Gemm"] == 2


@pytest.fixture(scope="module")
def small_mlp(trained_onnx):
    """784 → 16 → 10, briefly trained: a last layer of 160 weights keeps real proofs fast."""
    return trained_onnx("mlp16")


def test_mask_unlearn_prove_verify_chain_and_a_tampered_proof(capsys, tmp_path, mnist, small_mlp):
    x, y = mnist.x_train[:300], mnist.y_train[:300]
    np.savez(tmp_path / "forget.npz", x=x[y == 3], y=y[y == 3])
    np.savez(tmp_path / "retain.npz", x=x[y != 3], y=y[y != 3])
    last = edgetrain.prover.target_layers(edgetrain.load(small_mlp))[-1]
    mask, out, proof = tmp_path / "mask", tmp_path / "out.onnx", tmp_path / "p.bin"  # no .npz: written as named
    code, r = run_json(capsys, "mask", str(small_mlp), "--forget", str(tmp_path / "forget.npz"), "--retain",
                       str(tmp_path / "retain.npz"), "--fraction", "0.1", "--layers", last, "-o", str(mask))
    assert code == 0 and r["layers"][last] == {"shape": [10, 16], "masked": 16}
    code, r = run_json(capsys, "unlearn", str(small_mlp), "--mask", str(mask), "--data", str(tmp_path / "retain.npz"),
                       "-o", str(out), "--block", "8")
    assert code == 0 and r["layers"][last] == {"weights": 160, "masked": 16}
    removed = np.load(mask)[last]
    assert np.all(edgetrain.load(out).params[last][removed] == 0.0)
    code, r = run_json(capsys, "prove", "--witness", r["witness"], "-o", str(proof))
    assert code == 0 and r["weights"] == 160 and r["proof_bytes"] > 1000
    h_w = r["commitments"][last]["w"]
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(mask), "--h-w", f"{last}={h_w}")
    assert code == 0 and r == {**r, "ok": True, "verified": True, "weights": 160, "masked": 16}

    # the provider's checks: another model's digest, another mask, a flipped proof byte, a truncated key
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(mask), "--h-w", "00" * 32)
    assert code == 1 and r["verified"] is False
    other = tmp_path / "other.npz"
    np.savez(other, **{last: np.roll(removed, 1)})
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(other))
    assert code == 1 and r["verified"] is False
    data = bytearray(proof.read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    code, r = run_json(capsys, "verify", str(tmp_path / "bad.bin"), f"{proof}.inputs", f"{proof}.vk",
                       "--mask", str(mask))
    assert code == 1 and r["verified"] is False

    # a well-formed proof that does not reach every masked weight: verified false, exit 1
    first = edgetrain.prover.target_layers(edgetrain.load(small_mlp))[0]
    wider = tmp_path / "wider.npz"
    np.savez(wider, **{last: removed, first: np.eye(16, 784, dtype=bool)})
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(wider))
    assert code == 1 and r["verified"] is False and r["error"] == f"masked weights outside the proof: {{{first!r}: 16}}"

    # files that are not what they claim: exit 2, naming the file
    code, r = run_json(capsys, "verify", str(proof), f"{proof}.inputs", str(tmp_path / "bad.bin"), "--mask", str(mask))
    assert code == 2 and "bad.bin" in r["error"] and "verifying key" in r["error"]
    (tmp_path / "cut.npz").write_bytes(mask.read_bytes()[:40])
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(tmp_path / "cut.npz"))
    assert code == 2 and "--mask" in r["error"] and "cut.npz" in r["error"]
    code, r = run_json(capsys, "verify", str(proof), "--mask", str(mask), "--h-w", "abcd")
    assert code == 2 and "--h-w 'abcd'" in r["error"]


def _raise_runtime_error(*args, **kwargs):
    raise RuntimeError("prover error: Synthesis\n  at circuit.rs:42")  # as the binding's backend errors read


def test_a_binding_runtime_error_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    import edgetrain_zk
    from edgetrain.prover import LayerWitness, proof
    wit = LayerWitness("fc.weight", (8,), 8, 16, np.zeros((1, 8), np.int64), np.eye(8, dtype=np.int64)[None],
                       np.ones((1, 8), bool), np.zeros((1, 8), np.int64))
    LayerWitness.save(tmp_path / "w.npz", [wit])
    monkeypatch.setattr(edgetrain_zk, "keygen", _raise_runtime_error)
    assert main(["prove", "--witness", str(tmp_path / "w.npz"), "-o", str(tmp_path / "p.bin"),
                 "--blocks-per-proof", "1"]) == 2
    err = capsys.readouterr().err
    one_line = "error: the prover failed: prover error: Synthesis at circuit.rs:42\n"
    assert err == f"edgetrain prove: {one_line}"

    head = {"name": "fc.weight", "size": 8, "digests": (b"\0" * 32,) * 3}
    (tmp_path / "p.bin").write_bytes(proof._encode_proof([[b"chunk"]]))
    (tmp_path / "p.bin.inputs").write_bytes(proof._encode_public([(head, [b"chunk"])]))
    (tmp_path / "p.bin.vk").write_bytes(b"ETZKV\x01")
    np.savez(tmp_path / "mask.npz", **{"fc.weight": np.zeros(8, bool)})
    proof._verifier.cache_clear()
    monkeypatch.setattr(edgetrain_zk, "Verifier", _raise_runtime_error)
    assert main(["verify", str(tmp_path / "p.bin"), "--mask", str(tmp_path / "mask.npz")]) == 2
    assert capsys.readouterr().err == f"edgetrain verify: {one_line}"
