"""``qiniu://bucket/key`` storage through the qiniu SDK (Qiniu Kodo, public cloud or private deployments).

Uploads use ``qiniu.put_file_v2``: a form upload up to 8 MiB, above that a resumable v2 upload in
4 MiB parts whose progress is kept in a resume record outside the bucket, so a process that dies
mid-upload is continued by the next one without resending the parts already stored. Each upload
gets a token whose lifetime covers the file at a pessimistic 512 KiB/s (at least an hour), and the
hash Kodo returns is compared with the file's own (``qiniu.utils.etag``). Downloads go through a
private URL signed with ``Auth.private_download_url``, stream to a temp file beside the target,
resume with ``Range`` after a dropped connection, and are checked against the stored size and hash
before the rename. qiniu is imported on first use, never by ``import ava``.

Environment (read through :class:`ava.env.Env` at each call):

==============================  ====================================================================
``AVA_ACCESS_KEY``,             the keys; else ``"key"``/``"secret"`` in the workspace's
``AVA_SECRET_KEY``              ``config/user``
``AVA_QINIU_UP_HOST``           upload host (``http://up.example.com``); with it set the SDK never
                                queries Qiniu for the bucket's region
``AVA_QINIU_RS_HOST``,          management (stat, delete) and listing hosts; default Qiniu's
``AVA_QINIU_RSF_HOST``          public ones
``AVA_QINIU_IO_HOST``           the io host, for completeness of the region
``AVA_QINIU_DOWNLOAD_DOMAIN``   where objects are downloaded from: ``http://cdn.example.com`` for
                                every bucket, ``{bucket}`` in it standing for the bucket, or
                                ``bucket1=http://a,bucket2=http://b``; unset: asked from Qiniu
``AVA_QINIU_RESUME_DIR``        resume records; default ``$XDG_CACHE_HOME/ava/qiniu-resume``
                                (``~/.cache/ava/qiniu-resume``); directories 0700, records 0600
``AVA_TLS_VERIFY``              ``0`` turns off certificate checks for every Qiniu host
==============================  ====================================================================

The secret key is registered with :func:`ava.log.redact.register_secret`, so no log line or
error message shows it; plain ``http://`` hosts that are not loopback are warned about once.

Example:
    >>> QiniuStorage.split("qiniu://models/run1/epoch-3.params")
    ('models', 'run1/epoch-3.params')
    >>> token_lifetime(13 * 1024 ** 3) > 13 * 1024 ** 3 / (512 * 1024)
    True
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from ava.env import AVA_ACCESS_KEY, AVA_SECRET_KEY, Env
from ava.errors import AvaError, CredentialsError, ObjectNotFoundError, StorageError, UsageError
from ava.log.redact import redact, register_secret
from ava.storage.base import ObjectInfo, Storage, split_bucket_url, split_object_url, upload_source
from ava.utils.fileio import atomic_write_text, fsync_dir, new_file_mode, os_reason
from ava.utils.tls import tls_verify, warn_plain_http

#: imported by the registry before the backend is made (see ava.storage.registry)
REQUIRES = ("qiniu", "requests")

log = logging.getLogger(__name__)

AVA_QINIU_UP_HOST = "AVA_QINIU_UP_HOST"
AVA_QINIU_IO_HOST = "AVA_QINIU_IO_HOST"
AVA_QINIU_RS_HOST = "AVA_QINIU_RS_HOST"
AVA_QINIU_RSF_HOST = "AVA_QINIU_RSF_HOST"
AVA_QINIU_DOWNLOAD_DOMAIN = "AVA_QINIU_DOWNLOAD_DOMAIN"
AVA_QINIU_RESUME_DIR = "AVA_QINIU_RESUME_DIR"

#: Kodo's block size: the etag hashes 4 MiB blocks, and v2 parts of this size keep that etag valid.
BLOCK_SIZE = 4 * 1024 * 1024
#: The slowest link an upload token must still cover.
SLOWEST_RATE = 512 * 1024
_DOWNLOAD_ATTEMPTS = 5
_READ = 256 * 1024  # a dropped connection loses at most the chunk being read


def token_lifetime(size: int) -> int:
    """Seconds an upload token for ``size`` bytes stays valid: an hour plus the size at 512 KiB/s."""
    return 3600 + math.ceil(size / SLOWEST_RATE)


def _redact(text: str) -> str:
    """Strip tokens, keys and signed URL parameters from a message (see :func:`ava.log.redact.redact`)."""
    return redact(text)


_sdk_tls_lock = threading.Lock()
_sdk_verify_off = False


def _sdk_tls(verify: bool) -> None:
    """Turn certificate checks off in the qiniu SDK's shared session (once, when asked by name)."""
    global _sdk_verify_off
    if verify or _sdk_verify_off:
        return
    with _sdk_tls_lock:
        if not _sdk_verify_off:
            from qiniu.http import qn_http_client

            qn_http_client.session.verify = False
            _sdk_verify_off = True


