"""A Qiniu Kodo protocol server for tests: tornado on 127.0.0.1, objects stored in a directory.

It speaks what the real qiniu SDK sends, so tests exercise the SDK over HTTP:

- uploads (the "up" host): form upload ``POST /``; resumable v1 ``POST /mkblk/<size>`` and
  ``POST /mkfile/<size>/key/<b64>/...``; resumable v2 ``POST /buckets/<b>/objects/<b64key>/uploads``,
  ``PUT .../uploads/<id>/<n>`` (``Content-MD5`` as hex), ``POST .../uploads/<id>`` to complete and
  ``DELETE`` to abort. Upload tokens (``ak:sign:policy``) are verified: signature, deadline,
  scope (``bucket`` or ``bucket:key``; only the latter may overwrite a different object).
- management (the "rs"/"rsf" hosts): ``POST /stat/<entry>``, ``POST /delete/<entry>``,
  ``GET /list?bucket=&prefix=&marker=&limit=``, each with ``Authorization: Qiniu ak:sign``
  checked over method, path, host, content type, ``X-Qiniu-*`` headers and form body.
- private downloads: ``GET /dl/<bucket>/<key>?e=<deadline>&token=ak:sign`` with the deadline and
  signature checked, ``Range`` supported, ``ETag`` set to the object's hash.

Faults, set as attributes at any time: ``fail_every_other`` (every other request answers 503),
``drop_download_after`` bytes for the next ``drop_downloads`` downloads (the connection is
closed mid-body), ``hold_parts_after`` (v2 parts after the first N stored get no answer until
:meth:`KodoServer.release_held`). Counters: ``counts`` per request kind, ``part_requests`` per
(upload id, part number), so a test can prove finished parts were not sent again.

In a test::

    with KodoServer(tmp_path) as kodo:
        kodo.create_bucket("models")
        monkeypatch.setattr(os, "environ", {**os.environ, **kodo.env()})
        get_storage("qiniu://models/x").upload(path, "qiniu://models/x")

As a process, printing the variables to export::

    python -m tests.support.kodo_server ROOT --bucket models
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tornado.httpserver
import tornado.ioloop
import tornado.locks
import tornado.netutil
import tornado.web

BLOCK = 4 * 1024 * 1024
MAX_BODY = 256 * 1024 * 1024
CHUNK = 256 * 1024


def kodo_etag(data: bytes) -> str:
    """Kodo's hash: SHA-1 of 4 MiB blocks (one block: 0x16 + sha1; more: 0x96 + sha1 of the sha1s)."""
    blocks = [hashlib.sha1(data[i:i + BLOCK]).digest() for i in range(0, len(data), BLOCK)] or [
        hashlib.sha1(b"").digest()]
    raw = b"\x16" + blocks[0] if len(blocks) == 1 else b"\x96" + hashlib.sha1(b"".join(blocks)).digest()
    return base64.urlsafe_b64encode(raw).decode()


def _b64decode(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")


def _sign(secret: str, data: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret.encode(), data, hashlib.sha1).digest()).decode()


@dataclass
class StoredObject:
    path: Path
    size: int
    hash: str
    md5: str
    mime: str
    put_time: int  # 100 ns units, as Kodo reports it


