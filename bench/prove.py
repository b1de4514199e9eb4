"""Proving benchmark: the ZK-APEX unlearning proof (rust/, Halo2 IPA) over growing weight counts.

One run on one machine. Each configuration ``B:WEIGHTS:K`` runs in a fresh
child process: a synthetic layer of WEIGHTS weights (N(0, 0.05)), 4 % of them
masked at random, inverse-Fisher blocks of B×B from 64 random per-sample
gradients (Sherman–Morrison, damping 1e-2), the fixed-point group-OBS step,
then ``prover.prove`` in chunk proofs of 2^K rows (as many blocks as fit,
``prover.proof.blocks_per_proof_for``) chained through the Poseidon digests,
and ``verify_proof`` with the provider's mask and digests. Proving cost
depends only on the shape (B, blocks per chunk, chunk count), never on the
values or on how many weights are masked (rust/README.md), so synthetic
weights time the same circuit as real ones.

Reported per configuration: circuit size k, chunks, setup (IPA parameters +
proving key, once per shape; ``params`` is the parameters' share, which a disk
cache saves), prove time (all chunks), peak memory (the child's VmHWM, Python
and numpy included), proof size, and verification: ``key`` regenerates the
verifying key from its descriptor (zcash halo2 0.3 cannot serialise keys; a
provider does this once per shape and keeps it), ``verify`` checks the proof
(all chunks) with the key in memory.

With ``--ezkl-python`` (a Python that has ezkl, e.g. a venv of its own: ezkl
is a peer to measure, not a dependency), the same run then proves the same
step in ezkl over ``--ezkl-weights`` (``bench/ezkl_peer.py``, whose docstring
says how its statement differs from ours).

    python bench/prove.py [--configs 8:1000:15 8:10000:15 8:10000:16 8:100000:16]
                          [--ezkl-python /tmp/ezkl-venv/bin/python --ezkl-weights 1000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MASKED = 0.04


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(block: int, weights: int, k: int, seed: int = 0) -> dict:
    import edgetrain_zk as zk
    from edgetrain import prover
    from edgetrain.prover import fixed_point as fx
    from edgetrain.prover.unlearn import LayerWitness
    rng = np.random.default_rng(seed)
    nb = -(-weights // block)
    w = np.zeros(nb * block)
    w[:weights] = rng.normal(0, 0.05, weights)
    keep = np.ones(nb * block, bool)
    keep[rng.choice(weights, max(1, round(MASKED * weights)), replace=False)] = False
    a = prover.inverse_fisher_blocks(rng.normal(0, 0.1, (64, nb * block)), block, damp=1e-2)
    w_int, a_int = fx.to_fixed(w, 16).reshape(nb, block), fx.fisher_to_fixed(a)
    keep = keep.reshape(nb, block)
    step = fx.integer_step(w_int, a_int, keep, 16)
    wit = LayerWitness("layer", (weights,), block, 16, w_int, a_int, keep, step["w_new"])
    per_proof = prover.proof.blocks_per_proof_for([wit], k)
    vk = prover.keygen(block, per_proof, 16)
    t0 = time.perf_counter()
    pp = prover.proof.params(vk)
    params_seconds = time.perf_counter() - t0
    out = prover.prove([wit], per_proof)
    peak = _status("VmHWM")
    digests = prover.commitments([wit], per_proof)["layer"]
    t0 = time.perf_counter()
    verifier = zk.Verifier(bytes(out["verifying_key"]), pp)
    key_seconds = time.perf_counter() - t0
    public = prover.proof._decode_public(out["public_inputs"])[0]
    chunks = prover.proof._decode_proof(out["proof"])[0]
    t0 = time.perf_counter()
    padded = np.ones(out["chunks"] * per_proof * block, bool)  # the last chunk is padded with kept weights
    padded[:keep.size] = keep.reshape(-1)
    ok = verifier.verify_chain(chunks, public[1], *public[0]["digests"], padded.tolist())
    verify_seconds = time.perf_counter() - t0
    ok_api = prover.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                 mask={"layer": ~keep.reshape(-1)[:weights]}, h_w={"layer": digests["w"]},
                                 h_w_new={"layer": digests["w_new"]}, h_a={"layer": digests["a"]}, params=pp)
    return {"block": block, "weights": out["weights"], "blocks_per_proof": per_proof, "chunks": out["chunks"],
            "k": out["verifying_key"][7], "masked": int((~keep).sum()), "setup_seconds": out["setup_seconds"],
            "params_seconds": params_seconds, "prove_seconds": out["prove_seconds"], "peak_bytes": peak,
            "proof_bytes": len(out["proof"]), "public_input_bytes": len(out["public_inputs"]),
            "key_seconds": key_seconds, "verify_seconds": verify_seconds, "verified": bool(ok and ok_api)}


def table(rows) -> str:
    lines = ["| B | weights | chunks × blocks | k | setup (params) | prove | peak memory | proof | key | verify "
             "| verified |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['block']} | {r['weights']:,} | {r['chunks']} × {r['blocks_per_proof']} | {r['k']} | "
                     f"{r['setup_seconds']:.0f} s ({r['params_seconds']:.0f} s) | {r['prove_seconds']:.1f} s | "
                     f"{r['peak_bytes'] / 2**20:.0f} MiB | {r['proof_bytes'] / 1024:.1f} KiB | "
                     f"{r['key_seconds']:.1f} s | {r['verify_seconds']:.2f} s | {r['verified']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["8:1000:15", "8:10000:15", "8:10000:16", "8:100000:16"],
                   metavar="B:WEIGHTS:K")
    p.add_argument("--ezkl-python", help="a Python with ezkl 23: also prove the same step in ezkl")
    p.add_argument("--ezkl-weights", type=int, nargs="+", default=[1000],
                   help="hashed 3,000 and 10,000 pass 20 GiB in ezkl's setup here (bench/ezkl_peer.py)")
    p.add_argument("--ezkl-variants", nargs="+", default=["hashed", "polycommit"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for config in args.configs:
        block, weights, k = (int(v) for v in config.split(":"))
        print(f"B={block}, {weights} weights, chunks of 2^{k} rows ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--worker", str(block), str(weights), str(k)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode:
            raise RuntimeError(f"worker {config} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print("\n" + table(rows), file=sys.stderr, flush=True)
    peer = None
    if args.ezkl_python:
        print("ezkl (bench/ezkl_peer.py) ...", file=sys.stderr, flush=True)
        cmd = [args.ezkl_python, os.path.join(os.path.dirname(__file__), "ezkl_peer.py"), "--json",
               "--weights", *map(str, args.ezkl_weights), "--variants", *args.ezkl_variants]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # its tables go to our stderr
        if out.returncode:
            raise RuntimeError(f"ezkl_peer.py failed with exit status {out.returncode}")
        peer = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps({"rows": rows, "ezkl": peer}))


if __name__ == "__main__":
    main()
