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
        with pytest.raises(Exception, match="must be a number"):
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
