"""Ed25519 signature verification (RFC 8032 §5.1.7) in pure Python, for the device.

The device install is numpy and onnx only; a bundle's signature must be checked
there before anything is installed. Verification handles public data only (the
key, the message, the signature), so a pure-Python, variable-time implementation
leaks nothing: no constant-time code is needed, unlike signing, which stays on
the provider (``cryptography``). Strict where RFC 8032 says to be: S must be
below the group order L, A and R must decode to curve points, and R is compared
as bytes with the encoding of [S]B − [k]A, which refuses non-canonical R.
Tests hold it to ``cryptography`` (OpenSSL) and to RFC 8032's test vectors.
"""
from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the base point
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of −1 mod p


def _recover_x(y: int, sign: int) -> int | None:
    """x with x² = (y² − 1)/(d·y² + 1) and x's low bit = ``sign``; None if none exists."""
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P  # candidate root of u/v
    if (v * x * x - u) % P != 0:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            return None
    if x == 0 and sign:
        return None
    return P - x if x & 1 != sign else x


# Points in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x·y = T/Z.
def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(k: int, p):
    q = (0, 1, 1, 0)  # the neutral element
    while k:
        if k & 1:
            q = _add(q, p)
        p = _add(p, p)
        k >>= 1
    return q


def _encode(p) -> bytes:
    zinv = pow(p[2], P - 2, P)
    x, y = p[0] * zinv % P, p[1] * zinv % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(s: bytes):
    y = int.from_bytes(s, "little")
    x = _recover_x(y & ((1 << 255) - 1), y >> 255)
    if x is None:
        return None
    y &= (1 << 255) - 1
    return x, y, 1, x * y % P


_BY = 4 * pow(5, P - 2, P) % P
BASE = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % P)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` (64 bytes) is ``public_key``'s (32 bytes) Ed25519
    signature of ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a, r = _decode(public_key), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % L
    minus_ka = _mul(k, (P - a[0], a[1], a[2], P - a[3]))  # −A = (−x, y)
    return _encode(_add(_mul(s, BASE), minus_ka)) == signature[:32]
