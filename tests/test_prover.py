"""ZK-APEX unlearning: the math against numpy references, the fixed-point step
against the crate's witness, and real proofs (small shapes) for the provider."""
import re

import edgetrain_zk as zk  # the binding: the README's setup installs it (pip install ./rust)
import numpy as np
import pytest

import edgetrain
from edgetrain import autodiff, prover
from edgetrain.prover import fixed_point as fx
from edgetrain.prover.unlearn import LayerWitness


def test_sherman_morrison_blocks_equal_the_inverse_of_the_damped_fisher():
    rng = np.random.default_rng(0)
    m, size, block, damp = 30, 20, 8, 1e-2  # 20 weights: the third block is padded
    g = rng.standard_normal((m, size))
    a = prover.inverse_fisher_blocks(g, block, damp)
    padded = np.zeros((m, 24))
    padded[:, :size] = g
    for b in range(3):
        gb = padded[:, b * block:(b + 1) * block]
        want = np.linalg.inv(damp * np.eye(block) + gb.T @ gb / m)
        np.testing.assert_allclose(a[b], want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


def test_obs_step_is_the_constrained_least_squares_minimiser():
    """δ = w' − w minimises δᵀA⁻¹δ subject to δ[S] = −w[S]: compare with the KKT system."""
    rng = np.random.default_rng(1)
    nb, b = 4, 8
    q = rng.standard_normal((nb, b, b))
    a = q @ q.transpose(0, 2, 1) + 0.5 * np.eye(b)
    w = rng.standard_normal((nb, b))
    keep = rng.random((nb, b)) > 0.3
    keep[3] = True  # a block without masked weights is left alone
    w_new = prover.obs_step(w, a, keep)
    for i in range(nb):
        s = np.flatnonzero(~keep[i])
        e = np.eye(b)[s]  # constraint rows
        kkt = np.block([[2 * np.linalg.inv(a[i]), e.T], [e, np.zeros((len(s), len(s)))]])
        rhs = np.concatenate([np.zeros(b), -w[i, s]])
        delta = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:b]
        np.testing.assert_allclose(w_new[i], w[i] + delta, atol=1e-9)
        assert np.all(w_new[i, s] == 0.0)


def _random_blocks(rng, nb, b, masked=2):
    q = rng.standard_normal((nb, b, b)) * 0.3
    a = q @ q.transpose(0, 2, 1) + np.eye(b)
    w = rng.standard_normal((nb, b)) * 0.1
    keep = np.ones((nb, b), bool)
    for i in range(nb):
        keep[i, rng.choice(b, masked, replace=False)] = False
    return w, a, keep


def test_integer_step_tracks_the_float_step_and_zeroes_the_mask_exactly():
    rng = np.random.default_rng(2)
    w, a, keep = _random_blocks(rng, 6, 16, masked=3)
    w_int = fx.to_fixed(w, 16)
    step = fx.integer_step(w_int, fx.fisher_to_fixed(a), keep, 16)
    assert np.all(step["w_new"][~keep] == 0)
    np.testing.assert_allclose(step["w_new"] / 2.0 ** 16, prover.obs_step(w, a, keep), atol=2e-4)
    # the circuit's relations, in integers
    p = np.einsum("bij,bj->bi", fx.fisher_to_fixed(a), step["y"])
    assert np.array_equal((step["delta"] << 16) + step["remainder"], -p)
    assert step["remainder"].min() >= 0 and step["remainder"].max() < 2 ** 16


def test_fixed_point_rejects_weights_outside_24_bits():
    with pytest.raises(ValueError, match="scale_bits=16"):
        fx.to_fixed(np.array([200.0]), 16)


