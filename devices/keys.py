"""The provider's signing key (Ed25519, with ``cryptography``): make one, read one, sign.

The private key is a PKCS#8 PEM file readable by its owner alone; the public
key goes beside it as ``KEY.pub``, one line ``edgetrain-ed25519 BASE64``. Devices
pin the public key of the first bundle they install (trust on first use).
"""
from __future__ import annotations

import base64
import os

PUB_PREFIX = "edgetrain-ed25519"


def _crypto():
    from ..cli_io import PROVIDER_EXTRA, host
    return host("devices._crypto", "signing bundles", PROVIDER_EXTRA)


def default_path() -> str:
    """``$EDGETRAIN_KEY``, else ``~/.config/edgetrain/provider.key``."""
    return os.environ.get("EDGETRAIN_KEY") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "edgetrain", "provider.key")


def public_line(public_key: bytes) -> str:
    return f"{PUB_PREFIX} {base64.b64encode(public_key).decode()}\n"


def keygen() -> tuple[bytes, bytes]:
    """``(private key PEM, raw 32-byte public key)`` of a fresh key."""
    return _crypto().keygen()


def load(path: str, flag: str = "--key"):
    """``(sign, public key)`` of the PEM key at ``path``; ValueError naming ``flag``
    for a file that is missing, unreadable or not an Ed25519 private key."""
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path!r} does not exist; make one with `edgetrain keygen -o {path}`")
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be read ({e.strerror})") from None
    return _crypto().signer(pem, f"{flag} {path!r}")
