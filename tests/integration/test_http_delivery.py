"""Metrics reach the platform's endpoint exactly once, whatever the endpoint does."""

import json
import logging
import sqlite3
import time

import pytest

from ava.metrics.sinks.jsonl import iter_records
from ava.platform_server import PlatformServer
from ava.train import base as train
from tests.conftest import run_python
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def stored(db_path, instance_id):
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT rank, seq FROM points WHERE id = ? ORDER BY rank, seq", (instance_id,)).fetchall()
    finally:
        db.close()


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def open_instance(ws, ins_id, url, **env):
    return train.TrainInstance(ins_id, workspace=ws.root, setup_logging=False,
                               env={"AVA_STATUS_HOST": url, **env})


def test_down_then_slow_then_up_delivers_every_record_exactly_once(ws, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ins = open_instance(ws, "outage", url, AVA_DONE_TIMEOUT="60")
    ins._http._max_backoff = 0.5  # keep the test short; the backoff logic is the same
    server = None
    try:
        for i in range(20_000):
            if i == 10_000:  # the first half went to a server that was not there
                assert wait_for(lambda: ins._http._failing_since is not None), "delivery never tried the dead port"
                server = PlatformServer(str(tmp_path / "p.db"), port=port)
                server.faults.mode, server.faults.delay = "delay", 0.2
                server.start_in_thread()
            if i == 15_000:  # slow for a quarter (every answer 200 ms late), then up
                assert wait_for(lambda: server.faults.hits >= 2), "the slow server was never reached"
                server.faults.mode = None
            ins.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
        ins.done()
        assert server.faults.hits > 0
        assert stored(server.db_path, "outage") == [(0, s) for s in range(20_000)]
    finally:
        if server is not None:
            server.stop()


def test_undelivered_records_are_sent_when_another_process_resumes(ws, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ins = open_instance(ws, "later", url, AVA_DONE_TIMEOUT="0.5")
    for i in range(5000):
        ins.log_metrics({"loss": 0.5, "acc": 0.25}, step=i)
    t0 = time.monotonic()
    ins.done()
    assert time.monotonic() - t0 < 10, "done() must give up on delivery within its bound"
    assert len(list(iter_records(ins.metrics_path))) == 10_000

    server = PlatformServer(str(tmp_path / "p.db"), port=port)
    server.start_in_thread()
    try:
        code = f"""
from ava.train import base as train
ins = train.TrainInstance("later", workspace={str(ws.root)!r}, setup_logging=False,
                          env={{"AVA_STATUS_HOST": {url!r}, "AVA_DONE_TIMEOUT": "60"}})
ins.log_metrics({{"loss": 0.1}}, step=5000)
ins.done()
"""
        out = run_python(code)
        assert out.returncode == 0, out.stderr
        assert stored(server.db_path, "later") == [(0, s) for s in range(10_001)]
    finally:
        server.stop()


def test_training_thread_never_waits_on_a_server_that_never_answers(ws, platform):
    def timed(ins, n=10_000):
        t0 = time.perf_counter()
        for i in range(n):
            ins.log_metrics({"loss": 0.5, "accuracy": 0.9, "lr": 0.01}, step=i)
        elapsed = time.perf_counter() - t0
        ins.done(timeout=0.5)
        return elapsed

    platform.faults.mode = "hang"  # accepts the connection, never answers
    baseline = timed(train.TrainInstance("no-server", workspace=ws.root, setup_logging=False, env={}))
    hanging = timed(open_instance(ws, "hanging", platform.url))
    baseline_again = timed(train.TrainInstance("no-server-2", workspace=ws.root, setup_logging=False, env={}))
    assert platform.faults.hits >= 1
    assert hanging < 3 * min(baseline, baseline_again) + 0.5, (hanging, baseline, baseline_again)


def test_a_4xx_is_reported_once_and_keeps_the_records(ws, platform, caplog):
    platform.faults.mode = "400"
    caplog.set_level(logging.WARNING)
    ins = open_instance(ws, "refused", platform.url)
    for i in range(100):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done(timeout=2)
    refusals = [r for r in caplog.records if "refused the records" in r.getMessage()]
    assert len(refusals) == 1 and "HTTP 400" in refusals[0].getMessage() and "stopping delivery" in refusals[0].getMessage()
    assert not any("not delivered" in r.getMessage() for r in caplog.records)  # no second, vaguer line
    # A few probes of smaller parts tell a server refusing everything from one bad record.
    assert 1 < platform.faults.hits < 20
    assert len(list(iter_records(ins.metrics_path))) == 100
    assert not (ins.metrics_path.parent / "metrics.jsonl.http-offset").exists()
    assert ins._http.skipped == 0


def test_a_record_the_server_refuses_is_skipped_and_the_rest_delivered(ws, platform, caplog):
    # A step beyond 64 bits is a fine JSON number in metrics.jsonl, but the server refuses it.
    caplog.set_level(logging.WARNING, logger="ava.metrics.sinks.http")
    ins = open_instance(ws, "poison", platform.url)
    for i in range(100):
        ins.log_metrics({"loss": 1.0}, step=2**63 if i == 37 else i)
    ins.flush_metrics(10)
    assert wait_for(lambda: len(stored(platform.db_path, "poison")) == 99)
    ins.log_metrics({"loss": 0.5}, step=100)  # delivery goes on after it
    ins.done(timeout=30)
    assert stored(platform.db_path, "poison") == [(0, s) for s in range(101) if s != 37]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refused the record seq 37" in errors[0] and "metrics.jsonl" in errors[0]
    assert ins._http.skipped == 1 and not ins._http.refused
    assert [r["step"] for r in iter_records(ins.metrics_path)][37] == 2**63  # kept locally, exact


def test_retry_after_is_honoured(ws, platform):
    platform.faults.mode, platform.faults.retry_after = "503", 30
    ins = open_instance(ws, "busy", platform.url)
    ins.log_metrics({"loss": 1.0}, step=1)
    ins.flush_metrics(5)
    deadline = time.monotonic() + 10
    while platform.faults.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a retry inside this second would ignore Retry-After
    assert platform.faults.hits == 1
    ins.done(timeout=0.2)


@pytest.mark.parametrize("mode", ["close", "garbage", "500"])
def test_broken_answers_are_retried_until_delivered(ws, platform, mode):
    platform.faults.mode, platform.faults.count = mode, 3
    ins = open_instance(ws, f"broken-{mode}", platform.url)
    ins._http._max_backoff = 0.2
    for i in range(50):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done(timeout=30)
    assert platform.faults.hits == 3
    assert stored(platform.db_path, f"broken-{mode}") == [(0, s) for s in range(50)]


@pytest.mark.parametrize("host", ["not a url", "ftp://x", "http://", "http://host:notaport"])
def test_a_malformed_status_host_is_one_error_and_training_goes_on(ws, host, caplog):
    caplog.set_level(logging.ERROR)
    ins = open_instance(ws, "bad-host", host)
    ins.log_metrics({"loss": 1.0}, step=1)
    ins.done()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "AVA_STATUS_HOST" in errors[0]
    assert [r["value"] for r in iter_records(ins.metrics_path)] == [1.0]


def test_unresolvable_host_is_retried_not_fatal(ws):
    ins = open_instance(ws, "dns", "http://no-such-host.invalid:8080")
    ins.log_metrics({"loss": 1.0}, step=1)
    t0 = time.monotonic()
    ins.done(timeout=1)
    assert time.monotonic() - t0 < 10
    assert json.loads(ins.status_path.read_text())["status"] == "done"


def test_a_damaged_offset_file_resends_and_the_server_drops_duplicates(ws, platform):
    ins = open_instance(ws, "offset", platform.url)
    for i in range(100):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done()
    offset_file = ins.metrics_path.parent / "metrics.jsonl.http-offset"
    offset_file.write_text('{"offset": 7}')  # not at a line start
    again = open_instance(ws, "offset", platform.url)
    again.log_metrics({"loss": 2.0}, step=100)
    again.done()
    offset_file.write_text("garbage")
    third = open_instance(ws, "offset", platform.url)
    third.done()
    assert stored(platform.db_path, "offset") == [(0, s) for s in range(101)]


def _stalling_server(trickle: bool):
    """A status host that sends the headers of a 200, then its body a byte a second (or never)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)

    def handle(conn):
        f = conn.makefile("rb")
        f.readline()
        n = 0
        while (h := f.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"content-length:"):
                n = int(h.split(b":")[1])
        f.read(n)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                if trickle:
                    conn.sendall(b"x")
                time.sleep(1)
        except OSError:
            pass

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize("trickle", [False, True])
def test_done_keeps_its_bound_when_the_status_host_stalls_in_an_answer(ws, trickle):
    srv = _stalling_server(trickle)
    try:
        ins = open_instance(ws, f"stall-{trickle}", f"http://127.0.0.1:{srv.getsockname()[1]}", AVA_DONE_TIMEOUT="2")
        ins.log_metrics({"loss": 1.0}, step=0)
        ins.flush_metrics(10)
        t0 = time.monotonic()
        ins.done()
        took = time.monotonic() - t0
    finally:
        srv.close()
    # The old stop() closed the connection under the reading thread: 30 s for a stalled
    # answer, for ever for a trickled one (SIGTERM could not end the process either).
    assert took < 15, took
    assert json.loads((ins.metrics_path.parent.parent / "status.json").read_text())["status"] == "done"


def five_delivered(ws, platform, ins_id):
    """An instance whose first five records (steps 0-4) the platform has taken."""
    ins = open_instance(ws, ins_id, platform.url)
    for i in range(5):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.flush_metrics(10)
    assert wait_for(lambda: len(stored(platform.db_path, ins_id)) == 5)
    return ins


def test_a_lone_refused_record_after_deliveries_is_skipped_and_delivery_goes_on(ws, platform, caplog):
    caplog.set_level(logging.WARNING, logger="ava.metrics.sinks.http")
    ins = five_delivered(ws, platform, "lone")
    ins.log_metrics({"loss": 1.0}, step=2**63)  # alone in its batch, refused by the server
    ins.flush_metrics(10)
    assert wait_for(lambda: ins._http.skipped == 1 or ins._http.refused)
    for i in range(6, 50):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done(timeout=30)
    # The old sink took a lone refused record for a server refusing everything and stopped.
    assert not ins._http.refused
    assert stored(platform.db_path, "lone") == [(0, s) for s in range(50) if s != 5]


def test_a_line_longer_than_a_read_is_stepped_over(ws, platform, caplog):
    caplog.set_level(logging.WARNING, logger="ava.metrics.sinks.http")
    ins = open_instance(ws, "bigev", platform.url)
    ins.log_metrics({"loss": 1.0}, step=0)
    ins.log_event("note", step=0, text="x" * 5_000_000)  # events are not sent; its line is 5 MB
    for i in range(1, 100):
        ins.log_metrics({"loss": 1.0 / i}, step=i)
    ins.done(timeout=30)
    assert stored(platform.db_path, "bigev") == [(0, s) for s in range(101) if s != 1]
    assert any("too long to deliver" in r.getMessage() for r in caplog.records)


def test_a_new_status_host_or_a_negative_offset_delivers_from_the_start(ws, platform, tmp_path):
    ins = open_instance(ws, "moved", platform.url)
    for i in range(50):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done()
    other = PlatformServer(str(tmp_path / "other.db"))
    other.start_in_thread()
    try:
        again = open_instance(ws, "moved", other.url)  # the platform moved between two runs
        again.log_metrics({"loss": 2.0}, step=50)
        again.done()
        assert stored(other.db_path, "moved") == [(0, s) for s in range(51)]  # was only seq 50
        offset_file = ins.metrics_path.parent / "metrics.jsonl.http-offset"
        offset_file.write_text(json.dumps({"offset": -50, "url": platform.url}))
        third = open_instance(ws, "moved", platform.url)  # the thread died on seek(-50) before
        third.log_metrics({"loss": 3.0}, step=51)
        third.done()
        assert stored(platform.db_path, "moved") == [(0, s) for s in range(52)]
    finally:
        other.stop()


def test_a_server_that_turns_to_refusing_everything_stops_delivery_and_skips_nothing(ws, platform, caplog):
    caplog.set_level(logging.WARNING, logger="ava.metrics.sinks.http")
    ins = five_delivered(ws, platform, "turned")
    platform.faults.mode = "400"  # the server refuses everything from now on (a bad deploy)
    for i in range(5, 205):
        ins.log_metrics({"loss": 1.0}, step=i)
    ins.done(timeout=10)
    # Split to single records, each refused and skipped for good: 200 records lost to the platform.
    assert ins._http.refused and ins._http.skipped == 0
    platform.faults.mode = None
    again = open_instance(ws, "turned", platform.url)
    again.done(timeout=30)
    assert stored(platform.db_path, "turned") == [(0, s) for s in range(205)]
