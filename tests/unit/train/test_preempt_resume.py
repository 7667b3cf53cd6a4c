"""should_stop / exit_preempted / done after a stop request, resume_info, and the rank in log lines."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ava.train import base as train
from ava.utils import preempt


def make(ws, ins_id="pr", **kw):
    return train.TrainInstance(ins_id, workspace=ws.root, setup_logging=False, handle_signals=False, **kw)


def test_should_stop_follows_the_process_stop_request(ws):
    ins = make(ws)
    assert ins.should_stop() is False and preempt.STOP.polled
    preempt.request(signal.SIGTERM)
    assert ins.should_stop() is True
    ins.done()
    doc = json.loads(ins.status_path.read_text())
    assert doc["status"] == "preempted" and doc["exit_code"] == 143 and doc["err_msg"] == "preempted by SIGTERM"


def test_done_with_an_error_after_a_stop_request_stays_preempted(ws):
    ins = make(ws)
    preempt.request(signal.SIGINT)
    ins.done(err_msg="RuntimeError: peer closed")
    doc = json.loads(ins.status_path.read_text())
    assert doc["status"] == "preempted" and doc["exit_code"] == 130
    assert doc["err_msg"] == "preempted by SIGINT; RuntimeError: peer closed"


def test_exit_preempted_flushes_sets_the_status_and_raises_systemexit(ws):
    ins = make(ws)
    ins.exit_preempted()  # no request: nothing happens
    assert ins.status == "running"
    for i in range(1000):
        ins.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    preempt.request(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        ins.exit_preempted()
    assert exc.value.code == 143
    assert ins.status == "preempted"
    assert sum(1 for _ in ins.metrics_path.open()) == 1000


def test_with_block_ended_by_the_preemption_systemexit_is_preempted_not_failed(ws):
    with pytest.raises(SystemExit):
        with make(ws) as ins:
            preempt.request(signal.SIGTERM)
            raise SystemExit(143)
    assert json.loads(ins.status_path.read_text())["status"] == "preempted"


def test_resume_info_of_a_fresh_instance(ws):
    ins = make(ws)
    info = ins.resume_info()
    assert (info.resumed, info.attempts, info.epoch, info.step, info.snapshot, info.files) == (False, 0, None, None,
                                                                                                None, [])
    ins.done()


def test_resume_info_gives_the_last_progress_and_the_newest_confirmed_snapshot(ws):
    ins = make(ws)
    out = Path(ins.get_snapshot_base_path())
    for epoch in range(3):
        ins.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=(epoch + 1) * 10, epoch=epoch, batch=9)
        f = out / f"w-{epoch}.bin"
        f.write_bytes(bytes([epoch]) * (100 + epoch))
        ins.save_snapshot([f], f"epoch-{epoch:04d}", meta={"epoch": epoch, "step": (epoch + 1) * 10})
    ins.log_metrics({"loss": 0.5}, step=35, epoch=3, batch=4)  # mid-epoch when it stopped
    ins.done()

    again = make(ws)
    info = again.resume_info()
    assert info.resumed and info.previous_status == "done" and info.attempts == 1
    assert (info.epoch, info.step) == (3, 35)
    assert info.last_seq is not None and info.last_seq >= 7
    assert info.snapshot == "epoch-0002" and info.snapshot_meta == {"epoch": 2, "step": 30}
    assert info.files == [out / "w-2.bin"]  # on local disk with the stored size: not downloaded
    again.done()

    (out / "w-2.bin").unlink()
    third = make(ws)
    info = third.resume_info()
    restored = third.run_dir / "restored" / "epoch-0002" / "w-2.bin"
    assert info.files == [restored] and restored.read_bytes() == bytes([2]) * 102
    third.done()


def test_resume_info_when_storage_is_unreadable_logs_and_gives_no_snapshot(ws, caplog, monkeypatch):
    ins = make(ws)
    ins.log_metrics({"loss": 1.0}, step=5, epoch=0)
    ins.done()
    # Storage answers, but what it holds cannot be read: LATEST names a snapshot whose manifest is damaged.
    snaps = Path(ins.storage_url[len("file://"):]) / "snapshots"
    (snaps / "epoch-0001").mkdir(parents=True)
    (snaps / "epoch-0001" / "MANIFEST.json").write_text("{damaged")
    (snaps / "LATEST").write_text("epoch-0001")
    again = make(ws)
    info = again.resume_info()
    assert info.snapshot is None and info.step == 5
    assert "could not find the newest snapshot" in caplog.text
    again.done()


def test_pending_snapshots_of_the_previous_attempt_are_uploaded_at_the_next_start(ws):
    ins = make(ws)
    f = Path(ins.get_snapshot_base_path()) / "late.bin"
    # Submitted before the file exists, and the instance closes without waiting: it stays pending.
    ins.save_snapshot([f], "epoch-0000", meta={"step": 1})
    ins._uploader.close(timeout=5)
    ins._uploader = None
    ins.done()
    state = json.loads((ins.run_dir / "snapshots.json").read_text())
    assert [s["state"] for s in state["snapshots"]] == ["pending"]
    f.write_bytes(b"x" * 10)
    again = make(ws)  # starts the uploader for what is pending, without a save_snapshot call
    assert again._uploader is not None and again._uploader.wait(30)
    again.done()
    assert (ws.root / "storage" / "pr" / "snapshots" / "LATEST").read_text() == "epoch-0000"


def test_every_line_of_a_distributed_run_carries_the_rank(ws, monkeypatch):
    import logging

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ins = train.TrainInstance("ranked", workspace=ws.root, handle_signals=False)
    logging.getLogger("user.script").info("a line of the script")
    ins.done()
    lines = (ins.logs_dir / "run.log").read_text().splitlines()
    assert lines and all(" rank0 " in line for line in lines)
    assert any("a line of the script" in line for line in lines)


def test_a_local_file_rewritten_after_the_upload_is_not_taken_for_the_snapshot(ws):
    import os
    import time

    ins = make(ws)
    f = Path(ins.get_snapshot_base_path()) / "w.bin"
    f.write_bytes(b"a" * 64)
    ins.save_snapshot([f], "epoch-0000", meta={"step": 1})
    ins.done()
    f.write_bytes(b"b" * 64)  # same name and size, other content, written later
    later = time.time() + 5
    os.utime(f, (later, later))
    again = make(ws)
    info = again.resume_info()
    assert info.files == [again.run_dir / "restored" / "epoch-0000" / "w.bin"]
    assert info.files[0].read_bytes() == b"a" * 64
    again.done()


def test_other_ranks_upload_snapshots_only_as_shards(ws, caplog):
    ins = train.TrainInstance("sharded", workspace=ws.root, setup_logging=False, handle_signals=False, rank=1)
    f = Path(ins.get_snapshot_base_path()) / "shard-1.bin"
    f.write_bytes(b"s" * 32)
    ins.save_snapshot([f], "epoch-0000")
    ins.save_snapshot([f], "epoch-0001")
    assert ins._uploader is None and caplog.text.count("uploads nothing") == 1
    ins.save_snapshot([f], "epoch-0000", sharded=True)
    ins.done()
    stored = ws.root / "storage" / "sharded"
    assert (stored / "snapshots-rank1" / "LATEST").read_text() == "epoch-0000"
    assert (stored / "snapshots-rank1" / "epoch-0000" / "shard-1.bin").read_bytes() == b"s" * 32
    assert not (stored / "snapshots").exists()
    assert f.exists()
