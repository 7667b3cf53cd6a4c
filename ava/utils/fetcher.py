"""Downloads over HTTP on tornado: the old SDK's ``Fetcher`` (same signature) and ``QMacAuthFetcher``.

- ``fetch(url, ...)``: a small request whose body is held in memory (at most
  ``max_buffer_size`` bytes); returns ``(res, err)`` like the old SDK.
- ``fetch_huge_file(url, filepath, progress_callback=None)``: streams to a temporary file
  beside ``filepath`` and renames it into place, so ``filepath`` is either the old file (or
  nothing) or the whole new one. A dropped connection is resumed with ``Range`` (and
  ``If-Range``, so a changed object restarts from zero instead of being spliced); failures are
  retried with exponential backoff and jitter. Memory stays flat whatever the size.
- ``fetch_many(urls, dest_dir, concurrency=16)``: many files at once, for datasets.

What is verified: the byte count against ``Content-Length`` (or the total of
``Content-Range``) whenever the server announces one, and the content's hash when the
``ETag`` names it: a 32-digit hex ETag is taken as the MD5 of the body (S3, MinIO, our
file server, most single-part uploads), and a 28-character ETag of Qiniu's form (URL-safe
base64 of 0x16/0x96 + SHA-1) as Qiniu's etag (the algorithm of ``qiniu.utils.etag``,
computed while streaming). Weak ETags and other forms (S3 multipart ``md5-N``, nginx's
``mtime-size``) are used for ``If-Range`` only. Pass ``verify=False`` to skip the hash.

Certificates of ``https://`` servers are verified unless ``AVA_TLS_VERIFY=0``; the first
request to a plain ``http://`` host that is not loopback logs one warning.

``qiniu://bucket/key`` URLs are turned into signed download URLs by the storage layer
(``ava.storage.qiniu``), with the credentials given to the Fetcher or found by ``ava.env``;
a download that has to resume signs again.

How: small requests go through tornado's ``AsyncHTTPClient``. Downloads speak HTTP/1.1 on
tornado's ``TCPClient``/``IOStream`` themselves, reading the body straight into reused
buffers, because the client's streaming callback costs five times the CPU (a fresh ``bytes``
per 64 KiB, copied three times); a hash named by the ETag is computed on a thread of its own.
Memory per download: one 1 MiB buffer, or up to 36 MiB of hash batches for a big hashed body
(12 MiB in ``fetch_many``). The synchronous Fetcher runs a private event loop per thread.

Example:
    >>> f = Fetcher()
    >>> res, err = f.fetch("http://127.0.0.1:1/nothing-listens-here", req_timeout=2)  # doctest: +SKIP
    >>> f.fetch_huge_file("https://example.com/big.bin", "/tmp/big.bin")  # doctest: +SKIP
    PosixPath('/tmp/big.bin')
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import ssl
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlencode

try:
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
    from tornado.ioloop import IOLoop
    from tornado.tcpclient import TCPClient
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"ava.utils.fetcher needs tornado ({_exc.name} is missing): pip install 'ava-sdk[platform]'"
    ) from _exc

from ava.errors import AvaError, ObjectNotFoundError, StorageError, UsageError
from ava.log.redact import register_secret
from ava.utils._fetch_http import _Fatal, _http_get
from ava.utils._fetch_names import check_relative_name  # noqa: F401 - re-exported: the old import path
from ava.utils._fetch_names import names_for_urls, redact, target_under
from ava.utils._fetch_transfer import etag_kind  # noqa: F401 - re-exported: the old import path
from ava.utils._fetch_transfer import (
    _RETRY_STATUS,
    ProgressCallback,
    _discard_opened,
    _retryable,
    _settle,
    _Transfer,
    _Verifier,
)
from ava.utils.fileio import os_reason
from ava.utils.tls import ssl_context as _make_ssl_context
from ava.utils.tls import tls_verify, warn_plain_http

log = logging.getLogger(__name__)

_UNSATISFIED_RANGE = re.compile(r"^bytes\s+\*/(\d+)$")


class FetchError(StorageError):
    """A download failed (after its retries, when the failure could pass)."""


class FetchIntegrityError(FetchError):
    """What arrived does not match the size or hash the server announced."""


def _unwind(loop: IOLoop) -> None:
    """Cancel what still runs on ``loop`` (after Ctrl-C, say) so that temp files are removed."""
    aio = loop.asyncio_loop  # type: ignore[attr-defined]
    for _ in range(5):  # a task may finish instead, and run a callback that raises again
        pending = [t for t in asyncio.all_tasks(aio) if not t.done()]
        if not pending or aio.is_running():
            return
        for task in pending:
            task.cancel()
        try:
            aio.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except BaseException:  # noqa: BLE001 - the first interruption is the one to report
            continue


#: The first part of the old platform's ``qiniu://[uid@]zone/bucket/key`` URLs: a Qiniu region id.
_ZONE = re.compile(r"(?:[^@/]+@)?(?:z\d|na\d|as\d"
                   r"|(?:cn|ap|us|eu)-(?:east|west|north|south|southeast|northeast|southwest|northwest)-\d)")


def without_zone(url: str) -> str:
    """``qiniu://bucket/key`` for the old platform's ``qiniu://[uid@]zone/bucket/key`` (the zone
    is ``z0``, ``z1``, ``z2``, ``na0``, ``as0``, ``cn-east-2``...; the domain comes from the
    bucket); any other URL as it is.

    Example:
        >>> without_zone("qiniu://1234@z0/models/a/b.bin"), without_zone("qiniu://models/a/b.bin")
        ('qiniu://models/a/b.bin', 'qiniu://models/a/b.bin')
    """
    rest = url[len("qiniu://"):] if url.lower().startswith("qiniu://") else None
    if rest is None:
        return url
    first, _, path = rest.partition("/")
    if _ZONE.fullmatch(first) and "/" in path.strip("/"):
        return "qiniu://" + path
    return url


class Fetcher:
    """HTTP requests and downloads on tornado, synchronous or asynchronous.

    Args:
        _async: False (default): every call blocks and returns its result. True: calls made
            inside a running event loop return awaitables (``fetch`` also calls ``callback``);
            calls made outside one are queued on the Fetcher's own loop, which
            :meth:`start_tornado_ioloop` runs until :meth:`stop_tornado_ioloop`.
        access_key, secret_key: Qiniu keys for ``qiniu://`` URLs and ``from_kodo=True``
            (default: ``AVA_ACCESS_KEY``/``AVA_SECRET_KEY``, else ``config/user``).
        req_timeout: seconds a small request may take (default 600); for downloads, how long a
            connection may stay silent (default 60) before it is dropped and resumed with Range.
        download_pool: requests in flight at once per Fetcher (default 75).
        max_buffer_size: the largest body :meth:`fetch` holds in memory (default 100 MiB).
            Downloads never hold a body in memory, whatever this says.
        backoff: first retry delay in seconds; doubles per failure, with jitter, up to
            ``max_backoff``.
        max_retry: attempts after the first for downloads (a resumed attempt that got further
            than any before starts the count again).
        env: an ``ava.env.Env`` or a mapping of variables, for the credentials (default: os.environ).

    Example:
        >>> Fetcher(req_timeout=30).DEFAULT_MAX_RETRY
        5
    """

    DEFAULT_CONNECT_TIMEOUT = 20
    DEFAULT_REQUEST_TIMEOUT = 600
    DEFAULT_IDLE_TIMEOUT = 60
    DEFAULT_MAX_BUFFER_SIZE = 100 << 20
    DEFAULT_MAX_RETRY = 5
    DOWNLOAD_POOL_SIZE = 75
    SIGNED_URL_SECONDS = 3600  # a download that outlives it is re-signed on its next attempt

    def __init__(self, _async: bool = False, access_key: str | None = None, secret_key: str | None = None,
                 req_timeout: float | None = None, download_pool: int | None = None,
                 max_buffer_size: int | None = None, *, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_retry: int | None = None, env: Any = None) -> None:
        self._async = bool(_async)
        self.access_key, self.secret_key = access_key, secret_key
        register_secret(secret_key)
        self.req_timeout = float(req_timeout) if req_timeout else float(self.DEFAULT_REQUEST_TIMEOUT)
        self.idle_timeout = float(req_timeout) if req_timeout else float(self.DEFAULT_IDLE_TIMEOUT)
        self.download_pool = int(download_pool) if download_pool else self.DOWNLOAD_POOL_SIZE
        self.max_buffer_size = int(max_buffer_size) if max_buffer_size else self.DEFAULT_MAX_BUFFER_SIZE
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_retry = self.DEFAULT_MAX_RETRY if max_retry is None else int(max_retry)
        self._env = env
        self._lock = threading.Lock()
        self._local = threading.local()
        self._loops: list[IOLoop] = []
        self._clients: dict[int, tuple[IOLoop, AsyncHTTPClient]] = {}
        self._tcp_client: TCPClient | None = None
        self._ssl: ssl.SSLContext | None = None
        self._verify: bool | None = None
        self._async_loop: IOLoop | None = None
        self._files: ThreadPoolExecutor | None = None
        self._closed = False

    # --- loops and clients --------------------------------------------------------------
    def _client_here(self) -> AsyncHTTPClient:
        """The small-request client bound to the running loop."""
        loop = IOLoop.current()
        with self._lock:
            entry = self._clients.get(id(loop))
            if entry is None or entry[0] is not loop:
                client = AsyncHTTPClient(force_instance=True, max_clients=self.download_pool,
                                         max_buffer_size=self.max_buffer_size, max_body_size=self.max_buffer_size)
                entry = self._clients[id(loop)] = (loop, client)
        return entry[1]

    def _tcp(self) -> TCPClient:
        with self._lock:
            if self._tcp_client is None:
                self._tcp_client = TCPClient()
            return self._tcp_client

    def _env_obj(self) -> Any:
        from ava.env import Env

        return self._env if isinstance(self._env, Env) else Env(self._env)

    def _tls_verify(self) -> bool:
        """Certificates are checked unless ``AVA_TLS_VERIFY=0`` (read once per Fetcher)."""
        if self._verify is None:
            self._verify = tls_verify(self._env_obj())
        return self._verify

    def _ssl_context(self) -> ssl.SSLContext:
        verify = self._tls_verify()
        with self._lock:
            if self._ssl is None:
                self._ssl = _make_ssl_context(verify)
            return self._ssl

    def _fs_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._files is None:
                self._files = ThreadPoolExecutor(4, thread_name_prefix="ava-fetch-files")
            return self._files

    def _forget_clients(self, loop: IOLoop) -> None:
        with self._lock:
            entry = self._clients.pop(id(loop), None)
        if entry is not None:
            entry[1].close()

    def _run(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``make()`` to completion on this thread's private loop."""
        if self._closed:
            raise UsageError("this Fetcher was closed; make a new one")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = getattr(self._local, "loop", None)
            if loop is None:
                loop = self._local.loop = IOLoop(make_current=False)
                with self._lock:
                    self._loops.append(loop)
            try:
                return loop.run_sync(make)
            except BaseException as exc:
                if not isinstance(exc, Exception) or not isinstance(exc, AvaError):
                    # Interrupted (or a bug): unwind what still runs, then start afresh, as
                    # tornado's run_sync leaves a stopped loop behind it.
                    try:
                        _unwind(loop)
                    finally:
                        self._local.loop = None
                        with self._lock:
                            self._loops.remove(loop)
                        self._forget_clients(loop)
                        loop.close()
                raise
        # A loop already runs on this thread (a notebook, a coroutine): ours cannot run here.
        with ThreadPoolExecutor(1, thread_name_prefix="ava-fetcher") as pool:
            return pool.submit(self._run_once, make).result()

    def _run_once(self, make: Callable[[], Awaitable[Any]]) -> Any:
        loop = IOLoop(make_current=False)
        try:
            return loop.run_sync(make)
        except BaseException:
            _unwind(loop)
            raise
        finally:
            self._forget_clients(loop)
            loop.close()

    def _dispatch(self, make: Callable[[], Awaitable[Any]], done: Callable[[Any, BaseException | None], None] | None = None) -> Any:
        """Sync: run and return. Async: a Task in a running loop, else queue on our loop."""
        if not self._async:
            return self._run(make)

        async def wrapped() -> Any:
            try:
                result = await make()
            except Exception as exc:
                if done is None:
                    raise
                done(None, exc)
                return None
            if done is not None:
                done(result, None)
            return result

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._ioloop().add_callback(wrapped)
            return None
        return asyncio.ensure_future(wrapped())

    def _ioloop(self) -> IOLoop:
        with self._lock:
            if self._async_loop is None:
                self._async_loop = IOLoop(make_current=False)
            return self._async_loop

    def start_tornado_ioloop(self) -> None:
        """Run the asynchronous Fetcher's loop on this thread until :meth:`stop_tornado_ioloop`."""
        self._ioloop().start()

    def stop_tornado_ioloop(self) -> None:
        """Stop the loop :meth:`start_tornado_ioloop` runs (safe from any thread or callback)."""
        loop = self._ioloop()
        loop.add_callback(loop.stop)

    def close(self) -> None:
        """Release connections and loops; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            entries, self._clients = list(self._clients.values()), {}
            loops, self._loops = self._loops, []
        for _, client in entries:
            client.close()
        if self._tcp_client is not None:
            self._tcp_client.close()
        if self._files is not None:
            self._files.shutdown(wait=False)
        for loop in loops + ([self._async_loop] if self._async_loop else []):
            try:
                loop.close()
            except RuntimeError:  # still running on its thread
                pass

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- URLs ---------------------------------------------------------------------------
    def _credentials(self) -> tuple[str | None, str | None]:
        if self.access_key and self.secret_key:
            return self.access_key, self.secret_key
        from ava.env import DEFAULT_WORKSPACE

        env = self._env_obj()
        # The workspace's config/ without creating a workspace (Workspace.discover would).
        candidates = [env.workspace_override] if env.workspace_override else [
            DEFAULT_WORKSPACE, os.path.join(os.getcwd(), "workspace")]
        root = next((c for c in candidates if os.path.isdir(c)), None)
        ak, sk = env.credentials(Path(root) / "config" if root else None)
        register_secret(sk)
        return self.access_key or ak, self.secret_key or sk

    def resolve_url(self, url: str, from_kodo: bool = False) -> str:
        """The HTTP URL to request for ``url``: ``qiniu://`` signed by the storage layer;
        ``http(s)://`` as is, or signed as a Qiniu private download URL when ``from_kodo``."""
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme in ("http", "https"):
            warn_plain_http(url, "a download")
            return self._sign_private(url) if from_kodo else url
        if scheme == "qiniu":
            return self._qiniu_download_url(url)
        raise UsageError(f"cannot fetch {redact(url)!r}: the Fetcher takes http://, https:// and qiniu:// URLs")

    def _sign_private(self, url: str) -> str:
        ak, sk = self._credentials()
        if not (ak and sk):
            raise UsageError("from_kodo=True signs the URL with Qiniu keys: set AVA_ACCESS_KEY and "
                             "AVA_SECRET_KEY (or config/user keys 'key' and 'secret')")
        try:
            import qiniu
        except ImportError:
            raise UsageError("signing Qiniu URLs needs qiniu: pip install 'ava-sdk[qiniu]'") from None
        return qiniu.Auth(ak, sk).private_download_url(url, expires=max(3600, int(self.req_timeout) * 2))

    def _qiniu_download_url(self, url: str) -> str:
        # ava.storage.qiniu knows the bucket's domain and the keys; it imports the qiniu SDK
        # only when it signs, so a missing SDK surfaces here as an install hint.
        from ava.storage.registry import BACKENDS, get_storage

        url = without_zone(url)
        options: dict[str, Any] = {}
        if self.access_key and self.secret_key:
            options = {"access_key": self.access_key, "secret_key": self.secret_key}
        if "qiniu" in BACKENDS:
            store: Any = get_storage(url, **options)
        else:
            try:
                from ava.storage.qiniu import QiniuStorage
            except ModuleNotFoundError as exc:
                if exc.name == "ava.storage.qiniu":
                    raise UsageError("qiniu:// URLs need the qiniu storage backend (ava.storage.qiniu), which this "
                                     "installation lacks; fetch an http(s):// URL instead") from None
                raise UsageError(f"qiniu:// URLs need {exc.name}: pip install 'ava-sdk[qiniu]'") from None
            store = QiniuStorage(**options)
        sign = getattr(store, "signed_url", None)
        if not callable(sign):
            raise UsageError(f"{type(store).__name__} cannot make download URLs for {url}")
        try:
            return str(sign(url, expires=self.SIGNED_URL_SECONDS))
        except ImportError as exc:
            raise UsageError(f"qiniu:// URLs need {exc.name}: pip install 'ava-sdk[qiniu]'") from None

    def parse_qiniu_url(self, path: str) -> str:
        """``qiniu://bucket/key``, the old ``qiniu://zone/bucket/key`` (see :func:`without_zone`)
        or the old ``/bucket/key`` path -> a signed HTTP URL."""
        if "://" not in path:
            bucket, _, key = path.lstrip("/").partition("/")
            if not bucket or not key:
                raise UsageError(f"{path!r} is not /bucket/key")
            path = f"qiniu://{bucket}/{key}"
        return self._qiniu_download_url(path)

    # --- small requests -----------------------------------------------------------------
    def fetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None, data: Any = None,
              from_kodo: bool = False, retry: int = 0, max_retry: int = -1, callback: Callable[..., Any] | None = None,
              cb_args: Sequence[Any] | None = None, cb_kargs: dict[str, Any] | None = None,
              *, req_timeout: float | None = None) -> Any:
        """One request whose body is kept in memory (at most ``max_buffer_size`` bytes).

        Args:
            url: ``http(s)://`` or ``qiniu://bucket/key``.
            method, headers, data: the request; ``data`` may be bytes, str or a dict (form-encoded).
            from_kodo: sign an ``http(s)`` URL as a Qiniu private download URL.
            retry: retries already spent; max_retry: <0 none, 0 the default (5), >0 that many.
                5xx, 408, 429 and connection failures are retried with backoff and jitter.
            callback: asynchronous Fetcher only: called as ``callback(res, err, *cb_args, **cb_kargs)``.

        Returns:
            ``(res, err)``: the ``tornado.httpclient.HTTPResponse`` and None, or None and the
            error (a ``tornado.httpclient.HTTPClientError`` carries ``.code`` and ``.response``).
            Asynchronous: an awaitable of that pair inside a running loop, else None.
        """
        body = data
        if isinstance(data, dict):
            body = urlencode(data)
            headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if body is None and method.upper() in ("POST", "PUT", "PATCH"):
            body = b""
        limit = -1 if max_retry < 0 else (max_retry or self.DEFAULT_MAX_RETRY)
        timeout = float(req_timeout or self.req_timeout)
        validate = self._tls_verify()

        async def run() -> tuple[HTTPResponse | None, BaseException | None]:
            try:
                target = self.resolve_url(url, from_kodo)
            except AvaError as exc:  # a URL it cannot fetch is a failure like any other: (None, err)
                return None, exc
            small = self._client_here()
            attempt = retry
            while True:
                request = HTTPRequest(target, method=method.upper(), headers=headers, body=body,
                                      connect_timeout=min(timeout, self.DEFAULT_CONNECT_TIMEOUT),
                                      request_timeout=timeout, allow_nonstandard_methods=True,
                                      validate_cert=validate)
                try:
                    return await small.fetch(request), None
                except Exception as exc:  # the old API hands errors back instead of raising
                    err: BaseException = exc
                if limit < 0 or attempt >= limit or not _retryable(err):
                    return None, err
                attempt += 1
                log.info("retrying %s %s (%d/%d): %s", method, redact(url), attempt, limit, err)
                await asyncio.sleep(self._delay(attempt))

        def done(result: Any, exc: BaseException | None) -> None:
            res, err = result if exc is None else (None, exc)
            if callback is not None:
                callback(res, err, *(cb_args or ()), **(cb_kargs or {}))

        return self._dispatch(run, done if self._async else None)

    def _delay(self, failures: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)

    # --- downloads ----------------------------------------------------------------------
    def fetch_huge_file(self, url: str, filepath: str | os.PathLike[str],
                        progress_callback: ProgressCallback | None = None, *, headers: dict[str, str] | None = None,
                        from_kodo: bool = False, verify: bool = True, fsync: bool = False) -> Any:
        """Download ``url`` to ``filepath`` without holding it in memory.

        The body goes to a temporary file beside ``filepath`` that is renamed into place once
        complete and verified; on any failure it is removed and ``filepath`` is untouched. A
        dropped or timed-out connection is resumed with ``Range``.

        Args:
            progress_callback: called as ``progress_callback(bytes_so_far, total_or_None)``
                after each chunk (``bytes_so_far`` goes back to 0 if the server restarts the body).
            headers: extra request headers.
            verify: check the hash the ETag names (the size is always checked).
            fsync: also flush the file to disk before the rename (survives a power cut).

        Returns:
            The target path (asynchronous Fetcher in a running loop: an awaitable of it).

        Raises:
            ObjectNotFoundError: HTTP 404.
            FetchIntegrityError: the size or hash never matched.
            FetchError: the server kept failing, or refused (4xx).
            StorageError: the file could not be written (a full disk says so).
        """
        target = Path(os.fspath(filepath))
        resolved = self.resolve_url(url, from_kodo)

        async def run() -> Path:
            await self._download(resolved, target, progress_callback, headers, verify, fsync, url, from_kodo)
            return target

        return self._dispatch(run)

    def fetch_many(self, urls: Sequence[str], dest_dir: str | os.PathLike[str], concurrency: int = 16, *,
                   names: Sequence[str] | None = None, verify: bool = True, fsync: bool = False,
                   progress_callback: Callable[[int, int, int], None] | None = None) -> Any:
        """Download many files at once into ``dest_dir``.

        Names come from ``names`` or else from the URLs (:func:`names_for_urls`); every one is
        checked before anything is downloaded, and one that could leave ``dest_dir`` (``..``,
        an absolute path, an empty name, a symlink out) is refused with :class:`UsageError`.
        Each file is fetched as by :meth:`fetch_huge_file`.

        Args:
            progress_callback: called as ``progress_callback(files_done, files_total, bytes_done)``.

        Returns:
            The paths, in the order of ``urls``.

        Raises:
            FetchError: after every download ended, when some failed (``.failures`` holds
                ``(url, error)`` pairs); the files that did arrive stay.
        """
        if concurrency < 1:
            raise UsageError(f"concurrency must be 1 or more, not {concurrency}")
        dest = Path(os.fspath(dest_dir))
        urls = list(urls)
        rel = list(names) if names is not None else names_for_urls(urls)
        if len(rel) != len(urls):
            raise UsageError(f"{len(urls)} URLs but {len(rel)} names")
        targets = [target_under(dest, name) for name in rel]
        seen: dict[Path, str] = {}
        for url, target in zip(urls, targets):
            if target in seen:
                raise UsageError(f"{redact(seen[target])} and {redact(url)} would both be saved as {target}")
            seen[target] = url
        resolved = [self.resolve_url(u) for u in urls]

        async def run() -> list[Path]:
            sem = asyncio.Semaphore(concurrency)
            state = {"files": 0, "bytes": 0}
            failures: list[tuple[str, BaseException]] = []

            async def one(i: int) -> None:
                async with sem:
                    try:
                        # A shallow hash queue: sixteen deep ones could hold half a gigabyte.
                        n = await self._download(resolved[i], targets[i], None, None, verify, fsync, urls[i],
                                                 False, depth=2)
                    except Exception as exc:  # every download ends before the failures are told
                        failures.append((urls[i], exc))
                        return
                state["files"] += 1
                state["bytes"] += n
                if progress_callback:
                    progress_callback(state["files"], len(urls), state["bytes"])

            await asyncio.gather(*(one(i) for i in range(len(urls))))
            if failures:
                first = "; ".join(f"{redact(u)}: {e}" for u, e in failures[:3])
                err = FetchError(f"{len(failures)} of {len(urls)} downloads failed: {first}")
                err.failures = failures  # type: ignore[attr-defined]
                raise err
            return targets

        return self._dispatch(run)

    async def _download(self, url: str, target: Path, progress: ProgressCallback | None,
                        headers: dict[str, str] | None, verify: bool, fsync: bool, shown: str,
                        from_kodo: bool, depth: int = _Verifier.DEPTH) -> int:
        """Stream ``url`` into ``target`` (temp file, retries, resume, checks); returns the size."""
        # Creating and renaming files can take milliseconds (ext4 in a VM, a network volume):
        # a thread does it, so the loop keeps the other downloads moving meanwhile.
        opening = self._fs_pool().submit(self._open_transfer, target, progress, verify, depth)
        try:
            tr = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:  # the temp file may appear all the same: remove it
            _settle(opening, _discard_opened)
            raise
        committing: Future[None] | None = None
        try:
            failures = 0
            while True:
                err = await self._attempt(url, tr, headers, shown)
                if err is None:
                    break
                if tr.offset > tr.high:
                    tr.high, failures = tr.offset, 1
                else:
                    failures += 1
                if failures > self.max_retry:
                    raise type(err)(f"giving up on {redact(shown)} after {failures} failed attempts in a row: "
                                    f"{err}") from None
                delay = self._delay(failures)
                log.info("fetch %s: %s; resuming at byte %d in %.2f s", redact(shown), err, tr.offset, delay)
                await asyncio.sleep(delay)
                if from_kodo or not shown.startswith(("http://", "https://")):
                    url = self.resolve_url(shown, from_kodo)  # a fresh signature: the old one may expire
            committing = self._fs_pool().submit(tr.commit, fsync)
            try:
                await asyncio.wrap_future(committing)
            except OSError:
                raise tr.disk_error(shown) from None
            return tr.offset
        except BaseException:
            if committing is not None:
                # Cancelled while the rename runs: a whole file may stay; a temp file may not.
                _settle(committing, lambda f: (f.cancelled() or f.exception() is not None) and tr.discard())
            else:
                tr.discard()
            raise

    def _open_transfer(self, target: Path, progress: ProgressCallback | None, verify: bool,
                       depth: int) -> _Transfer:
        if target.is_dir():
            raise UsageError(f"{target} is a directory; give the file path to write")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return _Transfer(target, progress, verify, depth)
        except OSError as exc:
            raise StorageError(f"cannot write into {target.parent}: {os_reason(exc)}") from None

    async def _attempt(self, url: str, tr: _Transfer, headers: dict[str, str] | None,
                       shown: str) -> FetchError | None:
        """One request; None when the file is complete and verified, else a retryable error."""
        req_headers = dict(headers or {})
        if tr.offset:
            req_headers["Range"] = f"bytes={tr.offset}-"
            if tr.etag and not tr.etag.startswith("W/"):
                req_headers["If-Range"] = tr.etag
        tr.begin()
        try:
            code, reason, resp_headers = await _http_get(
                self._tcp(), url, req_headers, tr, connect_timeout=min(self.req_timeout, self.DEFAULT_CONNECT_TIMEOUT),
                idle_timeout=self.idle_timeout, ssl_context=self._ssl_context)
        except _Fatal as exc:
            raise FetchError(f"cannot fetch {redact(shown)}: {exc}") from None
        except Exception as exc:
            if tr.write_error is not None:
                raise tr.disk_error(shown) from None
            if not _retryable(exc):
                raise FetchError(f"cannot fetch {redact(shown)}: {exc}") from None
            return FetchError(f"connection failed at byte {tr.offset}: {exc or type(exc).__name__}")
        if tr.bad:
            tr.restart()
            return FetchIntegrityError(tr.bad)
        if code in (200, 206) and tr.writing:
            if tr.total is not None and tr.offset != tr.total:
                return FetchIntegrityError(f"the body ended at byte {tr.offset} of the {tr.total} announced")
            mismatch = tr.verifier.mismatch()
            if mismatch:
                tr.restart()
                return FetchIntegrityError(f"the content does not match its ETag: {mismatch}")
            return None
        if code == 416 and tr.offset:
            m = _UNSATISFIED_RANGE.match(resp_headers.get("Content-Range", "").strip())
            actual = m.group(1) if m else "fewer"
            raise FetchIntegrityError(f"{redact(shown)}: the server announced {tr.total} bytes but holds {actual}; "
                                      "its Content-Length is wrong")
        if code == 404:
            raise ObjectNotFoundError(f"no object at {redact(shown)} (HTTP 404)")
        if code in _RETRY_STATUS:
            return FetchError(f"HTTP {code} {reason}".strip())
        text = bytes(tr.error_body).decode("utf-8", "replace").strip().splitlines()
        raise FetchError(f"cannot fetch {redact(shown)}: HTTP {code} {reason}".strip()
                         + (f": {text[0][:200]}" if text else ""))


