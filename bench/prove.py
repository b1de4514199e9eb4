"""Proving benchmark: the ZK-APEX unlearning proof (rust/, Halo2 KZG) over growing weight counts.

One run on one machine. Each configuration ``B:WEIGHTS:K`` runs in a fresh
child process (once per ``--workers`` value): synthetic layers of WEIGHTS
weights (a count, ``W1+W2+…`` for several layers proven together, or
``lenet5-fc`` = lenet5's fully connected weights, 48,000 + 10,080 + 840),
N(0, 0.05), 4 % of them masked at random, inverse-Fisher blocks of B×B from 64
random per-sample gradients (Sherman–Morrison, damping 1e-2), the fixed-point
group-OBS step, then ``prover.prove`` in chunk proofs of 2^K rows (as many
blocks as fit, ``prover.proof.blocks_per_proof_for``; each layer is padded to
whole chunks) chained through the Poseidon digests, ``workers`` chunks at once,
and ``verify_proof`` with the provider's mask and digests. Proving cost
depends only on the shape (B, blocks per chunk, chunk count), never on the
values or on how many weights are masked (rust/README.md), so synthetic
weights time the same circuit as real ones.

Reported per configuration: circuit size k, chunks, the proving key (once per
shape) and, in brackets, the provider's reference string (KZG parameters for
every circuit size up to 2^K rows, made once: 0 when ``--params-cache`` holds
it), prove time (all chunks), CPU time of the proving key and all
chunks (user + system, every thread: steadier than wall time on a shared
machine, and wall ≈ CPU / cores in use), peak memory (the child's VmHWM, Python
and numpy included), proof size (all chunks; ``chunk_proof_bytes`` in the JSON
is the largest one), and verification: ``key`` regenerates the verifying key
from its descriptor (a provider does this once per shape), ``verify`` checks
the proof (all chunks) with the key in memory, ``cold`` is a fresh process
that reads the stored key bytes (``edgetrain_zk.verifying_key``, the ``K``
format) and the provider's reference string from disk
and verifies every chunk: what a provider pays per proof without any key
generation (interpreter start-up excluded, the imports included).

With ``--ezkl-python`` (a Python that has ezkl, e.g. a venv of its own: ezkl
is a peer to measure, not a dependency), the same run then proves the same
step in ezkl over ``--ezkl-weights`` (``bench/ezkl_peer.py``, whose docstring
says how its statement differs from ours).

    python bench/prove.py [--configs 8:1000:15 8:10000:15 8:10000:16 8:lenet5-fc:16] [--workers 1 2]
                          [--params-cache DIR]
                          [--ezkl-python /tmp/ezkl-venv/bin/python --ezkl-weights 1000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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


LAYERS = {"lenet5-fc": (48000, 10080, 840)}  # lenet5's fully connected weights: 400×120, 120×84, 84×10


def layer_sizes(spec: str) -> tuple[int, ...]:
    """``WEIGHTS`` (one layer), ``W1+W2+…`` (layers proven together) or a name in LAYERS."""
    return LAYERS.get(spec) or tuple(int(v) for v in spec.split("+"))


def _layer(rng, name: str, block: int, weights: int):
    from edgetrain import prover
    from edgetrain.prover import fixed_point as fx
    from edgetrain.prover.unlearn import LayerWitness
    nb = -(-weights // block)
    w = np.zeros(nb * block)
    w[:weights] = rng.normal(0, 0.05, weights)
    keep = np.ones(nb * block, bool)
    keep[rng.choice(weights, max(1, round(MASKED * weights)), replace=False)] = False
    a = prover.inverse_fisher_blocks(rng.normal(0, 0.1, (64, nb * block)), block, damp=1e-2)
    w_int, a_int = fx.to_fixed(w, 16).reshape(nb, block), fx.fisher_to_fixed(a)
    keep = keep.reshape(nb, block)
    step = fx.integer_step(w_int, a_int, keep, 16)
    return LayerWitness(name, (weights,), block, 16, w_int, a_int, keep, step["w_new"])


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(block: int, spec: str, k: int, workers: int = 1, params_cache: str | None = None, seed: int = 0) -> dict:
    import edgetrain_zk as zk
    from edgetrain import prover
    rng = np.random.default_rng(seed)
    wits = [_layer(rng, f"layer{i}", block, n) for i, n in enumerate(layer_sizes(spec))]
    per_proof = prover.proof.blocks_per_proof_for(wits, k)
    vk = prover.keygen(block, per_proof, 16, k)
    t0 = time.perf_counter()
    pp = prover.srs(params_cache, k)
    params_seconds = time.perf_counter() - t0
    cpu0 = _cpu_seconds()
    out = prover.prove(wits, per_proof, params=pp, k=k, workers=workers)
    cpu = _cpu_seconds() - cpu0  # proving key and chunks: all threads of this process
    peak = _status("VmHWM")
    digests = prover.commitments(wits, per_proof)
    t0 = time.perf_counter()
    verifier = zk.Verifier(bytes(out["verifying_key"]), pp)
    key_seconds = time.perf_counter() - t0
    publics = prover.proof._decode_public(out["public_inputs"])
    segments = prover.proof._decode_proof(out["proof"])
    t0 = time.perf_counter()
    ok = True
    for wit, chunks, (head, public) in zip(wits, segments, publics):
        padded = np.ones(len(chunks) * per_proof * block, bool)  # the last chunk is padded with kept weights
        padded[:wit.keep.size] = wit.keep.reshape(-1)
        ok &= bool(verifier.verify_chain(chunks, public, *head["digests"], padded.tolist()))
    verify_seconds = time.perf_counter() - t0
    cold = _cold_verify(zk, out, pp, wits, per_proof, block) if hasattr(zk, "verifying_key") else {}
    ok_api = prover.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                 mask={w.name: ~w.keep.reshape(-1)[:w.size] for w in wits},
                                 h_w={w.name: digests[w.name]["w"] for w in wits},
                                 h_w_new={w.name: digests[w.name]["w_new"] for w in wits},
                                 h_a={w.name: digests[w.name]["a"] for w in wits}, params=pp)
    chunk_bytes = [len(c) for seg in segments for c in seg]
    return {"block": block, "layers": spec, "weights": out["weights"], "blocks_per_proof": per_proof,
            "chunks": out["chunks"], "workers": workers, "k": out["verifying_key"][7],
            "masked": int(sum((~w.keep).sum() for w in wits)), "setup_seconds": out["setup_seconds"],
            "params_seconds": params_seconds, "prove_seconds": out["prove_seconds"], "cpu_seconds": cpu,
            "peak_bytes": peak,
            "proof_bytes": len(out["proof"]), "chunk_proof_bytes": max(chunk_bytes),
            "public_input_bytes": len(out["public_inputs"]),
            "key_seconds": key_seconds, "verify_seconds": verify_seconds, **cold,
            "verified": bool(ok and ok_api and cold.get("cold_verified", True))}


_COLD = """
import time
t0 = time.perf_counter()
import json, sys
import edgetrain_zk as zk
d = sys.argv[1]
read = lambda n: open(f"{d}/{n}", "rb").read()
job = json.loads(read("job.json"))
verifier = zk.Verifier(read("vk.bin"), read("params.bin"))
t1 = time.perf_counter()
ok = all(verifier.verify_chain([bytes.fromhex(p) for p in c["proofs"]], [bytes.fromhex(q) for q in c["publics"]],
                               *[bytes.fromhex(h) for h in c["digests"]], c["keep"]) for c in job)
