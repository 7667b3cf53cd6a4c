"""One conformance suite for every storage backend.

``file://`` runs on a temp dir, ``s3://`` on a moto server and ``qiniu://`` on the Kodo protocol
server of ``tests/support/kodo_server.py``; boto3 and the qiniu SDK talk real HTTP over loopback.
After the suite: what only one backend (or its test server) has to prove.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import resource
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ava.errors import ObjectNotFoundError, StorageError
from ava.storage import registry
from ava.storage.base import ObjectInfo, Storage, join_url
from ava.storage.registry import get_storage
from ava.storage.tree import download_tree, upload_tree
from tests.support.kodo_server import KodoServer, kodo_etag
from tests.support.moto_server import moto_s3

S3_ENTRY = ("ava.storage.s3:S3Storage", "pip install 'ava-sdk[s3]'")
QINIU_ENTRY = ("ava.storage.qiniu:QiniuStorage", "pip install 'ava-sdk[qiniu]'")
MiB = 1024 * 1024


# --- the backends --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def kodo(tmp_path_factory) -> Iterator[KodoServer]:
    with KodoServer(tmp_path_factory.mktemp("kodo")) as server:
        yield server


@dataclass
class Backend:
    name: str
    base: str  # every test writes under this URL
    store: Storage
    put_raw: Callable[[str, bytes], None] | None  # store bytes under any key below base
    break_downloads: Callable[[int, int], None] | None  # cut the next N downloads after M bytes


def s3_env(monkeypatch, endpoint: str) -> None:
    for name, value in {"AVA_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)


def use_backends(monkeypatch) -> None:
    """Register s3/qiniu (until registry.BACKENDS lists them) and forget cached instances."""
    monkeypatch.setitem(registry.BACKENDS, "s3", S3_ENTRY)
    monkeypatch.setitem(registry.BACKENDS, "qiniu", QINIU_ENTRY)
    for scheme in ("s3", "qiniu"):
        registry._instances.pop(scheme, None)


class _BreakingBody:
    """A GetObject body that raises after ``after`` bytes, as a dropped connection does."""

    def __init__(self, body: Any, after: int) -> None:
        self.body, self.after, self.sent = body, after, 0

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        from botocore.exceptions import ResponseStreamingError

        for chunk in self.body.iter_chunks(size):
            if self.sent + len(chunk) > self.after:
                yield chunk[:self.after - self.sent]
                raise ResponseStreamingError(error="injected: connection dropped")
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.body.close()


@pytest.fixture(params=["file", "s3", "qiniu"])
def backend(request, tmp_path, monkeypatch) -> Iterator[Backend]:
    use_backends(monkeypatch)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    if request.param == "file":
        base = f"file://{tmp_path}/store/{bucket}"
        yield Backend("file", base, get_storage(base), None, None)
    elif request.param == "s3":
        s3_env(monkeypatch, request.getfixturevalue("moto_endpoint"))
        base = f"s3://{bucket}/pre"
        store = get_storage(base)
        client = store.client()
        client.create_bucket(Bucket=bucket)
        breaks = {"left": 0, "after": 0}

        def cut(parsed: dict, **_: Any) -> None:
            if breaks["left"] > 0 and "Body" in parsed:
                breaks["left"] -= 1
                parsed["Body"] = _BreakingBody(parsed["Body"], breaks["after"])

        client.meta.events.register("after-call.s3.GetObject", cut)

        def break_downloads(after: int, times: int) -> None:
            breaks.update(left=times, after=after)

        yield Backend("s3", base, store, lambda key, data: client.put_object(Bucket=bucket, Key=f"pre/{key}", Body=data),
                      break_downloads)
        client.meta.events.unregister("after-call.s3.GetObject", cut)
    else:
        kodo: KodoServer = request.getfixturevalue("kodo")
        kodo.point_env(monkeypatch, tmp_path / "resume")
        kodo.create_bucket(bucket)
        base = f"qiniu://{bucket}/pre"

        def break_downloads(after: int, times: int) -> None:
            kodo.drop_download_after, kodo.drop_downloads = after, times

        store = get_storage(base)
        store.retry_delay = 0.01  # type: ignore[attr-defined]  # its backoff, not what is tested here
        yield Backend("qiniu", base, store, lambda key, data: kodo.put_object(bucket, f"pre/{key}", data),
                      break_downloads)
        kodo.drop_download_after = None
    for scheme in ("s3", "qiniu"):
        registry._instances.pop(scheme, None)


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def expected_etag(name: str, path: Path) -> str:
    if name == "qiniu":
        return kodo_etag(path.read_bytes())
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A disk that fills: writes past ``limit`` bytes fail with EFBIG (RLIMIT_FSIZE)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


# --- the conformance suite -----------------------------------------------------------------------
def test_round_trip_small_multipart_and_empty(backend, tmp_path):
    for name, size in [("small.bin", 1000), ("large.bin", 9 * MiB), ("empty.bin", 0)]:
        src = write(tmp_path / "src" / name, size)
        url = join_url(backend.base, "rt", name)
        info = backend.store.upload(src, url)
        assert (info.url, info.size) == (url, size)
        stat = backend.store.stat(url)
        assert stat.size == size and stat.etag
        if backend.name != "file":
            assert info.etag == stat.etag
        out = backend.store.download(url, tmp_path / "back" / name)
        assert out == tmp_path / "back" / name and out.read_bytes() == src.read_bytes()
    assert leftovers(tmp_path / "back") == ["empty.bin", "large.bin", "small.bin"]


def test_downloaded_files_get_the_mode_open_would_give_and_keep_a_replaced_files_mode(backend, tmp_path):
    from ava.utils.fileio import current_umask

    src = write(tmp_path / "src" / "m.bin", 1000)
    url = join_url(backend.base, "mode", "m.bin")
    backend.store.upload(src, url)
    new = backend.store.download(url, tmp_path / "back" / "m.bin")
    assert new.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    old = tmp_path / "back" / "old.bin"
    old.write_bytes(b"x")
    old.chmod(0o640)
    backend.store.download(url, old)
    assert old.stat().st_mode & 0o777 == 0o640 and old.read_bytes() == src.read_bytes()
    if backend.name == "file":  # the stored copy itself is a file too
        assert Path(backend.store.path_of(url)).stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_stat_reports_size_and_the_backends_hash(backend, tmp_path):
    src = write(tmp_path / "a.bin", 4321)
    url = join_url(backend.base, "a.bin")
    backend.store.upload(src, url)
    info = backend.store.stat(url)
    assert info.size == 4321 and info.etag == expected_etag(backend.name, src)
    assert backend.store.exists(url)


def test_list_with_prefix_sorted_and_paginated(backend, tmp_path):
    src = write(tmp_path / "x", 10)
    keys = ["p/a.txt", "p/b/c.txt", "pq/x.txt", "other.txt"]
    for key in keys:
        backend.store.upload(src, join_url(backend.base, key))
    under_p = backend.store.list(join_url(backend.base, "p") + "/")
    assert [i.url for i in under_p] == [join_url(backend.base, "p/a.txt"), join_url(backend.base, "p/b/c.txt")]
    assert {i.size for i in under_p} == {10}
    assert backend.store.list(join_url(backend.base, "nothing") + "/") == []
    if hasattr(backend.store, "list_page_size"):
        backend.store.list_page_size = 2  # type: ignore[attr-defined]
    try:
        everything = [i.url for i in backend.store.list(backend.base + "/")]
    finally:
        if hasattr(backend.store, "list_page_size"):
            backend.store.list_page_size = 1000  # type: ignore[attr-defined]
    assert everything == sorted(join_url(backend.base, k) for k in keys)


def test_delete_then_missing(backend, tmp_path):
    url = join_url(backend.base, "gone.bin")
    backend.store.upload(write(tmp_path / "g", 5), url)
    backend.store.delete(url)
    assert not backend.store.exists(url)
    with pytest.raises(ObjectNotFoundError):
        backend.store.delete(url)


def test_missing_key_errors_name_the_url(backend, tmp_path):
    url = join_url(backend.base, "nope.bin")
    with pytest.raises(ObjectNotFoundError, match=re.escape(url)) as err:
        backend.store.stat(url)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ObjectNotFoundError, match=re.escape(url)):
        backend.store.download(url, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
    with pytest.raises(ObjectNotFoundError):
        backend.store.delete(url)
    assert not backend.store.exists(url)
    with pytest.raises(ObjectNotFoundError, match="no such file"):
        backend.store.upload(tmp_path / "absent.bin", url)


def test_missing_bucket_is_object_not_found_naming_it(backend, tmp_path):
    if backend.name == "file":
        url = f"file://{tmp_path}/no-such-root/k.bin"
        missing = url
    else:
        missing = f"no-such-{uuid.uuid4().hex[:8]}"
        url = f"{backend.name}://{missing}/k.bin"
    with pytest.raises(ObjectNotFoundError, match=re.escape(missing)):
        backend.store.stat(url)
    with pytest.raises(ObjectNotFoundError, match=re.escape(missing)):
        backend.store.download(url, tmp_path / "k.bin")
    assert not (tmp_path / "k.bin").exists()


def test_a_directory_where_a_file_was_expected(backend, tmp_path):
    folder = tmp_path / "adir"
    write(folder / "inside.txt", 3)
    url = join_url(backend.base, "f.bin")
    with pytest.raises(StorageError, match="is a directory"):
        backend.store.upload(folder, url)
    backend.store.upload(write(tmp_path / "f.bin", 100), url)
    with pytest.raises(StorageError, match="(?i)is a directory"):
        backend.store.download(url, folder)
    assert leftovers(folder) == ["inside.txt"] and not any(".part" in n for n in leftovers(tmp_path))


def test_a_disk_that_fills_leaves_the_target_untouched(backend, tmp_path):
    url = join_url(backend.base, "model.bin")
    src = write(tmp_path / "model.bin", 1 * MiB)
    backend.store.upload(src, url)
    target = tmp_path / "out" / "model.bin"
    target.parent.mkdir()
    target.write_bytes(b"old weights")
    with file_size_limit(256 * 1024):
        with pytest.raises(StorageError, match=re.escape(url)):
            backend.store.download(url, target)
    assert target.read_bytes() == b"old weights"
    assert leftovers(target.parent) == ["model.bin"]
    with pytest.raises(StorageError):  # a fresh target: nothing appears at all
        with file_size_limit(256 * 1024):
            backend.store.download(url, target.parent / "new.bin")
    assert leftovers(target.parent) == ["model.bin"]


def test_a_dropped_download_resumes_or_leaves_no_file(backend, tmp_path):
    if backend.break_downloads is None:
        pytest.skip("file:// has no connection to drop (the full-disk test covers its failure path)")
    src = write(tmp_path / "w.bin", 3 * MiB)
    url = join_url(backend.base, "w.bin")
    backend.store.upload(src, url)
    backend.break_downloads(700_000, 2)
    assert backend.store.download(url, tmp_path / "back.bin").read_bytes() == src.read_bytes()
    backend.break_downloads(500_000, 100)
    with pytest.raises(StorageError, match=re.escape(url)):
        backend.store.download(url, tmp_path / "never.bin")
    backend.break_downloads(0, 0)
    assert not (tmp_path / "never.bin").exists() and not any(".part" in n for n in leftovers(tmp_path))


class _Parallelism(Storage):
    """Delegates to a backend; the first two calls of each kind must meet, so one-at-a-time fails."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.barriers = {"upload": threading.Barrier(2, timeout=20), "download": threading.Barrier(2, timeout=20)}
        self.calls = {"upload": 0, "download": 0}
        self.lock = threading.Lock()

    def _meet(self, kind: str) -> None:
        with self.lock:
            self.calls[kind] += 1
            first_two = self.calls[kind] <= 2
        if first_two:
            self.barriers[kind].wait()

    def upload(self, local: Path, url: str) -> ObjectInfo:
        self._meet("upload")
        return self.inner.upload(local, url)

    def download(self, url: str, local: Path) -> Path:
        self._meet("download")
        return self.inner.download(url, local)

    def stat(self, url: str) -> ObjectInfo:
        return self.inner.stat(url)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, url: str) -> None:
        self.inner.delete(url)


