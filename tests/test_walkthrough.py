"""The README's walk-through, run as written there: each `edgetrain` line of its block, in order, in
an empty folder, with the one change the README states (`--epochs 1`, to keep CI short); then the
provider's checks on the proof it made, each named when it says no."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import edgetrain
from conftest import run_json, strict_json
from edgetrain.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def block_lines() -> list[str]:
    """The non-empty lines of the ```sh block under "### Walk-through"."""
    text = README.read_text()
    section = text[text.index("### Walk-through"):]
    return [line for line in re.search(r"```sh\n(.*?)```", section, re.S).group(1).splitlines() if line.strip()]


def test_the_block_is_edgetrain_lines_only():
    lines = block_lines()
    assert len(lines) >= 10 and all(line.startswith("edgetrain ") for line in lines)
    assert shlex.split(lines[0])[1] == "export" and shlex.split(lines[-1])[1] == "verify"


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The walk-through's folder, and per command the (exit code, strict-JSON result, stderr)
    of each of its lines, in order."""
    folder = tmp_path_factory.mktemp("walkthrough")
    chdir = pytest.MonkeyPatch()
    chdir.chdir(folder)
    runs = {}
    try:
        for line in block_lines():
            argv = shlex.split(line, comments=True)[1:]
            argv = ["1" if prev == "--epochs" else a for prev, a in zip([None, *argv], argv)]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*argv, "--json"])
            runs.setdefault(argv[0], []).append((code, strict_json(out.getvalue().splitlines()[-1]), err.getvalue()))
    finally:
        chdir.undo()
    return folder, runs


def test_the_readme_walkthrough_works_as_written(walked):
    folder, runs = walked
    assert all(code == 0 for results in runs.values() for code, _, _ in results), runs
    results = {command: [r for _, r, _ in rs] for command, rs in runs.items()}

    export, = results["export"]
    assert export["trained"] == {"data": "mnist", "epochs": 1, "samples": 4000}
    run_int8, run_unlearned = results["run"]
    assert run_int8["samples"] == 1000 and run_int8["accuracy"] > 0.8  # one epoch of torch training
    first, resumed = results["train"]
    assert first["epochs_done"] == 1 and resumed["epochs_done"] == 2 and resumed["steps"] == 2 * first["steps"]
    assert [h["epoch"] for h in resumed["history"]] == [2]
    assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (folder / "personal.int8.onnx").is_file()

    # the defaults forget: the user's 3s before (the Python API) and after unlearning (the command line)
    forget = np.load(folder / "forget.npz")
    before = float((edgetrain.load(folder / "lenet5.onnx").run(forget["x"]).argmax(1) == forget["y"]).mean())
    assert set(forget["y"].tolist()) == {3} and before > 0.6 and run_unlearned["accuracy"] <= 0.05
    proof, = results["prove"]
    assert proof["plan"]["chunks"] == proof["chunks"] == 1 and proof["weights"] == 840 and proof["plan"]["k"] == 13
    verify, = results["verify"]
    assert verify["verified"] is True and verify["masked"] == 84 and "failed" not in verify


SRS = ("--params", "srs.bin")  # the provider's reference string, as the walk-through made it


def test_verify_names_the_check_that_fails(walked, capsys, monkeypatch):
    folder, runs = walked
    monkeypatch.chdir(folder)
    (_, proved, _), = runs["prove"]
    last, = proved["commitments"]
    h_w = proved["commitments"][last]["w"]
    code, r = run_json(capsys, "verify", "proof.bin", "--mask", "mask.npz", "--h-w", f"{last}={h_w}", *SRS)
    assert code == 0 and r["verified"] is True

    removed = np.load("mask.npz")[last]
    np.savez("other.npz", **{last: np.roll(removed, 1)})
    np.savez("wider.npz", **{last: removed, "7.weight": np.eye(120, 400, dtype=bool)})
    data = bytearray(Path("proof.bin").read_bytes())
    data[len(data) // 2] ^= 0x10
    Path("flipped.bin").write_bytes(bytes(data))
    for argv, failed in (
            (["proof.bin", "--mask", "mask.npz", "--h-w", "00" * 32],
             f"a digest: layer {last!r}: h_w (the weights before) differs from the published one"),
            (["proof.bin", "--mask", "other.npz"], f"the mask: layer {last!r}: the proof removes other weights than "
                                                   f"the mask ({int((np.roll(removed, 1) != removed).sum())} differ)"),
            (["flipped.bin", "proof.bin.inputs", "proof.bin.vk", "--mask", "mask.npz"],
             f"layer {last!r}: chunk 1 of 1 does not verify"),
            (["proof.bin", "--mask", "wider.npz"], "coverage: masked weights outside the proof: '7.weight' 120")):
        code, r = run_json(capsys, "verify", *argv, *SRS)
        assert code == 1 and r["verified"] is False and r["failed"] == failed
        assert main(["verify", *argv, *SRS]) == 1
        assert capsys.readouterr().err == f"edgetrain verify: not verified: {failed}\n"

    # files that are not what they claim: exit 2, naming the file
    code, r = run_json(capsys, "verify", "proof.bin", "proof.bin.inputs", "flipped.bin", "--mask", "mask.npz", *SRS)
    assert code == 2 and r["error"].startswith("'flipped.bin': verifying key")
    srs = bytearray(Path("srs.bin").read_bytes())
    srs[-200_000] ^= 0x10  # a point of the 2^13 entry, the one this proof's key is made with
    Path("damaged-srs.bin").write_bytes(bytes(srs))
    code, r = run_json(capsys, "verify", "proof.bin", "--mask", "mask.npz", "--params", "damaged-srs.bin")
    assert code == 2 and r["error"].startswith("--params 'damaged-srs.bin': params: ")
    code, r = run_json(capsys, "prove", "--witness", "unlearned.onnx.witness.npz", "-o", "again.bin", "--params", "damaged-srs.bin")
    assert code == 2 and r["error"].startswith("--params 'damaged-srs.bin': params: ") and not Path("again.bin").exists()
    Path("cut-srs.bin").write_bytes(Path("srs.bin").read_bytes()[:-64])
    code, r = run_json(capsys, "verify", "proof.bin", "--mask", "mask.npz", "--params", "cut-srs.bin")
    assert code == 2 and r["error"].startswith("--params 'cut-srs.bin': not a reference string")
    Path("cut.npz").write_bytes(Path("mask.npz").read_bytes()[:40])
    code, r = run_json(capsys, "verify", "proof.bin", "--mask", "cut.npz", *SRS)
    assert code == 2 and r["error"] == "--mask 'cut.npz' is truncated or damaged (its zip directory is unreadable)"
