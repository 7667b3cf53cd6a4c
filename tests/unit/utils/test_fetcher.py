"""The tornado Fetcher against the fault-injecting file server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ava.errors import AvaError, ObjectNotFoundError, UsageError
from ava.utils.fetcher import (
    FetchError,
    Fetcher,
    FetchIntegrityError,
    QMacAuthFetcher,
    check_relative_name,
    etag_kind,
    names_for_urls,
)
from tests.conftest import REPO
from tests.support.file_server import FileServer, qiniu_etag_of

SIZE = 300_000


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "srv"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(SIZE))
    (root / "small.txt").write_text("hello\n")
    return root


@pytest.fixture
def srv(root):
    with FileServer(root) as server:
        yield server


@pytest.fixture
def fetcher():
    f = Fetcher(backoff=0.001, max_backoff=0.01)
    yield f
    f.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


# --- the old fetch() --------------------------------------------------------------------
def test_fetch_returns_res_and_err(srv, fetcher):
    res, err = fetcher.fetch(srv.url_for("small.txt"))
    assert err is None and res.code == 200 and res.body == b"hello\n"
    res, err = fetcher.fetch(srv.url_for("missing"))
    assert res is None and err.code == 404


@pytest.mark.parametrize("url", ["not a url", "ftp://host/x", "qiniu://"])
def test_fetch_of_a_url_it_cannot_fetch_returns_the_error_too(fetcher, url):
    res, err = fetcher.fetch(url)
    assert res is None and isinstance(err, AvaError) and url in str(err)


def test_async_fetch_hands_a_bad_url_to_the_callback():
    f = Fetcher(_async=True)
    got = []

    def cb(res, err):
        got.append((res, err))
        f.stop_tornado_ioloop()

    assert f.fetch("not a url", callback=cb) is None
    f.start_tornado_ioloop()
    f.close()
    assert len(got) == 1 and got[0][0] is None and isinstance(got[0][1], UsageError)


def test_fetch_retries_500s_only_when_asked(srv, fetcher):
    srv.faults.fail_count = 2
    res, err = fetcher.fetch(srv.url_for("small.txt"))  # max_retry=-1: no retry
    assert res is None and err.code == 500
    res, err = fetcher.fetch(srv.url_for("small.txt"), max_retry=3)
    assert err is None and res.body == b"hello\n"
    assert [r.status for r in srv.stats.requests] == [500, 500, 200]


def test_fetch_body_larger_than_max_buffer_size_is_an_error(srv):
    with Fetcher(max_buffer_size=1000) as f:
        res, err = f.fetch(srv.url_for("a.bin"))
    assert res is None and err is not None


def test_async_fetch_with_callback_and_the_old_ioloop_calls(srv):
    f = Fetcher(_async=True)
    got = []

    def cb(res, err, tag, key=None):
        got.append((res.code if res else None, err, tag, key))
        f.stop_tornado_ioloop()

    assert f.fetch(srv.url_for("small.txt"), callback=cb, cb_args=("t",), cb_kargs={"key": "k"}) is None
    f.start_tornado_ioloop()
    assert got == [(200, None, "t", "k")]
    f.close()


def test_async_fetch_awaited_inside_a_running_loop(srv):
    async def main():
        f = Fetcher(_async=True)
        res, err = await f.fetch(srv.url_for("small.txt"))
        path = await f.fetch_huge_file(srv.url_for("a.bin"), srv.root.parent / "out" / "a.bin")
        f.close()
        return res.body, path

    body, path = asyncio.run(main())
    assert body == b"hello\n" and path.read_bytes() == (srv.root / "a.bin").read_bytes()


def test_one_sync_fetcher_serves_several_threads(srv, fetcher, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda i: fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / f"{i}.bin"), range(8)))
    assert all(p.read_bytes() == (srv.root / "a.bin").read_bytes() for p in paths)


def test_a_sync_fetcher_works_inside_a_running_loop(srv, fetcher):
    async def main():
        return fetcher.fetch(srv.url_for("small.txt"))

    res, err = asyncio.run(main())
    assert err is None and res.body == b"hello\n"


# --- fetch_huge_file ----------------------------------------------------------------------
def test_a_progress_callback_that_raises_is_dropped_and_the_download_goes_on(srv, fetcher, tmp_path, caplog):
    # A one-argument callback (progress(fraction)) failed the whole download: nothing was written.
    calls = []
    out = fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin", progress_callback=lambda f: calls.append(f))
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    said = [r.getMessage() for r in caplog.records if "progress callback" in r.getMessage()]
    assert len(said) == 1 and "callback(bytes_done, total_bytes_or_None)" in said[0] and calls == []


def test_small_download_with_progress(srv, fetcher, tmp_path):
    seen = []
    out = fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "out" / "a.bin",
                                  progress_callback=lambda done, total: seen.append((done, total)))
    assert out == tmp_path / "out" / "a.bin"
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    assert seen[-1] == (SIZE, SIZE)
    assert leftovers(out.parent) == []


def test_a_download_gets_the_mode_open_would_give_or_keeps_the_replaced_files(srv, fetcher, tmp_path):
    from ava.utils.fileio import current_umask

    out = fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "new.bin")
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    old = tmp_path / "old.bin"
    old.write_bytes(b"x")
    old.chmod(0o604)
    fetcher.fetch_huge_file(srv.url_for("a.bin"), old)
    assert old.stat().st_mode & 0o777 == 0o604 and old.stat().st_size == SIZE


def test_resumes_with_range_after_dropped_connections(srv, fetcher, tmp_path):
    srv.faults.drop_after, srv.faults.drop_count = 70_000, 3
    out = fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin")
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    assert [r.range for r in srv.stats.gets()] == [None, "bytes=70000-", "bytes=140000-", "bytes=210000-"]
    assert srv.stats.body_bytes == SIZE  # nothing sent twice


def test_retries_500s_with_backoff(srv, fetcher, tmp_path):
    srv.faults.fail_count = 3
    out = fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin")
    assert out.stat().st_size == SIZE
    assert [r.status for r in srv.stats.requests] == [500, 500, 500, 200]


def test_gives_up_and_leaves_the_target_untouched(srv, tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"the old file")
    srv.faults.fail_count = 100
    with Fetcher(backoff=0.001, max_retry=2) as f, pytest.raises(FetchError, match="after 3 failed attempts in a row.*HTTP 500"):
        f.fetch_huge_file(srv.url_for("a.bin"), target)
    assert target.read_bytes() == b"the old file"
    assert leftovers(tmp_path) == []
    assert len(srv.stats.requests) == 3


def test_an_existing_file_is_replaced_never_appended_to(srv, fetcher, tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"x" * (SIZE + 5000))
    fetcher.fetch_huge_file(srv.url_for("a.bin"), target)
    assert target.read_bytes() == (srv.root / "a.bin").read_bytes()


def test_a_longer_announced_length_is_detected(srv, fetcher, tmp_path):
    srv.faults.length_delta = 1000
    with pytest.raises(FetchIntegrityError, match=f"announced {SIZE + 1000} bytes but holds {SIZE}"):
        fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin")
    assert not (tmp_path / "a.bin").exists() and leftovers(tmp_path) == []


def test_a_shorter_announced_length_fails_the_md5_check(srv, fetcher, tmp_path):
    srv.faults.length_delta = -1000
    with pytest.raises(FetchIntegrityError, match="does not match its ETag: md5"):
        fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin")
    assert not (tmp_path / "a.bin").exists() and leftovers(tmp_path) == []
    # Without a hash to check, the announced length is all there is: the short body is accepted.
    srv.faults.etag = "none"
    fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin")
    assert (tmp_path / "a.bin").stat().st_size == SIZE - 1000


def test_a_qiniu_etag_is_verified_the_way_the_qiniu_sdk_computes_it(root, fetcher, tmp_path):
    qiniu_utils = pytest.importorskip("qiniu.utils")
    big = root / "big.bin"
    big.write_bytes(os.urandom((4 << 20) + 12345))  # two 4 MiB blocks: the 0x96 form
    assert qiniu_etag_of(big) == qiniu_utils.etag(str(big))
    with FileServer(root) as server:
        server.faults.etag = "qiniu"
        server.faults.drop_after, server.faults.drop_count = 1_000_000, 1
        fetcher.fetch_huge_file(server.url_for("big.bin"), tmp_path / "big.bin")
        assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()
        server.faults.length_delta = -1
        with pytest.raises(FetchIntegrityError, match="qiniu"):
            fetcher.fetch_huge_file(server.url_for("big.bin"), tmp_path / "big2.bin")


def test_a_changed_object_restarts_from_zero(srv, fetcher, tmp_path):
    # If-Range: after the drop the file on the server changes; the resumed request gets the
    # whole new file instead of a splice of old and new.
    src = srv.root / "a.bin"
    new = os.urandom(SIZE)
    srv.faults.drop_after, srv.faults.drop_count = 100_000, 1

    def swap(done, total):
        if done >= 100_000 and src.read_bytes() != new:
            src.write_bytes(new)
            os.utime(src, ns=(1, 1))

    fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin", progress_callback=swap)
    assert (tmp_path / "a.bin").read_bytes() == new
    statuses = [r.status for r in srv.stats.gets()]
    assert statuses == [200, 200]


def test_a_chunked_body_through_a_redirect(srv, fetcher, tmp_path):
    srv.faults.chunked, srv.faults.chunk_size = True, 10_000
    out = fetcher.fetch_huge_file(srv.url + "/redirect/a.bin", tmp_path / "a.bin")
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    assert [(r.path, r.status) for r in srv.stats.requests] == [("redirect/a.bin", 302), ("a.bin", 200)]


def test_slow_bodies_arrive_whole_and_a_silent_server_is_resumed(srv, tmp_path):
    srv.faults.chunk_delay, srv.faults.chunk_size = 0.001, 50_000
    with Fetcher(backoff=0.001) as f:
        assert f.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "a.bin").stat().st_size == SIZE
    # A connection that stays silent longer than req_timeout is dropped and resumed with Range.
    srv.reset()
    srv.faults.drop_after, srv.faults.drop_count, srv.faults.stall = 100_000, 1, 30.0
    with Fetcher(backoff=0.001, req_timeout=0.5) as f:
        f.fetch_huge_file(srv.url_for("a.bin"), tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == (srv.root / "a.bin").read_bytes()
    gets = srv.stats.gets()
    assert gets[0].range is None and gets[0].sent == 100_000
    assert "bytes=100000-" in [r.range for r in gets[1:]] and srv.stats.body_bytes == SIZE


def test_https_with_the_system_trust_store(root, tmp_path, monkeypatch):
    from tests.support.tls_cert import self_signed

    cert, server_ctx = self_signed(tmp_path)
    with FileServer(root, ssl_context=server_ctx) as server:
        with Fetcher(backoff=0.001) as f, pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            f.fetch_huge_file(server.url_for("a.bin"), tmp_path / "a.bin")  # not retried: a wrong certificate stays wrong
        assert len(server.stats.requests) == 0
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted the way the system's CAs are
        server.faults.drop_after, server.faults.drop_count = 100_000, 1
        with Fetcher(backoff=0.001) as f:
            out = f.fetch_huge_file(server.url_for("a.bin"), tmp_path / "a.bin")
    assert out.read_bytes() == (root / "a.bin").read_bytes()
    assert [r.range for r in server.stats.gets()] == [None, "bytes=100000-"]


def test_not_found_is_object_not_found(srv, fetcher, tmp_path):
    with pytest.raises(FileNotFoundError):
        fetcher.fetch_huge_file(srv.url_for("nope.bin"), tmp_path / "nope.bin")
    with pytest.raises(ObjectNotFoundError, match="HTTP 404"):
        fetcher.fetch_huge_file(srv.url_for("nope.bin"), tmp_path / "nope.bin")
    assert list(tmp_path.iterdir()) == [srv.root] or leftovers(tmp_path) == []


def test_a_directory_target_is_refused(srv, fetcher, tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        fetcher.fetch_huge_file(srv.url_for("a.bin"), tmp_path)


def test_a_full_disk_removes_the_temp_file_and_keeps_the_target(srv, tmp_path):
    # RLIMIT_FSIZE makes write() fail part-way with EFBIG, as a full disk would with ENOSPC.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "a.bin"
    target.write_bytes(b"the old file")
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from ava.errors import StorageError
from ava.utils.fetcher import Fetcher
f = Fetcher(backoff=0.001)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    f.fetch_huge_file({srv.url_for("a.bin")!r}, {str(target)!r})
except StorageError as exc:
    print(exc.errno)
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    errno_, message = out.stdout.splitlines()[:2]
    assert errno_ == "27"  # EFBIG
    assert "is the disk full?" in message and "partial download was removed" in message
    assert target.read_bytes() == b"the old file"
    assert leftovers(out_dir) == []
    assert len(srv.stats.gets()) == 1  # a full disk is not retried


# --- fetch_many -------------------------------------------------------------------------
def test_fetch_many_keeps_the_tree_below_the_common_directory(root, srv, fetcher, tmp_path):
    names = [f"d/sub/{i}.bin" for i in range(20)] + ["d/top.bin"]
    for n in names:
        (root / n).write_bytes(n.encode() * 100)
    done = []
    paths = fetcher.fetch_many([srv.url_for(n) for n in names], tmp_path / "dl", concurrency=4,
                               progress_callback=lambda files, total, nbytes: done.append((files, total)))
    assert paths == [tmp_path / "dl" / n[2:] for n in names]
    assert all(p.read_bytes() == (root / n).read_bytes() for p, n in zip(paths, names))
    assert done[-1] == (21, 21)


def test_an_interrupted_fetch_many_leaves_no_temp_files(root, srv, fetcher, tmp_path):
    names = [f"d/{i}.bin" for i in range(40)]
    for n in names:
        (root / n).write_bytes(os.urandom(50_000))
    srv.faults.chunk_size, srv.faults.chunk_delay = 10_000, 0.002  # keep the others in flight

    def interrupt(files, total, nbytes):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetcher.fetch_many([srv.url_for(n) for n in names], tmp_path / "dl", concurrency=8,
                           progress_callback=interrupt)
    assert leftovers(tmp_path / "dl") == []
    arrived = list((tmp_path / "dl").iterdir())  # those that had arrived (a rename may have been under way)
    assert 1 <= len(arrived) < 40
    assert all(p.read_bytes() == (root / "d" / p.name).read_bytes() for p in arrived)
    # The Fetcher still works afterwards.
    assert fetcher.fetch(srv.url_for("small.txt"))[0].body == b"hello\n"


@pytest.mark.parametrize("slow_step", ["open", "commit"])
def test_an_interrupt_during_a_slow_file_operation_still_leaves_no_temp_file(root, srv, fetcher, tmp_path,
                                                                                monkeypatch, slow_step):
    # One download's temp file is being created (or renamed) on the file thread when another
    # download's progress callback interrupts: fetch_many must not return before it is gone.
    import threading
    import time

    from ava.utils import _fetch_transfer

    (root / "d" / "slow.bin").write_bytes(os.urandom(20_000))
    (root / "d" / "fast.bin").write_bytes(os.urandom(20_000))
    in_slow_step = threading.Event()
    opened = _fetch_transfer._Transfer.__init__
    committed = _fetch_transfer._Transfer.commit

    def slow_open(self, target, *args):
        opened(self, target, *args)
        if slow_step == "open" and target.name == "slow.bin":
            in_slow_step.set()
            time.sleep(0.5)

    def slow_commit(self, fsync):
        if self.target.name == "slow.bin":
            in_slow_step.set()
            time.sleep(0.5)
            return committed(self, fsync)
        in_slow_step.wait(5)  # the fast one finishes only once the slow one is inside its step
        return committed(self, fsync)

    monkeypatch.setattr(_fetch_transfer._Transfer, "__init__", slow_open)
    monkeypatch.setattr(_fetch_transfer._Transfer, "commit", slow_commit)

    def interrupt(files, total, nbytes):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetcher.fetch_many([srv.url_for("d/slow.bin"), srv.url_for("d/fast.bin")], tmp_path / "dl",
                           concurrency=2, progress_callback=interrupt)
    assert in_slow_step.is_set()
    assert leftovers(tmp_path / "dl") == []  # at once, not some time later on another thread
    if slow_step == "commit":  # the rename was under way: it finished, the file is whole
        assert (tmp_path / "dl" / "slow.bin").read_bytes() == (root / "d" / "slow.bin").read_bytes()


def test_fetch_many_reports_failures_after_the_rest_arrive(root, srv, fetcher, tmp_path):
    urls = [srv.url_for("a.bin"), srv.url_for("small.txt"), srv.url_for("missing.bin")]
    with pytest.raises(FetchError, match="1 of 3 downloads failed.*missing.bin") as info:
        fetcher.fetch_many(urls, tmp_path / "dl")
    assert [u for u, _ in info.value.failures] == [urls[2]]
    assert (tmp_path / "dl" / "small.txt").read_text() == "hello\n"


@pytest.mark.parametrize("path", ["/a/../../etc/passwd", "/%2E%2E/x", "/%2Fetc/passwd", "/a//b", "/d/", "/"])
def test_fetch_many_refuses_names_that_could_escape(srv, fetcher, tmp_path, path):
    with pytest.raises(UsageError):
        fetcher.fetch_many([srv.url + path], tmp_path / "dl")
    assert srv.stats.requests == [] and not (tmp_path / "dl").exists()


@pytest.mark.parametrize("name", ["../x", "/etc/x", "", "a/./b", "a/../../b"])
def test_fetch_many_refuses_explicit_names_that_could_escape(srv, fetcher, tmp_path, name):
    with pytest.raises(UsageError):
        fetcher.fetch_many([srv.url_for("a.bin")], tmp_path / "dl", names=[name])
    assert srv.stats.requests == []


def test_fetch_many_refuses_a_symlink_out_of_dest(srv, fetcher, tmp_path):
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UsageError, match="leads outside"):
        fetcher.fetch_many([srv.url_for("a.bin")], dest, names=["link/a.bin"])


def test_fetch_many_refuses_two_urls_with_one_name(srv, fetcher, tmp_path):
    with pytest.raises(UsageError, match="both be saved"):
        fetcher.fetch_many([srv.url_for("a.bin"), srv.url_for("a.bin")], tmp_path / "dl")


def test_names_for_urls_and_relative_names():
    assert names_for_urls(["http://h/x/y/1.bin"]) == ["1.bin"]
    assert names_for_urls(["http://h/x/a%20b.bin?token=1", "http://g/x/c/d.bin"]) == ["a b.bin", "c/d.bin"]
    assert names_for_urls(["qiniu://bucket/data/t/1.jpg", "qiniu://bucket/data/v/2.jpg"]) == ["t/1.jpg", "v/2.jpg"]
    assert check_relative_name("a/b.c") == "a/b.c"
    with pytest.raises(UsageError, match="absolute"):
        check_relative_name("/a")


def test_etag_kinds():
    assert etag_kind('"D41D8CD98F00B204E9800998ECF8427E"') == ("md5", "d41d8cd98f00b204e9800998ecf8427e")
    assert etag_kind('"Fto5o-5ea0sNMlW_75VgGJCv2AcJ"') == ("qiniu", "Fto5o-5ea0sNMlW_75VgGJCv2AcJ")
    assert etag_kind('W/"d41d8cd98f00b204e9800998ecf8427e"') == (None, None)
    assert etag_kind('"9bb58f26192e4ba00f01e2e7b136bbd8-3"') == (None, None)  # S3 multipart
    assert etag_kind(None) == (None, None)


# --- URLs and signing ---------------------------------------------------------------------
def test_from_kodo_signs_a_private_download_url(monkeypatch):
    pytest.importorskip("qiniu")
    url = Fetcher(access_key="ak", secret_key="sk").resolve_url("http://bucket.example.com/k.bin", from_kodo=True)
    assert url.startswith("http://bucket.example.com/k.bin?e=") and "&token=ak:" in url
    with pytest.raises(UsageError, match="AVA_ACCESS_KEY"):
        Fetcher(env={}).resolve_url("http://bucket.example.com/k.bin", from_kodo=True)


def test_unknown_schemes_are_usage_errors():
    with pytest.raises(UsageError, match="http://, https:// and qiniu://"):
        Fetcher().resolve_url("ftp://host/x")


class FakeQiniuStorage:
    """Stands in for ava.storage.qiniu: turns qiniu://bucket/key into a signed file-server URL."""

    base = ""

    def signed_url(self, url: str, expires: int = 3600) -> str:
        return f"{self.base}/{url.split('/', 3)[3]}?e=9999999999&token=ak:sig"


