"""Proving and verifying the unlearning step with the ``edgetrain_zk`` crate.

A proof covers *segments*: a run of whole blocks of one target layer (by
default the whole layer). Each segment is proven in chunks of
``blocks_per_proof`` blocks, whose public inputs chain through the Poseidon
digests (rust/README.md), so a segment's public inputs carry its digests
before and after (``h_w``, ``h_w_new``), the digest of its inverse-Fisher
blocks (``h_a``) and its mask. A segment is zero-padded (weight 0, kept,
identity Fisher block) to a whole number of chunks; its digests are over the
padded values, as :func:`commitments` computes them.

Byte formats (little endian), both versioned like the crate's:

* proof: ``b"ETUL" b"P" 0x01``, u32 segments; per segment u32 chunks, per
  chunk u32 length + the crate's proof bytes.
* public inputs: ``b"ETUL" b"I" 0x01``, u32 segments; per segment u16 name
  length + UTF-8 name, u32 layer size, 3 × 32-byte digests (w, w', A), then u32
  chunks, per chunk u32 length + the crate's public-input bytes (which hold the
  keep bits and the scale). A segment starts at the layer's first weight.

The name and size are labels that no proof binds: the provider binds a segment
to a layer by passing the mask (and digests) it expects to :func:`verify_proof`.
* verifying key: the crate's descriptor bytes (block, blocks per proof, k, s, τ),
  what the device sends. The provider turns a descriptor into its own stored key
  (:func:`verifying_key`, the crate's ``K`` bytes, cached by the descriptor and the
  reference string) once per shape and verifies under that: no key generation after
  the first time, in any process. It never takes key material from the device.

The commitments are KZG, so proofs need a structured reference string: the
provider makes it (:func:`setup`, ``edgetrain setup``; one secret per circuit
size, drawn from the OS and dropped), keeps it (:func:`srs`) and sends it to the
devices, which prove under it (:func:`prove`'s ``params``). Whoever knew a secret
could forge proofs under it; the provider verifies only under its own, so only it
could, and it is the party the proofs are for.
"""
from __future__ import annotations

import functools
import os
import struct
import time
from collections.abc import Sequence

import numpy as np

from .. import progress as _progress
from .unlearn import LayerWitness

try:
    from edgetrain_zk import ProofFormatError
except ImportError:  # the device side without the prover: the error type still exists
    class ProofFormatError(ValueError):
        """Bytes that are not a valid proof, key or public-input encoding."""

MAGIC, VERSION = b"ETUL", 1
_DIGEST = 32
# Default circuit size: 2^15 rows hold 668 blocks of 8 weights; 2^16 rows hold 1,337 (zcash's
# Pasta build held 682 and 1,365 and peaked at ~3.1 GB at k = 16 here: bench/prove.py, lenet5's
# FC layers in 7 chunks, 63,036 bytes of proofs).
PROOF_K = 15
# The inverse Fisher of a padding block is PAD_FISHER·I. Every weight of a padding block is
# kept, so its δ is 0 whatever A holds: any symmetric A in the committed 16-bit range proves.
PAD_FISHER = 1 << 14


def _zk():
    try:
        import edgetrain_zk
    except ImportError:
        raise ImportError("proving and verifying need the edgetrain_zk binding, built from the crate in rust/: "
                          "`pip install ./rust` (needs a Rust toolchain)") from None
    return edgetrain_zk


@functools.lru_cache(maxsize=16)
def keygen(block: int, blocks_per_proof: int = 1, scale_bits: int = 16, k: int | None = None) -> bytes:
    """The verifying-key bytes for chunks of ``blocks_per_proof`` blocks of ``block``
    weights (``k = None``: the smallest circuit size that fits, a layout pass; kept
    per process)."""
    from .fixed_point import TOL, Y_BITS
    return bytes(_progress.wait(_zk().keygen, k, block, blocks_per_proof, scale_bits=scale_bits, tol=TOL,
                                y_bits=Y_BITS))