def test_per_sample_gradients_average_to_the_batch_gradient(trained_onnx, mnist):
    model = edgetrain.load(trained_onnx("lenet5"))
    names = prover.target_layers(model)
    x, y = mnist.x_train[:40], mnist.y_train[:40]
    per = next(prover.per_sample_gradients(model, x, y, names, batch=64))
    env = model.run_all(x, keep=True)
    _, dlogits = autodiff.cross_entropy(env[model.output_names[0]], y)
    batch = autodiff.backward(model, env, dlogits, wrt=names)
    for n in names:
        np.testing.assert_allclose(per[n].mean(0), batch[n].reshape(-1), rtol=1e-4, atol=1e-6)


def test_unlearning_zeroes_the_mask_and_compensation_keeps_retain_accuracy(trained_onnx, mnist):
    """Masked weights are exactly 0; the OBS compensation (Fisher of the retain data)
    keeps more retain accuracy than masking alone."""
    model = edgetrain.load(trained_onnx("lenet5"))
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    forget, retain = (x[y == 3], y[y == 3]), (x[y != 3], y[y != 3])
    mask = prover.make_mask(model, forget=forget, retain=retain, fraction=0.1)
    total = sum(m.size for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.1 * total)
    new, witnesses = prover.unlearn(model, mask, data=retain, block=64, damp=1e-2)
    masked_only = edgetrain.Model(model.to_proto())
    for n, m in mask.items():
        assert np.all(new.params[n][m] == 0.0) and np.any(model.params[n][m] != 0.0)
        masked_only.params[n][m] = 0.0
    acc = lambda mdl: float((mdl.run(mnist.x_test[mnist.y_test != 3]).argmax(1) == mnist.y_test[mnist.y_test != 3]).mean())
    assert acc(new) > acc(masked_only) + 0.03
    assert [w.name for w in witnesses] == list(mask)


# -- proofs (need the edgetrain_zk binding) ------------------------------------------

B = 8


def _witness(seed, mask_seed=None, name="fc.weight"):
    rng = np.random.default_rng(seed)
    w, a, keep = _random_blocks(rng, 2, B)
    if mask_seed is not None:
        keep = _random_blocks(np.random.default_rng(mask_seed), 2, B)[2]
    w_int, a_int = fx.to_fixed(w, 16), fx.fisher_to_fixed(a)
    w_new = fx.integer_step(w_int, a_int, keep, 16)["w_new"]
    return LayerWitness(name, (2 * B,), B, 16, w_int, a_int, keep, w_new)


def test_witness_file_round_trips_exactly(tmp_path):
    first = _witness(0)
    w, keep = first.w[:, ::-1].copy(), ~first.keep
    second = LayerWitness("fc2.weight", (3, 5), B, 20, w, first.a, keep, fx.integer_step(w, first.a, keep, 20)["w_new"])
    LayerWitness.save(tmp_path / "wit", [first, second])  # exactly this path, no .npz appended
    loaded = LayerWitness.load(tmp_path / "wit")
    assert len(loaded) == 2
    for want, got in zip((first, second), loaded):
        assert (got.name, got.shape, got.block, got.scale_bits) == (want.name, want.shape, want.block, want.scale_bits)
        for field in ("w", "a", "keep", "w_new"):
            assert getattr(got, field).dtype == getattr(want, field).dtype, field
            assert np.array_equal(getattr(got, field), getattr(want, field)), field


def test_witness_file_rejects_truncated_foreign_and_inconsistent_files(tmp_path):
    path = tmp_path / "wit.npz"
    LayerWitness.save(path, [_witness(0)])
    arrays = dict(np.load(path))

    def variant(name, **change):
        out = tmp_path / name
        np.savez(out, **{k: v for k, v in {**arrays, **change}.items() if v is not None})
        return out
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    changed = arrays["w_new0"].copy()
    changed[0, np.flatnonzero(arrays["keep0"][0])[0]] += 1  # a kept weight the step did not give
    cases = [(tmp_path / "cut.npz", "is truncated or damaged"),
             (variant("changed.npz", w_new0=changed), "w_new is not the step of w, a and keep in 1 block"),
             (variant("asymmetric.npz", a0=arrays["a0"] + np.triu(np.ones((B, B), np.int64), 1)),
              "not symmetric"),
             (variant("data.npz", format=None, version=None, x=np.zeros(3)), "lacks the array 'format'"),
             (variant("other.npz", format=np.array("mask")), "format 'mask', expected 'edgetrain-witness'"),
             (variant("v2.npz", version=np.array(2)), "format version 2, this build reads 1"),
             (variant("no_a.npz", a0=None), r"lacks the array 'a0' \(layer 0\)"),
             (variant("short.npz", w0=arrays["w0"][:1]), r"w0 has shape \(1, 8\); layer 'fc.weight' of shape \(16,\)"),
             (variant("float.npz", keep0=arrays["keep0"].astype(float)),
              "'keep0' is a 2-d float64 array, expected 2-d bool")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=f"witness file '{re.escape(str(bad))}'.*{match}"):
            LayerWitness.load(bad)