class QMacAuthFetcher:
    """Requests signed with Qiniu's MAC (``Authorization: Qiniu <ak>:<sign>``), e.g. to Qiniu's APIs.

    Args:
        access_key, secret_key: the account's keys.

    Example:
        >>> QMacAuthFetcher("ak", "sk").DEFAULT_MAX_RETRY
        5
    """

    DEFAULT_MAX_RETRY = 5

    def __init__(self, access_key: str, secret_key: str) -> None:
        try:
            from qiniu.auth import QiniuMacAuth
        except ImportError:
            raise UsageError("QMacAuthFetcher needs qiniu: pip install 'ava-sdk[qiniu]'") from None
        if not (access_key and secret_key):
            raise UsageError("QMacAuthFetcher needs an access key and a secret key")
        register_secret(secret_key)
        self._auth = QiniuMacAuth(access_key, secret_key)
        self._fetcher = Fetcher()

    def sign(self, url: str, method: str = "GET", data: Any = None, headers: dict[str, str] | None = None) -> dict[str, str]:
        """The request headers with ``Authorization`` (and ``X-Qiniu-Date``) added."""
        import datetime as _dt

        out = dict(headers or {})
        out.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if self._auth.should_sign_with_timestamp:
            out["X-Qiniu-Date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        body = urlencode(data) if isinstance(data, dict) else data
        token = self._auth.token_of_request(method.upper(), out.get("Host"), url, self._auth.qiniu_headers(out),
                                            out.get("Content-Type"), body)
        out["Authorization"] = f"Qiniu {token}"
        return out

    def fetch(self, url: str, method: str = "GET", data: Any = None, headers: dict[str, str] | None = None,
              retry: int = 0, max_retry: int = -1) -> tuple[HTTPResponse | None, BaseException | None]:
        """Returns ``(res, err)`` as :meth:`Fetcher.fetch` does."""
        body = urlencode(data) if isinstance(data, dict) else data
        signed = self.sign(url, method, body, headers)
        if max_retry == 0:
            max_retry = self.DEFAULT_MAX_RETRY
        return self._fetcher.fetch(url, method=method, headers=signed, data=body, retry=retry, max_retry=max_retry)

    def close(self) -> None:
        self._fetcher.close()
