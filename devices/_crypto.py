"""What needs ``cryptography`` (the provider install): Ed25519 keys and signing.
Imported only through :mod:`edgetrain.devices.keys`, so that its absence is one
clear error naming the extra."""
from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keygen() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, key.public_key().public_bytes(*_RAW)


def signer(pem: bytes, where: str):
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{where} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where} is a {type(key).__name__}; expected an Ed25519 key (`edgetrain keygen`)")
    return key.sign, key.public_key().public_bytes(*_RAW)