@pytest.fixture(scope="module")
def honest(srs):
    wit = _witness(0)
    out = prover.prove([wit], blocks_per_proof=1, params=srs)  # two chunks: the chain is exercised
    return wit, out


def test_integer_step_equals_the_crates_witness():
    wit = _witness(3)
    ref = zk.unlearn_witness(wit.w.reshape(-1).tolist(), wit.a.reshape(-1).tolist(), wit.keep.reshape(-1).tolist(), B)
    ours = fx.integer_step(wit.w, wit.a, wit.keep, 16)
    for key in ("y", "delta", "remainder", "residual", "w_new"):
        assert ours[key].reshape(-1).tolist() == list(ref[key]), key


def test_honest_device_verifies_with_the_providers_expectations(srs, honest):
    wit, out = honest
    digests = prover.commitments([wit], 1)[wit.name]
    assert out["weights"] == 2 * B
    assert edgetrain.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                  mask={wit.name: ~wit.keep.reshape(-1)}, h_w={wit.name: digests["w"]},
                                  h_a={wit.name: digests["a"]}, h_w_new={wit.name: digests["w_new"]}, params=srs)
    info = prover.proof_info(out["public_inputs"])[0]
    assert info["digests"] == (digests["w"], digests["w_new"], digests["a"])


def test_chunks_proven_at_once_equal_the_chunks_proven_in_series(srs, honest):
    # The chunks' chain accumulators are computed natively up front, so proofs run
    # concurrently; the witness (bound by every chunk's digests and returned w') must
    # not depend on it. Proof bytes differ (fresh blinding), the public inputs may not.
    wit, series = honest
    at_once = prover.prove([wit], blocks_per_proof=1, workers=2, params=srs)
    assert at_once["chunks"] == series["chunks"] == 2
    assert at_once["public_inputs"] == series["public_inputs"]
    assert at_once["verifying_key"] == series["verifying_key"]
    jobs, heads = prover.proof.chunk_jobs([wit], 1)
    assert [j["acc_in"] for j in jobs[1:]] == [j["acc_out"] for j in jobs[:-1]]
    assert heads[0]["digests"] == prover.proof_info(series["public_inputs"])[0]["digests"]
    assert at_once["proof"] != series["proof"]
    digests = prover.commitments([wit], 1)[wit.name]
    assert edgetrain.verify_proof(at_once["proof"], at_once["public_inputs"], at_once["verifying_key"],
                                  mask={wit.name: ~wit.keep.reshape(-1)}, h_w={wit.name: digests["w"]},
                                  h_a={wit.name: digests["a"]}, h_w_new={wit.name: digests["w_new"]}, params=srs)
    with pytest.raises(ValueError, match="workers"):
        prover.prove([wit], blocks_per_proof=1, workers=0, params=srs)