def test_qiniu_urls_are_signed_by_the_storage_layer(srv, fetcher, tmp_path, monkeypatch):
    from ava.storage import registry

    monkeypatch.setitem(registry.BACKENDS, "qiniu", (f"{__name__}:FakeQiniuStorage", ""))
    monkeypatch.setattr(registry, "_instances", {})
    monkeypatch.setattr(FakeQiniuStorage, "base", srv.url)
    out = fetcher.fetch_huge_file("qiniu://bucket/a.bin", tmp_path / "a.bin")
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    paths = fetcher.fetch_many(["qiniu://bucket/a.bin", "qiniu://bucket/small.txt"], tmp_path / "many")
    assert [p.name for p in paths] == ["a.bin", "small.txt"]
    assert fetcher.parse_qiniu_url("/bucket/small.txt").endswith("/small.txt?e=9999999999&token=ak:sig")


def test_qiniu_urls_without_the_backend_say_so(fetcher, tmp_path, monkeypatch):
    from ava.storage import registry

    monkeypatch.delitem(registry.BACKENDS, "qiniu", raising=False)
    monkeypatch.setitem(sys.modules, "ava.storage.qiniu", None)  # as if the module did not exist
    with pytest.raises(UsageError, match="qiniu storage backend"):
        fetcher.fetch_huge_file("qiniu://bucket/a.bin", tmp_path / "a.bin")
    assert list(tmp_path.iterdir()) == []