SRS_FILE = "kzg-srs.bin"  # the provider's reference string in its key cache


def setup(k_max: int = PROOF_K, progress: bool = False) -> bytes:
    """A new structured reference string (the crate's ``G`` bytes) for circuits of up
    to 2^``k_max`` rows: the provider's, made once and sent to its devices. Seconds
    (13 s at k = 15 on 2 cores); ``progress`` shows a bar meanwhile."""
    with _progress.bar(progress, desc=f"reference string (up to 2^{k_max} rows)") as bar:
        return bytes(_progress.wait(_zk().setup, k_max, ticking=bar))


def srs(cache_dir: str | os.PathLike | None, k_max: int = PROOF_K, progress: bool = False) -> bytes:
    """The provider's reference string kept in ``cache_dir`` (:data:`SRS_FILE`): read
    when it reaches 2^``k_max`` rows, else made (:func:`setup`) and stored; with no
    ``cache_dir``, made for this run only."""
    if cache_dir is None:
        return setup(k_max, progress)
    path = os.path.join(os.fspath(cache_dir), SRS_FILE)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if srs_sizes(data)[1] >= k_max:
            return data
    data = setup(k_max, progress)
    _write_atomic(path, data)
    return data


def srs_sizes(params: bytes) -> tuple[int, int]:
    """(k_min, k_max): the circuit sizes a reference string holds (ProofFormatError if
    these are not reference-string bytes)."""
    return tuple(_zk().srs_sizes(bytes(params)))


def _check_reaches(params: bytes, k: int) -> None:
    k_min, k_max = srs_sizes(params)
    if not k_min <= k <= k_max:
        raise ValueError(f"the reference string holds circuits of 2^{k_min} to 2^{k_max} rows, this proof needs "
                         f"2^{k}: the provider makes one that reaches it (`edgetrain setup -k {max(k, k_max)}`)")


