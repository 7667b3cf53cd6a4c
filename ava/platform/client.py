"""The platform API client: training instances and models, signed with Qiniu MAC auth.

Every call has connect and read timeouts, a few retries with backoff on connection errors,
5xx and 429, and an overall deadline, so a dead API server costs a bounded time and never
hangs a training. Needs ``requests`` (the ``[platform]`` extra); signing needs ``qiniu``.

Example:
    >>> client = PlatformClient("http://127.0.0.1:9", deadline=0.5, retries=0)
    >>> try:
    ...     client.get_instance("job", "run-1")
    ... except PlatformError as exc:
    ...     print("unreachable" in str(exc))
    True
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any
from urllib.parse import quote

from ava.env import Env
from ava.errors import PlatformError, UsageError
from ava.log.redact import register_secret
from ava.utils.tls import tls_verify, warn_plain_http

log = logging.getLogger(__name__)


class PlatformClient:
    """Create, read and update training instances and register models.

    Args:
        base_url: the API host (``AVA_API_HOST`` or ``config/worker`` ``atnet_apiserver_host``).
        access_key: Qiniu access key; with ``secret_key``, every request is MAC-signed.
        secret_key: Qiniu secret key (never logged).
        connect_timeout: seconds to connect.
        read_timeout: seconds to wait for an answer.
        retries: extra attempts after a retryable failure.
        deadline: the most one call may take, retries included.
        verify: check TLS certificates; by default unless ``AVA_TLS_VERIFY=0``.
    """

    def __init__(self, base_url: str, access_key: str | None = None, secret_key: str | None = None, *,
                 connect_timeout: float = 3.0, read_timeout: float = 10.0, retries: int = 2,
                 deadline: float = 15.0, verify: bool | None = None) -> None:
        try:
            import requests
        except ImportError:
            raise UsageError("the platform API client needs requests: pip install 'ava-sdk[platform]'") from None
        self._requests = requests
        self.base_url = base_url.rstrip("/")
        verify_with: bool | str = tls_verify() if verify is None else verify
        if verify_with is True:
            # The session does not read the environment (trust_env off: no proxies), so the CA
            # bundle a private platform's certificate needs is given to it here.
            verify_with = Env().ca_bundle or True
        self._session = self._new_session(verify_with)
        warn_plain_http(self.base_url, "the platform API")
        self._timeout = (connect_timeout, read_timeout)
        self._retries = retries
        self._deadline = deadline
        self._auth = None
        if access_key and secret_key:
            register_secret(secret_key)
            try:
                from qiniu.auth import QiniuMacAuth, QiniuMacRequestsAuth
            except ImportError:
                raise UsageError("signing platform requests needs qiniu: pip install 'ava-sdk[qiniu]'") from None
            self._auth = QiniuMacRequestsAuth(QiniuMacAuth(access_key, secret_key))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              deadline: float | None = None) -> dict[str, Any] | None:
        """One API call; None for 404; PlatformError for anything else that is not 2xx.
        ``deadline`` (seconds) shortens the client's own for this call."""
        url = self.base_url + path
        end = time.monotonic() + (self._deadline if deadline is None else min(self._deadline, max(0.5, deadline)))
        attempt = 0
        while True:
            remaining = end - time.monotonic()
            timeout = (min(self._timeout[0], max(remaining, 0.1)), min(self._timeout[1], max(remaining, 0.1)))
            try:
                resp = self._request_within(method, url, body, timeout, max(remaining, 0.1))
            except self._requests.RequestException as exc:
                why = f"{self.base_url} unreachable ({type(exc).__name__})"
                retry_after = None
            else:
                if resp.status_code == 404:
                    return None
                if 200 <= resp.status_code < 300:
                    try:
                        doc = resp.json() if resp.content else {}
                    except ValueError:
                        raise PlatformError(f"{method} {path}: the server answered something that is not JSON") from None
                    if not isinstance(doc, dict):
                        raise PlatformError(f"{method} {path}: the server answered JSON that is not an object "
                                            f"({type(doc).__name__})")
                    return doc
                why = f"{method} {path}: HTTP {resp.status_code} {resp.reason}"
                if resp.status_code < 500 and resp.status_code not in (408, 429):
                    raise PlatformError(why)
                retry_after = resp.headers.get("Retry-After")
            attempt += 1
            delay = random.uniform(0, min(5.0, 0.2 * 2 ** attempt))
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                delay = max(delay, float(retry_after))
            if attempt > self._retries or time.monotonic() + delay >= end:
                raise PlatformError(why)
            time.sleep(delay)

    def _request_within(self, method: str, url: str, body: Any, timeout: tuple[float, float], limit: float) -> Any:
        """One request, its answer read whole, in at most ``limit`` seconds: a server that
        trickles its answer keeps each socket read alive, so the bound is kept from outside."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                resp = self._session.request(method, url, json=body, auth=self._auth, timeout=timeout)
                resp.content  # noqa: B018 - the body is read here, inside the bound
                box["resp"] = resp
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["exc"] = exc

        worker = threading.Thread(target=run, name="ava-platform-call", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():  # left to end on its own timeouts; a new session for the next call
            stuck, self._session = self._session, self._new_session(self._session.verify)
            stuck.close()
            raise self._requests.Timeout(f"no complete answer within {limit:.1f} s")
        if "exc" in box:
            raise box["exc"]
        return box["resp"]

    def _new_session(self, verify: Any) -> Any:
        session = self._requests.Session()
        session.verify = verify
        # Direct, as the metric sink and the old SDK's client: a container's HTTP_PROXY (set
        # for the internet) must not take the platform's calls away from a cluster-internal host.
        session.trust_env = False
        return session

    def create_instance(self, training: str, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/trainings/<training>/instances; returns the created instance (with ``id``)."""
        doc = self._call("POST", f"/v1/trainings/{quote(training, safe='')}/instances", spec)
        if doc is None:
            raise PlatformError(f"POST /v1/trainings/{training}/instances: HTTP 404 (no such training on the platform?)")
        if not doc.get("id"):
            raise PlatformError("the platform created an instance but returned no id")
        return doc

    def get_instance(self, training: str, instance_id: str) -> dict[str, Any] | None:
        return self._call("GET", f"/v1/trainings/{quote(training, safe='')}/instances/{quote(instance_id, safe='')}")

    def update_instance(self, training: str, instance_id: str, spec: dict[str, Any], *,
                        deadline: float | None = None) -> dict[str, Any] | None:
        return self._call("PUT", f"/v1/trainings/{quote(training, safe='')}/instances/{quote(instance_id, safe='')}", spec,
                          deadline)

    def create_model(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        """POST /v1/models: register a model (``name``, ``type``, ``file``, ...)."""
        return self._call("POST", "/v1/models", spec)