def test_qiniu_urls_through_the_real_backend(srv, tmp_path, monkeypatch):
    # ava.storage.qiniu signs a private download URL on the configured domain (our file
    # server, which ignores the token); a dropped connection is resumed with a fresh signature.
    pytest.importorskip("qiniu")
    pytest.importorskip("ava.storage.qiniu")
    monkeypatch.setenv("AVA_QINIU_DOWNLOAD_DOMAIN", srv.url)
    srv.faults.drop_after, srv.faults.drop_count = 100_000, 1
    with Fetcher(access_key="ak", secret_key="sk", backoff=0.001) as f:
        out = f.fetch_huge_file("qiniu://bucket/a.bin", tmp_path / "a.bin")
    assert out.read_bytes() == (srv.root / "a.bin").read_bytes()
    assert [r.range for r in srv.stats.gets()] == [None, "bytes=100000-"]


def test_qiniu_urls_against_the_kodo_protocol_server(tmp_path, monkeypatch):
    # The Kodo test server checks the download token's signature and deadline, and serves the
    # object's Kodo etag: a drop is resumed with a fresh signature and the etag verified.
    pytest.importorskip("qiniu")
    from ava.storage import registry
    from tests.support.kodo_server import KodoServer

    monkeypatch.setattr(registry, "_instances", {})
    data = os.urandom((8 << 20) + 1000)  # three 4 MiB blocks: the 0x96 form, hashed on its thread
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.create_bucket("data")
        kodo.put_object("data", "train/a.bin", data)
        kodo.point_env(monkeypatch)
        kodo.drop_download_after, kodo.drop_downloads = 3 << 20, 1
        with Fetcher(backoff=0.001) as f:
            assert f.fetch_huge_file("qiniu://data/train/a.bin", tmp_path / "a.bin").read_bytes() == data
            assert f.fetch_many(["qiniu://data/train/a.bin"], tmp_path / "many")[0].read_bytes() == data
        assert kodo.counts["download"] == 3
        with Fetcher(access_key="test-access-key", secret_key="wrong") as f, \
                pytest.raises(FetchError, match="HTTP 401.*bad token"):
            f.fetch_huge_file("qiniu://data/train/a.bin", tmp_path / "b.bin")
        assert not (tmp_path / "b.bin").exists()


