"""End-to-end smoke run of the Python module (not a pytest file).

    maturin build --release && pip install target/wheels/edgetrain_zk-*.whl
    python examples/smoke.py
"""
import time, random
import edgetrain_zk as z
rng = random.Random(0)
B = 8
def block():
    ww = [rng.randint(-3000, 3000) for _ in range(B)]
    aa = [[0]*B for _ in range(B)]
    for i in range(B):
        for j in range(i+1):
            v = 8192 + rng.randint(-2000, 2000) if i == j else rng.randint(-600, 600)
            aa[i][j] = aa[j][i] = v
    return ww, [x for r in aa for x in r]
w, a = block()
keep = [i not in (2, 5) for i in range(B)]
t = time.time(); vk = z.keygen(10, B, 1, scale_bits=12, tol=1 << 16); print("keygen (fit check)", round(time.time() - t, 3))
t = time.time(); proof, pi, w_new = z.prove(vk, w, a, keep); print("prove (incl. params+keys)", round(time.time() - t, 3), len(proof))
t = time.time(); print("verify", z.verify(proof, pi, vk), round(time.time() - t, 3))
info = z.public_inputs_info(pi)
assert info["w_out"] == z.commit(w) and info["w_new_out"] == z.commit(w_new) and info["a_out"] == z.commit(a)
print("tampered", z.verify(proof[:-1] + bytes([proof[-1] ^ 1]), pi, vk))
for bad in [b"", b"xx", proof[:50]]:
    try: print("bad", z.verify(bad, pi, vk))
    except z.ProofFormatError as e: print("ProofFormatError:", e)
try: z.commit([1 << 23])
except ValueError as e: print("ValueError:", e)
t = time.time(); pb = z.params(10); print("params", len(pb), round(time.time() - t, 3))
prover = z.Prover(vk, pb); verifier = z.Verifier(vk, pb)
t = time.time(); proof, pi, _ = prover.prove(w, a, keep); print("Prover.prove", round(time.time() - t, 3))
t = time.time(); print("Verifier.verify", verifier.verify(proof, pi), round(time.time() - t, 3))
vk_other = z.keygen(10, B, 1, scale_bits=11, tol=1 << 16)
print("other key", z.verify(proof, pi, vk_other))
try: z.Verifier(vk, pb[:-5])
except z.ProofFormatError as e: print("ProofFormatError:", e)
try: z.keygen(9, B, 1, scale_bits=12, tol=1 << 16)
except ValueError as e: print("ValueError:", str(e)[:80])
vkc = z.keygen(None, 8, 8, scale_bits=12, tol=1 << 16)
print("auto k for 8 blocks of 8:", vkc[7])
pc = z.Prover(vkc)
W, A, K = [], [], []
for blk in range(16):
    ww, aa = block(); W += ww; A += aa; K += [i not in (1, 6) for i in range(B)]
proofs, pis, wn = [], [], []
acc = (z.initial_acc(128), z.initial_acc(128), z.initial_acc(128 * 8))
t = time.time()
for c in range(2):
    p, q, w_new = pc.prove(W[c*64:(c+1)*64], A[c*512:(c+1)*512], K[c*64:(c+1)*64], acc_in=acc)
    info = z.public_inputs_info(q); acc = (info["w_out"], info["w_new_out"], info["a_out"])
    proofs.append(p); pis.append(q); wn += w_new
print("chain prove (2 chunks)", round(time.time() - t, 3))
t = time.time()
print("verify_chain", z.verify_chain(proofs, pis, vkc, z.commit(W), z.commit(wn), z.commit(A), K), round(time.time() - t, 3))
print("verify_chain other mask", z.verify_chain(proofs, pis, vkc, z.commit(W), z.commit(wn), z.commit(A), [not k for k in K]))
print("verify_chain swapped", z.verify_chain(proofs[::-1], pis[::-1], vkc, z.commit(W), z.commit(wn), z.commit(A), K))
