"""Metrics logged in forked children (multiprocessing fork, DataLoader workers) reach the parent's record."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from ava.metrics.sinks.jsonl import iter_records
from ava.train import base as train

_ins = None  # the instance the forked workers inherit


def _work(k: int) -> int:
    for i in range(500):
        _ins.log_metrics({"worker_loss": i * 0.5, "nan_value": float("nan")}, step=i, phase="train")
    _ins.log_event("worker_done", worker=k)
    return k


def test_records_from_forked_pool_workers_are_kept_with_the_parents_seq(ws):
    global _ins
    _ins = train.TrainInstance("fork", workspace=ws.root, setup_logging=False, handle_signals=False)
    _ins.log_metrics({"loss": 1.0}, step=0)
    with mp.get_context("fork").Pool(3) as pool:
        assert sorted(pool.map(_work, range(3))) == [0, 1, 2]
    _ins.done()
    recs = list(iter_records(_ins.metrics_path))
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    worker = [r for r in recs if r.get("name") == "worker_loss"]
    assert len(worker) == 3 * 500 and {r["rank"] for r in worker} == {0}
    assert sorted(r["value"] for r in worker)[:3] == [0.0, 0.0, 0.0]
    assert sum(1 for r in recs if r.get("name") == "nan_value" and r["value"] == "nan") == 1500
    assert sorted(r["worker"] for r in recs if r.get("event") == "worker_done") == [0, 1, 2]
    assert _ins.status == "done"  # children never finished the parent's instance


def _bad(_: int) -> None:
    _ins.log_metrics({"loss": "high"})


def test_a_bad_value_in_a_child_is_an_error_in_the_child(ws):
    global _ins
    _ins = train.TrainInstance("fork-bad", workspace=ws.root, setup_logging=False, handle_signals=False)
    with mp.get_context("fork").Pool(1) as pool:
        with pytest.raises(Exception, match="has a str value"):  # as the writer says it
            pool.apply(_bad, (0,))
    _ins.done()


def test_dataloader_workers_record_through_the_parent(ws):
    torch = pytest.importorskip("torch")

    ins = train.TrainInstance("dl", workspace=ws.root, setup_logging=False, handle_signals=False)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            ins.log_metrics({"decode_ms": torch.tensor(float(i))}, step=i)
            return torch.zeros(2)

    loader = torch.utils.data.DataLoader(Data(), batch_size=8, num_workers=2,
                                         multiprocessing_context="fork")
    assert sum(1 for _ in loader) == 8
    ins.done()
    values = sorted(r["value"] for r in iter_records(ins.metrics_path) if r.get("name") == "decode_ms")
    assert values == [float(i) for i in range(64)]


def _numpy_steps_and_paths(k: int) -> None:
    import pathlib

    import numpy as np

    _ins.log_metrics({"loss": 0.5}, step=np.int64(k), epoch=np.int64(0), batch=np.int32(k))
    _ins.log_event("saved", step=np.int64(k), path=pathlib.Path(f"/out/{k}.bin"), loss=float("nan"))


def _bad_phase(_: int) -> None:
    _ins.log_metrics({"loss": 0.5}, step=1, phase="bogus")


def test_a_child_takes_what_the_parent_takes_and_refuses_what_it_refuses(ws):
    global _ins
    _ins = train.TrainInstance("fork-types", workspace=ws.root, setup_logging=False, handle_signals=False)
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_numpy_steps_and_paths, range(4))
        with pytest.raises(Exception, match="phase must be one of"):
            pool.apply(_bad_phase, (0,))
    _ins.done()
    recs = list(iter_records(_ins.metrics_path))
    assert sorted((r["step"], r["epoch"], r["batch"]) for r in recs if r.get("name") == "loss") == [
        (k, 0, k) for k in range(4)]
    saved = sorted((r for r in recs if r.get("event") == "saved"), key=lambda r: r["step"])
    assert [(r["path"], r["loss"]) for r in saved] == [(f"/out/{k}.bin", "nan") for k in range(4)]


def test_a_child_logging_after_the_parent_finished_gets_an_error_not_a_hang(ws):
    import os
    import time

    ins = train.TrainInstance("fork-late", workspace=ws.root, setup_logging=False, handle_signals=False)
    ins.log_metrics({"loss": 1.0}, step=0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: waits for the parent's done(), then keeps logging
        os.close(w)
        os.read(r, 1)
        code = 3
        try:
            for i in range(200):
                ins.log_metrics({"late": float(i)}, step=i)
        except Exception as exc:  # noqa: BLE001
            code = 0 if "is finished" in str(exc) or "not taken a record" in str(exc) else 4
        os._exit(code)
    os.close(r)
    ins.done()
    os.write(w, b"x")
    os.close(w)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child hung sending to a finished parent")
    assert os.waitstatus_to_exitcode(status) == 0
    # the instance can be opened again at once: the child does not hold the metrics file's lock
    again = train.TrainInstance("fork-late", workspace=ws.root, setup_logging=False, handle_signals=False)
    again.done()


def test_an_event_with_details_that_are_not_json_does_not_stop_the_metrics(ws):
    import pathlib

    import numpy as np

    from ava.errors import MetricsError

    ins = train.TrainInstance("events", workspace=ws.root, setup_logging=False, handle_signals=False)
    ins.log_metrics({"loss": 1.0}, step=0)
    ins.log_event("snapshot", step=1, path=pathlib.Path("/x"), n=np.int64(3), tags={"b", "a"}, bad=float("nan"))
    with pytest.raises(MetricsError, match="event detail 'obj' must be a JSON value"):
        ins.log_event("custom", step=2, obj=object())
    ins.log_metrics({"loss": 0.5}, step=3)
    assert ins.flush_metrics(10)
    ins.done()
    recs = list(iter_records(ins.metrics_path))
    assert [r.get("name", r.get("event")) for r in recs] == ["loss", "snapshot", "loss"]
    assert (recs[1]["path"], recs[1]["n"], recs[1]["tags"], recs[1]["bad"]) == ("/x", 3, ["a", "b"], "nan")