def test_the_old_platforms_zone_urls_against_the_kodo_protocol_server(tmp_path, monkeypatch):
    # qiniu://[uid@]zone/bucket/key, as the guide's parse_qiniu_url describes: the zone was
    # taken for the bucket (HTTP 404 for the bucket "z0").
    pytest.importorskip("qiniu")
    from ava.storage import registry
    from tests.support.kodo_server import KodoServer

    monkeypatch.setattr(registry, "_instances", {})
    data = os.urandom(5000)
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.create_bucket("models")
        kodo.put_object("models", "r50/big.bin", data)
        kodo.point_env(monkeypatch)
        with Fetcher(backoff=0.001) as f:
            for url in ("qiniu://z0/models/r50/big.bin", "qiniu://1234@z0/models/r50/big.bin",
                        "qiniu://cn-east-2/models/r50/big.bin"):
                assert f.fetch_huge_file(url, tmp_path / "a.bin").read_bytes() == data
                res, err = f.fetch(f.parse_qiniu_url(url))
                assert err is None and res.body == data


@pytest.mark.parametrize("url, plain", [
    ("qiniu://z1/b/k", "qiniu://b/k"), ("qiniu://uid@na0/b/d/k", "qiniu://b/d/k"),
    ("qiniu://z0/k", "qiniu://z0/k"),  # a bucket z0 (no key after a bucket): as it is
    ("qiniu://my-data-1/x/y", "qiniu://my-data-1/x/y"), ("qiniu://bucket/z0/k", "qiniu://bucket/z0/k"),
])
def test_without_zone(url, plain):
    from ava.utils.fetcher import without_zone

    assert without_zone(url) == plain