def test_tree_upload_and_download_in_parallel(backend, tmp_path):
    src = tmp_path / "tree"
    rels = ["a.txt", "sub/b.bin", "sub/deeper/c.txt", "empty.txt"] + [f"many/f{i:02d}.txt" for i in range(12)]
    for i, rel in enumerate(rels):
        write(src / rel, 0 if rel == "empty.txt" else 100 + 997 * i)
    store = _Parallelism(backend.store)
    url = join_url(backend.base, "tree")
    done: list[str] = []
    infos = upload_tree(src, url, parallelism=4, storage=store, on_file=lambda u, n: done.append(u))
    assert sorted(i.url for i in infos) == sorted(join_url(url, r) for r in rels) == sorted(done)
    paths = download_tree(url, tmp_path / "back", parallelism=4, storage=store)
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in paths) == sorted(rels)
    for rel in rels:
        assert (tmp_path / "back" / rel).read_bytes() == (src / rel).read_bytes()


class _ExtraListing(_Parallelism):
    """A backend whose listing also shows objects a directory tree cannot hold."""

    def __init__(self, inner: Storage, extra: list[ObjectInfo]) -> None:
        super().__init__(inner)
        self.extra = extra
        self.barriers = {}

    def _meet(self, kind: str) -> None:
        pass

    def list(self, prefix: str) -> list[ObjectInfo]:
        return sorted(self.inner.list(prefix) + [i for i in self.extra if i.url.startswith(prefix)],
                      key=lambda i: i.url)


