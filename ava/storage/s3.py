"""``s3://bucket/key`` storage through boto3: AWS S3 and S3-compatible stores (MinIO, Ceph, Kodo's S3 API).

Configuration comes from the environment, read when the first request is made:
``AVA_S3_ENDPOINT`` (endpoint URL; unset means AWS itself); credentials, region and retries from
boto3's own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``, ``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``, ...). boto3 is imported on first
use, never by ``import ava``. Certificates are verified (with ``AWS_CA_BUNDLE`` when set) unless
``AVA_TLS_VERIFY=0``; a plain ``http://`` endpoint that is not loopback is warned about once; the
credentials boto3 finds are registered with :func:`ava.log.redact.register_secret`.

Files below ``multipart_threshold`` go up in one ``PutObject`` with ``Content-MD5``, and the
returned ETag is compared with the file's MD5. Larger files go through boto3's ``upload_file``
(concurrent parts, each with a CRC32 the server checks); meanwhile a thread computes the parts'
CRC32s from the file, and after the upload the stored object's size and checksum (or, on stores
without checksums, its multipart ETag) are compared with them. Downloads stream to a temp file
beside the target, resume with ``Range`` after a dropped connection, check the size (and the MD5
when the store gives no checksum) and only then rename.

Example:
    >>> S3Storage.split("s3://bucket/dir/key.bin")
    ('bucket', 'dir/key.bin')
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from ava.env import AVA_S3_ENDPOINT, Env
from ava.errors import AvaError, ConfigError, ObjectNotFoundError, StorageError, StorageURLError, UsageError
from ava.log.redact import register_secret
from ava.storage.base import ObjectInfo, Storage, split_bucket_url, split_object_url, upload_source
from ava.utils.fileio import fsync_dir, new_file_mode, os_reason
from ava.utils.tls import tls_verify, warn_plain_http

#: imported by the registry before the backend is made (see ava.storage.registry)
REQUIRES = ("boto3", "botocore.config")

log = logging.getLogger(__name__)

_MB = 1 << 20
#: boto3's own defaults (TransferConfig), so ``upload`` moves data exactly as ``upload_file`` does.
DEFAULT_MULTIPART_THRESHOLD = 8 * _MB
DEFAULT_PART_SIZE = 8 * _MB
DEFAULT_CONCURRENCY = 10
_READ = _MB
_DOWNLOAD_ATTEMPTS = 5
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with a profile in "
                     "~/.aws/credentials)")
_CHECKSUM_KEYS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def _b64_crc(value: int) -> str:
    return base64.b64encode(struct.pack(">I", value & 0xFFFFFFFF)).decode()


class _PartDigests:
    """Per-part CRC32s of a file, computed on a thread while the upload runs (zlib drops the GIL)."""

    def __init__(self, path: Path, part_size: int) -> None:
        self.path = path
        self.part_size = part_size
        self.crcs: list[int] = []
        self.error: BaseException | None = None
        self.cancelled = False
        self._thread = threading.Thread(target=self._run, name="ava-s3-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as fh:
                while not self.cancelled:
                    crc, got = 0, 0
                    while got < self.part_size:
                        chunk = fh.read(min(4 * _MB, self.part_size - got))
                        if not chunk:
                            break
                        crc = zlib.crc32(chunk, crc)
                        got += len(chunk)
                    if not got:
                        break
                    self.crcs.append(crc)
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> list[int]:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.crcs

    def composite(self) -> str:
        """S3's multipart CRC32: the CRC32 of the parts' big-endian CRC32s."""
        return _b64_crc(zlib.crc32(b"".join(struct.pack(">I", c) for c in self.result())))


def _file_md5(path: Path, part_size: int | None = None) -> str:
    """The file's MD5 hex digest, or with ``part_size`` the S3 multipart ETag ``md5(md5s)-N``."""
    digests: list[bytes] = []
    whole = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as fh:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            got = 0
            limit = part_size or (1 << 62)
            while got < limit:
                chunk = fh.read(min(4 * _MB, limit - got))
                if not chunk:
                    break
                (part if part_size else whole).update(chunk)
                got += len(chunk)
            if not got:
                break
            digests.append(part.digest())
            if not part_size:
                break
    if not part_size:
        return whole.hexdigest()
    return hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"