def _write_atomic(path: str, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file, so a crash leaves the old file or none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_STORED_KEY_VERSION = 2  # the crate's `K` format version (rust/README.md, Bytes); a cached key of another is made again


def verifying_key(descriptor: bytes, params: bytes, cache_dir: str | os.PathLike | None = None,
                  progress: bool = False) -> bytes:
    """The verifying key of a descriptor (:func:`keygen`'s bytes, as the device sends
    them) under the provider's reference string ``params``, as stored-key bytes, which
    :func:`verify_proof` loads without a key generation. Made here (one key
    generation, seconds at k = 15) from the descriptor alone, never taken from the
    prover; cached in ``cache_dir`` as ``vk-{sha256(descriptor, sha256(params))}.bin``,
    and a cached key whose own descriptor or format version differs, or that does not
    read (damaged bytes fail its digest check), is made again."""
    import hashlib
    descriptor = bytes(descriptor)
    k = _key_k(descriptor)
    if descriptor[4:5] != b"V":
        raise ProofFormatError("verifying key: expected a descriptor (b'ETZKV'), not stored-key bytes")
    params = bytes(params)
    _check_reaches(params, k)
    name = hashlib.sha256(descriptor + hashlib.sha256(params).digest()).hexdigest()[:32]
    path = os.path.join(os.fspath(cache_dir), f"vk-{name}.bin") if cache_dir else None
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        # The stored key starts with the descriptor's fields (after its own kind and version);
        # one that does not read under these parameters (damaged, or made under another
        # string) is made again. Reading it here costs nothing later: the verifier is kept.
        if data[:6] == b"ETZKK" + bytes([_STORED_KEY_VERSION]) and data[6:len(descriptor)] == descriptor[6:]:
            try:
                _verifier(data, params)
                return data
            except ValueError:  # ProofFormatError included
                pass
    with _progress.bar(progress, desc=f"verifying key (2^{k} rows)") as bar:
        data = bytes(_progress.wait(_zk().verifying_key, descriptor, params, ticking=bar))
    if path:
        _write_atomic(path, data)
    return data


def _key_k(verifying_key: bytes) -> int:
    """k of a descriptor (``b"ETZKV"``) or a stored key (``b"ETZKK"``): both start with
    the descriptor's fields."""
    key = bytes(verifying_key)
    if len(key) < 8 or key[:4] != b"ETZK" or key[4:5] not in (b"V", b"K"):
        raise ProofFormatError(f"verifying key: {len(key)} bytes that do not start with b'ETZKV' or b'ETZKK'")
    return key[7]


def _segments(witness: LayerWitness, per_proof: int, max_blocks: int | None):
    """(w, a, keep, w_new) of the segment proven for a layer: its first ``max_blocks``
    blocks (all: None), padded to whole chunks."""
    nb = len(witness.w) if max_blocks is None else min(max_blocks, len(witness.w))
    pad = -nb % per_proof
    b = witness.block
    w = np.concatenate([witness.w[:nb], np.zeros((pad, b), np.int64)])
    w_new = np.concatenate([witness.w_new[:nb], np.zeros((pad, b), np.int64)])
    keep = np.concatenate([witness.keep[:nb], np.ones((pad, b), bool)])
    eye = np.broadcast_to(np.eye(b, dtype=np.int64) * PAD_FISHER, (pad, b, b))
    a = np.concatenate([witness.a[:nb], eye])
    return w, a, keep, w_new


def blocks_per_proof_for(witnesses: Sequence[LayerWitness], k: int | None = None) -> int:
    """The default chunk: as many blocks as one proof of 2^k rows holds (k = None:
    :data:`PROOF_K`), but no more than the largest layer has."""
    if not witnesses:
        raise ValueError("witnesses is empty: nothing to prove")
    wit = witnesses[0]
    k = PROOF_K if k is None else k
    fit = _max_blocks(k, wit.block, wit.scale_bits)
    if fit == 0:
        raise ValueError(f"one block of {wit.block} weights does not fit a proof of 2^{k} rows; raise k")
    return min(fit, max(len(w.w) for w in witnesses))


@functools.lru_cache(maxsize=16)
def _max_blocks(k: int, block: int, scale_bits: int) -> int:
    from .fixed_point import TOL, Y_BITS
    return _progress.wait(_zk().max_blocks, k, block, scale_bits=scale_bits, tol=TOL, y_bits=Y_BITS)  # layouts


def commitments(witnesses: Sequence[LayerWitness], blocks_per_proof: int | None = None,
                max_blocks: int | None = None) -> dict[str, dict[str, bytes]]:
    """``{layer: {"w", "w_new", "a": digest}}`` of the segments :func:`prove` covers:
    the device publishes ``w`` (and ``a``) before, ``w_new`` after; the provider
    compares. A digest chains over the proof's chunks; it equals
    ``edgetrain_zk.commit`` of the whole segment when a chunk holds a multiple of
    ``WEIGHT_VALUES_PER_STEP`` weights (the crate's chain step). The Fisher digest
    covers each block's lower triangle (``commit_fisher_chain``). ``blocks_per_proof``
    must be :func:`prove`'s (None: the same default, :func:`blocks_per_proof_for`)."""
    blocks_per_proof = blocks_per_proof or blocks_per_proof_for(witnesses)
    out = {}
    for wit in witnesses:
        w, a, _, w_new = _segments(wit, blocks_per_proof, max_blocks)
        out[wit.name] = {"w": _chain_digest(w, blocks_per_proof), "w_new": _chain_digest(w_new, blocks_per_proof),
                         "a": _chain_digest(a, blocks_per_proof)}
    return out


def _chain_digest(blocks: np.ndarray, per_chunk: int) -> bytes:
    """Weight blocks (n_blocks, B) or Fisher blocks (n_blocks, B, B), chained per chunk."""
    z = _zk()
    fisher = blocks.ndim == 3
    b = blocks.shape[1]
    acc = z.initial_acc(len(blocks) * b * (b + 1) // 2 if fisher else blocks.size)
    for c in range(0, len(blocks), per_chunk):
        chunk = blocks[c:c + per_chunk].reshape(-1).tolist()
        acc = z.commit_fisher_chain(acc, chunk, b) if fisher else z.commit_chain(acc, chunk)
    return bytes(acc)


# What a proof costs per row of its circuit. halo2 works on the whole domain of 2^k rows, so
# cost follows 2^k, not the rows the circuit fills. Seconds: the proving key, one chunk proof,
# from bench/prove.py at k = 11, 13, 15, 16 on 2 idle x86 cores (rust/README.md, Cost; a chunk
# within 6 % from k = 13 on, keys within 25 %). Peak memory (the process's VmHWM, Python and
# numpy included): 70 MiB + 16 KiB per row, the line through k = 13 and 15, above the k = 16 runs.
COST_SECONDS_PER_ROW = {"keys": 0.33e-3, "chunk": 0.58e-3}
COST_BYTES_PER_ROW = 16 << 10
COST_BASE_BYTES = 70 << 20


def plan(witnesses: Sequence[LayerWitness], blocks_per_proof: int | None = None, *,
         max_blocks: int | None = None, k: int | None = None) -> dict:
    """What :func:`prove` will do with the same arguments, found without proving: it
    proves ``chunks`` chunks of ``blocks_per_proof`` blocks each in a circuit of 2^``k``
    rows (the smallest that holds a chunk, from the crate's row count), covering
    ``weights`` weights. ``seconds`` and ``memory_bytes`` estimate its time (keys and
    every chunk) and its peak memory from 2^k and
    the measured costs per row above; ``verifying_key`` is the key's bytes."""
    if not witnesses:
        raise ValueError("witnesses is empty: nothing to prove")
    block, scale_bits = witnesses[0].block, witnesses[0].scale_bits
    for wit in witnesses:
        if (wit.block, wit.scale_bits) != (block, scale_bits):
            raise ValueError(f"layer {wit.name!r} has block={wit.block}, scale_bits={wit.scale_bits}; all layers "
                             f"of one proof need the same (block={block}, scale_bits={scale_bits})")
    if blocks_per_proof is None:
        blocks_per_proof = blocks_per_proof_for(witnesses, k)
    vk = keygen(block, blocks_per_proof, scale_bits, k)
    rows = 1 << _key_k(vk)
    chunks, weights = 0, 0
    for wit in witnesses:
        nb = len(wit.w) if max_blocks is None else min(max_blocks, len(wit.w))
        chunks += -(-nb // blocks_per_proof)
        weights += min(nb * block, wit.size)
    cost = COST_SECONDS_PER_ROW
    seconds = rows * (cost["keys"] + chunks * cost["chunk"])
    return {"chunks": chunks, "blocks_per_proof": blocks_per_proof, "k": _key_k(vk), "weights": weights,
            "seconds": seconds, "memory_bytes": COST_BASE_BYTES + rows * COST_BYTES_PER_ROW, "verifying_key": vk}


def describe(todo: dict) -> str:
    """A :func:`plan` in one line of words."""
    s, m = todo["seconds"], todo["memory_bytes"]
    took = f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
    memory = f"{m / 2**30:.1f} GiB" if m >= 2**30 else f"{m / 2**20:.0f} MiB"
    return (f"{todo['chunks']} chunk proof(s) of {todo['blocks_per_proof']} blocks ({todo['weights']} weights) in a "
            f"circuit of 2^{todo['k']} rows: about {took} and {memory} of memory (estimated from the rows and "
            f"costs measured on 2 x86 cores)")


def prove(witnesses: Sequence[LayerWitness], blocks_per_proof: int | None = None, *, params: bytes,
          max_blocks: int | None = None, k: int | None = None, progress: bool = False,
          workers: int = 1) -> dict:
    """Proves the step of every layer in ``witnesses`` (from :func:`unlearn`) under the
    provider's reference string ``params`` (:func:`setup`; it must reach the circuit's
    2^k rows, see :func:`plan`); with
    ``max_blocks``, only the first ``max_blocks`` blocks of each layer (a segment).
    Each chunk proof covers ``blocks_per_proof`` blocks (None: as many as 2^k rows
    hold, :func:`blocks_per_proof_for`; k = None then means :data:`PROOF_K`);
    :func:`plan` says beforehand what that costs. ``progress``: bars on stderr
    (:mod:`edgetrain.progress`); a Ctrl-C interrupts at once in any case.

    Chunks chain through their digests, which are computed natively first
    (:func:`chunk_jobs`), so no chunk waits for another's proof: ``workers`` > 1
    proves that many chunks at once (each holds its own ~``plan()["memory_bytes"]``
    working set; halo2 already spreads one proof over the cores, so measure before
    raising it: ``bench/prove.py --workers``). The proofs' public inputs and w' are
    the same whatever ``workers`` is.

    Returns ``{"proof", "public_inputs", "verifying_key"}`` (bytes) plus
    ``"weights"`` (how many real weights the proof covers), ``"chunks"``,
    ``"blocks_per_proof"``, ``"prove_seconds"`` (the proving itself) and
    ``"setup_seconds"`` (the proving key). The crate recomputes the
    witness; a mismatch with ``unlearn``'s integers is an error.
    """
    if workers < 1:
        raise ValueError(f"workers = {workers} must be at least 1")
    z = _zk()
    t0 = time.perf_counter()
    todo = plan(witnesses, blocks_per_proof, max_blocks=max_blocks, k=k)
    vk, chunk = todo["verifying_key"], todo["blocks_per_proof"]
    params = bytes(params)
    _check_reaches(params, todo["k"])
    _progress.note(progress, f"proving {describe(todo)}")
    with _progress.bar(progress, desc=f"proving key (2^{todo['k']} rows)") as bar:
        prover = _progress.wait(z.Prover, vk, params, ticking=bar)
    setup = time.perf_counter() - t0
    jobs, heads = chunk_jobs(witnesses, chunk, max_blocks)
    t0 = time.perf_counter()
    with _progress.bar(progress, total=todo["chunks"], desc="proving", unit="chunk") as bar:
        bar.set_postfix_str(f"estimated {(1 << todo['k']) * COST_SECONDS_PER_ROW['chunk']:.0f} s per chunk")

        def one(job):  # in a worker thread: no writes to stderr there (a daemon thread holding
            # stderr's lock when Ctrl-C ends the interpreter aborts it), so the bar moves here
            p, q, proven = prover.prove(job["w"], job["a"], job["keep"], job["acc_in"])
            return bytes(p), bytes(q), proven

        if workers == 1:
            done = []
            for job in jobs:
                done.append(_progress.wait(one, job, ticking=bar))
                bar.update(1)
        else:
            from concurrent.futures import ThreadPoolExecutor

            def all_jobs():
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    return list(pool.map(one, jobs))
            done = _progress.wait(all_jobs, ticking=bar)
            bar.update(len(jobs))
    proofs = [[] for _ in heads]
    publics = [(head, []) for head in heads]
    for job, (p, q, proven) in zip(jobs, done):
        if not np.array_equal(np.asarray(proven), job["w_new"]):
            raise ValueError(f"layer {job['name']!r}, blocks {job['first_block']}.. : the prover's w' differs "
                             "from unlearn's (a tie in rounding y); unlearn again with another damp")
        info = z.public_inputs_info(q)
        out = (info["w_out"], info["w_new_out"], info["a_out"])
        if tuple(bytes(d) for d in out) != job["acc_out"]:
            raise ValueError(f"layer {job['name']!r}, blocks {job['first_block']}.. : the proof's digests differ "
                             "from the natively chained ones")
        proofs[job["segment"]].append(p)
        publics[job["segment"]][1].append(q)
    return {"proof": _encode_proof(proofs), "public_inputs": _encode_public(publics), "verifying_key": vk,
            "weights": todo["weights"], "blocks_per_proof": chunk, "chunks": todo["chunks"],
            "prove_seconds": time.perf_counter() - t0, "setup_seconds": setup}


def chunk_jobs(witnesses: Sequence[LayerWitness], blocks_per_proof: int,
               max_blocks: int | None = None) -> tuple[list[dict], list[dict]]:
    """Every chunk proof :func:`prove` makes, with its inputs (flat ``w``, ``a``, ``keep``
    lists), the w' it must reproduce and its chain accumulators in and out (W, W', A),
    chained natively (``commit_chain``, ``commit_fisher_chain``) so the chunks do not
    depend on each other's proofs; and per segment its head (name, size, final digests)."""
    z = _zk()
    jobs, heads = [], []
    for seg, wit in enumerate(witnesses):
        w, a, keep, w_new = _segments(wit, blocks_per_proof, max_blocks)
        b = wit.block
        n_fisher = len(w) * b * (b + 1) // 2  # the lower triangles
        acc = tuple(bytes(x) for x in (z.initial_acc(w.size), z.initial_acc(w.size), z.initial_acc(n_fisher)))
        for c in range(0, len(w), blocks_per_proof):
            job = {"segment": seg, "name": wit.name, "first_block": c,
                   "w": w[c:c + blocks_per_proof].reshape(-1).tolist(),
                   "a": a[c:c + blocks_per_proof].reshape(-1).tolist(),
                   "keep": keep[c:c + blocks_per_proof].reshape(-1).tolist(),
                   "w_new": w_new[c:c + blocks_per_proof].reshape(-1), "acc_in": acc}
            acc = (bytes(z.commit_chain(acc[0], job["w"])), bytes(z.commit_chain(acc[1], job["w_new"].tolist())),
                   bytes(z.commit_fisher_chain(acc[2], job["a"], b)))
            job["acc_out"] = acc
            jobs.append(job)
        heads.append({"name": wit.name, "size": wit.size, "digests": acc})
    return jobs, heads


def verify_proof(proof: bytes, public_inputs: bytes, verifying_key: bytes, *, params: bytes,
                 mask: dict[str, np.ndarray] | None = None, h_w: dict[str, bytes] | None = None,
                 h_w_new: dict[str, bytes] | None = None, h_a: dict[str, bytes] | None = None) -> bool:
    """True iff every segment's chunk proofs verify under ``verifying_key`` and the
    provider's own reference string ``params`` (:func:`srs`) and chain
    to the segment's digests and mask in ``public_inputs``. The provider passes the
    ``mask`` it sent (``{layer: bool array, True = removed}``) and the digests the
    device published (``h_w`` before, ``h_a`` of its Fisher blocks, ``h_w_new`` of the
    model it deploys, each ``{layer: 32 bytes}``, see :func:`commitments`); a segment
    that differs from any of them gives False, and so does a masked weight that no
    segment reaches (:func:`uncovered`: a proof made with ``max_blocks`` short of
    the mask, or without the layer). Only with ``mask`` is coverage checked.
    :func:`verify_failure` says which check failed.

    Never crashes: bytes that are not of these formats raise
    :class:`ProofFormatError`; anything else that does not verify gives False.
    """
    return verify_failure(proof, public_inputs, verifying_key, mask=mask, h_w=h_w, h_w_new=h_w_new, h_a=h_a,
                          params=params) is None


_DIGESTS = (("h_w", "the weights before"), ("h_w_new", "the weights after"), ("h_a", "the inverse-Fisher blocks"))


def verify_failure(proof: bytes, public_inputs: bytes, verifying_key: bytes, *, params: bytes,
                   mask: dict[str, np.ndarray] | None = None, h_w: dict[str, bytes] | None = None,
                   h_w_new: dict[str, bytes] | None = None, h_a: dict[str, bytes] | None = None,
                   progress: bool = False) -> str | None:
    """:func:`verify_proof`'s checks, in its order; None when they all pass, else the
    first that failed in one line: the segment count, coverage, the mask of a layer,
    a published digest of a layer, or a chunk proof of a layer (which chunk). Making
    the verifying key (seconds) shows a bar with ``progress``."""
    z = _zk()  # a missing binding is reported before anything else
    proofs = _decode_proof(proof)
    segments = _decode_public(public_inputs)
    with _progress.bar(progress, desc=f"verifying key (2^{_key_k(verifying_key)} rows)") as bar:
        verifier = _progress.wait(_verifier, bytes(verifying_key), bytes(params), ticking=bar)
    if len(proofs) != len(segments):
        return f"the proof holds {len(proofs)} segment(s), its public inputs {len(segments)}"
    keeps = [_keep_bits(seg_publics, z) for _, seg_publics in segments]
    outside = _uncovered(mask, segments, keeps) if mask is not None else {}
    if outside:
        return "coverage: masked weights outside the proof: " + ", ".join(f"{n!r} {c}" for n, c in outside.items())
    for seg_proofs, (head, seg_publics), keep in zip(proofs, segments, keeps):
        name = head["name"]
        wrong = _mask_mismatch(mask, head, keep) if mask is not None else None
        if wrong:
            return f"the mask: layer {name!r}: {wrong}"
        for (key, what), expected, got in zip(_DIGESTS, (h_w, h_w_new, h_a), head["digests"]):
            if expected is not None and expected.get(name) != got:
                return f"a digest: layer {name!r}: {key} ({what}) differs from the published one"
        try:
            if verifier.verify_chain(seg_proofs, seg_publics, *head["digests"], keep.tolist()):
                continue
        except ProofFormatError:
            raise
        except ValueError as e:  # e.g. chunk counts differ between the proof and the inputs
            return f"layer {name!r}: {' '.join(str(e).split())}"
        for i, (p, q) in enumerate(zip(seg_proofs, seg_publics)):
            if not verifier.verify(p, q):
                return f"layer {name!r}: chunk {i + 1} of {len(seg_proofs)} does not verify"
        return f"layer {name!r}: the chunks' digests do not chain from the layer's start to its published digests"
    return None


@functools.lru_cache(maxsize=4)
def _verifier(verifying_key: bytes, params: bytes):
    """The crate's verifier for a key, kept per process: a descriptor costs a keygen
    (seconds at k = 15), stored-key bytes (:func:`verifying_key`) only their reading,
    verifying a proof under either well under a second. ProofFormatError for bad key
    bytes (and nothing is cached then); ValueError for a key made under another
    reference string."""
    return _zk().Verifier(verifying_key, params)


def proof_info(public_inputs: bytes) -> list[dict]:
    """The segments of public inputs: name, layer size, digests (w, w', A), chunks,
    ``weights`` covered and ``removed`` (bool array over them, True = masked)."""
    z = _zk()
    out = []
    for head, publics in _decode_public(public_inputs):
        keep = _keep_bits(publics, z)
        info = z.public_inputs_info(publics[0]) if publics else {}
        n = min(keep.size, head["size"])
        out.append({**head, "removed": ~keep[:n], "weights": n, "scale_bits": info.get("scale_bits"),
                    "chunks": len(publics)})
    return out


def uncovered(public_inputs: bytes, mask: dict[str, np.ndarray]) -> dict[str, int]:
    """``{layer: count}`` of the masked weights that no segment of ``public_inputs``
    reaches (layers where every masked weight is reached are left out). A segment
    states the keep bits of its layer's first weights; a masked weight past them,
    or in a layer without a segment, is one the proof says nothing about, and
    :func:`verify_proof` with this ``mask`` is then False. Bytes that are not
    public inputs raise :class:`ProofFormatError`."""
    segments = _decode_public(public_inputs)
    z = _zk()
    return _uncovered(mask, segments, [_keep_bits(publics, z) for _, publics in segments])


def _uncovered(mask, segments, keeps) -> dict[str, int]:
    reach = {}
    for (head, _), keep in zip(segments, keeps):
        reach[head["name"]] = max(reach.get(head["name"], 0), keep.size)
    counts = {name: int(np.asarray(m, dtype=bool).reshape(-1)[reach.get(name, 0):].sum())
              for name, m in mask.items()}
    return {name: n for name, n in counts.items() if n}


def _keep_bits(publics, z) -> np.ndarray:
    """A segment's keep bits over all its chunks (True = kept), from the layer's first weight."""
    return np.array([k for q in publics for k in z.public_inputs_info(q)["keep"]], dtype=bool)


def _mask_mismatch(mask, head, keep) -> str | None:
    """Why the segment's keep bits do not say "removed" exactly where the mask does
    (padding past the layer's end: kept), or None when they do."""
    name = head["name"]
    if name not in mask:
        return f"not in the mask (it holds {sorted(mask)})"
    removed = np.asarray(mask[name], dtype=bool).reshape(-1)
    if removed.size != head["size"]:
        return f"the proof is about {head['size']} weights, the mask has {removed.size}"
    want = np.ones(keep.size, bool)
    covered = min(keep.size, removed.size)
    want[:covered] = ~removed[:covered]
    differ = int((keep != want).sum())
    return f"the proof removes other weights than the mask ({differ} differ)" if differ else None


# -- bytes ---------------------------------------------------------------------

def _pack_blobs(blobs):
    return struct.pack("<I", len(blobs)) + b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def _encode_proof(segments) -> bytes:
    return MAGIC + b"P" + bytes([VERSION]) + struct.pack("<I", len(segments)) + \
        b"".join(_pack_blobs(s) for s in segments)


def _encode_public(segments) -> bytes:
    out = [MAGIC + b"I" + bytes([VERSION]), struct.pack("<I", len(segments))]
    for head, blobs in segments:
        name = head["name"].encode()
        out += [struct.pack("<H", len(name)), name, struct.pack("<I", head["size"]),
                *head["digests"], _pack_blobs(blobs)]
    return b"".join(out)


class _Reader:
    def __init__(self, data, kind, what):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProofFormatError(f"{what}: expected bytes, got {type(data).__name__}")
        self.data, self.at, self.what = bytes(data), 0, what
        head = self.take(6)
        if head[:4] != MAGIC or head[4:5] != kind:
            raise ProofFormatError(f"{what}: does not start with {MAGIC + kind!r} (not an edgetrain {what})")
        if head[5] != VERSION:
            raise ProofFormatError(f"{what}: format version {head[5]}, this build reads version {VERSION}")

    def take(self, n):
        if n < 0 or self.at + n > len(self.data):
            raise ProofFormatError(f"{self.what}: truncated at byte {self.at} (needed {n} more, "
                                   f"{len(self.data) - self.at} left)")
        self.at += n
        return self.data[self.at - n:self.at]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def count(self, item_bytes):
        n = self.u32()
        if n * item_bytes > len(self.data) - self.at:  # a corrupt count must not allocate
            raise ProofFormatError(f"{self.what}: count {n} at byte {self.at - 4} exceeds the data")
        return n

    def blobs(self):
        return [self.take(self.u32()) for _ in range(self.count(4))]

    def end(self):
        if self.at != len(self.data):
            raise ProofFormatError(f"{self.what}: {len(self.data) - self.at} trailing bytes")


def _decode_proof(data) -> list[list[bytes]]:
    r = _Reader(data, b"P", "proof")
    segments = [r.blobs() for _ in range(r.count(4))]
    r.end()
    return segments


def _decode_public(data) -> list:
    r = _Reader(data, b"I", "public inputs")
    segments = []
    for _ in range(r.count(2 + 4 + 3 * _DIGEST + 4)):
        try:
            name = r.take(struct.unpack("<H", r.take(2))[0]).decode()
        except UnicodeDecodeError:
            raise ProofFormatError("public inputs: a layer name is not UTF-8") from None
        size = r.u32()
        digests = tuple(r.take(_DIGEST) for _ in range(3))
        head = {"name": name, "size": size, "digests": digests}
        segments.append((head, r.blobs()))
    r.end()
    return segments
