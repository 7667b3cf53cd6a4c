"""Transport checks shared by every client: certificate verification and plain-HTTP warnings.

Certificates are verified unless ``AVA_TLS_VERIFY=0`` turns that off by name; when it is off,
one warning says so per process. An ``http://`` endpoint that is not loopback (127.0.0.0/8,
``::1``, ``localhost``) gives one warning per endpoint per process, since what it carries
(signed requests, metrics, data) crosses the network in the clear.

Example:
    >>> is_loopback("127.0.0.2"), is_loopback("localhost"), is_loopback("10.0.0.1")
    (True, True, False)
    >>> warn_plain_http("http://127.0.0.1:8000", "the platform API")  # loopback: no warning
    False
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_lock = threading.Lock()
_warned_endpoints: set[str] = set()
_warned_tls_off = False


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ``::1`` and ``localhost`` (``*.localhost`` too)."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_http(url: str | None, what: str) -> bool:
    """Warn once per endpoint (scheme, host, port) when ``url`` is ``http://`` to a host that is
    not loopback. Returns True when this call warned."""
    if not url:
        return False
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if parts.scheme.lower() != "http" or is_loopback(host):
        return False
    endpoint = f"http://{host}:{port or 80}"
    with _lock:
        if endpoint in _warned_endpoints:
            return False
        _warned_endpoints.add(endpoint)
    log.warning("%s is plain HTTP (%s): what it carries is not encrypted; use https:// where the server offers it",
                endpoint, what)
    return True


def tls_verify(env: Any = None) -> bool:
    """Whether to verify certificates: ``env.tls_verify`` (an ``ava.env.Env``; the process's
    environment by default). When off, one warning per process says so."""
    global _warned_tls_off
    if env is None:
        from ava.env import Env  # ava.env sits above ava.utils: import on use

        env = Env()
    verify = bool(env.tls_verify)
    if not verify:
        with _lock:
            first, _warned_tls_off = not _warned_tls_off, True
        if first:
            log.warning("AVA_TLS_VERIFY=0: TLS certificates are NOT verified for any endpoint; anyone on the path "
                        "can read and change the traffic. Unset it once the servers have valid certificates")
    return verify


def ssl_context(verify: bool) -> ssl.SSLContext:
    """A client context: the system's trust store and host-name checks, or neither when not ``verify``."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reset_for_tests() -> None:
    """Forget which warnings were given (tests check that each is given once)."""
    global _warned_tls_off
    with _lock:
        _warned_endpoints.clear()
        _warned_tls_off = False
