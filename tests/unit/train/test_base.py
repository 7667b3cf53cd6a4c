import json
import re
import threading
import time

import pytest

from ava.errors import InstanceError, MetricsError, UsageError
from ava.metrics.sinks.jsonl import JsonlSink, iter_records
from ava.train import base as train
from tests.conftest import run_python


def open_instance(ws, ins_id="run-1", **kw):
    return train.TrainInstance(ins_id, workspace=ws.root, setup_logging=False, **kw)


def status(ins):
    return json.loads(ins.status_path.read_text())


def test_layout_status_and_getters(ws):
    ins = open_instance(ws)
    assert ins.get_training_ins_id() == "run-1"
    assert ins.get_base_path() == str(ws.root / "run" / "run-1")
    assert ins.get_snapshot_base_path() == str(ws.root / "run" / "run-1" / "output")
    assert ins.get_log_base_path() == str(ws.root / "run" / "run-1" / "logs")
    assert ins.get_trainset_base_path() == str(ws.root / "data" / "train")
    assert ins.get_valset_base_path() == str(ws.root / "data" / "val")
    assert ins.get_testset_base_path() == str(ws.root / "data" / "test")
    assert ins.get_model_base_path() == str(ws.root / "model")
    doc = status(ins)
    assert doc["status"] == "running" and doc["id"] == "run-1" and doc["history"] == []
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["start_time"])
    ins.done()
    doc = status(ins)
    assert doc["status"] == "done" and doc["err_msg"] == "" and doc["stop_time"]


def test_id_from_environment_then_generated(ws):
    ins = train.TrainInstance(workspace=ws.root, env={"AVA_TRAINING_INSTANCE_ID": "from-env"}, setup_logging=False)
    assert ins.get_training_ins_id() == "from-env"
    ins.done()
    a = train.TrainInstance(workspace=ws.root, env={}, setup_logging=False)
    b = train.TrainInstance(workspace=ws.root, env={}, setup_logging=False)
    for ins in (a, b):
        assert re.match(r"^\d{8}T\d{9}Z-[0-9a-f]{6}$", ins.get_training_ins_id())
        ins.done()
    assert a.get_training_ins_id() != b.get_training_ins_id()
    assert train.new_instance_id() > a.get_training_ins_id()


def test_workspace_from_environment(ws, monkeypatch):
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    ins = train.TrainInstance("env-ws", setup_logging=False)
    assert ins.get_base_path() == str(ws.root / "run" / "env-ws")
    ins.done()


@pytest.mark.parametrize("bad", ["a/b", "..", "x..y", "/abs", "", "-lead", "a" * 200, 12])
def test_unsafe_ids_are_refused(ws, bad):
    with pytest.raises(InstanceError, match="training instance id"):
        open_instance(ws, bad)
    assert not (ws.root / "run" / "a").exists()


def test_done_is_idempotent_and_failed_keeps_message(ws):
    ins = open_instance(ws)
    ins.done(err_msg="CUDA out of memory")
    first = status(ins)
    ins.done()
    ins.done(err_msg="other")
    assert status(ins) == first
    assert first["status"] == "failed" and first["err_msg"] == "CUDA out of memory"


def test_context_manager_marks_failure_and_reraises(ws):
    with pytest.raises(ZeroDivisionError):
        with open_instance(ws) as ins:
            ins.log_metrics({"loss": 1.0}, step=1)
            1 / 0
    doc = status(ins)
    assert doc["status"] == "failed" and doc["err_msg"] == "ZeroDivisionError: division by zero"
    assert [r["name"] for r in iter_records(ins.metrics_path)] == ["loss"]


def test_resume_appends_metrics_and_continues_seq(ws):
    ins = open_instance(ws)
    for i in range(3):
        ins.log_metrics({"loss": 1.0, "acc": 0.1}, step=i)
    ins.done(err_msg="preempted by test")
    again = open_instance(ws)
    again.log_metrics({"loss": 0.5}, step=3)
    again.done()
    recs = list(iter_records(again.metrics_path))
    assert [r["seq"] for r in recs] == list(range(7))
    doc = status(again)
    assert doc["status"] == "done"
    assert [h["status"] for h in doc["history"]] == ["failed"]
    assert doc["history"][0]["err_msg"] == "preempted by test"


