"""ezkl as a peer: the same group-OBS unlearning step proven by ezkl (Halo2, KZG).

What it measures. For each weight count N: a synthetic layer of N weights
(N(0, 0.05)) in blocks of B, 4 % masked at random (fixed seed), inverse-Fisher
blocks ``A = (damp·I + G Gᵀ/m)⁻¹`` from m = 64 random per-sample gradients,
each block scaled to max|A| = 1 as our circuit's fixed point does (the step is
unchanged: ``y`` scales inversely), and ``y = A[S,S]⁻¹ w[S]`` (zero where kept).
An ONNX graph computes ``W' = keep ⊙ (W − A·y)`` per block, a batched MatMul
(nb,B,B)@(nb,B,1), and ezkl runs its whole pipeline on it: gen_settings,
calibrate_settings (target "resources", on the proving input itself),
compile_circuit, gen_srs (generated here, nothing is downloaded), setup,
gen_witness, prove, verify. Each step runs in its own child process; its
time is measured inside the child (imports excluded), its peak memory is the
child's ru_maxrss (Python and ezkl's import included). The SRS is generated
once per logrows and reused from ``--srs-dir`` (srs_s is ~0 then). A
configuration whose steps other than gen_srs pass ``--limit-min`` minutes in
total, or whose child passes ``--limit-gb`` of resident memory, is stopped
and reported as such.

Variants. ``hashed``: W, A and y are private and Poseidon-hashed in-circuit,
their digests and the digest of W' are the public instances; keep is a
constant of the graph, so with param_visibility "fixed" it is baked into the
verifying key. ``polycommit``: the same tensors are committed with KZG
commitments that the proof opens (cheaper, not a hash, not hiding).

How the statement differs from ours (rust/, DESIGN.md section 6):
* ezkl quantises the floats itself at the scale calibration picks (here
  2^-13 for inputs and the mask alike) and, at these sizes, never rescales:
  W' comes out exact at scale 2^-39 (13 + 13 + 13). Ours commits integers in
  fixed point (2^-16 for W and A) and proves a floor rescale of the products
  with explicit remainders, so W' has the scale of W.
* ours also checks the solve ``A[S,S]·y − w[S] = e`` with |e| ≤ τ; ezkl
  proves only the forward graph, so ``y`` is an unconstrained private input
  here (any y gives a valid proof, with its own W').
* ezkl hashes y too (one visibility for all inputs) and hashes one value per
  field element; ours packs several values per element before hashing. A is
  B times larger than W, so hashing it dominates both circuits.
* the mask here is a constant of the graph, fixed in the verifying key, so
  each mask needs its own setup; in ours it is a public input.
* ezkl proves the whole layer in one proof; ours chains chunks by digest.

Run it in a venv of its own (ezkl is a peer, not a dependency):

    python3 -m venv /tmp/ezkl-venv && /tmp/ezkl-venv/bin/pip install ezkl==23.0.5 onnx numpy
    nice -n 5 /tmp/ezkl-venv/bin/python bench/ezkl_peer.py --weights 1000 10000 --json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MASKED = 0.04
STEPS = ("settings", "calibrate", "compile", "srs", "setup", "witness", "prove", "verify")
VISIBILITY = {"hashed": ("hashed", "hashed"), "polycommit": ("polycommit", "polycommit")}  # inputs, output


def layer(weights: int, block: int, seed: int = 0, damp: float = 1e-2) -> dict:
    """The float group-OBS step over one synthetic layer, shaped per block: (nb, B, 1) and (nb, B, B)."""
    rng = np.random.default_rng(seed)
    nb = -(-weights // block)
    w = np.zeros(nb * block)
    w[:weights] = rng.normal(0, 0.05, weights)
    keep = np.ones(nb * block, bool)
    keep[rng.choice(weights, max(1, round(MASKED * weights)), replace=False)] = False
    w, keep = w.reshape(nb, block), keep.reshape(nb, block)
    g = rng.normal(0, 0.1, (nb, block, 64))
    a = np.linalg.inv(damp * np.eye(block) + g @ g.transpose(0, 2, 1) / g.shape[2])
    a /= np.abs(a).max(axis=(1, 2), keepdims=True)
    y = np.zeros_like(w)
    for i in np.flatnonzero((~keep).any(axis=1)):
        s = ~keep[i]
        y[i, s] = np.linalg.solve(a[i][np.ix_(s, s)], w[i, s])
    w_new = keep * (w - np.einsum("bij,bj->bi", a, y))
    assert not w_new[~keep].any()
    col = lambda x: x[..., None].astype(np.float32)  # noqa: E731
    return {"w": col(w), "a": a.astype(np.float32), "y": col(y), "keep": col(keep), "w_new": col(w_new)}


def write_inputs(lay: dict, d: str) -> None:
    """The ONNX graph ``W' = keep ⊙ (W − A·y)`` with keep as a constant, and its input data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nb, b, _ = lay["w"].shape
    spec = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "y"], ["delta_neg"]),
         helper.make_node("Sub", ["W", "delta_neg"], ["moved"]),
         helper.make_node("Mul", ["moved", "keep"], ["W_new"])],
        "group_obs_step",
        [spec("W", [nb, b, 1]), spec("A", [nb, b, b]), spec("y", [nb, b, 1])],
        [spec("W_new", [nb, b, 1])],
        [numpy_helper.from_array(lay["keep"], "keep")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(d, "model.onnx"))
    with open(os.path.join(d, "input.json"), "w") as f:
        json.dump({"input_data": [lay[k].reshape(-1).tolist() for k in ("w", "a", "y")]}, f)


