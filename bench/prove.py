"""Proving benchmark: the ZK-APEX unlearning proof (rust/, Halo2 IPA) over growing weight counts.

One run on one machine. Each configuration ``B:WEIGHTS`` runs in a fresh child
process: a synthetic layer of WEIGHTS weights (N(0, 0.05)), 4 % of them masked
at random, inverse-Fisher blocks of B×B from 64 random per-sample gradients
(Sherman–Morrison, damping 1e-2), the fixed-point group-OBS step, then
``prover.prove`` in chunks of ``blocks_per_proof`` blocks chained through the
Poseidon digests, and ``verify_proof`` with the provider's mask and digests.
Proving cost depends only on the shape (B, blocks per chunk, chunk count),
never on the values or on how many weights are masked (rust/README.md), so
synthetic weights time the same circuit as real ones.

Reported per configuration: circuit size k, chunks, setup (IPA parameters +
proving key, once per shape; the parameters can be cached), prove time (all
chunks), peak memory (the child's VmHWM, Python and numpy included; RSS just
before proving for comparison), proof size, and verify time (verifying key
regenerated from the descriptor, then every chunk, with the parameters given;
the parameters themselves cost ``params_seconds`` more when not cached).

The last row extrapolates to ``--extrapolate`` weights from the largest
measured configuration's per-chunk prove time; it is an extrapolation, not a
measurement. Chunks are proven one after another, so peak memory stays that of
one chunk. ezkl is not run (it is not installed here; see the README's anchors).

    python bench/prove.py [--configs 8:1000 8:10000 64:1000] [--extrapolate 100000] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

PER_PROOF = {8: 16, 16: 4, 32: 1, 64: 1}  # blocks per chunk: the fastest per weight measured here (k 13, 13, 12, 14)
MASKED = 0.04


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(block: int, weights: int, per_proof: int, seed: int = 0) -> dict:
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
    rss_before = _status("VmRSS")
    out = prover.prove([wit], blocks_per_proof=per_proof)
    peak = _status("VmHWM")
    digests = prover.commitments([wit], per_proof)["layer"]
    t0 = time.perf_counter()
    pp = prover.proof.params(out["verifying_key"])
    params_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    zk.Verifier(bytes(out["verifying_key"]), pp)  # what verify_proof spends once before the chunks
    key_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ok = prover.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                             mask={"layer": ~keep.reshape(-1)[:weights]}, h_w={"layer": digests["w"]},
                             h_w_new={"layer": digests["w_new"]}, h_a={"layer": digests["a"]}, params=pp)
    verify_seconds = time.perf_counter() - t0
    chunks = -(-nb // per_proof)
    return {"block": block, "weights": out["weights"], "blocks_per_proof": per_proof, "chunks": chunks,
            "k": out["verifying_key"][7], "masked": int((~keep).sum()), "setup_seconds": out["setup_seconds"],
            "params_seconds": params_seconds, "prove_seconds": out["prove_seconds"],
            "prove_seconds_per_chunk": out["prove_seconds"] / chunks, "peak_bytes": peak,
            "rss_before_prove_bytes": rss_before, "proof_bytes": len(out["proof"]),
            "public_input_bytes": len(out["public_inputs"]), "verify_seconds": verify_seconds, "verify_key_seconds": key_seconds, "verified": ok}


def extrapolate(row: dict, weights: int) -> dict:
    chunk_weights = row["block"] * row["blocks_per_proof"]
    chunks = math.ceil(weights / chunk_weights)
    return {"block": row["block"], "weights": weights, "blocks_per_proof": row["blocks_per_proof"], "chunks": chunks,
            "k": row["k"], "setup_seconds": row["setup_seconds"],
            "prove_seconds": chunks * row["prove_seconds_per_chunk"], "peak_bytes": row["peak_bytes"],
            "proof_bytes": round(row["proof_bytes"] / row["chunks"] * chunks),
            "verify_seconds": row["verify_key_seconds"] + (row["verify_seconds"] - row["verify_key_seconds"])
            / row["chunks"] * chunks, "extrapolated_from": row["weights"]}


def table(rows) -> str:
    lines = ["| B | weights | chunks × blocks | k | setup | prove | peak memory | proof | verify | verified |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        extra = "extrapolated" if "extrapolated_from" in r else str(r["verified"])
        lines.append(f"| {r['block']} | {r['weights']:,} | {r['chunks']} × {r['blocks_per_proof']} | {r['k']} | "
                     f"{r['setup_seconds']:.1f} s | {r['prove_seconds']:.1f} s | {r['peak_bytes'] / 2**20:.0f} MiB | "
                     f"{r['proof_bytes'] / 1024:.1f} KiB | {r['verify_seconds']:.2f} s | {extra} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["8:1000", "8:10000", "64:1000"], metavar="B:WEIGHTS")
    p.add_argument("--blocks-per-proof", type=int, help="override the per-B default " + str(PER_PROOF))
    p.add_argument("--extrapolate", type=int, default=100_000, help="weights to extrapolate to (0: none)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for config in args.configs:
        block, weights = (int(v) for v in config.split(":"))
        per_proof = args.blocks_per_proof or PER_PROOF.get(block, 1)
        print(f"B={block}, {weights} weights, {per_proof} blocks per proof ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--worker", str(block), str(weights), str(per_proof)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode:
            raise RuntimeError(f"worker {config} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if args.extrapolate:
        biggest = max(rows, key=lambda r: (r["block"] == min(r["block"] for r in rows), r["weights"]))
        rows.append(extrapolate(biggest, args.extrapolate))
    print("\n" + table(rows), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