def _with_digests(public_inputs, name, w_new=None, a=None):
    """Public inputs claiming other values: every chunk's and the segment's digests redone."""
    seg = prover.proof._decode_public(public_inputs)
    head, blobs = seg[0]
    new_blobs, accs = [], None
    for c, q in enumerate(blobs):
        q = bytearray(q)
        for slot, values in ((2, w_new), (4, a)):
            if values is None:
                continue
            per = len(values) // len(blobs)
            chunk = values[c * per:(c + 1) * per]
            if slot == 4:  # Fisher blocks: their lower triangles
                acc_in = zk.initial_acc(len(values) // B * (B + 1) // 2) if c == 0 else accs[slot]
                out = zk.commit_fisher_chain(acc_in, chunk, B)
            else:
                acc_in = zk.initial_acc(len(values)) if c == 0 else accs[slot]
                out = zk.commit_chain(acc_in, chunk)
            q[6 + 32 * slot:6 + 32 * (slot + 1)] = acc_in
            q[6 + 32 * (slot + 1):6 + 32 * (slot + 2)] = out
            accs = accs or {}
            accs[slot] = out
        new_blobs.append(bytes(q))
    digests = list(head["digests"])
    if w_new is not None:
        digests[1] = accs[2]
    if a is not None:
        digests[2] = accs[4]
    head = {**head, "digests": tuple(digests)}
    return prover.proof._encode_public([(head, new_blobs)])


def test_a_device_that_skips_compensation_cannot_verify(srs, honest):
    wit, out = honest
    masked_only = np.where(wit.keep, wit.w, 0).reshape(-1).tolist()
    forged = _with_digests(out["public_inputs"], wit.name, w_new=masked_only)
    assert not edgetrain.verify_proof(out["proof"], forged, out["verifying_key"], params=srs)
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                      h_w_new={wit.name: zk.commit(masked_only)}, params=srs)


def test_a_weight_changed_after_the_update_cannot_verify(srs, honest):
    wit, out = honest
    changed = wit.w_new.reshape(-1).copy()
    changed[5] += 1
    forged = _with_digests(out["public_inputs"], wit.name, w_new=changed.tolist())
    assert not edgetrain.verify_proof(out["proof"], forged, out["verifying_key"], params=srs)
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                      h_w_new={wit.name: zk.commit(changed.tolist())}, params=srs)


def test_a_fisher_block_other_than_committed_cannot_verify(srs, honest):
    wit, out = honest
    committed = prover.commitments([wit], 1)[wit.name]["a"]
    other = _witness(0)
    other.a = other.a.copy()
    other.a[1] = np.eye(B, dtype=np.int64) << 14  # no compensation in block 1: δ = 0 on kept weights
    other.w_new = fx.integer_step(other.w, other.a, other.keep, 16)["w_new"]
    cheat = prover.prove([other], blocks_per_proof=1, params=srs)
    assert edgetrain.verify_proof(cheat["proof"], cheat["public_inputs"], cheat["verifying_key"],
                                  params=srs)  # valid alone
    assert not edgetrain.verify_proof(cheat["proof"], cheat["public_inputs"], cheat["verifying_key"],
                                      h_a={wit.name: committed}, params=srs)
    forged = _with_digests(out["public_inputs"], wit.name, a=other.a.reshape(-1).tolist())
    assert not edgetrain.verify_proof(out["proof"], forged, out["verifying_key"], params=srs)


def test_another_mask_cannot_verify(srs, honest):
    wit, out = honest
    other = _witness(0, mask_seed=9)
    assert not np.array_equal(other.keep, wit.keep)
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"],
                                      mask={wit.name: ~other.keep.reshape(-1)}, params=srs)
    # the other mask's keep bits put into the public inputs
    seg = prover.proof._decode_public(out["public_inputs"])
    head, blobs = seg[0]
    swapped = []
    for c, q in enumerate(blobs):
        bits = bytes(other.keep[c].astype(np.uint8))
        swapped.append(q[:-B] + bits)
    forged = prover.proof._encode_public([(head, swapped)])
    assert not edgetrain.verify_proof(out["proof"], forged, out["verifying_key"], params=srs)
    # a real proof for the other mask does not pass as one for the provider's mask
    proof2 = prover.prove([other], blocks_per_proof=1, params=srs)
    assert not edgetrain.verify_proof(proof2["proof"], proof2["public_inputs"], proof2["verifying_key"],
                                      mask={wit.name: ~wit.keep.reshape(-1)}, params=srs)