def step(name: str, d: str, variant: str, srs_dir: str) -> None:
    """One ezkl step on the files in ``d``, run in a child process."""
    import ezkl
    p = lambda f: os.path.join(d, f)  # noqa: E731
    t0 = time.perf_counter()
    if name == "settings":
        args = ezkl.PyRunArgs()
        args.input_visibility, args.output_visibility = VISIBILITY[variant]
        args.param_visibility = "fixed"
        ok = ezkl.gen_settings(p("model.onnx"), p("settings.json"), py_run_args=args)
    elif name == "calibrate":
        ok = ezkl.calibrate_settings(p("input.json"), p("model.onnx"), p("settings.json"), "resources")
    elif name == "compile":
        ok = ezkl.compile_circuit(p("model.onnx"), p("model.compiled"), p("settings.json"))
    elif name == "srs":  # one file per logrows, generated once: a larger SRS would load (and cost) more
        with open(p("settings.json")) as f:
            logrows = json.load(f)["run_args"]["logrows"]
        cached = os.path.join(srs_dir, f"kzg{logrows}.srs")
        if not os.path.exists(cached):
            ezkl.gen_srs(cached + ".part", logrows)
            os.replace(cached + ".part", cached)
        os.symlink(cached, p("kzg.srs"))
        ok = True
    elif name == "setup":
        ok = ezkl.setup(p("model.compiled"), p("vk.key"), p("pk.key"), p("kzg.srs"))
    elif name == "witness":
        ok = bool(ezkl.gen_witness(p("input.json"), p("model.compiled"), p("witness.json"), p("vk.key"), p("kzg.srs")))
    elif name == "prove":
        ok = bool(ezkl.prove(p("witness.json"), p("model.compiled"), p("pk.key"), p("proof.json"), p("kzg.srs")))
    elif name == "verify":
        ok = ezkl.verify(p("proof.json"), p("settings.json"), p("vk.key"), p("kzg.srs"))
    else:
        raise ValueError(f"step={name!r} is not one of {STEPS}")
    print(json.dumps({"seconds": time.perf_counter() - t0, "ok": bool(ok)}))


def run_child(name: str, d: str, variant: str, srs_dir: str, seconds_left: float, limit_bytes: int) -> dict:
    """Run ``step`` in a child; its time, its peak RSS (ru_maxrss), or why it was stopped."""
    with open(os.path.join(d, f"{name}.log"), "w+") as log:  # a file, not a pipe: nothing blocks on a full pipe
        child = subprocess.Popen([sys.executable, __file__, "--step", name, "--dir", d, "--variant", variant,
                                  "--srs-dir", srs_dir], stdout=log, stderr=subprocess.STDOUT)
        usage, status, stopped = _wait(child, seconds_left, limit_bytes)
        log.seek(0)
        lines = log.read().strip().splitlines()
    out = {"peak_bytes": usage.ru_maxrss * 1024}
    if stopped or os.waitstatus_to_exitcode(status) != 0 or not lines:
        return {**out, "error": f"{stopped or f'exit {os.waitstatus_to_exitcode(status)}'}, see {d}/{name}.log"}
    return {**out, **json.loads(lines[-1])}


