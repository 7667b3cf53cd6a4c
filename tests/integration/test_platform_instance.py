"""TrainInstance and the platform API: created there, updated at done(), local when unreachable."""

import json
import logging
import time

import pytest

from ava.platform.client import PlatformClient
from ava.train import base as train
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_instance_is_created_and_finished_on_the_platform(ws, platform):
    (ws.root / "config").mkdir()
    (ws.root / "config" / "trainingspec").write_text(json.dumps({"name": "digits"}))
    (ws.params_dir / "default.json").write_text(json.dumps({"lr": 0.1}))
    ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={"AVA_API_HOST": platform.url})
    remote = PlatformClient(platform.url).get_instance("digits", ins.get_training_ins_id())
    assert remote["status"] == "running" and remote["params"] == {"lr": 0.1}
    ins.done(err_msg="diverged")
    remote = PlatformClient(platform.url).get_instance("digits", ins.get_training_ins_id())
    assert remote["status"] == "failed" and remote["errMsg"] == "diverged" and remote["stopTime"]


def test_proxy_variables_do_not_take_the_platform_calls_away(ws, platform, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a container's proxy for the internet
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    ins = train.TrainInstance("proxied", workspace=ws.root, setup_logging=False,
                              env={"AVA_API_HOST": platform.url, "AVA_STATUS_HOST": platform.url, "JOB_NAME": "j"})
    ins.log_metrics({"loss": 1.0}, step=0)
    ins.done()
    # The metric sink went direct while the API client went to the proxy: metrics for an
    # instance the platform never heard of.
    assert PlatformClient(platform.url).get_instance("j", "proxied")["status"] == "done"


def test_explicit_id_is_registered_when_the_platform_lacks_it(ws, platform):
    ins = train.TrainInstance("given-id", workspace=ws.root, setup_logging=False,
                              env={"AVA_API_HOST": platform.url, "JOB_NAME": "ava-job-42"})
    ins.done()
    assert PlatformClient(platform.url).get_instance("ava-job-42", "given-id")["status"] == "done"


def test_signed_requests_with_keys_from_config_user(ws, tmp_path):
    from ava.platform_server import PlatformServer

    server = PlatformServer(str(tmp_path / "p.db"), keys=("AK", "SK"))
    server.start_in_thread()
    try:
        (ws.root / "config").mkdir()
        (ws.root / "config" / "user").write_text(json.dumps({"key": "AK", "secret": "SK"}))
        (ws.root / "config" / "worker").write_text(json.dumps({"atnet_apiserver_host": server.url}))
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={})
        ins.done()
        assert PlatformClient(server.url, "AK", "SK").get_instance("default", ins.get_training_ins_id())["status"] == "done"
    finally:
        server.stop()


def test_unreachable_api_degrades_to_a_local_instance_in_bounded_time(ws, caplog):
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    ins = train.TrainInstance(workspace=ws.root, setup_logging=False,
                              env={"AVA_API_HOST": f"http://127.0.0.1:{free_port()}", "AVA_DONE_TIMEOUT": "2"})
    ins.log_metrics({"loss": 1.0}, step=1)
    ins.done()
    assert time.monotonic() - t0 < 20
    assert json.loads(ins.status_path.read_text())["status"] == "done"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("continuing as a local instance" in w for w in warnings)
    assert any("status.json has it" in w for w in warnings)


class _OddServer:
    """A platform API on 127.0.0.1 that answers every request with ``answer(conn)`` (raw HTTP)."""

    def __init__(self, answer):
        import socket
        import threading

        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading

        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.recv(65536)
            self.answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopping = True
        self.sock.close()