def test_a_proof_short_of_the_mask_does_not_verify_against_it(srs, honest):
    """prove(max_blocks=1) covers block 0 of two; the mask has 2 weights removed in each."""
    wit, _ = honest
    out = prover.prove([wit], blocks_per_proof=1, max_blocks=1, params=srs)
    removed = ~wit.keep.reshape(-1)
    within = removed & (np.arange(removed.size) < B)
    args = out["proof"], out["public_inputs"], out["verifying_key"]
    assert out["weights"] == B and within.sum() == 2 and removed.sum() == 4
    assert edgetrain.verify_proof(*args, mask={wit.name: within}, params=srs)
    assert prover.uncovered(out["public_inputs"], {wit.name: removed}) == {wit.name: 2}
    assert not edgetrain.verify_proof(*args, mask={wit.name: removed}, params=srs)
    # a masked weight in a layer the proof has no segment for
    other = {wit.name: within, "fc2.weight": np.eye(3, dtype=bool)}
    assert prover.uncovered(out["public_inputs"], other) == {"fc2.weight": 3}
    assert not edgetrain.verify_proof(*args, mask=other, params=srs)
    assert edgetrain.verify_proof(*args, mask={**other, "fc2.weight": np.zeros((3, 3), bool)}, params=srs)


_STORE_KEY = """
import sys
from edgetrain.prover import proof
read = lambda p: open(p, "rb").read()
proof.verifying_key(read(sys.argv[1]), read(sys.argv[3]), sys.argv[2])
"""

_VERIFY_WITH_STORED_KEY = """
import json, sys
import edgetrain_zk
from edgetrain import verify_proof
from edgetrain.prover import proof

def no_keygen(*args, **kwargs):
    raise AssertionError("the stored key was made again")

edgetrain_zk.verifying_key = no_keygen  # the key must come from the cache
files = {n: open(p, "rb").read() for n, p in zip(("proof", "inputs", "descriptor", "srs"), sys.argv[1:5])}
key = proof.verifying_key(files["descriptor"], files["srs"], sys.argv[5])
expected = {n: {k: bytes.fromhex(v) for k, v in d.items()} for n, d in json.loads(sys.argv[6]).items()}
ok = verify_proof(files["proof"], files["inputs"], key, params=files["srs"], **expected)
bad = bytearray(key)
bad[40] ^= 0x10  # inside the first fixed-column commitment (after the 26-byte header and a count)
try:
    rejected = not verify_proof(files["proof"], files["inputs"], bytes(bad), params=files["srs"], **expected)
except edgetrain_zk.ProofFormatError:
    rejected = True
print(json.dumps({"kind": key[:5].decode(), "ok": ok, "tampered_rejected": rejected}))
"""


