"""A self-signed certificate for 127.0.0.1, for HTTPS test servers (needs the ``openssl`` command).

Example:
    >>> cert, ctx = self_signed(tmp_path)            # doctest: +SKIP
    >>> FileServer(root, ssl_context=ctx)            # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """Write ``cert.pem``/``key.pem`` for 127.0.0.1 into ``directory``; return the certificate and
    a server context holding it. Skips the test when ``openssl`` is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context