def _trickle(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(60):  # one byte a second: every read succeeds, the answer never ends
        conn.sendall(b" ")
        time.sleep(1.0)


def _json(body):
    def answer(conn):
        data = json.dumps(body).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    return answer


def test_a_server_that_trickles_its_answer_is_cut_at_the_deadline(ws, caplog):
    from ava.errors import PlatformError

    server = _OddServer(_trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(PlatformError, match="unreachable"):
            PlatformClient(server.url, deadline=1.5, retries=0).get_instance("t", "x")
        assert time.monotonic() - t0 < 5
        t0 = time.monotonic()
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False,
                                  env={"AVA_API_HOST": server.url, "AVA_DONE_TIMEOUT": "2"})
        ins.done()
        assert time.monotonic() - t0 < 15  # open and finish, each bounded by the deadline
        assert json.loads(ins.status_path.read_text())["status"] == "done"
    finally:
        server.close()


@pytest.mark.parametrize("body", [[1, 2, 3], "hello", None])
def test_an_answer_that_is_json_but_not_an_object_is_a_warning_and_a_local_instance(ws, caplog, body):
    server = _OddServer(_json(body))
    try:
        caplog.set_level(logging.WARNING)
        ins = train.TrainInstance("given", workspace=ws.root, setup_logging=False, env={"AVA_API_HOST": server.url})
        ins.done()
        assert json.loads(ins.status_path.read_text())["status"] == "done"
        assert any("not an object" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


def test_a_platform_id_that_cannot_be_a_directory_name_is_cleaned_here_and_kept_there(ws, platform, caplog):
    from ava.platform_server import PlatformServer  # noqa: F401 - the reference server stores what it is given

    caplog.set_level(logging.WARNING)
    seen = []

    def create(training, spec, real=PlatformClient.create_instance):
        doc = real(PlatformClient(platform.url), training, {**spec, "id": "a b/../c"})
        seen.append(doc["id"])
        return doc

    import unittest.mock

    with unittest.mock.patch.object(PlatformClient, "create_instance", lambda self, t, s: create(t, s)):
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={"AVA_API_HOST": platform.url})
    assert seen == ["a b/../c"] and "/" not in ins.get_training_ins_id() and ins.get_training_ins_id() != "a b/../c"
    assert any("cannot be a directory name" in r.getMessage() for r in caplog.records)
    ins.done()
    assert PlatformClient(platform.url).get_instance("default", "a b/../c")["status"] == "done"


def test_a_config_file_that_cannot_be_read_is_one_warning(ws, caplog):
    (ws.root / "config").mkdir()
    (ws.root / "config" / "worker").symlink_to("/proc/self/mem")  # reading it fails with EIO
    (ws.root / "config" / "user").write_text(json.dumps({"key": 1, "secret": 2}))
    caplog.set_level(logging.WARNING)
    ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={})
    ins.done()
    text = caplog.text
    assert "cannot be read" in text and "config/worker" in text


def test_a_404_when_creating_the_instance_says_so(ws, caplog):
    def not_found(conn):
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    server = _OddServer(not_found)
    try:
        caplog.set_level(logging.WARNING)
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={"AVA_API_HOST": server.url})
        ins.done()
        assert any("HTTP 404 (no such training on the platform?)" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


def test_done_keeps_to_its_budget_when_both_platform_hosts_hang(ws):
    def hang(conn):
        time.sleep(30)

    server = _OddServer(hang)
    try:
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False,
                                  env={"AVA_API_HOST": server.url, "AVA_STATUS_HOST": server.url, "AVA_DONE_TIMEOUT": "2"})
        ins.log_metrics({"loss": 1.0}, step=1)
        t0 = time.monotonic()
        ins.done()
        took = time.monotonic() - t0
        assert took < 4.0, took  # delivery and the platform update share the 2 s (it was 2 s each)
        assert json.loads(ins.status_path.read_text())["status"] == "done"
    finally:
        server.close()


def test_a_resumed_instance_does_not_show_the_last_attempts_error_while_it_runs(ws, platform):
    env = {"AVA_API_HOST": platform.url, "JOB_NAME": "j"}
    train.TrainInstance("again", workspace=ws.root, setup_logging=False, env=env).done(err_msg="boom")
    ins = train.TrainInstance("again", workspace=ws.root, setup_logging=False, env=env)
    remote = PlatformClient(platform.url).get_instance("j", "again")
    assert remote["status"] == "running" and not remote.get("errMsg") and not remote.get("stopTime"), remote
    ins.done()
    remote = PlatformClient(platform.url).get_instance("j", "again")
    assert remote["status"] == "done" and not remote.get("errMsg") and remote["stopTime"]


def test_the_reference_server_prints_a_usable_ipv6_url(tmp_path):
    import socket
    from ava.platform_server import PlatformServer

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = PlatformServer(str(tmp_path / "p6.db"), host="::1")
        server.start_in_thread()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        ins = train.TrainInstance("v6", workspace=tmp_path / "ws", setup_logging=False,
                                  env={"AVA_API_HOST": server.url, "JOB_NAME": "j"})
        ins.done()
        assert PlatformClient(server.url).get_instance("j", "v6")["status"] == "done"
    finally:
        server.stop()


def test_the_platform_being_unreachable_is_said_in_run_log_too(ws):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ins = train.TrainInstance("early", workspace=ws.root,
                              env={"AVA_API_HOST": f"http://127.0.0.1:{port}", "AVA_DONE_TIMEOUT": "1"})
    ins.done()
    from ava.log.logger import close_logger

    close_logger()
    # Said before run.log existed, it reached only the console.
    assert "cannot open the training instance" in (ins.logs_dir / "run.log").read_text()


def test_the_platform_being_unreachable_still_reaches_the_console(ws, capfd):
    import socket

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []  # a script that set up no logging: Python's last resort prints warnings
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ins = train.TrainInstance("early-console", workspace=ws.root, setup_logging=False,
                                  env={"AVA_API_HOST": f"http://127.0.0.1:{port}", "AVA_DONE_TIMEOUT": "1"})
        ins.done()
    finally:
        root.handlers[:] = saved
    # Held for run.log, it no longer reached stderr.
    assert "cannot open the training instance" in capfd.readouterr().err