def test_a_verifying_key_stored_by_one_process_verifies_in_another(srs, honest, tmp_path):
    # The provider's key for a descriptor is made by one process and stored in its key
    # cache; a fresh process reads it (making it again would raise) and verifies the proof.
    import json
    import subprocess
    import sys
    wit, out = honest
    digests = prover.commitments([wit], 1)[wit.name]
    paths = []
    for name, data in (("proof", out["proof"]), ("public_inputs", out["public_inputs"]),
                       ("verifying_key", out["verifying_key"]), ("srs", srs)):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    cache = tmp_path / "keys"
    subprocess.run([sys.executable, "-c", _STORE_KEY, str(paths[2]), str(cache), str(paths[3])], check=True)
    stored = list(cache.glob("vk-*.bin"))
    assert len(stored) == 1 and stored[0].read_bytes()[:5] == b"ETZKK"
    expected = {"h_w": {wit.name: digests["w"].hex()}, "h_a": {wit.name: digests["a"].hex()},
                "h_w_new": {wit.name: digests["w_new"].hex()}}
    run = subprocess.run([sys.executable, "-c", _VERIFY_WITH_STORED_KEY, *map(str, paths), str(cache),
                          json.dumps(expected)], check=True, capture_output=True, text=True)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"kind": "ETZKK", "ok": True,
                                                               "tampered_rejected": True}
    # Another process's key verifies here too, and a cached key of another shape is not used.
    key = stored[0].read_bytes()
    assert edgetrain.verify_proof(out["proof"], out["public_inputs"], key, h_w={wit.name: digests["w"]},
                                  params=srs)
    other = prover.keygen(B, 1, scale_bits=12, k=out["verifying_key"][7])
    assert prover.proof.verifying_key(other, srs, cache) != key
    assert len(list(cache.glob("vk-*.bin"))) == 2
    # Under another reference string the provider makes (and keeps) another key; the one
    # made under this one is refused by name there.
    theirs = prover.setup(out["verifying_key"][7])
    assert prover.proof.verifying_key(out["verifying_key"], theirs, cache) != key
    assert len(list(cache.glob("vk-*.bin"))) == 3
    with pytest.raises(ValueError, match="another reference string"):
        edgetrain.verify_proof(out["proof"], out["public_inputs"], key, params=theirs)
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], out["verifying_key"], params=theirs)
    # A damaged key in the cache is made again and stored again (keys are deterministic).
    damaged = bytearray(key)
    damaged[40] ^= 0x10
    stored[0].write_bytes(bytes(damaged))
    assert prover.proof.verifying_key(out["verifying_key"], srs, cache) == key == stored[0].read_bytes()


def test_proofs_for_another_model_or_key_do_not_verify(srs, honest):
    wit, out = honest
    other = prover.prove([_witness(5)], blocks_per_proof=1, params=srs)
    assert not edgetrain.verify_proof(other["proof"], out["public_inputs"], out["verifying_key"], params=srs)
    assert not edgetrain.verify_proof(out["proof"], other["public_inputs"], out["verifying_key"], params=srs)
    key12 = prover.keygen(B, 1, scale_bits=12, k=out["verifying_key"][7])
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], key12, params=srs)
    key_k = prover.keygen(B, 1, k=out["verifying_key"][7] + 1)
    assert not edgetrain.verify_proof(out["proof"], out["public_inputs"], key_k, params=srs)


def _garbage(out):
    p, q, vk = out["proof"], out["public_inputs"], out["verifying_key"]
    rng = np.random.default_rng(7)
    yield "truncated proof", p[:len(p) // 2], q, vk
    yield "empty proof", b"", q, vk
    yield "random proof", bytes(rng.integers(0, 256, len(p), dtype=np.uint8)), q, vk
    yield "wrong proof version", p[:5] + b"\x02" + p[6:], q, vk
    yield "truncated inputs", p, q[:-3], vk
    yield "random inputs", p, bytes(rng.integers(0, 256, len(q), dtype=np.uint8)), vk
    yield "wrong key version", p, q, vk[:5] + b"\x09" + vk[6:]
    yield "truncated key", p, q, vk[:9]
    yield "not bytes", "proof", q, vk
    for i in range(0, len(p), max(1, len(p) // 6)):  # bit flips across the whole proof
        yield f"flip {i}", p[:i] + bytes([p[i] ^ 0x10]) + p[i + 1:], q, vk
    for i in range(0, len(q), max(1, len(q) // 6)):
        yield f"inputs flip {i}", p, q[:i] + bytes([q[i] ^ 0x01]) + q[i + 1:], vk


def test_malformed_bytes_give_false_or_a_format_error_never_a_crash(srs, honest):
    wit, out = honest
    mask = {wit.name: ~wit.keep.reshape(-1)}  # the provider always states its mask
    for what, p, q, vk in _garbage(out):
        try:
            assert edgetrain.verify_proof(p, q, vk, mask=mask, params=srs) is False, what
        except edgetrain.ProofFormatError:
            pass