@pytest.mark.parametrize("bad_key, reason", [("tree/../escape.txt", "'..'"), ("tree//abs.txt", "absolute")])
def test_download_tree_refuses_keys_that_escape(backend, tmp_path, bad_key, reason):
    backend.store.upload(write(tmp_path / "ok.txt", 5), join_url(backend.base, "tree/ok.txt"))
    store: Storage = backend.store
    if backend.put_raw is None:
        store = _ExtraListing(backend.store, [ObjectInfo(f"{backend.base}/{bad_key}", 1)])
    else:
        backend.put_raw(bad_key, b"evil")
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(StorageError, match=f"refusing to download .*{re.escape(reason)}"):
        download_tree(join_url(backend.base, "tree"), dest, parallelism=4, storage=store)
    assert not dest.exists() and not (tmp_path / "dest" / "escape.txt").exists()


# --- what one backend or test server has to prove ------------------------------------------------
def test_tree_refuses_a_file_as_its_directory(tmp_path):
    write(tmp_path / "f", 1)
    with pytest.raises(StorageError, match="not a directory"):
        upload_tree(tmp_path / "f", f"file://{tmp_path}/store")
    with pytest.raises(ObjectNotFoundError):
        upload_tree(tmp_path / "absent", f"file://{tmp_path}/store")
    with pytest.raises(StorageError, match="not a directory"):
        download_tree(f"file://{tmp_path}/store", tmp_path / "f")