class S3Storage(Storage):
    """Objects in S3 buckets (``s3://bucket/key``); etags are the store's ETags.

    Args:
        endpoint_url: the endpoint; ``AVA_S3_ENDPOINT`` when omitted (AWS itself when that is unset).
        env: where ``AVA_S3_ENDPOINT`` is read from (``os.environ`` by default).
        multipart_threshold: files of at least this many bytes use multipart upload.
        part_size: bytes per part (raised as needed to stay within 10,000 parts).
        max_concurrency: parts in flight at once.
        client: a ready boto3 S3 client (tests); otherwise one is made on first use.

    Example:
        >>> store = S3Storage(endpoint_url="http://127.0.0.1:9000")
        >>> store.split("s3://models/run1/epoch-3.params")
        ('models', 'run1/epoch-3.params')
    """

    scheme = "s3"

    def __init__(self, *, endpoint_url: str | None = None, env: Env | None = None,
                 multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD, part_size: int = DEFAULT_PART_SIZE,
                 max_concurrency: int = DEFAULT_CONCURRENCY, client: Any = None) -> None:
        self._env = env or Env()
        self._endpoint_option = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.list_page_size = 1000
        self._lock = threading.Lock()
        self._client = client
        self._client_endpoint: str | None = endpoint_url if client is not None else None
        self._given_client = client is not None

    # --- URLs ------------------------------------------------------------------------------
    @staticmethod
    def split(url: str) -> tuple[str, str]:
        """``s3://bucket/key`` -> ``("bucket", "key")`` (the key may be empty)."""
        return split_bucket_url(url, "s3")

    def _split_key(self, url: str) -> tuple[str, str]:
        return split_object_url(url, "s3")

    @property
    def endpoint(self) -> str | None:
        """The endpoint URL in use (None means AWS)."""
        return self._endpoint_option or self._env.s3_endpoint

    # --- the client ------------------------------------------------------------------------
    def client(self, url: str = "s3://") -> Any:
        """The boto3 S3 client for the current endpoint (made on first use, then kept)."""
        endpoint = self.endpoint
        with self._lock:
            if self._client is not None and (self._given_client or self._client_endpoint == endpoint):
                return self._client
            import boto3
            from botocore.config import Config

            try:
                self._client = self._make_client(boto3, Config, endpoint, url)
            except StorageError:
                raise
            except Exception as exc:  # noqa: BLE001 - boto3's set-up errors are settings, said in one line
                raise self._setup_error(exc, url) from None
            self._client_endpoint = endpoint
            return self._client

    def _make_client(self, boto3: Any, config_cls: Any, endpoint: str | None, url: str) -> Any:
        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise StorageError(f"no S3 credentials for {url}: {_CREDENTIALS_HINT}")
        frozen = credentials.get_frozen_credentials()
        register_secret(frozen.secret_key)
        register_secret(frozen.token)
        warn_plain_http(endpoint, f"the S3 endpoint in {AVA_S3_ENDPOINT}")
        # Retries stay boto3's own (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE); only the pool grows so
        # that parallel tree transfers of multipart files do not queue for connections.
        config = config_cls(max_pool_connections=max(32, self.max_concurrency))
        # verify=None keeps boto3's own choice (AWS_CA_BUNDLE or the bundled CAs); only the
        # named opt-out turns checks off.
        return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1",
                              config=config, verify=None if tls_verify(self._env) else False)

    def _setup_error(self, exc: BaseException, url: str) -> AvaError:
        """A one-line :class:`ConfigError` for a boto3 client that cannot be made (bad settings)."""
        from botocore.exceptions import PartialCredentialsError

        if isinstance(exc, PartialCredentialsError):
            return StorageError(f"no S3 credentials for {url}: {_CREDENTIALS_HINT} ({exc})")
        return ConfigError(f"cannot set up S3 for {url}: {type(exc).__name__}: {exc}; check {AVA_S3_ENDPOINT} "
                           "and the AWS_* settings (AWS_PROFILE, AWS_DEFAULT_REGION, AWS_MAX_ATTEMPTS, ...)")

    # --- errors ----------------------------------------------------------------------------
    def _error(self, exc: BaseException, url: str, what: str) -> StorageError:
        """One-line :class:`StorageError` (or :class:`ObjectNotFoundError`) for a boto3 failure."""
        from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                         NoCredentialsError, ParamValidationError, PartialCredentialsError)

        seen: BaseException | None = exc
        client_error: ClientError | None = None
        chain = []
        while seen is not None and len(chain) < 10:
            chain.append(seen)
            if isinstance(seen, ClientError) and client_error is None:
                client_error = seen
            seen = seen.__cause__ or seen.__context__
        if any(isinstance(e, (NoCredentialsError, PartialCredentialsError)) for e in chain):
            return StorageError(f"no S3 credentials for {url}: {_CREDENTIALS_HINT}")
        bucket = self.split(url)[0]
        invalid = next((e for e in chain if isinstance(e, ParamValidationError)), None)
        if invalid is not None:  # boto3 refused the request before sending it: the URL is wrong
            if "Invalid bucket name" in str(invalid):
                return StorageURLError(f"{bucket!r} in {url} is not a valid S3 bucket name (3-63 lowercase letters, "
                                       "digits, '.' and '-')")
            return StorageURLError(f"{what} {url} refused: {' '.join(str(invalid).split())[:200]}")
        if client_error is not None:
            err = client_error.response.get("Error", {})
            meta = client_error.response.get("ResponseMetadata", {})
            # A server that is not S3 (an HTML error page) leaves both empty: say its HTTP status.
            code = str(err.get("Code", "")) or (f"HTTP {meta['HTTPStatusCode']}" if meta.get("HTTPStatusCode") else "")
            message = str(err.get("Message", "")) or ("no S3 error in the answer; is it an S3 endpoint?"
                                                     if not err.get("Code") else code)
            if code == "NoSuchBucket":
                return ObjectNotFoundError(f"no bucket {bucket!r} for {url}; create it, or check the bucket name "
                                           f"and {AVA_S3_ENDPOINT}")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFoundError(f"no object at {url}")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return StorageError(f"{what} {url} was refused ({code}: {message}); check AWS_ACCESS_KEY_ID/"
                                    "AWS_SECRET_ACCESS_KEY and the bucket's permissions")
            return StorageError(f"{what} {url} failed ({code}: {message})")
        if any(isinstance(e, EndpointConnectionError) for e in chain):
            return StorageError(f"{what} {url} failed: cannot reach {self.endpoint or 'AWS S3'} ({exc}); "
                                f"check {AVA_S3_ENDPOINT} and the network")
        if isinstance(exc, BotoCoreError):
            return StorageError(f"{what} {url} failed: {exc}")
        return StorageError(f"{what} {url} failed: {type(exc).__name__}: {exc}")

    def _bucket_exists(self, client: Any, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            return str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")

    def _not_found(self, client: Any, url: str) -> ObjectNotFoundError:
        bucket = self.split(url)[0]
        try:
            exists = self._bucket_exists(client, bucket)
        except Exception:  # noqa: BLE001 - the key is missing either way
            exists = True
        if not exists:
            return ObjectNotFoundError(f"no bucket {bucket!r} for {url}; create it, or check the bucket name "
                                       f"and {AVA_S3_ENDPOINT}")
        return ObjectNotFoundError(f"no object at {url}")

    # --- the interface ---------------------------------------------------------------------
    def upload(self, local: Path, url: str) -> ObjectInfo:
        bucket, key = self._split_key(url)
        local, size = upload_source(local)
        client = self.client(url)
        try:
            if size < self.multipart_threshold:
                # The size of what was sent: a file that changed since its stat shows as a mismatch.
                etag, size = self._put_small(client, local, bucket, key, url)
            else:
                etag = self._put_multipart(client, local, bucket, key, url, size)
        except StorageError:
            raise
        except OSError as exc:
            if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer", "urllib3")):
                raise self._error(exc, url, f"upload of {local} to") from None
            raise StorageError(f"cannot upload {local} to {url}: {exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - boto3's own families, turned into one line
            raise self._error(exc, url, f"upload of {local} to") from None
        return ObjectInfo(url, size, etag, time.time())

    def _put_small(self, client: Any, local: Path, bucket: str, key: str, url: str) -> tuple[str, int]:
        data = local.read_bytes()
        md5 = hashlib.md5(data, usedforsecurity=False)
        resp = client.put_object(Bucket=bucket, Key=key, Body=data,
                                 ContentMD5=base64.b64encode(md5.digest()).decode())
        etag = str(resp.get("ETag", "")).strip('"')
        # With SSE-KMS or SSE-C the ETag is not the MD5; Content-MD5 was checked by the server anyway.
        if etag and not self._encrypted(resp) and etag != md5.hexdigest():
            raise StorageError(f"upload of {local} to {url}: the stored ETag {etag} differs from the file's MD5 "
                               f"{md5.hexdigest()}; upload it again")
        return etag, len(data)

    @staticmethod
    def _encrypted(resp: dict[str, Any]) -> bool:
        return resp.get("ServerSideEncryption") == "aws:kms" or bool(resp.get("SSECustomerAlgorithm"))

    def _put_multipart(self, client: Any, local: Path, bucket: str, key: str, url: str, size: int) -> str:
        from boto3.s3.transfer import TransferConfig
        from s3transfer.utils import ChunksizeAdjuster

        part_size = ChunksizeAdjuster().adjust_chunksize(self.part_size, size)
        digests = _PartDigests(local, part_size)
        config = TransferConfig(multipart_threshold=self.multipart_threshold, multipart_chunksize=self.part_size,
                                max_concurrency=self.max_concurrency)
        try:
            client.upload_file(str(local), bucket, key, Config=config)
        except BaseException:
            digests.cancelled = True
            raise
        finally:
            digests.join()
        crcs = digests.result()
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        etag = str(head.get("ETag", "")).strip('"')
        stored = int(head.get("ContentLength", -1))
        if stored != size:
            raise StorageError(f"upload of {local} to {url}: the stored object has {stored} bytes, the file "
                               f"{size}; upload it again")
        crc = head.get("ChecksumCRC32")
        if crc:
            value = str(crc).split("-")[0]
            expected = {digests.composite()}
            if head.get("ChecksumType") == "FULL_OBJECT" or len(crcs) == 1:
                full = 0
                with open(local, "rb", buffering=0) as fh:
                    while chunk := fh.read(4 * _MB):
                        full = zlib.crc32(chunk, full)
                expected.add(_b64_crc(full))
            if value not in expected:
                raise StorageError(f"upload of {local} to {url}: the stored CRC32 {value} differs from the file's "
                                   f"{sorted(expected)[0]}; upload it again")
        elif etag and not self._encrypted(head):
            want = _file_md5(local, part_size) if "-" in etag else _file_md5(local)
            if etag != want:
                raise StorageError(f"upload of {local} to {url}: the stored ETag {etag} differs from the file's "
                                   f"{want}; upload it again")
        return etag

    def download(self, url: str, local: Path) -> Path:
        local = Path(local)
        bucket, key = self._split_key(url)
        if local.is_dir():
            raise StorageError(f"cannot download {url} to {local}: it is a directory; give a file path")
        client = self.client(url)
        try:
            resp = client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, url, "download of") from None
        try:
            self._check_s3(resp, url)
        except StorageError:
            resp["Body"].close()
            raise
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
            os.fchmod(fd, new_file_mode(local))
        except OSError as exc:
            resp["Body"].close()
            raise StorageError(f"cannot download {url} to {local}: {os_reason(exc)}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                self._stream(client, resp, out, bucket, key, url)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, local)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, StorageError):
                raise
            if isinstance(exc, OSError) and not type(exc).__module__.startswith(("botocore", "urllib3")):
                raise StorageError(f"cannot download {url} to {local}: {os_reason(exc)}") from None
            if isinstance(exc, Exception):
                raise self._error(exc, url, "download of") from None
            raise
        fsync_dir(local.parent)
        return local

    def _stream(self, client: Any, resp: dict[str, Any], out: Any, bucket: str, key: str, url: str) -> None:
        """Copy the body to ``out``, resuming with ``Range`` after a broken stream; check size and MD5."""
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError as Urllib3Error

        size = int(resp.get("ContentLength", -1))
        etag = str(resp.get("ETag", ""))
        plain = etag.strip('"')
        # botocore checks a full-object checksum itself; without one, fall back to the MD5 ETag.
        has_checksum = any(resp.get(k) and "-" not in str(resp.get(k)) for k in _CHECKSUM_KEYS)
        md5 = (hashlib.md5(usedforsecurity=False)
               if not has_checksum and plain and "-" not in plain and not self._encrypted(resp) else None)
        written = 0
        attempt = 0
        body = resp["Body"]
        while True:
            try:
                for chunk in body.iter_chunks(_READ):
                    out.write(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    written += len(chunk)
                break
            except (BotoCoreError, Urllib3Error, ConnectionError) as exc:
                attempt += 1
                if attempt >= _DOWNLOAD_ATTEMPTS or written >= size:
                    raise
                log.info("download of %s broke after %d bytes (%s); resuming", url, written, type(exc).__name__)
                body.close()
                body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={written}-", IfMatch=etag)["Body"]
        if written != size:
            raise StorageError(f"download of {url} got {written} bytes, expected {size}; download it again")
        if md5 is not None and md5.hexdigest() != plain:
            raise StorageError(f"download of {url}: the data's MD5 {md5.hexdigest()} differs from the ETag {plain}; "
                               "download it again")

    def _check_s3(self, resp: dict[str, Any], url: str) -> None:
        """An object's answer carries an ETag; a web page with none is a console or a site, not
        S3 (a MinIO console port given for its API port): its HTML must not become the file."""
        if resp.get("ETag"):
            return
        kind = str(resp.get("ContentType") or "").split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            raise StorageError(f"{url}: {self.endpoint or 'the S3 endpoint'} answered with a web page, not an "
                               "S3 object; is AVA_S3_ENDPOINT the S3 API (not a web console)?")

    def stat(self, url: str) -> ObjectInfo:
        bucket, key = self._split_key(url)
        client = self.client(url)
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            err = self._error(exc, url, "stat of")
            if isinstance(err, ObjectNotFoundError):
                raise self._not_found(client, url) from None
            raise err from None
        self._check_s3(head, url)
        mtime = head.get("LastModified")
        return ObjectInfo(url, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"') or None,
                          mtime.timestamp() if mtime is not None else None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key_prefix = self.split(prefix)
        client = self.client(prefix)
        out = []
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=key_prefix, PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                for obj in page.get("Contents", []):
                    mtime = obj.get("LastModified")
                    out.append(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]),
                                          str(obj.get("ETag", "")).strip('"') or None,
                                          mtime.timestamp() if mtime is not None else None))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, prefix, "listing of") from None
        return sorted(out, key=lambda i: i.url)

    def delete(self, url: str) -> None:
        bucket, key = self._split_key(url)
        self.stat(url)  # S3 deletes of missing keys succeed; the interface says ObjectNotFoundError
        try:
            self.client(url).delete_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, url, "delete of") from None

    def signed_url(self, url: str, expires: int = 3600) -> str:
        """A presigned HTTP(S) GET URL for ``url``, valid ``expires`` seconds (never log it)."""
        bucket, key = self._split_key(url)
        return self.client(url).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                       ExpiresIn=expires)
