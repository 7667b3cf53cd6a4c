"""``ava upload`` and ``ava fetch``: file:// and http:// sources, exit codes, the summary line."""

from __future__ import annotations

import os
import re

import pytest

from ava import cli
from tests.support.file_server import FileServer

SUMMARY = re.compile(r"^(uploaded|fetched) (\d+) files?, ([\d,]+) bytes in \d+\.\d\d s \(\d+\.\d MB/s\) to (.+)$")


@pytest.fixture
def ava(capsys):
    """Run ``ava ARGS...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def summary(out: str) -> re.Match:
    lines = out.strip().splitlines()
    m = SUMMARY.match(lines[-1])
    assert m, out
    return m


def test_upload_and_fetch_one_file(ava, tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(5000))
    code, out, _ = ava("upload", str(src), f"file://{tmp_path}/store/run1/model.bin")
    assert code == 0
    assert summary(out).group(1, 2, 3, 4) == ("uploaded", "1", "5,000", f"file://{tmp_path}/store/run1/model.bin")
    assert (tmp_path / "store/run1/model.bin").read_bytes() == src.read_bytes()

    (tmp_path / "back").mkdir()
    code, out, _ = ava("fetch", f"file://{tmp_path}/store/run1/model.bin", str(tmp_path / "back"))
    assert code == 0
    assert summary(out).group(1, 2, 3) == ("fetched", "1", "5,000")
    assert (tmp_path / "back/model.bin").read_bytes() == src.read_bytes()


def test_upload_to_a_prefix_ending_in_slash_keeps_the_name(ava, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("a")
    code, out, _ = ava("upload", str(src), f"file://{tmp_path}/store/")
    assert code == 0 and (tmp_path / "store/a.txt").read_text() == "a"


def test_upload_and_fetch_a_tree(ava, tmp_path):
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("aa")
    (src / "sub" / "b.txt").write_text("bbb")
    code, out, _ = ava("upload", str(src), f"file://{tmp_path}/store/run1", "-j", "2")
    assert code == 0 and summary(out).group(2, 3) == ("2", "5")
    code, out, _ = ava("fetch", f"file://{tmp_path}/store/run1", str(tmp_path / "back"))
    assert code == 0 and summary(out).group(2, 3) == ("2", "5")
    assert (tmp_path / "back/sub/b.txt").read_text() == "bbb"


def test_upload_of_a_tree_says_what_it_leaves_out_once_and_names_a_link_loop(ava, tmp_path, caplog):
    src = tmp_path / "out"
    src.mkdir()
    (src / "a.txt").write_text("aa")
    (src / "self").symlink_to(src / "self")  # a link to itself
    with caplog.at_level("WARNING", logger="ava.storage.tree"):
        code, out, _ = ava("upload", str(src), f"file://{tmp_path}/store/run1")
    assert code == 0 and summary(out).group(2) == "1"
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == [f"{src}: left out 1: self (a link loop)"]  # was said twice, and called a dangling link


def test_qiniu_without_credentials_is_a_setting_to_make_exit_2(ava, tmp_path, monkeypatch):
    pytest.importorskip("qiniu")
    for name in ("AVA_ACCESS_KEY", "AVA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "ws"))
    (tmp_path / "a.txt").write_text("a")
    code, _, err = ava("upload", str(tmp_path / "a.txt"), "qiniu://bkt/a.txt")
    assert code == 2  # was 1, as for a failure to retry
    assert err.strip().startswith("ava: no Qiniu credentials for qiniu://bkt/a.txt: set AVA_ACCESS_KEY")


def test_upload_of_an_empty_folder_says_nothing_is_uploaded(ava, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = ava("upload", str(tmp_path / "empty"), f"file://{tmp_path}/store/e")
    assert code == 0 and summary(out).group(2) == "0"
    assert f"{tmp_path / 'empty'} holds no files; nothing is uploaded" in err


def test_bad_input_exits_2_with_one_line(ava, tmp_path):
    code, _, err = ava("upload", str(tmp_path / "absent"), f"file://{tmp_path}/store/x")
    assert code == 2 and "no such file or directory" in err and err.count("\n") == 1
    code, _, err = ava("upload", __file__, "ftp://host/x")
    assert code == 2 and "unknown storage scheme 'ftp'" in err and "known: " in err and "file" in err
    code, _, err = ava("upload", __file__, "s3://")  # was said of 's3://test_transfer_cli.py', a URL never typed
    assert code == 2 and err.strip() == "ava: 's3://' names no bucket; write s3://bucket/key"
    code, _, err = ava("fetch", "ftp://host/x", str(tmp_path / "x"))
    assert code == 2 and "unknown storage scheme 'ftp'" in err
    code, _, err = ava("fetch", f"file://{tmp_path}/store/nothing", str(tmp_path / "x"))
    assert code == 2 and "no object at" in err
    assert not (tmp_path / "x").exists()
    code, _, err = ava("fetch", "http:///x", str(tmp_path / "x"))
    assert code == 2 and "names no host" in err and err.count("\n") == 1
    (tmp_path / "store" / "tree").mkdir(parents=True)
    (tmp_path / "store" / "tree" / "a.txt").write_text("a")
    (tmp_path / "file.txt").write_text("mine")
    code, _, err = ava("fetch", f"file://{tmp_path}/store/tree", str(tmp_path / "file.txt"))
    assert code == 2 and "is a file" in err and (tmp_path / "file.txt").read_text() == "mine"


@pytest.fixture
def srv(tmp_path):
    root = tmp_path / "srv"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.rec").write_bytes(os.urandom(200_000))
    with FileServer(root) as server:
        yield server


def test_fetch_http_into_a_directory_through_drops(ava, srv, tmp_path):
    srv.faults.drop_after, srv.faults.drop_count = 50_000, 2
    dest = tmp_path / "dl"
    dest.mkdir()
    code, out, err = ava("fetch", srv.url_for("data/train.rec"), str(dest))
    assert code == 0, err
    m = summary(out)
    assert m.group(1, 2, 3, 4) == ("fetched", "1", "200,000", str(dest / "train.rec"))
    assert (dest / "train.rec").read_bytes() == (srv.root / "data/train.rec").read_bytes()
    assert srv.stats.body_bytes == 200_000


def test_fetch_http_progress_bar_on_request(ava, srv, tmp_path):
    pytest.importorskip("tqdm")
    code, out, err = ava("fetch", "--progress", srv.url_for("data/train.rec"), str(tmp_path / "t.rec"))
    assert code == 0 and "100%" in err
    code, out, err = ava("fetch", srv.url_for("data/train.rec"), str(tmp_path / "t2.rec"))
    assert code == 0 and err == ""  # stderr is not a terminal here: no bar


def test_fetch_http_errors(ava, srv, tmp_path, monkeypatch):
    code, _, err = ava("fetch", srv.url_for("data/missing.rec"), str(tmp_path / "m.rec"))
    assert code == 2 and "HTTP 404" in err
    monkeypatch.setattr("ava.utils.fetcher.Fetcher._delay", lambda self, failures: 0.0)
    srv.faults.fail_count = 100
    target = tmp_path / "t.rec"
    target.write_bytes(b"old")
    code, _, err = ava("fetch", srv.url_for("data/train.rec"), str(target))
    assert code == 1 and "HTTP 500" in err
    assert target.read_bytes() == b"old"
    code, _, err = ava("fetch", srv.url + "/data/", str(tmp_path))
    assert code == 2 and "file name" in err


def test_upload_and_fetch_a_tree_through_qiniu(ava, tmp_path, monkeypatch):
    pytest.importorskip("qiniu")
    from ava.storage import registry
    from tests.support.kodo_server import KodoServer

    monkeypatch.setattr(registry, "_instances", {})
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "b.bin").write_bytes(os.urandom(4000))
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.create_bucket("models")
        kodo.point_env(monkeypatch)
        code, out, err = ava("upload", str(src), "qiniu://models/run1")
        assert code == 0, err
        assert summary(out).group(2, 3) == ("2", "7,000")
        code, out, err = ava("fetch", "qiniu://models/run1", str(tmp_path / "back"))
        assert code == 0, err
        assert summary(out).group(2, 3) == ("2", "7,000")
        code, out, err = ava("fetch", "qiniu://models/run1/sub/b.bin", str(tmp_path / "one.bin"))
        assert code == 0, err
        code, out, err = ava("fetch", "qiniu://models/run1/", str(tmp_path / "slash"))  # a prefix, written as one
        assert code == 0 and summary(out).group(2, 3) == ("2", "7,000"), err
        code, out, err = ava("fetch", "qiniu://models", str(tmp_path / "bucket"))  # the whole bucket
        assert code == 0 and summary(out).group(2, 3) == ("2", "7,000"), err
        assert (tmp_path / "bucket/run1/sub/b.bin").read_bytes() == (src / "sub/b.bin").read_bytes()
        assert (tmp_path / "slash/sub/b.bin").read_bytes() == (src / "sub/b.bin").read_bytes()
        for args in (("upload", str(src / "a.bin"), "qiniu:///key"), ("upload", str(src / "a.bin"), "qiniu://models"),
                     ("upload", str(src), "file://relative/path")):
            code, _, err = ava(*args)
            assert code == 2 and err.count("\n") == 1, (args, err)
    assert (tmp_path / "back/sub/b.bin").read_bytes() == (src / "sub/b.bin").read_bytes()
    assert (tmp_path / "one.bin").read_bytes() == (src / "sub/b.bin").read_bytes()


def test_upload_of_a_folder_to_a_prefix_ending_in_slash_keeps_its_name(ava, tmp_path):
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "model.bin").write_text(f"{run} weights")
        code, out, _ = ava("upload", str(tmp_path / run), f"file://{tmp_path}/store/runs/")
        assert code == 0, out
    # The old command put both trees straight under runs/: run2 overwrote run1.
    assert (tmp_path / "store/runs/run1/model.bin").read_text() == "run1 weights"
    assert (tmp_path / "store/runs/run2/model.bin").read_text() == "run2 weights"


def test_fetch_from_an_s3_endpoint_that_is_a_web_console_fails_and_writes_nothing(ava, tmp_path, monkeypatch):
    import http.server
    import threading

    class Console(http.server.BaseHTTPRequestHandler):
        def _page(self, body: bool) -> None:
            page = b"<!doctype html><html><body>Console</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)

        def do_GET(self):
            self._page(True)

        def do_HEAD(self):
            self._page(False)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Console)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AVA_S3_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from ava.storage import registry

    monkeypatch.setattr(registry, "_instances", {})
    try:
        code, _, err = ava("fetch", "s3://models/run1/model.bin", str(tmp_path / "model.bin"))
    finally:
        server.shutdown()
    # The old fetch wrote the console's HTML into model.bin and said it fetched it.
    assert code != 0 and "answered with a web page, not an S3 object" in err, err
    assert not (tmp_path / "model.bin").exists()


def test_upload_to_a_server_that_is_not_s3_names_its_http_status(ava, tmp_path, monkeypatch):
    import http.server
    import threading

    class NotS3(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            page = b"<html><title>405: Method Not Allowed</title></html>"
            self.send_response(405)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(page)

        do_PUT = do_POST = do_GET = do_HEAD = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name, value in (("AVA_S3_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}"),
                        ("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    from ava.storage import registry

    monkeypatch.setattr(registry, "_instances", {})
    (tmp_path / "a").write_text("a")
    try:
        code, _, err = ava("upload", str(tmp_path / "a"), "s3://models/a")
    finally:
        server.shutdown()
    assert code != 0 and "HTTP 405" in err and "is it an S3 endpoint?" in err, err  # it said "failed (: )"


def test_fetch_into_a_folder_that_is_a_file_names_it(ava, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a.txt").write_text("a")
    (tmp_path / "pf").write_text("a file where a folder should be")
    code, _, err = ava("fetch", f"file://{tmp_path}/store/a.txt", str(tmp_path / "pf" / "sub" / "out"))
    # It said "File exists" (or "Not a directory"), naming neither the file nor the problem.
    assert code != 0 and f"{tmp_path / 'pf'} is a file, not a directory" in err, err
    code, _, err = ava("upload", str(tmp_path / "store" / "a.txt"), f"file://{tmp_path}/pf/x/y")
    assert code != 0 and f"{tmp_path / 'pf'} is a file, not a directory" in err, err