def _wait(child: subprocess.Popen, seconds_left: float, limit_bytes: int):
    """Wait for ``child``, killing it past the time or memory limit: (rusage, wait status, why stopped or None)."""
    t0, stopped = time.monotonic(), None
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            return usage, status, None
        if time.monotonic() - t0 > seconds_left:
            stopped = "time limit"
        elif _rss(child.pid) > limit_bytes:
            stopped = "memory limit"
        if stopped:
            child.kill()
            _, status, usage = os.wait4(child.pid, 0)
            return usage, status, f"{stopped} after {time.monotonic() - t0:.0f} s"
        time.sleep(0.2)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(weights: int, block: int, variant: str, srs_dir: str, limit_s: float, limit_bytes: int,
            keep_files: bool) -> dict:
    """The whole pipeline for one configuration; a row of the table. Generating the SRS is not
    charged to ``limit_s``: ezkl users download it, and it is made once per logrows."""
    d = tempfile.mkdtemp(prefix=f"ezkl-{variant}-{weights}-")
    lay = layer(weights, block)
    write_inputs(lay, d)
    row = {"variant": variant, "weights": weights, "block": block, "dir": d}
    t0, charged = time.monotonic(), 0.0
    for name in STEPS:
        t = time.monotonic()
        r = run_child(name, d, variant, srs_dir, float("inf") if name == "srs" else limit_s - charged, limit_bytes)
        charged += 0 if name == "srs" else time.monotonic() - t
        row[f"{name}_s"], row[f"{name}_peak_bytes"] = r.get("seconds"), r["peak_bytes"]
        if "error" in r or not r["ok"]:
            row["failed"] = f"{name}: {r.get('error', 'returned false')}"
            break
    row["total_s"] = time.monotonic() - t0
    row["peak_bytes"] = max(row[f"{n}_peak_bytes"] for n in STEPS if f"{n}_peak_bytes" in row)
    row["verified"] = row.get("verify_s") is not None and "failed" not in row
    if os.path.exists(os.path.join(d, "settings.json")):
        with open(os.path.join(d, "settings.json")) as f:
            s = json.load(f)
        row["logrows"] = s["run_args"]["logrows"]
        row["input_scale"], row["param_scale"] = s["run_args"]["input_scale"], s["run_args"]["param_scale"]
    if os.path.exists(os.path.join(d, "proof.json")):
        with open(os.path.join(d, "proof.json")) as f:
            row["proof_bytes"] = len(json.load(f)["proof"])
    if os.path.exists(os.path.join(d, "witness.json")):
        row["max_abs_err"] = _output_error(d, s, lay["w_new"])
    for f in ("pk.key", "vk.key", "kzg.srs", "model.compiled", "witness.json", "input.json"):
        if not keep_files and os.path.lexists(os.path.join(d, f)):
            os.remove(os.path.join(d, f))
    return row


def _output_error(d: str, settings: dict, w_new: np.ndarray) -> float | None:
    """Largest |W' from ezkl's witness − W' in float64|, or None where the outputs are not plain values."""
    import ezkl
    with open(os.path.join(d, "witness.json")) as f:
        out = json.load(f)["outputs"][0]
    scale = settings["model_output_scales"][0]
    got = np.array([ezkl.felt_to_float(x, scale) for x in out])
    return float(np.abs(got - w_new.reshape(-1)).max())


def table(rows: list[dict]) -> str:
    cols = ["variant", "weights", "block", "logrows", "input_scale", "calibrate_s", "srs_s", "setup_s", "prove_s",
            "peak_bytes", "proof_bytes", "verify_s", "verified", "max_abs_err", "total_s", "failed"]
    fmt = lambda v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, nargs="+", default=[1000])
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=["hashed"], choices=sorted(VISIBILITY))
    ap.add_argument("--limit-min", type=float, default=20.0, help="stop a configuration after this many minutes")
    ap.add_argument("--limit-gb", type=float, default=20.0, help="stop a step whose resident memory passes this")
    ap.add_argument("--srs-dir", default=os.path.join(tempfile.gettempdir(), "ezkl-srs"),
                    help="where the locally generated SRS files (kzgK.srs) are kept and reused")
    ap.add_argument("--keep-files", action="store_true", help="keep keys, witness and inputs in the temp folder")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON object, last line of stdout")
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        return step(args.step, args.dir, args.variant, args.srs_dir)
    if args.block < 2 or any(n < args.block for n in args.weights):
        ap.error(f"--block={args.block} must be >= 2 and every --weights >= the block, got {args.weights}")
    import ezkl
    os.makedirs(args.srs_dir, exist_ok=True)
    rows = []
    for variant in args.variants:
        for n in args.weights:
            rows.append(measure(n, args.block, variant, args.srs_dir, 60 * args.limit_min,
                                int(args.limit_gb * 2**30), args.keep_files))
            print(table(rows[-1:]), file=sys.stderr, flush=True)
    print(f"\nezkl {ezkl.__version__}, {os.cpu_count()} cores\n" + table(rows), file=sys.stderr)
    if args.json:
        print(json.dumps({"ezkl": ezkl.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