class KodoEtag:
    """Kodo's object hash computed incrementally (the algorithm of ``qiniu.utils.etag``).

    Example:
        >>> h = KodoEtag(); h.update(b"hello"); h.hexdigest()
        'Fqr0xh3cxeii2r7eDztILNmuqUNN'
    """

    def __init__(self) -> None:
        self._blocks: list[bytes] = []
        self._current = hashlib.sha1(usedforsecurity=False)
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view.nbytes:
            take = min(view.nbytes, BLOCK_SIZE - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_SIZE:
                self._blocks.append(self._current.digest())
                self._current = hashlib.sha1(usedforsecurity=False)
                self._filled = 0

    def hexdigest(self) -> str:
        blocks = list(self._blocks)
        if self._filled or not blocks:
            blocks.append(self._current.digest())
        if len(blocks) == 1:
            raw = b"\x16" + blocks[0]
        else:
            raw = b"\x96" + hashlib.sha1(b"".join(blocks), usedforsecurity=False).digest()
        return base64.urlsafe_b64encode(raw).decode()


def _standard_etag(value: str | None) -> bool:
    """True for hashes made by the 4 MiB-block algorithm (not, e.g., v2 uploads with other part sizes)."""
    return bool(value) and len(value) == 28 and value[0] in "Fl"  # type: ignore[index]


_recorder_cls: Any = None


def _make_recorder(folder: Path) -> Any:
    """qiniu's ``UploadProgressRecorder`` writing each record atomically (a kill keeps the old one)."""
    global _recorder_cls
    if _recorder_cls is None:
        from qiniu.services.storage.upload_progress_recorder import UploadProgressRecorder

        class AtomicUploadProgressRecorder(UploadProgressRecorder):  # type: ignore[misc]
            def set_upload_record(self, file_name: str, key: str, data: Any) -> None:
                path = self._UploadProgressRecorder__get_upload_record_file_path(file_name, key)
                atomic_write_text(path, json.dumps(data), mode=0o600)

            def delete_upload_record(self, file_name: str, key: str) -> None:
                super().delete_upload_record(file_name, key)
                path = Path(self._UploadProgressRecorder__get_upload_record_file_path(file_name, key))
                for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
                    stale.unlink(missing_ok=True)

        _recorder_cls = AtomicUploadProgressRecorder
    return _recorder_cls(str(folder))


class QiniuStorage(Storage):
    """Objects in Qiniu Kodo buckets (``qiniu://bucket/key``); etags are Kodo's hashes.

    Args:
        access_key: the access key; else ``AVA_ACCESS_KEY``, else ``config/user`` ``key``.
        secret_key: the secret key; else ``AVA_SECRET_KEY``, else ``config/user`` ``secret``.
        env: where settings are read (``os.environ`` by default).
        config_dir: the platform ``config/`` directory; by default the workspace's.
        resume_dir: where resume records go; default ``AVA_QINIU_RESUME_DIR`` or the user cache.
        attempts: tries per request for failures worth retrying (5xx, dropped connections).
        retry_delay: the first pause between tries, doubled each time.
        timeout: seconds a download may stay silent.

    Example:
        >>> store = QiniuStorage(access_key="ak", secret_key="sk", env=Env({}))
        >>> store.split("qiniu://bucket/a/b.bin")
        ('bucket', 'a/b.bin')
    """

    scheme = "qiniu"

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None, env: Env | None = None,
                 config_dir: str | Path | None = None, resume_dir: str | Path | None = None, attempts: int = 3,
                 retry_delay: float = 0.2, timeout: float = 60.0) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        register_secret(secret_key)
        self._env = env or Env()
        self._config_dir_option = Path(config_dir) if config_dir else None
        self._resume_dir_option = Path(resume_dir) if resume_dir else None
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.list_page_size = 1000
        self._domains: dict[str, str] = {}
        self._local = threading.local()
        self._verify: bool | None = None

    # --- URLs and settings -------------------------------------------------------------------
    @staticmethod
    def split(url: str) -> tuple[str, str]:
        """``qiniu://bucket/key`` -> ``("bucket", "key")`` (the key may be empty)."""
        return split_bucket_url(url, "qiniu")

    def _split_key(self, url: str) -> tuple[str, str]:
        return split_object_url(url, "qiniu")

    def _config_dir(self) -> Path | None:
        """The workspace's ``config/`` as ``Workspace.discover`` finds it, without creating anything."""
        if self._config_dir_option is not None:
            return self._config_dir_option
        return self._env.workspace_config_dir

    def _auth(self, url: str) -> Any:
        import qiniu

        ak, sk = self._access_key, self._secret_key
        config_dir = None
        if not (ak and sk):
            config_dir = self._config_dir()
            env_ak, env_sk = self._env.credentials(config_dir)
            ak, sk = ak or env_ak, sk or env_sk
        if not (ak and sk):
            where = config_dir / "user" if config_dir else "config/user in the workspace"
            raise CredentialsError(f"no Qiniu credentials for {url}: set {AVA_ACCESS_KEY} and {AVA_SECRET_KEY}, "
                               f"or put \"key\" and \"secret\" in {where}")
        register_secret(sk)
        _sdk_tls(self.tls_verify)
        return qiniu.Auth(ak, sk)

    @property
    def tls_verify(self) -> bool:
        """Whether certificates are checked (``AVA_TLS_VERIFY``, read once per instance)."""
        if self._verify is None:
            self._verify = tls_verify(self._env)
        return self._verify

    def _regions(self) -> list[Any] | None:
        hosts = {name: self._env.get(name) for name in
                 (AVA_QINIU_UP_HOST, AVA_QINIU_IO_HOST, AVA_QINIU_RS_HOST, AVA_QINIU_RSF_HOST)}
        if not any(hosts.values()):
            return None  # the SDK asks Qiniu where the bucket lives
        for name, host in hosts.items():
            warn_plain_http(host, f"the Qiniu host in {name}")
        if not hosts[AVA_QINIU_UP_HOST]:
            raise StorageError(f"{', '.join(k for k, v in hosts.items() if v)} set but {AVA_QINIU_UP_HOST} not; "
                               "set the upload host of the same deployment too")
        import qiniu

        return [qiniu.Region(up_host=hosts[AVA_QINIU_UP_HOST], io_host=hosts[AVA_QINIU_IO_HOST],
                             rs_host=hosts[AVA_QINIU_RS_HOST] or qiniu.config.RS_HOST,
                             rsf_host=hosts[AVA_QINIU_RSF_HOST] or qiniu.config.RSF_HOST)]

    def _bucket_manager(self, url: str) -> Any:
        import qiniu

        rs = self._env.get(AVA_QINIU_RS_HOST) or ""
        return qiniu.BucketManager(self._auth(url), regions=self._regions(),
                                   preferred_scheme="https" if rs.startswith("https://") else "http")

    def resume_dir(self, bucket: str) -> Path:
        """Where the resume records of uploads to ``bucket`` are kept (created on demand)."""
        raw = self._env.get(AVA_QINIU_RESUME_DIR)
        root = self._resume_dir_option or (Path(raw).expanduser() if raw else None)
        if root is None:
            cache = self._env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            root = Path(cache) / "ava" / "qiniu-resume"
        folder = root / bucket
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            fallback = Path(tempfile.gettempdir()) / f"ava-qiniu-resume-{os.getuid()}" / bucket
            log.warning("cannot use %s for Qiniu resume records (%s); using %s (set %s to choose)",
                        folder, exc.strerror or exc, fallback, AVA_QINIU_RESUME_DIR)
            fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder = fallback
        return folder

    def _domain(self, bucket: str, url: str) -> str:
        raw = self._env.get(AVA_QINIU_DOWNLOAD_DOMAIN)
        domain: str | None = None
        if raw:
            entries = [e.strip() for e in raw.split(",") if e.strip()]
            if all("=" in e for e in entries):
                table = dict(e.split("=", 1) for e in entries)
                domain = table.get(bucket) or table.get("*")
                if not domain:
                    raise StorageError(f"{AVA_QINIU_DOWNLOAD_DOMAIN} names no domain for bucket {bucket!r} ({url}); "
                                       f"add {bucket}=http://your.domain")
            else:
                domain = entries[0]
        elif bucket in self._domains:
            domain = self._domains[bucket]
        else:
            try:
                ret, info = self._bucket_manager(url).list_domains(bucket)
            except Exception as exc:  # noqa: BLE001 - any failure means: ask the user
                ret, info = None, exc
            if not ret:
                raise StorageError(f"no download domain known for bucket {bucket!r} ({url}): set "
                                   f"{AVA_QINIU_DOWNLOAD_DOMAIN} (e.g. http://cdn.example.com)")
            domain = self._domains[bucket] = str(ret[0])
        domain = domain.replace("{bucket}", bucket)
        if "://" not in domain:
            domain = "http://" + domain
        warn_plain_http(domain, f"the download domain of bucket {bucket!r}")
        return domain.rstrip("/")

    def signed_url(self, url: str, expires: int = 3600) -> str:
        """A private download URL for ``url``, valid ``expires`` seconds (a secret: never log it)."""
        bucket, key = self._split_key(url)
        plain = f"{self._domain(bucket, url)}/{quote(key, safe='/')}"
        return self._auth(url).private_download_url(plain, expires=expires)

    # --- requests and their failures -----------------------------------------------------
    @staticmethod
    def _retryable(info: Any) -> bool:
        code = info.status_code
        return code == -1 or code == 406 or (500 <= code < 600 and code not in (501, 579))

    @staticmethod
    def _detail(info: Any) -> str:
        if info.status_code == -1:
            text = f"{type(info.exception).__name__}: {info.exception}"
        else:
            text = info.text_body or ""
            try:
                text = str(json.loads(text).get("error", text))
            except (ValueError, AttributeError):
                pass
        return _redact(" ".join(str(text).split()))[:200]

    def _credentials_hint(self) -> str:
        """Where the refused keys came from: the ones this storage was given, or the environment."""
        if self._access_key and self._secret_key:
            return "check the access key and secret key this storage was given (e.g. Uploader(ak, sk))"
        return f"check {AVA_ACCESS_KEY}/{AVA_SECRET_KEY} (or config/user)"

    def _error(self, info: Any, url: str, what: str) -> StorageError:
        code = info.status_code
        detail = self._detail(info)
        bucket = self.split(url)[0]
        if code == 631:
            return ObjectNotFoundError(f"no bucket {bucket!r} for {url}; create it, or check the bucket name "
                                       f"and {AVA_QINIU_UP_HOST}/{AVA_QINIU_RS_HOST}")
        if code in (404, 612):
            return ObjectNotFoundError(f"no object at {url}")
        if code == 401:
            return StorageError(f"{what} {url} was refused (401 {detail}); {self._credentials_hint()}")
        if code == 403:
            return StorageError(f"{what} {url} was refused (403 {detail}); the key may lack rights on bucket "
                                f"{bucket!r}")
        if code == -1:
            return StorageError(f"{what} {url} failed: cannot reach the Qiniu server ({detail}); check "
                                f"{AVA_QINIU_UP_HOST}/{AVA_QINIU_RS_HOST} and the network")
        return StorageError(f"{what} {url} failed (HTTP {code}: {detail})")

    def _call(self, what: str, url: str, request: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """Run an SDK request, retrying failures worth retrying; a StorageError for the rest."""
        for attempt in range(1, self.attempts + 1):
            try:
                ret, info = request()
            except AvaError:
                raise
            except Exception as exc:  # noqa: BLE001 - the SDK raises bare errors on bad input
                raise StorageError(f"{what} {url} failed: {type(exc).__name__}: {_redact(str(exc))}") from None
            if info.ok():
                return ret, info
            if attempt < self.attempts and self._retryable(info):
                log.debug("%s %s: %s (attempt %d); retrying", what, url, self._detail(info), attempt)
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            raise self._error(info, url, what)
        raise AssertionError("unreachable")

    # --- the interface ---------------------------------------------------------------------
    def upload(self, local: Path, url: str) -> ObjectInfo:
        import qiniu
        from qiniu.utils import etag as file_etag

        bucket, key = self._split_key(url)
        local, size = upload_source(local)
        try:
            expected = file_etag(str(local))
        except OSError as exc:
            raise StorageError(f"cannot upload {local} to {url}: {exc.strerror or exc}") from None
        regions = self._regions()
        recorder = self._recorder_for(bucket)

        def put() -> tuple[Any, Any]:
            # A fresh token each try: its lifetime covers this file even on a slow link.
            token = self._auth(url).upload_token(bucket, key, expires=token_lifetime(size))
            return qiniu.put_file_v2(token, key, str(local), upload_progress_recorder=recorder, regions=regions,
                                     part_size=BLOCK_SIZE, version="v2", bucket_name=bucket)

        ret, info = self._call(f"upload of {local} to", url, put)
        if not isinstance(ret, dict) or "hash" not in ret:  # a 2xx that is not Kodo's answer (a proxy, a wrong host)
            raise StorageError(f"upload of {local} to {url}: the upload host answered without the stored file's hash "
                               f"({self._detail(info)}); is the upload host a Kodo one?")
        got = ret.get("hash")
        if got != expected:
            raise StorageError(f"upload of {local} to {url}: Kodo stored hash {got!r}, the file's is {expected!r} "
                               "(did it change during the upload?); upload it again")
        return ObjectInfo(url, size, got, time.time())

    def _recorder_for(self, bucket: str) -> Any:
        return _make_recorder(self.resume_dir(bucket))

    def stat(self, url: str) -> ObjectInfo:
        bucket, key = self._split_key(url)
        manager = self._bucket_manager(url)
        ret, _ = self._call("stat of", url, lambda: manager.stat(bucket, key))
        if not ret or "fsize" not in ret:
            raise StorageError(f"stat of {url} got an answer without a size; is {AVA_QINIU_RS_HOST} a Kodo server?")
        put_time = ret.get("putTime")
        return ObjectInfo(url, int(ret["fsize"]), ret.get("hash"), put_time / 1e7 if put_time else None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key_prefix = self.split(prefix)
        manager = self._bucket_manager(prefix)
        out: list[ObjectInfo] = []
        marker: str | None = None
        while True:
            def page(marker: str | None = marker) -> tuple[Any, Any]:
                ret, _eof, info = manager.list(bucket, prefix=key_prefix or None, marker=marker,
                                               limit=self.list_page_size)
                return ret, info

            ret, _ = self._call("listing of", prefix, page)
            for item in (ret or {}).get("items", []):
                put_time = item.get("putTime")
                out.append(ObjectInfo(f"qiniu://{bucket}/{item['key']}", int(item["fsize"]), item.get("hash"),
                                      put_time / 1e7 if put_time else None))
            marker = (ret or {}).get("marker")
            if not marker:
                break
        return sorted(out, key=lambda i: i.url)

    def delete(self, url: str) -> None:
        bucket, key = self._split_key(url)
        manager = self._bucket_manager(url)
        self._call("delete of", url, lambda: manager.delete(bucket, key))

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
            session.verify = self.tls_verify
        return session

    def download(self, url: str, local: Path) -> Path:
        import requests

        local = Path(local)
        bucket, key = self._split_key(url)
        if local.is_dir():
            raise StorageError(f"cannot download {url} to {local}: it is a directory; give a file path")
        info = self.stat(url)
        plain = f"{self._domain(bucket, url)}/{quote(key, safe='/')}"
        auth = self._auth(url)
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
            os.fchmod(fd, new_file_mode(local))
        except OSError as exc:
            raise StorageError(f"cannot download {url} to {local}: {os_reason(exc)}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                digest = self._fetch(requests, auth, plain, url, out, info.size)
                out.flush()
                os.fsync(out.fileno())
            if _standard_etag(info.etag) and digest != info.etag:
                raise StorageError(f"download of {url}: the data hashes to {digest}, Kodo says {info.etag}; "
                                   "download it again")
            os.replace(tmp, local)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, (StorageError, requests.RequestException)) or not isinstance(exc, OSError):
                if isinstance(exc, requests.RequestException):
                    raise StorageError(f"download of {url} failed: {_redact(str(exc))}") from None
                raise
            raise StorageError(f"cannot download {url} to {local}: {os_reason(exc)}") from None
        fsync_dir(local.parent)
        return local

    def _fetch(self, requests: Any, auth: Any, plain: str, url: str, out: Any, size: int) -> str:
        """Stream the object into ``out``, resuming after breaks; returns the data's Kodo hash."""
        hasher = KodoEtag()
        written = 0
        failures = 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            signed = auth.private_download_url(plain, expires=3600)
            try:
                with self._session().get(signed, stream=True, timeout=(10, self.timeout), headers=headers) as resp:
                    code = resp.status_code
                    if code == 404:
                        raise ObjectNotFoundError(f"no object at {url} (its download domain answered 404)")
                    if code in (401, 403):
                        raise StorageError(f"download of {url} was refused ({code}); {self._credentials_hint()}, "
                                           f"and {AVA_QINIU_DOWNLOAD_DOMAIN}")
                    if code >= 500:
                        raise _Retry(f"HTTP {code}")
                    if code not in (200, 206):
                        raise StorageError(f"download of {url} failed (HTTP {code})")
                    if written and code == 200:  # the server ignored Range: start again
                        out.seek(0)
                        out.truncate()
                        hasher, written = KodoEtag(), 0
                    for chunk in resp.iter_content(_READ):
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                if written >= size:
                    break
                raise _Retry(f"the body ended after {written} of {size} bytes")
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    _Retry) as exc:
                failures += 1
                if failures >= _DOWNLOAD_ATTEMPTS:
                    raise StorageError(f"download of {url} failed {failures} times, last: "
                                       f"{_redact(str(exc))[:200]}") from None
                log.info("download of %s broke after %d bytes (%s); resuming", url, written, type(exc).__name__)
                time.sleep(self.retry_delay * 2 ** (failures - 1))
        if written != size:
            raise StorageError(f"download of {url} got {written} bytes, expected {size}; download it again")
        return hasher.hexdigest()


class _Retry(Exception):
    """A download attempt that may succeed when tried again."""