def test_qmac_auth_fetcher_signs_like_the_qiniu_sdk(srv):
    auth_mod = pytest.importorskip("qiniu.auth")
    f = QMacAuthFetcher("ak", "sk")
    url = srv.url_for("small.txt") + "?x=1"
    headers = f.sign(url, "GET", None, {"X-Qiniu-Meta": "m"})
    check = auth_mod.QiniuMacAuth("ak", "sk")
    assert check.verify_callback(headers["Authorization"], url, None, headers["Content-Type"], "GET", headers)
    res, err = f.fetch(srv.url_for("small.txt"))
    assert err is None and res.body == b"hello\n"
    f.close()


def test_downloads_hash_as_they_go(root, fetcher, tmp_path):
    # Large enough for the helper thread: the hash still matches.
    big = root / "big.bin"
    big.write_bytes(os.urandom(20 << 20))
    with FileServer(root) as server:
        server.faults.drop_after, server.faults.drop_count = 7_000_000, 2
        out = fetcher.fetch_huge_file(server.url_for("big.bin"), tmp_path / "big.bin")
        assert server.stats.body_bytes == big.stat().st_size
    assert hashlib.md5(out.read_bytes()).hexdigest() == hashlib.md5(big.read_bytes()).hexdigest()


def test_a_refused_connection_says_so(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # It said "Stream is closed", which names no cause.
    with Fetcher(backoff=0.001, max_retry=1) as f, pytest.raises(FetchError, match="Connection refused"):
        f.fetch_huge_file(f"http://127.0.0.1:{port}/x", tmp_path / "x")