def test_s3_without_credentials_names_the_variables(monkeypatch, moto_endpoint, tmp_path):
    use_backends(monkeypatch)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AVA_S3_ENDPOINT", moto_endpoint)
    with pytest.raises(StorageError, match="no S3 credentials for s3://b/k: set AWS_ACCESS_KEY_ID and "
                                           "AWS_SECRET_ACCESS_KEY"):
        get_storage("s3://b/k").stat("s3://b/k")


@pytest.mark.parametrize("name, value, said", [
    ("AWS_PROFILE", "nosuch", "ProfileNotFound"),
    ("AVA_S3_ENDPOINT", "not-a-url", "Invalid endpoint: not-a-url"),
    ("AWS_MAX_ATTEMPTS", "abc", "'abc'"),
    ("AWS_DEFAULT_REGION", "bad region!", "bad region!"),
])
def test_s3_settings_boto3_cannot_use_are_one_config_error(monkeypatch, moto_endpoint, tmp_path, name, value, said):
    from ava.errors import ConfigError

    use_backends(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.setenv("AVA_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="cannot set up S3 for s3://b/k: ") as info:
        get_storage("s3://b/k").stat("s3://b/k")
    assert said in str(info.value) and "\n" not in str(info.value)


def test_s3_partial_credentials_name_the_missing_variable(monkeypatch, moto_endpoint):
    use_backends(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AVA_S3_ENDPOINT", moto_endpoint)
    with pytest.raises(StorageError, match="no S3 credentials for s3://b/k.*missing: AWS_SECRET_ACCESS_KEY"):
        get_storage("s3://b/k").stat("s3://b/k")


def test_s3_upload_checks_the_stored_checksum(monkeypatch, moto_endpoint, tmp_path):
    use_backends(monkeypatch)
    s3_env(monkeypatch, moto_endpoint)
    store = get_storage("s3://checks/x")
    store.client().create_bucket(Bucket="checks")
    src = write(tmp_path / "big.bin", 9 * MiB)
    monkeypatch.setattr("ava.storage.s3._PartDigests.composite", lambda self: "AAAAAA==")
    with pytest.raises(StorageError, match="stored CRC32 .* differs from the file's"):
        store.upload(src, "s3://checks/big.bin")


def test_qiniu_without_credentials_names_variables_and_file(monkeypatch, kodo, tmp_path):
    use_backends(monkeypatch)
    for name, value in kodo.env().items():
        if name not in ("AVA_ACCESS_KEY", "AVA_SECRET_KEY"):
            monkeypatch.setenv(name, value)
    ws = tmp_path / "ws"
    monkeypatch.setenv("AVA_WORKSPACE", str(ws))
    url = "qiniu://creds/k.bin"
    with pytest.raises(StorageError, match=f"set AVA_ACCESS_KEY and AVA_SECRET_KEY, or put .*{re.escape(str(ws))}/"
                                           "config/user"):
        get_storage(url).stat(url)
    # config/user is the fallback the platform provides
    (ws / "config").mkdir(parents=True)
    (ws / "config" / "user").write_text(json.dumps({"key": kodo.access_key, "secret": kodo.secret_key}))
    kodo.create_bucket("creds")
    monkeypatch.setenv("AVA_QINIU_RESUME_DIR", str(tmp_path / "resume"))
    assert get_storage(url).upload(write(tmp_path / "k.bin", 7), url).size == 7


def test_kodo_checks_signatures_tokens_and_deadlines(monkeypatch, kodo, tmp_path):
    import requests

    from ava.storage.qiniu import QiniuStorage

    use_backends(monkeypatch)
    kodo.point_env(monkeypatch, tmp_path / "resume")
    kodo.create_bucket("signed")
    url = "qiniu://signed/a b/ü.bin"
    good = QiniuStorage()
    good.upload(write(tmp_path / "a.bin", 100), url)
    wrong = QiniuStorage(access_key=kodo.access_key, secret_key="not-the-secret")
    for call in (lambda: wrong.stat(url), lambda: wrong.upload(tmp_path / "a.bin", url),
                 lambda: wrong.list("qiniu://signed/"), lambda: wrong.delete(url)):
        with pytest.raises(StorageError, match=r"was refused \(401.*the access key and secret key this storage was given"):
            call()
    # Keys from the environment are named as such.
    monkeypatch.setenv("AVA_SECRET_KEY", "not-the-secret")
    with pytest.raises(StorageError, match=r"was refused \(401.*check AVA_ACCESS_KEY/AVA_SECRET_KEY"):
        QiniuStorage().stat(url)
    monkeypatch.setenv("AVA_SECRET_KEY", kodo.secret_key)
    assert requests.get(good.signed_url(url)).content == (tmp_path / "a.bin").read_bytes()
    assert requests.get(good.signed_url(url, expires=-10)).status_code == 401
    assert requests.get(good.signed_url(url).replace("?e=", "?e=9")).status_code == 401
    assert requests.get(wrong.signed_url(url)).status_code == 401


def test_kodo_speaks_form_resumable_v1_and_v2_to_the_sdk(monkeypatch, kodo, tmp_path):
    import qiniu

    kodo.create_bucket("proto")
    auth = qiniu.Auth(kodo.access_key, kodo.secret_key)
    region = [qiniu.Region(up_host=kodo.url, io_host=kodo.url, rs_host=kodo.url, rsf_host=kodo.url)]
    before = dict(kodo.counts)
    for name, size, version in [("form", 3000, "v2"), ("v1", 9 * MiB, "v1"), ("v2", 9 * MiB, "v2")]:
        src = write(tmp_path / name, size)
        ret, info = qiniu.put_file_v2(auth.upload_token("proto", name), name, str(src), version=version,
                                      regions=region, bucket_name="proto")
        assert info.ok(), info
        assert ret["hash"] == qiniu.utils.etag(str(src)) == kodo_etag(kodo.object_bytes("proto", name))
    got = {k: kodo.counts[k] - before.get(k, 0) for k in ("form", "mkblk", "mkfile", "init", "part", "complete")}
    assert got == {"form": 1, "mkblk": 3, "mkfile": 1, "init": 1, "part": 3, "complete": 1}
    # a bucket-only token may not overwrite a different object; a bucket:key token may
    ret, info = qiniu.put_data(auth.upload_token("proto"), "form", b"other", regions=region)
    assert info.status_code == 614
    ret, info = qiniu.put_data(auth.upload_token("proto", "form"), "form", b"other", regions=region)
    assert info.ok() and kodo.object_bytes("proto", "form") == b"other"


def test_qiniu_upload_rides_through_a_server_failing_every_other_request(monkeypatch, kodo, tmp_path):
    use_backends(monkeypatch)
    kodo.point_env(monkeypatch, tmp_path / "resume")
    kodo.create_bucket("flaky")
    store = get_storage("qiniu://flaky/")
    store.retry_delay = 0.01  # type: ignore[attr-defined]
    src = write(tmp_path / "w.bin", 9 * MiB)
    failed = kodo.failed
    kodo.fail_every_other = True
    try:
        for _ in range(10):  # each try resumes from the record, as the SnapshotUploader's retries do
            try:
                info = store.upload(src, "qiniu://flaky/w.bin")
                break
            except StorageError:
                continue
        else:
            pytest.fail("10 tries did not finish the upload")
        small = store.upload(write(tmp_path / "s.bin", 10), "qiniu://flaky/s.bin")
    finally:
        kodo.fail_every_other = False
    assert kodo.failed - failed >= 3
    assert info.etag == kodo_etag(src.read_bytes()) and small.size == 10
    assert kodo.object_bytes("flaky", "w.bin") == src.read_bytes()


def test_qiniu_upload_checks_the_returned_hash(monkeypatch, kodo, tmp_path):
    import qiniu.utils

    use_backends(monkeypatch)
    kodo.point_env(monkeypatch, tmp_path / "resume")
    kodo.create_bucket("hashes")
    monkeypatch.setattr(qiniu.utils, "etag", lambda path: "Fnot-the-hash-of-this-file-x")
    with pytest.raises(StorageError, match="Kodo stored hash .* the file's is 'Fnot-the-hash"):
        get_storage("qiniu://hashes/").upload(write(tmp_path / "a", 10), "qiniu://hashes/a")


def test_qiniu_upload_to_a_host_that_is_not_kodo_says_so(monkeypatch, kodo, tmp_path):
    import http.server
    import threading

    class NotKodo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>welcome to the proxy</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotKodo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use_backends(monkeypatch)
        kodo.point_env(monkeypatch)
        monkeypatch.setenv("AVA_QINIU_UP_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("AVA_QINIU_RESUME_DIR", str(tmp_path / "resume"))
        with pytest.raises(StorageError, match="the upload host answered without the stored file's hash.*proxy"):
            get_storage("qiniu://b/").upload(write(tmp_path / "a", 10), "qiniu://b/a")
    finally:
        server.shutdown()


def test_qiniu_helpers():
    from ava.env import Env
    from ava.storage.qiniu import KodoEtag, QiniuStorage, token_lifetime

    assert token_lifetime(0) == 3600 and token_lifetime(64 * 1024 ** 3) >= 64 * 1024 ** 3 / (512 * 1024)
    for size in (0, 1, 4 * MiB, 4 * MiB + 1, 9 * MiB):
        data = os.urandom(size)
        h = KodoEtag()
        for i in range(0, size, 1_000_003):
            h.update(data[i:i + 1_000_003])
        assert h.hexdigest() == kodo_etag(data)
    env = Env({"AVA_QINIU_DOWNLOAD_DOMAIN": "a=http://x.example, b=y.example"})
    store = QiniuStorage(access_key="ak", secret_key="sk", env=env)
    assert store._domain("a", "qiniu://a/k") == "http://x.example"
    assert store._domain("b", "qiniu://b/k") == "http://y.example"
    with pytest.raises(StorageError, match="names no domain for bucket 'c'"):
        store._domain("c", "qiniu://c/k")
    templated = QiniuStorage(access_key="ak", secret_key="sk",
                             env=Env({"AVA_QINIU_DOWNLOAD_DOMAIN": "https://dl.example/{bucket}/"}))
    assert templated._domain("m", "qiniu://m/k") == "https://dl.example/m"
    assert base64.urlsafe_b64decode(templated.signed_url("qiniu://m/a b").split("token=ak:")[1] + "==")
    with pytest.raises(StorageError, match="AVA_QINIU_RS_HOST set but AVA_QINIU_UP_HOST not"):
        QiniuStorage(env=Env({"AVA_QINIU_RS_HOST": "http://rs"}))._regions()