t2 = time.perf_counter()
print(json.dumps({"cold_key_seconds": t1 - t0, "cold_seconds": t2 - t0, "cold_verified": ok}))
"""


def _cold_verify(zk, out, pp, wits, per_proof: int, block: int) -> dict:
    """The stored key written here, read and used by a fresh process (see the docstring)."""
    import tempfile
    from edgetrain import prover
    key = bytes(zk.verifying_key(bytes(out["verifying_key"]), pp))
    job = []
    for wit, chunks, (head, public) in zip(wits, prover.proof._decode_proof(out["proof"]),
                                           prover.proof._decode_public(out["public_inputs"])):
        padded = np.ones(len(chunks) * per_proof * block, bool)
        padded[:wit.keep.size] = wit.keep.reshape(-1)
        job.append({"proofs": [bytes(c).hex() for c in chunks], "publics": [bytes(q).hex() for q in public],
                    "digests": [bytes(h).hex() for h in head["digests"]], "keep": padded.tolist()})
    with tempfile.TemporaryDirectory() as d:
        for name, data in (("vk.bin", key), ("params.bin", bytes(pp)), ("job.json", json.dumps(job).encode())):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        run = subprocess.run([sys.executable, "-c", _COLD, d], capture_output=True, text=True, check=True)
    return {"stored_key_bytes": len(key), **json.loads(run.stdout.strip().splitlines()[-1])}


def table(rows) -> str:
    lines = ["| B | weights | chunks × blocks | k | workers | keys (reference string) | prove | CPU (keys + prove) "
             "| peak memory "
             "| proof | key | verify | cold (stored key) | verified |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        weights = f"{r['weights']:,}" + (f" ({r['layers']})" if not r["layers"].isdigit() else "")
        lines.append(f"| {r['block']} | {weights} | {r['chunks']} × {r['blocks_per_proof']} | {r['k']} | "
                     f"{r['workers']} | "
                     f"{r['setup_seconds']:.0f} s ({r['params_seconds']:.0f} s) | {r['prove_seconds']:.1f} s | "
                     f"{r.get('cpu_seconds', float('nan')):.0f} s | {r['peak_bytes'] / 2**20:.0f} MiB | {r['proof_bytes'] / 1024:.1f} KiB | "
                     f"{r['key_seconds']:.1f} s | {r['verify_seconds']:.2f} s | "
                     + (f"{r['cold_seconds']:.2f} s ({r['stored_key_bytes'] / 1024:.1f} KiB key) | "
                        if "cold_seconds" in r else "n/a | ")
                     + f"{r['verified']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["8:1000:15", "8:10000:15", "8:10000:16", "8:lenet5-fc:16"],
                   metavar="B:WEIGHTS:K", help="WEIGHTS: a count, W1+W2+… (layers) or lenet5-fc")
    p.add_argument("--workers", type=int, nargs="+", default=[1],
                   help="chunk proofs at once (each configuration runs once per value)")
    p.add_argument("--ezkl-python", help="a Python with ezkl 23: also prove the same step in ezkl")
    p.add_argument("--ezkl-weights", type=int, nargs="+", default=[1000],
                   help="hashed 3,000 and 10,000 pass 20 GiB in ezkl's setup here (bench/ezkl_peer.py)")
    p.add_argument("--ezkl-variants", nargs="+", default=["hashed", "polycommit"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--params-cache", metavar="DIR",
                   help="keep the reference string here (setup then excludes making it after the first run)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        block, spec, k, workers = args.worker
        print(json.dumps(worker(int(block), spec, int(k), int(workers), args.params_cache)))
        return
    rows = []
    for config in args.configs:
        block, spec, k = config.split(":")
        layer_sizes(spec)  # fail early on a bad spec
        for workers in args.workers:
            print(f"B={block}, {spec} weights, chunks of 2^{k} rows, {workers} at once ...", file=sys.stderr,
                  flush=True)
            cache = ["--params-cache", args.params_cache] if args.params_cache else []
            out = subprocess.run([sys.executable, __file__, "--worker", block, spec, k, str(workers), *cache],
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