def test_a_stale_running_status_becomes_crashed_history(ws):
    run = ws.root / "run" / "stale"
    (run / "logs").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"id": "stale", "status": "running", "pid": 999999, "host": "h",
                                                 "start_time": "2026-01-01T00:00:00.000Z"}))
    ins = open_instance(ws, "stale")
    assert status(ins)["history"][0]["status"] == "crashed"
    ins.done()


def test_corrupt_status_is_kept_aside(ws):
    run = ws.root / "run" / "corrupt"
    run.mkdir(parents=True)
    (run / "status.json").write_text("{not json")
    ins = open_instance(ws, "corrupt")
    assert (run / "status.json.corrupt").read_text() == "{not json"
    assert status(ins)["status"] == "running"
    ins.done()


def test_opening_an_instance_twice_is_refused_without_touching_its_status(ws):
    ins = open_instance(ws)
    before = ins.status_path.read_text()
    with pytest.raises(InstanceError, match="already being written"):
        open_instance(ws)
    assert ins.status_path.read_text() == before
    ins.done()


def test_bad_metric_input_is_refused_and_nothing_recorded_is_lost(ws):
    ins = open_instance(ws)
    ins.log_metrics({"loss": 1.0}, step=1)
    with pytest.raises(MetricsError, match="metric name"):
        ins.log_metrics({1: 2.0}, step=2)
    with pytest.raises(MetricsError, match="metric 'acc' has a str value"):
        ins.log_metrics({"acc": "high"}, step=2)
    ins.log_metrics({"loss": float("nan")}, step=3)
    ins.done()
    assert [(r["step"], r["value"]) for r in iter_records(ins.metrics_path)] == [(1, 1.0), (3, "nan")]


def test_unknown_framework_lists_the_known_ones(ws):
    ins = open_instance(ws)
    with pytest.raises(UsageError, match="unknown framework 'tensorflow'; known: caffe, gluon, mxnet, torch"):
        ins.get_monitor_callback("tensorflow")
    ins.done()