class _Fail(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class _Base(tornado.web.RequestHandler):
    kind = "other"

    def initialize(self, kodo: KodoServer) -> None:
        self.kodo = kodo
        self.closed = False

    def set_default_headers(self) -> None:
        self.set_header("X-Reqid", uuid.uuid4().hex[:16])
        self.set_header("Content-Type", "application/json")

    def on_connection_close(self) -> None:
        self.closed = True

    def prepare(self) -> None:
        self.kodo._count(self.kind)
        if self.kodo._should_fail():
            self.reply(503, {"error": "injected failure (fail_every_other)"})

    def reply(self, status: int, body: Any) -> None:
        self.set_status(status, None if status < 600 else "Kodo")
        self.finish(json.dumps(body))

    def _handle_fail(self, fail: _Fail) -> None:
        self.reply(fail.status, {"error": fail.error})

    # --- credentials ---------------------------------------------------------------------------
    def check_uptoken(self, token: str | None) -> dict[str, Any]:
        if not token:
            raise _Fail(401, "token not specified")
        parts = token.split(":")
        if len(parts) != 3 or parts[0] != self.kodo.access_key:
            raise _Fail(401, "bad token")
        if not hmac.compare_digest(parts[1], _sign(self.kodo.secret_key, parts[2].encode())):
            raise _Fail(401, "bad token")
        policy = json.loads(_b64decode(parts[2]))
        if int(policy.get("deadline", 0)) < time.time():
            raise _Fail(401, "expired token")
        return policy

    def header_token(self) -> dict[str, Any]:
        auth = self.request.headers.get("Authorization", "")
        if not auth.startswith("UpToken "):
            raise _Fail(401, "token not specified")
        return self.check_uptoken(auth[len("UpToken "):])

    def check_scope(self, policy: dict[str, Any], bucket: str, key: str | None) -> bool:
        """True when the token may overwrite ``key``."""
        scope_bucket, colon, scope_key = str(policy.get("scope", "")).partition(":")
        if scope_bucket != bucket:
            raise _Fail(401, "token scope does not match the bucket")
        if colon and key is not None and scope_key != key:
            raise _Fail(403, "key doesn't match with scope")
        if bucket not in self.kodo.buckets:
            raise _Fail(631, "no such bucket")
        return bool(colon)

    def check_mac(self) -> None:
        """``Authorization: Qiniu ak:sign`` over what ``QiniuMacAuth.token_of_request`` signs."""
        auth = self.request.headers.get("Authorization", "")
        if not auth.startswith("Qiniu "):
            raise _Fail(401, "bad token")
        access_key, _, sign = auth[len("Qiniu "):].partition(":")
        content_type = self.request.headers.get("Content-Type", "")
        data = f"{self.request.method} {self.request.uri}\nHost: {self.request.headers.get('Host', '')}"
        if content_type:
            data += f"\nContent-Type: {content_type}"
        qiniu_headers = sorted((k, v) for k, v in self.request.headers.get_all()
                               if k.lower().startswith("x-qiniu-") and len(k) > len("x-qiniu-"))
        if qiniu_headers:
            data += "\n" + "\n".join(f"{k}: {v}" for k, v in qiniu_headers)
        data += "\n\n"
        raw = data.encode()
        if content_type and content_type != "application/octet-stream" and self.request.body:
            raw += self.request.body
        if access_key != self.kodo.access_key or not hmac.compare_digest(sign, _sign(self.kodo.secret_key, raw)):
            raise _Fail(401, "bad token")

    def entry(self, encoded: str) -> tuple[str, str]:
        bucket, _, key = _b64decode(encoded).partition(":")
        if bucket not in self.kodo.buckets:
            raise _Fail(631, "no such bucket")
        return bucket, key

    def store_reply(self, bucket: str, key: str | None, data: bytes, overwrite: bool, mime: str | None) -> None:
        obj_hash = kodo_etag(data)
        key = obj_hash if key is None else key
        existing = self.kodo.buckets[bucket].get(key)
        if existing is not None and not overwrite and existing.hash != obj_hash:
            raise _Fail(614, "file exists")
        self.kodo._store(bucket, key, data, mime or "application/octet-stream")
        self.reply(200, {"key": key, "hash": obj_hash})


class _FormUpload(_Base):
    kind = "form"

    def post(self) -> None:
        try:
            policy = self.check_uptoken(self.get_body_argument("token", None))
            bucket = str(policy.get("scope", "")).partition(":")[0]
            key = self.get_body_argument("key", None)
            overwrite = self.check_scope(policy, bucket, key)
            files = self.request.files.get("file")
            if not files:
                raise _Fail(400, "file not specified")
            data = files[0]["body"]
            crc = self.get_body_argument("crc32", None)
            if crc is not None and zlib.crc32(data) != int(crc):
                raise _Fail(406, "crc32 not match")
            self.store_reply(bucket, key, data, overwrite, files[0].get("content_type"))
        except _Fail as fail:
            self._handle_fail(fail)


class _MakeBlock(_Base):
    kind = "mkblk"

    def post(self, size: str) -> None:
        try:
            policy = self.header_token()
            self.check_scope(policy, str(policy.get("scope", "")).partition(":")[0], None)
            body = self.request.body
            if len(body) != int(size):
                raise _Fail(400, "block size does not match the body")
            ctx = uuid.uuid4().hex
            self.kodo._save_temp(f"blocks/{ctx}", body)
            self.reply(200, {"ctx": ctx, "checksum": _sign("", body), "crc32": zlib.crc32(body),
                             "offset": len(body), "host": self.kodo.url, "expired_at": int(time.time()) + 7 * 86400})
        except _Fail as fail:
            self._handle_fail(fail)


class _MakeFile(_Base):
    kind = "mkfile"

    def post(self, size: str, rest: str) -> None:
        try:
            policy = self.header_token()
            bucket = str(policy.get("scope", "")).partition(":")[0]
            segments = [s for s in (rest or "").split("/") if s]
            params = {segments[i]: _b64decode(segments[i + 1]) for i in range(0, len(segments) - 1, 2)}
            key = params.get("key")
            overwrite = self.check_scope(policy, bucket, key)
            data = b""
            for ctx in self.request.body.decode().split(","):
                path = self.kodo.root / "blocks" / ctx.strip()
                if not ctx.strip() or not path.is_file():
                    raise _Fail(400, f"unknown ctx {ctx!r}")
                data += path.read_bytes()
            if len(data) != int(size):
                raise _Fail(400, "file size does not match the blocks")
            self.store_reply(bucket, key, data, overwrite, params.get("mimeType"))
        except _Fail as fail:
            self._handle_fail(fail)


class _InitParts(_Base):
    kind = "init"

    def post(self, bucket: str, encoded_key: str) -> None:
        try:
            policy = self.header_token()
            key = None if encoded_key == "~" else _b64decode(encoded_key)
            overwrite = self.check_scope(policy, bucket, key)
            upload_id = uuid.uuid4().hex
            expire_at = int(time.time()) + 7 * 86400
            self.kodo.uploads[upload_id] = {"bucket": bucket, "key": key, "parts": {}, "overwrite": overwrite}
            self.reply(200, {"uploadId": upload_id, "expireAt": expire_at})
        except _Fail as fail:
            self._handle_fail(fail)


class _UploadPart(_Base):
    kind = "part"

    async def put(self, bucket: str, encoded_key: str, upload_id: str, number: str) -> None:
        try:
            policy = self.header_token()
            key = None if encoded_key == "~" else _b64decode(encoded_key)
            self.check_scope(policy, bucket, key)
            upload = self.kodo.uploads.get(upload_id)
            if upload is None or upload["bucket"] != bucket:
                raise _Fail(612, "no such uploadId")
            part = int(number)
            if not 1 <= part <= 10000:
                raise _Fail(400, "partNumber out of range")
            body = self.request.body
            self.kodo.part_requests[(upload_id, part)] += 1
            md5 = hashlib.md5(body).hexdigest()
            claimed = self.request.headers.get("Content-MD5")
            if claimed and claimed.lower() != md5:
                raise _Fail(400, "Content-MD5 does not match the body")
            hold = self.kodo.hold_parts_after
            if hold is not None and self.kodo.completed_parts >= hold:
                self.kodo.held += 1
                await self.kodo._release.wait()
                if self.closed:
                    return
            self.kodo._save_temp(f"parts/{upload_id}/{part}", body)
            upload["parts"][part] = md5
            self.kodo.completed_parts += 1
            self.reply(200, {"etag": md5, "md5": md5})
        except _Fail as fail:
            self._handle_fail(fail)


class _CompleteParts(_Base):
    kind = "complete"

    def post(self, bucket: str, encoded_key: str, upload_id: str) -> None:
        try:
            policy = self.header_token()
            key = None if encoded_key == "~" else _b64decode(encoded_key)
            self.check_scope(policy, bucket, key)
            upload = self.kodo.uploads.get(upload_id)
            if upload is None or upload["bucket"] != bucket:
                raise _Fail(612, "no such uploadId")
            doc = json.loads(self.request.body or b"{}")
            parts = doc.get("parts") or []
            numbers = [int(p.get("partNumber", 0)) for p in parts]
            if not parts or numbers != sorted(set(numbers)):
                raise _Fail(400, "parts must be listed once each, in ascending order")
            data = b""
            for p in parts:
                n = int(p["partNumber"])
                if upload["parts"].get(n) != p.get("etag"):
                    raise _Fail(400, f"part {n} was not uploaded or its etag differs")
                data += (self.kodo.root / "parts" / upload_id / str(n)).read_bytes()
            del self.kodo.uploads[upload_id]
            self.store_reply(bucket, key, data, upload["overwrite"], doc.get("mimeType"))
        except _Fail as fail:
            self._handle_fail(fail)

    def delete(self, bucket: str, encoded_key: str, upload_id: str) -> None:
        try:
            self.header_token()
            if self.kodo.uploads.pop(upload_id, None) is None:
                raise _Fail(612, "no such uploadId")
            self.reply(200, {})
        except _Fail as fail:
            self._handle_fail(fail)


class _Stat(_Base):
    kind = "stat"

    def post(self, encoded: str) -> None:
        try:
            self.check_mac()
            bucket, key = self.entry(encoded)
            obj = self.kodo.buckets[bucket].get(key)
            if obj is None:
                raise _Fail(612, "no such file or directory")
            self.reply(200, {"fsize": obj.size, "hash": obj.hash, "md5": obj.md5, "mimeType": obj.mime,
                             "putTime": obj.put_time, "type": 0})
        except _Fail as fail:
            self._handle_fail(fail)


class _Delete(_Base):
    kind = "delete"

    def post(self, encoded: str) -> None:
        try:
            self.check_mac()
            bucket, key = self.entry(encoded)
            if not self.kodo._remove(bucket, key):
                raise _Fail(612, "no such file or directory")
            self.reply(200, {})
        except _Fail as fail:
            self._handle_fail(fail)


class _List(_Base):
    kind = "list"

    def get(self) -> None:
        try:
            self.check_mac()
            bucket = self.get_query_argument("bucket", "")
            if bucket not in self.kodo.buckets:
                raise _Fail(631, "no such bucket")
            prefix = self.get_query_argument("prefix", "")
            marker = self.get_query_argument("marker", "")
            limit = max(1, min(1000, int(self.get_query_argument("limit", "1000") or 1000)))
            after = _b64decode(marker) if marker else None
            keys = sorted(k for k in list(self.kodo.buckets[bucket]) if k.startswith(prefix)
                          and (after is None or k > after))
            page = keys[:limit]
            items = []
            for k in page:
                obj = self.kodo.buckets[bucket].get(k)
                if obj is not None:
                    items.append({"key": k, "hash": obj.hash, "fsize": obj.size, "mimeType": obj.mime,
                                  "putTime": obj.put_time, "type": 0})
            body: dict[str, Any] = {"items": items, "commonPrefixes": []}
            if len(keys) > limit:
                body["marker"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
            self.reply(200, body)
        except _Fail as fail:
            self._handle_fail(fail)

    post = get


class _Download(_Base):
    kind = "download"

    async def get(self, bucket: str, key: str) -> None:
        try:
            base, sep, token = self.request.uri.rpartition("&token=")
            if not sep:
                raise _Fail(401, "token not specified")
            signed = f"{self.request.protocol}://{self.request.headers.get('Host', '')}{base}"
            access_key, _, sign = token.partition(":")
            if access_key != self.kodo.access_key or not hmac.compare_digest(
                    sign, _sign(self.kodo.secret_key, signed.encode())):
                raise _Fail(401, "bad token")
            if int(self.get_query_argument("e", "0")) < time.time():
                raise _Fail(401, "token out of date")
            if bucket not in self.kodo.buckets:
                raise _Fail(404, "Document not found")
            obj = self.kodo.buckets[bucket].get(key)
            if obj is None:
                raise _Fail(404, "Document not found")
        except _Fail as fail:
            self._handle_fail(fail)
            return
        start, end = 0, obj.size - 1
        rng = self.request.headers.get("Range", "")
        if rng.startswith("bytes=") and obj.size:
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first) if first else 0
            end = min(int(last), obj.size - 1) if last else obj.size - 1
            if start > end:
                self.set_header("Content-Range", f"bytes */{obj.size}")
                self.reply(416, {"error": "range not satisfiable"})
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{obj.size}")
        length = end - start + 1 if obj.size else 0
        self.set_header("Content-Type", obj.mime)
        self.set_header("Content-Length", str(length))
        self.set_header("ETag", f'"{obj.hash}"')
        self.set_header("Accept-Ranges", "bytes")
        drop = self.kodo._take_drop()
        sent = 0
        with open(obj.path, "rb") as fh:
            fh.seek(start)
            while sent < length:
                chunk = fh.read(min(CHUNK, length - sent))
                if drop is not None and sent + len(chunk) > drop:
                    chunk = chunk[:max(0, drop - sent)]
                    self.write(chunk)
                    await self.flush()
                    self.request.connection.stream.close()
                    return
                self.write(chunk)
                sent += len(chunk)
                await self.flush()
                if self.closed:
                    return


class KodoServer:
    """A Kodo-protocol server on 127.0.0.1 (an OS-chosen port), run on a daemon thread.

    Args:
        root: where objects, blocks and parts are stored.
        access_key, secret_key: the only credentials it accepts.
    """

    def __init__(self, root: Path | str, access_key: str = "test-access-key",
                 secret_key: str = "test-secret-key") -> None:
        self.root = Path(root)
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        # faults
        self.fail_every_other = False
        self.drop_download_after: int | None = None
        self.drop_downloads = 1 << 30
        self.hold_parts_after: int | None = None
        #: called with the request kind at every request (on the server thread)
        self.on_request: Callable[[str], None] | None = None
        # counters
        self.counts: Counter[str] = Counter()
        self.part_requests: Counter[tuple[str, int]] = Counter()
        self.completed_parts = 0
        self.held = 0
        self.failed = 0
        self._requests = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._release: tornado.locks.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def download_domain(self, bucket: str = "{bucket}") -> str:
        return f"{self.url}/dl/{bucket}"

    def env(self) -> dict[str, str]:
        """The variables that point ``ava.storage.qiniu`` at this server."""
        return {"AVA_ACCESS_KEY": self.access_key, "AVA_SECRET_KEY": self.secret_key,
                "AVA_QINIU_UP_HOST": self.url, "AVA_QINIU_IO_HOST": self.url, "AVA_QINIU_RS_HOST": self.url,
                "AVA_QINIU_RSF_HOST": self.url, "AVA_QINIU_DOWNLOAD_DOMAIN": self.download_domain()}

    def point_env(self, monkeypatch: Any, resume_dir: Any = None) -> None:
        """Set :meth:`env` in the test's environment (and ``AVA_QINIU_RESUME_DIR``, when given)."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        if resume_dir is not None:
            monkeypatch.setenv("AVA_QINIU_RESUME_DIR", str(resume_dir))

    # --- objects ---------------------------------------------------------------------------
    def create_bucket(self, name: str) -> None:
        with self.lock:
            self.buckets.setdefault(name, {})
            (self.root / "objects" / name).mkdir(parents=True, exist_ok=True)

    def object_bytes(self, bucket: str, key: str) -> bytes:
        return self.buckets[bucket][key].path.read_bytes()

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Store an object directly (for keys no well-behaved client would write)."""
        self._store(bucket, key, data, "application/octet-stream")

    def _store(self, bucket: str, key: str, data: bytes, mime: str) -> None:
        path = self.root / "objects" / bucket / hashlib.sha1(key.encode()).hexdigest()
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self.lock:
            self.buckets[bucket][key] = StoredObject(path, len(data), kodo_etag(data), hashlib.md5(data).hexdigest(),
                                                     mime, int(time.time() * 1e7))

    def _remove(self, bucket: str, key: str) -> bool:
        with self.lock:
            obj = self.buckets[bucket].pop(key, None)
        if obj is None:
            return False
        obj.path.unlink(missing_ok=True)
        return True

    def _save_temp(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    # --- faults and counters -------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1
        if self.on_request is not None:
            self.on_request(kind)

    def _should_fail(self) -> bool:
        with self.lock:
            if not self.fail_every_other:
                return False
            self._requests += 1
            fail = self._requests % 2 == 1
            self.failed += fail
            return fail

    def _take_drop(self) -> int | None:
        with self.lock:
            if self.drop_download_after is None or self.drop_downloads <= 0:
                return None
            self.drop_downloads -= 1
            return self.drop_download_after

    def release_held(self) -> None:
        """Stop holding v2 parts; the held ones are then stored, as by a server that had received them."""
        self.hold_parts_after = None
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    # --- running ---------------------------------------------------------------------------
    def app(self) -> tornado.web.Application:
        kw = {"kodo": self}
        obj = r"/buckets/([^/]+)/objects/([^/]+)/uploads"
        return tornado.web.Application(log_function=lambda handler: None, handlers=[
            (r"/", _FormUpload, kw),
            (r"/mkblk/(\d+)", _MakeBlock, kw),
            (r"/mkfile/(\d+)(/.*)?", _MakeFile, kw),
            (obj, _InitParts, kw),
            (obj + r"/([^/]+)", _CompleteParts, kw),
            (obj + r"/([^/]+)/(\d+)", _UploadPart, kw),
            (r"/stat/([^/]+)", _Stat, kw),
            (r"/delete/([^/]+)", _Delete, kw),
            (r"/list", _List, kw),
            (r"/dl/([^/]+)/(.*)", _Download, kw),
        ])

    def start(self) -> KodoServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        async def setup() -> None:
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            self.port = sockets[0].getsockname()[1]
            self._http = tornado.httpserver.HTTPServer(self.app(), max_body_size=MAX_BODY, max_buffer_size=MAX_BODY)
            self._http.add_sockets(sockets)
            self._release = tornado.locks.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        for sub in ("objects", "blocks", "parts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=run, name="kodo-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or errors:
            raise RuntimeError(f"the Kodo test server did not start: {errors}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._release is not None:
                self._release.set()
            if self._http is not None:
                self._http.stop()
                try:
                    await asyncio.wait_for(self._http.close_all_connections(), 5)
                except asyncio.TimeoutError:
                    pass
            loop.stop()

        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> KodoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Qiniu Kodo protocol server on 127.0.0.1, for tests.")
    parser.add_argument("root", help="where objects are stored")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)
    server = KodoServer(args.root).start()
    for bucket in args.bucket:
        server.create_bucket(bucket)
    for name, value in server.env().items():
        print(f"export {name}='{value}'", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