def test_done_is_bounded_when_metrics_cannot_be_written(ws, monkeypatch):
    gate = threading.Event()
    real_write = JsonlSink.write

    def stuck(self, records):
        gate.wait(30)
        return real_write(self, records)

    monkeypatch.setattr(JsonlSink, "write", stuck)
    monkeypatch.setattr(train, "LOCAL_FLUSH_TIMEOUT", 0.5)  # a stalled disk, shortened for the test
    ins = open_instance(ws)
    ins.log_metrics({"loss": 1.0}, step=1)
    t0 = time.monotonic()
    ins.done(timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert status(ins)["status"] == "done"
    gate.set()


def test_process_exit_without_done_finishes_the_instance(ws):
    code = f"""
from ava.train import base as train
ins = train.TrainInstance("exit-ok", workspace={str(ws.root)!r}, setup_logging=False)
ins.log_metrics({{"loss": 1.0}}, step=1)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    doc = json.loads((ws.root / "run" / "exit-ok" / "status.json").read_text())
    assert doc["status"] == "done"
    assert len(list(iter_records(ws.root / "run" / "exit-ok" / "logs" / "metrics.jsonl"))) == 1


def test_uncaught_exception_at_exit_marks_failed(ws):
    code = f"""
from ava.train import base as train
ins = train.TrainInstance("exit-bad", workspace={str(ws.root)!r}, setup_logging=False)
raise RuntimeError("loss diverged")
"""
    out = run_python(code)
    assert out.returncode == 1
    doc = json.loads((ws.root / "run" / "exit-bad" / "status.json").read_text())
    assert doc["status"] == "failed" and doc["err_msg"] == "RuntimeError: loss diverged"


@pytest.mark.parametrize("call, code, status, exit_code", [
    ("sys.exit(3)", 3, "failed", 3),  # exit_code was null
    ("sys.exit('bad data')", 1, "failed", 1),
    ("sys.exit(0)", 0, "done", None),
])
def test_sys_exit_in_the_with_block_keeps_its_exit_code(ws, call, code, status, exit_code):
    script = f"""
import sys
from ava.train import base as train
with train.TrainInstance("exit-code", workspace={str(ws.root)!r}, setup_logging=False):
    {call}
"""
    out = run_python(script)
    assert out.returncode == code, out.stderr
    doc = json.loads((ws.root / "run" / "exit-code" / "status.json").read_text())
    assert (doc["status"], doc["exit_code"]) == (status, exit_code)


def test_run_log_is_set_up_by_default(ws):
    import logging

    ins = train.TrainInstance("with-log", workspace=ws.root)
    logging.getLogger("user.script").warning("epoch 1 finished")
    ins.done()
    for h in logging.getLogger().handlers:
        h.flush()
    text = (ws.root / "run" / "with-log" / "logs" / "run.log").read_text()
    assert "epoch 1 finished" in text and "training instance with-log started" in text


def test_save_snapshot_uploads_to_the_default_storage_before_done_returns(ws):
    ins = open_instance(ws, "snap")
    out = ins.output_dir
    (out / "model-0001.params").write_bytes(b"p" * 5000)
    ins.save_snapshot([out / "model-0001.params"], "epoch-0001", {"epoch": 1}, step=10)
    ins.done()
    stored = ws.root / "storage" / "snap" / "snapshots"
    assert (stored / "epoch-0001" / "model-0001.params").read_bytes() == b"p" * 5000
    assert (stored / "LATEST").read_text() == "epoch-0001"
    assert (out / "model-0001.params").exists()
    recs = list(iter_records(ins.metrics_path))
    assert {"event": "snapshot", "snapshot": "epoch-0001", "step": 10}.items() <= recs[0].items()
    assert {r.get("name") for r in recs[1:]} == {"upload_bytes", "upload_seconds"}


def test_done_does_not_wait_forever_for_uploads(ws, monkeypatch):
    from ava.storage import registry

    monkeypatch.setitem(registry.BACKENDS, "down", ("tests.unit.test_snapshot:DownStorage", ""))
    ins = train.TrainInstance("down", workspace=ws.root, setup_logging=False,
                              env={"AVA_STORAGE_URL": f"down://{ws.root}/remote", "AVA_DONE_TIMEOUT": "0.5"})
    (ins.output_dir / "w.bin").write_bytes(b"w")
    ins.save_snapshot([ins.output_dir / "w.bin"], "s1")
    t0 = time.monotonic()
    ins.done()
    assert time.monotonic() - t0 < 5
    assert status(ins)["status"] == "done" and (ins.output_dir / "w.bin").exists()
    state = json.loads((ins.run_dir / "snapshots.json").read_text())
    assert state["snapshots"][0]["state"] == "pending"
    registry._instances.pop("down", None)


def test_other_ranks_record_beside_rank_0_and_leave_the_status_to_it(ws):
    with pytest.raises(InstanceError, match="rank 1 needs the instance id of rank 0"):
        train.TrainInstance(workspace=ws.root, setup_logging=False, env={"RANK": "1"})
    r0 = open_instance(ws, "dist")
    r1 = train.TrainInstance("dist", workspace=ws.root, setup_logging=False, env={"RANK": "1"})
    r0.log_metrics({"loss": 1.0}, step=1)
    r1.log_metrics({"loss": 2.0}, step=1)
    r1.done(err_msg="rank 1 saw a NaN")
    assert status(r0)["status"] == "running"
    r0.done()
    assert status(r0)["status"] == "done"
    logs = ws.root / "run" / "dist" / "logs"
    assert [(r["rank"], r["seq"], r["value"]) for r in iter_records(logs / "metrics.jsonl")] == [(0, 0, 1.0)]
    assert [(r["rank"], r["seq"], r["value"]) for r in iter_records(logs / "metrics.rank1.jsonl")] == [(1, 0, 2.0)]


def test_every_rank_of_a_resumed_run_says_it_resumed(ws):
    def attempt(rank0_first: bool):
        opened = {}
        for rank in ((0, 1) if rank0_first else (1, 0)):
            opened[rank] = train.TrainInstance("dist-again", workspace=ws.root, setup_logging=False,
                                               env={"RANK": str(rank), "WORLD_SIZE": "2"})
        infos = {rank: ins.resume_info(download=False) for rank, ins in opened.items()}
        for rank in (1, 0):
            opened[rank].done()
        return infos

    first = attempt(True)
    assert not first[0].resumed and not first[1].resumed
    # A fresh instance whose rank 1 asks only after rank 0 has finished is not a resumed one.
    r0 = train.TrainInstance("dist-late", workspace=ws.root, setup_logging=False, env={"RANK": "0", "WORLD_SIZE": "2"})
    r1 = train.TrainInstance("dist-late", workspace=ws.root, setup_logging=False, env={"RANK": "1", "WORLD_SIZE": "2"})
    r0.done()
    assert not r1.resume_info(download=False).resumed
    r1.done()
    for rank0_first in (True, False):  # rank 1 may read status.json before or after rank 0 begins
        infos = attempt(rank0_first)
        # Rank 1 kept an empty history in memory: it always said the run was fresh.
        assert infos[0].resumed and infos[1].resumed, (rank0_first, infos)
        assert infos[1].previous_status == "done" and infos[1].attempts == infos[0].attempts


@pytest.mark.parametrize("name", ["AVA_DONE_TIMEOUT", "AVA_PREEMPT_TIMEOUT"])
def test_a_bad_setting_fails_before_anything_is_written(ws, name):
    from ava.errors import ConfigError

    with pytest.raises(ConfigError, match=name):
        open_instance(ws, "bad-env", env={name: "abc"})
    assert not (ws.root / "run" / "bad-env" / "status.json").exists()
    ins = open_instance(ws, "bad-env", env={})  # nothing left locked or half-open
    assert status(ins)["status"] == "running" and status(ins)["history"] == []
    ins.done()


def test_a_constructor_failing_after_the_status_is_written_leaves_it_failed_and_unlocked(ws, monkeypatch):
    class Broken(RuntimeError):
        pass

    def no_writer(*args, **kwargs):
        raise Broken("no thread for the writer")

    monkeypatch.setattr(train, "MetricsWriter", no_writer)
    with pytest.raises(Broken):
        open_instance(ws, "half")
    doc = json.loads((ws.root / "run" / "half" / "status.json").read_text())
    assert doc["status"] == "failed" and "no thread for the writer" in doc["err_msg"]
    monkeypatch.undo()
    ins = open_instance(ws, "half")  # the metrics file's lock was released
    assert status(ins)["history"][0]["status"] == "failed"
    ins.done()


@pytest.mark.parametrize("url, said", [
    ("s3://", "names no bucket"), ("s3:///p", "names no bucket"), ("qiniu://", "names no bucket"),
    ("ftp://x/y", "unknown storage scheme 'ftp'"), ("file://relative", "is not an absolute path"),
    ("relative/dir", "is not an absolute path"),
])
def test_a_storage_url_that_cannot_be_one_fails_the_constructor(ws, url, said):
    from ava.errors import ConfigError

    with pytest.raises(ConfigError, match=f"AVA_STORAGE_URL: .*{said}"):
        open_instance(ws, "bad-storage", env={"AVA_STORAGE_URL": url})
    assert not (ws.root / "run" / "bad-storage" / "status.json").exists()


def test_a_metrics_file_that_is_a_directory_is_one_clear_error(ws, capsys):
    from ava.cli import main

    (ws.root / "run" / "d" / "logs" / "metrics.jsonl").mkdir(parents=True)
    with pytest.raises(InstanceError, match=r"metrics.jsonl is a directory, not a metrics file; move it aside"):
        open_instance(ws, "d")
    import os

    os.environ["AVA_WORKSPACE"] = str(ws.root)
    try:
        assert main(["runs", "list"]) == 0  # the other runs are still listed
        assert main(["runs", "show", "d"]) == 0
        err = capsys.readouterr().err
        assert "cannot read" in err and "Traceback" not in err
    finally:
        del os.environ["AVA_WORKSPACE"]


def test_a_long_list_of_names_in_a_message_is_cut_with_a_count():
    from ava.train.base import _some

    assert _some([f"epoch-{i:04d}" for i in range(711)]).endswith("epoch-0009 and 701 more")
    assert _some(["a", "b"]) == "a, b"


def test_done_puts_the_logs_beside_the_snapshots_in_storage(ws):
    ins = train.TrainInstance("logs-up", workspace=ws.root)  # with run.log
    ins.log_metrics({"loss": 0.5}, step=1)
    ins.done()
    from ava.log.logger import close_logger

    close_logger()
    stored = ws.root / "storage" / "logs-up" / "logs"
    # AVA_STORAGE_URL is "where snapshots and logs go"; only snapshots went.
    assert (stored / "metrics.jsonl").read_bytes() == (ins.logs_dir / "metrics.jsonl").read_bytes()
    assert "training instance logs-up done" in (stored / "run.log").read_text()
    assert json.loads((stored / "status.json").read_text())["status"] == "done"
    assert not list(stored.glob("*.http-offset"))
    assert (stored / "run.log").stat().st_mode & 0o077 == 0  # private as run.log is (0600)


def test_save_snapshot_takes_one_file_alone_and_its_event_has_no_name(ws):
    ins = open_instance(ws, "one-file")
    f = ins.output_dir / "model.pt"
    f.write_bytes(b"w" * 100)
    ins.save_snapshot(str(f), "s1")  # it read the string as files "/", "t", "m", "p" ...
    assert ins.snapshot_uploader.wait(30) and ins.snapshot_uploader.status("s1") == "done"
    ins.done()
    (event,) = [r for r in iter_records(ins.metrics_path) if r.get("event") == "snapshot"]
    # CONTRACT.md: events carry no name/value (a reader skipping "event" records may still key on name).
    assert "name" not in event and event["snapshot"] == "s1" and event["files"] == [str(f)]


def test_a_bad_id_from_the_environment_names_the_variable(ws):
    from ava.errors import InstanceIdError

    with pytest.raises(InstanceIdError, match=r"^AVA_TRAINING_INSTANCE_ID: training instance id 'a/b'"):
        train.TrainInstance(workspace=ws.root, setup_logging=False, env={"AVA_TRAINING_INSTANCE_ID": "a/b"})
    with pytest.raises(InstanceIdError, match="use a letter or digit, then"):  # '-' alone: the rule says why
        train.TrainInstance("-", workspace=ws.root, setup_logging=False)


def test_a_failure_reported_after_done_is_said_not_dropped(ws, caplog):
    ins = train.TrainInstance("late", workspace=ws.root, setup_logging=False)
    ins.done()
    ins.done(err_msg="late failure")
    assert ins.status == "done"
    assert any("done(err_msg='late failure') changes nothing" in r.getMessage() for r in caplog.records)


def test_batch_logger_is_the_writers_own_path_unless_log_metrics_is_replaced(ws):
    ins = train.TrainInstance("bl", workspace=ws, setup_logging=False)
    log = ins.batch_logger()
    assert log == ins._writer.log_own
    log({"acc": 0.5}, 3, 0, 3, {"acc": "ratio"})
    real = ins.log_metrics
    ins.log_metrics = lambda *a, **k: real(*a, **k)  # e.g. a benchmark's timer
    assert ins.batch_logger() is None
    ins.log_metrics = real
    ins.done()
    assert [(r["name"], r["value"], r["step"], r.get("unit")) for r in iter_records(ins.metrics_path)] == [
        ("acc", 0.5, 3, "ratio")]
    with pytest.raises(MetricsError, match="closed"):
        log({"acc": 1.0}, 5, 0, 5, None)
