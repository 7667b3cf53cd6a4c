"""The MXNet Module callbacks on real (tiny) Module.fit trainings, checked against MXNet's own numbers."""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest

from ava.errors import StorageError, UsageError
from ava.metrics.sinks.jsonl import iter_records
from ava.monitor import mxnet as mxnet_monitor
from ava.storage import registry
from ava.storage.local import LocalStorage
from ava.train import base as train

mx = mxnet_monitor._mx()

BATCH = 20
N_TRAIN, N_VAL = 400, 100  # 20 batches an epoch, no padding


class DownStorage(LocalStorage):
    """A storage whose every upload fails."""

    scheme = "down"

    def upload(self, local, url):
        raise StorageError(f"storage is down: {url}")


def make_data(seed: int = 0):
    """Three overlapping Gaussian blobs in 16 dimensions: about 0.9 accuracy after two epochs."""
    rng = np.random.RandomState(seed)
    centers = rng.normal(scale=0.6, size=(3, 16))
    y = rng.randint(0, 3, size=N_TRAIN + N_VAL)
    x = (centers[y] + rng.normal(size=(len(y), 16))).astype("float32")
    train_iter = mx.io.NDArrayIter(x[:N_TRAIN], y[:N_TRAIN].astype("float32"), batch_size=BATCH, shuffle=True)
    val_iter = mx.io.NDArrayIter(x[N_TRAIN:], y[N_TRAIN:].astype("float32"), batch_size=BATCH)
    return train_iter, val_iter


def mlp():
    data = mx.sym.Variable("data")
    net = mx.sym.FullyConnected(data, num_hidden=32, name="fc1")
    net = mx.sym.Activation(net, act_type="relu")
    net = mx.sym.FullyConnected(net, num_hidden=3, name="fc2")
    return mx.sym.SoftmaxOutput(net, name="softmax")


def fit(mod, train_iter, val_iter=None, epochs=2, **kw):
    mx.random.seed(1)
    sched = mx.lr_scheduler.FactorScheduler(step=7, factor=0.5, base_lr=0.1)
    mod.fit(train_iter, eval_data=val_iter, num_epoch=epochs, optimizer="sgd",
            optimizer_params={"lr_scheduler": sched, "momentum": 0.9}, initializer=mx.init.Xavier(), **kw)


@pytest.fixture
def ins(tmp_path):
    instances = []

    def make(setup_logging=False, env=None, **kw):
        i = train.TrainInstance(f"mx-{uuid.uuid4().hex[:8]}", workspace=tmp_path / "ws", setup_logging=setup_logging,
                                env=env, **kw)
        instances.append(i)
        return i

    yield make
    for i in instances:
        i.done()


def records(ins, **match):
    assert ins.flush_metrics(30)
    out = []
    for r in iter_records(ins.metrics_path):
        if all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def metric_map(recs):
    """(phase, epoch, batch, name) -> record, checking there is one record per key."""
    out = {}
    for r in recs:
        if "event" in r or r["name"].startswith("upload_"):  # the uploader's own records
            continue
        key = (r["phase"], r["epoch"], r["batch"], r["name"])
        assert key not in out, f"duplicate record {key}"
        out[key] = r
    return out


SPEEDO = re.compile(r"Epoch\[(\d+)\] Batch \[\d+-(\d+)\]\tSpeed: ([\d.]+) samples/sec\taccuracy=([\d.]+)"
                    r"\tcross-entropy=([\d.]+)")


@pytest.mark.parametrize("ava_first", [False, True], ids=["speedometer-first", "ava-first"])
def test_batch_records_match_speedometer_in_either_order(ins, caplog, ava_first):
    i = ins()
    train_iter, _ = make_data()
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    lrs = {}

    def lr_probe(param):  # what the optimizer itself says, batch by batch
        lrs[(param.epoch, param.nbatch)] = mod._optimizer.learning_rate

    ava_cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=5)
    speedo = mx.callback.Speedometer(BATCH, 5)
    callbacks = [ava_cb, speedo] if ava_first else [speedo, ava_cb]
    caplog.set_level(logging.INFO)
    fit(mod, train_iter, eval_metric=["acc", "ce"], batch_end_callback=[lr_probe, *callbacks])

    printed = [SPEEDO.search(r.getMessage()) for r in caplog.records]
    printed = [m for m in printed if m]
    assert len(printed) == 2 * 3  # batches 5, 10, 15 of two epochs
    recs = metric_map(records(i))
    speed_ratios = []
    for m in printed:
        epoch, batch = int(m.group(1)), int(m.group(2))
        acc = recs[("train", epoch, batch, "accuracy")]
        assert acc["value"] == pytest.approx(float(m.group(4)), abs=1e-6)
        assert acc["step"] == epoch * (N_TRAIN // BATCH) + batch
        assert recs[("train", epoch, batch, "cross-entropy")]["value"] == pytest.approx(float(m.group(5)), abs=1e-6)
        speed = recs[("train", epoch, batch, "speed")]
        assert speed["unit"] == "samples/s"
        speed_ratios.append(speed["value"] / float(m.group(3)))
        assert recs[("train", epoch, batch, "lr")]["value"] == pytest.approx(lrs[(epoch, batch)])
        assert recs[("train", epoch, batch, "samples")]["value"] == (acc["step"] + 1) * BATCH
    # Same interval as Speedometer's, timed a few microseconds apart on a shared machine.
    assert all(0.5 < r < 2 for r in speed_ratios), speed_ratios
    assert statistics.median(speed_ratios) == pytest.approx(1, rel=0.25)
    assert len({recs[("train", 0, b, "lr")]["value"] for b in (5, 10, 15)}) > 1  # the scheduler moved it
    # Epoch-level values are fit's own Train- line (from the global counters both left alone).
    train_lines = [r.getMessage() for r in caplog.records if "Train-accuracy" in r.getMessage()]
    for epoch, line in enumerate(train_lines):
        value = float(line.rsplit("=", 1)[1])
        rec = recs[("train", epoch, None, "accuracy")]
        assert rec["value"] == pytest.approx(value, abs=1e-6) and rec["step"] == (epoch + 1) * (N_TRAIN // BATCH)


def test_guide_calls_give_validation_records_and_loadable_snapshots(ins):
    """Exactly the guide's calls; do_checkpoint writes into the instance's output directory."""
    i = ins(setup_logging=True)  # TrainInstance() as the guide makes it: the root logger at INFO
    train_iter, val_iter = make_data()
    batch_of_epoch = N_TRAIN // BATCH
    prefix = str(Path(i.get_snapshot_base_path()) / "mlp")
    batch_end_cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=10)
    epoch_end_cb = [
        mx.callback.do_checkpoint(prefix, 1),
        i.get_epoch_end_callback("mxnet", batch_of_epoch=batch_of_epoch, epoch_interval=1, other_files=[]),
    ]
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, val_iter, epochs=2, batch_end_callback=batch_end_cb, epoch_end_callback=epoch_end_cb)
    final = dict(mod.score(val_iter, "acc"))
    i.done()

    recs = metric_map(records(i))
    val = {k: r for k, r in recs.items() if k[0] == "val"}
    assert set(val) == {("val", e, None, "accuracy") for e in (0, 1)}
    assert val[("val", 1, None, "accuracy")]["value"] == pytest.approx(final["accuracy"], abs=1e-12)
    assert val[("val", 1, None, "accuracy")]["step"] == 2 * batch_of_epoch
    assert final["accuracy"] > 0.9

    snaps = Path(i.storage_url[len("file://"):]) / "snapshots"
    assert (snaps / "LATEST").read_text() == "epoch-0002"
    for n in (1, 2):
        manifest = json.loads((snaps / f"epoch-{n:04d}" / "MANIFEST.json").read_text())
        assert sorted(f["name"] for f in manifest["files"]) == ["mlp-%04d.params" % n, "mlp-symbol.json"]
        assert manifest["meta"]["epoch"] == n - 1 and manifest["meta"]["step"] == n * batch_of_epoch
        assert Path(f"{prefix}-{n:04d}.params").exists()  # the local files stay
    sym, args, auxs = mx.model.load_checkpoint(str(snaps / "epoch-0002" / "mlp"), 2)
    local = mod.get_params()[0]
    assert set(args) == set(local)
    for name, value in args.items():
        np.testing.assert_array_equal(value.asnumpy(), local[name].asnumpy())
    events = [r for r in records(i) if r.get("event") == "snapshot"]
    assert [e["snapshot"] for e in events] == ["epoch-0001", "epoch-0002"]


def test_eval_end_callback_and_log_capture_record_validation_once(ins, caplog):
    i = ins()
    caplog.set_level(logging.INFO)
    train_iter, val_iter = make_data()
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, val_iter, epochs=2, eval_metric=["acc", "ce"],
        batch_end_callback=i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=10),
        eval_end_callback=mxnet_monitor.eval_end_callback(i))
    recs = metric_map(records(i, phase="val"))  # asserts one record per (epoch, name)
    assert set(recs) == {("val", e, None, n) for e in (0, 1) for n in ("accuracy", "cross-entropy")}
    logged = {(int(m.group(1)), m.group(2)): float(m.group(3)) for m in
              (re.search(r"Epoch\[(\d+)\] Validation-(\S+)=([\d.]+)", r.getMessage()) for r in caplog.records) if m}
    for (epoch, name), value in logged.items():
        assert recs[("val", epoch, None, name)]["value"] == pytest.approx(value, abs=1e-6)


def test_score_end_callback_records_test_phase(ins):
    i = ins()
    train_iter, val_iter = make_data()
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=1)
    res = dict(mod.score(val_iter, "acc", score_end_callback=mxnet_monitor.score_end_callback(i)))
    (rec,) = records(i, phase="test")
    assert rec["name"] == "accuracy" and rec["value"] == pytest.approx(res["accuracy"])


def test_epoch_callback_before_do_checkpoint_and_explicit_prefix(ins, tmp_path):
    """The AVA callback placed first: it waits (in the background) for the files do_checkpoint writes next."""
    i = ins()
    train_iter, _ = make_data()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    extra = tmp_path / "labels.txt"
    extra.write_text("a\nb\nc\n")
    prefix = str(outside / "net")
    ava_cb = mxnet_monitor.epoch_end_callback(i, prefix=prefix, other_files=[str(extra)])
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=2, epoch_end_callback=[ava_cb, mx.callback.do_checkpoint(prefix)])
    assert ava_cb.wait(30)
    i.done()
    snaps = Path(i.storage_url[len("file://"):]) / "snapshots"
    assert sorted(p.name for p in (snaps / "epoch-0002").iterdir()) == [
        "MANIFEST.json", "labels.txt", "net-0002.params", "net-symbol.json"]
    mx.model.load_checkpoint(str(snaps / "epoch-0001" / "net"), 1)


def test_known_names_are_waited_for_in_the_background_with_the_states_written_after(ins, tmp_path):
    i = ins()
    prefix = tmp_path / "later" / "net"
    cb = i.get_epoch_end_callback("mxnet", prefix=str(prefix))
    cb(0, None, {}, {})  # nothing written yet: the callback returns at once, its thread waits
    assert i.snapshot_uploader.status("epoch-0001") is None
    prefix.parent.mkdir()
    Path(f"{prefix}-symbol.json").write_text("{}")
    Path(f"{prefix}-0001.params").write_bytes(b"p" * 100)
    Path(f"{prefix}-0001.states").write_bytes(b"s" * 10)  # save_optimizer_states=True writes it next
    assert cb.wait(30) and i.snapshot_uploader.wait(30) and i.snapshot_uploader.status("epoch-0001") == "done"
    (event,) = records(i, event="snapshot")
    assert event["files"] == [f"{prefix}-symbol.json", f"{prefix}-0001.params", f"{prefix}-0001.states"]


def test_discovery_learns_the_prefix_and_waits_for_the_first_checkpoint(ins):
    """No prefix, callback before do_checkpoint: the first epoch is looked for in the background."""
    i = ins()
    out = Path(i.get_snapshot_base_path())
    cb = i.get_epoch_end_callback("mxnet", wait_timeout=30)
    cb(0)
    (out / "m-symbol.json").write_text("{}")
    (out / "m-0001.params").write_bytes(b"1")
    assert cb.wait(30)
    cb(1)  # the prefix is known now: the names go to the uploader before the files exist
    (out / "m-0002.params").write_bytes(b"2")
    assert cb.wait(30)  # handed to the uploader (after a moment for a .states): then wait for the upload
    assert i.snapshot_uploader.wait(30)
    assert [e["files"] for e in records(i, event="snapshot")] == [
        [str(out / "m-symbol.json"), str(out / "m-0001.params")],
        [str(out / "m-symbol.json"), str(out / "m-0002.params")]]


def test_discovery_reports_the_pattern_it_looked_for(ins, caplog):
    i = ins()
    cb = i.get_epoch_end_callback("mxnet", wait_timeout=0.1)
    cb(4)
    assert cb.wait(30)
    (event,) = records(i, event="snapshot_failed")
    assert "-0005.params" in event["missing"][0] and i.get_snapshot_base_path() in event["missing"][0]


def test_checkpoints_written_elsewhere_are_reported_at_done_not_lost_silently(ins, tmp_path, caplog):
    """The guide's calls with do_checkpoint writing outside the snapshot directory and no prefix."""
    i = ins()
    train_iter, _ = make_data()
    elsewhere = tmp_path / "ckpt"
    elsewhere.mkdir()
    cb = i.get_epoch_end_callback("mxnet", batch_of_epoch=4, epoch_interval=1, other_files=[])
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=2, epoch_end_callback=[mx.callback.do_checkpoint(str(elsewhere / "m"), 1), cb])
    with caplog.at_level(logging.ERROR, logger="ava.monitor.mxnet"):
        i.done()
    failed = [r for r in iter_records(i.metrics_path) if r.get("event") == "snapshot_failed"]
    assert [r["snapshot"] for r in failed] == ["epoch-0001", "epoch-0002"]  # no "name": events carry none
    assert all(r["reason"] == "not written when the instance finished" for r in failed)
    text = caplog.text
    assert "snapshot epoch-0001 not uploaded" in text and "prefix=" in text and i.get_snapshot_base_path() in text
    assert sorted(p.name for p in elsewhere.iterdir()) == ["m-0001.params", "m-0002.params", "m-symbol.json"]


def test_a_checkpoint_missing_for_a_while_is_warned_about_while_it_is_looked_for(ins, caplog, monkeypatch):
    from ava.monitor import _mxnet_checkpoint

    monkeypatch.setattr(_mxnet_checkpoint, "_WARN_AFTER", 0.05)
    i = ins()
    cb = i.get_epoch_end_callback("mxnet", wait_timeout=60)
    with caplog.at_level(logging.WARNING, logger="ava.monitor.mxnet"):
        cb(0)
        deadline = time.monotonic() + 30
        while "snapshot epoch-0001: no " not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "still looking" in caplog.text and "prefix=" in caplog.text
    out = Path(i.get_snapshot_base_path())
    (out / "m-symbol.json").write_text("{}")
    (out / "m-0001.params").write_bytes(b"1")
    assert cb.wait(30) and i.snapshot_uploader.wait(30)
    assert caplog.text.count("snapshot epoch-0001: no ") == 1  # once, not at every poll


def test_a_checkpoint_that_appears_before_done_is_still_uploaded(ins):
    i = ins()
    out = Path(i.get_snapshot_base_path())
    cb = i.get_epoch_end_callback("mxnet", wait_timeout=60)
    cb(0)  # before do_checkpoint: looked for in the background
    (out / "m-symbol.json").write_text("{}")
    (out / "m-0001.params").write_bytes(b"1")
    i.done()  # hands it over at once rather than leaving it to the polling thread
    stored = Path(i.storage_url[len("file://"):]) / "snapshots" / "epoch-0001"
    assert (stored / "m-0001.params").read_bytes() == b"1"


def test_the_callback_listed_twice_reports_each_batch_once(ins):
    i = ins()
    train_iter, _ = make_data()
    cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=1)
    once = ins()
    cb_once = once.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=1)
    mx.random.seed(0)
    fit(mx.mod.Module(mlp(), context=mx.cpu()), train_iter, epochs=1,
        batch_end_callback=[cb, mx.callback.Speedometer(BATCH, 3), cb])
    train_iter.reset()
    mx.random.seed(0)
    fit(mx.mod.Module(mlp(), context=mx.cpu()), train_iter, epochs=1, batch_end_callback=[cb_once])
    twice = [(r["batch"], r["name"]) for r in records(i, phase="train") if r["batch"] is not None]
    assert twice == [(r["batch"], r["name"]) for r in records(once, phase="train") if r["batch"] is not None]
    assert len(twice) == len(set(twice))
    assert max(r["value"] for r in records(i, name="samples")) == N_TRAIN


def test_two_metrics_of_one_name_keep_their_numbers_in_validation(ins, caplog):
    caplog.set_level(logging.INFO)  # fit logs its validation lines at INFO: what the capture reads
    i = ins()
    train_iter, val_iter = make_data()
    metric = mx.metric.CompositeEvalMetric([mx.metric.Accuracy(), mx.metric.Accuracy()])
    fit(mx.mod.Module(mlp(), context=mx.cpu()), train_iter, val_iter, epochs=1, eval_metric=metric,
        batch_end_callback=i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=5),
        eval_end_callback=None)
    val = records(i, phase="val")
    assert sorted(r["name"] for r in val) == ["accuracy", "accuracy_2"]
    assert {r["name"] for r in records(i, phase="train")} >= {"accuracy", "accuracy_2"}


def test_resume_with_the_guides_calls_continues_the_step_count(ins, tmp_path):
    i = ins()
    train_iter, _ = make_data()
    per_epoch = -(-N_TRAIN // BATCH)
    batch_cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=2)  # no batch_of_epoch, as the guide
    epoch_cb = i.get_epoch_end_callback("mxnet", batch_of_epoch=per_epoch, epoch_interval=1, other_files=[],
                                        prefix=str(tmp_path / "m"))
    fit(mx.mod.Module(mlp(), context=mx.cpu()), train_iter, epochs=3, begin_epoch=2,
        batch_end_callback=batch_cb, epoch_end_callback=[mx.callback.do_checkpoint(str(tmp_path / "m")), epoch_cb])
    steps = [r["step"] for r in records(i, phase="train", name="samples")]
    assert steps and min(steps) > 2 * per_epoch  # counted from the epoch fit began at
    assert epoch_cb.wait(30) and i.snapshot_uploader.wait(30)
    (event,) = records(i, event="snapshot")
    assert event["step"] == 3 * per_epoch


def test_upload_failure_keeps_training_and_files(ins, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(registry.BACKENDS, "down", (f"{__name__}:DownStorage", ""))
    monkeypatch.setattr(registry, "_instances", {})
    caplog.set_level(logging.WARNING)
    i = ins(env={"AVA_STORAGE_URL": f"down://{tmp_path}/store", "AVA_WORKSPACE": str(tmp_path / "ws")})
    train_iter, _ = make_data()
    prefix = str(Path(i.get_snapshot_base_path()) / "mlp")
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=2, batch_end_callback=i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=10),
        epoch_end_callback=[mx.callback.do_checkpoint(prefix), i.get_epoch_end_callback("mxnet")])
    deadline = time.monotonic() + 30
    while not any("failed (attempt" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the failed upload was not reported"
        i.flush_metrics(0.1)
    epochs = [r["epoch"] for r in records(i) if "event" not in r and r["epoch"] is not None]
    assert max(epochs) == 1  # training ran to the end
    i.done(timeout=0.2)
    assert Path(f"{prefix}-0001.params").exists() and Path(f"{prefix}-0002.params").exists()
    state = json.loads((Path(i.get_base_path()) / "snapshots.json").read_text())
    assert [s["state"] for s in state["snapshots"]] == ["pending", "pending"]


def test_nan_metric_is_recorded_as_nan(ins):
    i = ins()
    train_iter, _ = make_data()
    nan_metric = mx.metric.np(lambda label, pred: float("nan"), name="broken")
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=1, eval_metric=nan_metric,
        batch_end_callback=i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=5))
    values = [r["value"] for r in records(i, name="broken")]
    assert values and set(values) == {"nan"}


def test_window_values_for_non_additive_metrics(ins):
    """F1 and perplexity go through their own formulas; one reading per batch gives finite values."""
    reader = mxnet_monitor.WindowReader()
    composite = mx.metric.create(["acc", mx.metric.F1(), mx.metric.Perplexity(None)])
    labels = [mx.nd.array([0, 1, 1, 0])]
    preds = [mx.nd.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])]
    composite.update(labels, preds)
    first = dict(reader.read(composite))
    assert first["accuracy"] == 0.5 and 0 < first["f1"] <= 1 and first["perplexity"] > 1
    composite.reset_local()  # what Speedometer does: global counters stay
    composite.update(labels, [mx.nd.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])])
    assert dict(reader.read(composite))["accuracy"] == 1.0


def test_bad_arguments_raise_clear_errors(ins):
    i = ins()
    with pytest.raises(UsageError, match="batch_size"):
        i.get_monitor_callback("mxnet")
    with pytest.raises(UsageError, match="batch_freq"):
        i.get_monitor_callback("mxnet", batch_size=32, batch_freq=0)
    with pytest.raises(UsageError, match="unknown arguments"):
        i.get_monitor_callback("mxnet", batch_size=32, frequent=5)
    with pytest.raises(UsageError, match="epoch_interval"):
        i.get_epoch_end_callback("mxnet", epoch_interval="2")
    with pytest.raises(UsageError, match="same name"):
        i.get_epoch_end_callback("mxnet", other_files=["/a/x.txt", "/b/x.txt"])
    with pytest.raises(UsageError, match="known: .*mxnet"):
        i.get_monitor_callback("tensorflow")


def test_old_names_and_metric_list():
    assert mxnet_monitor.batch_end_callback_builder is mxnet_monitor.monitor_callback
    assert mxnet_monitor.epoch_end_callback_builder is mxnet_monitor.epoch_end_callback
    assert {"accuracy", "cross-entropy", "top_k_accuracy_5"} <= set(mxnet_monitor.full_mxnet_metrics())


def test_np_bool_shim_adds_only_what_is_missing():
    old_numpy = types.SimpleNamespace()  # numpy >= 1.24 has no np.bool
    assert mxnet_monitor.ensure_np_bool(old_numpy) and old_numpy.bool is bool
    assert not mxnet_monitor.ensure_np_bool(np)  # numpy 1.23.5 still has it


def test_other_files_holding_a_directory_are_refused_when_the_callback_is_made(ins, tmp_path):
    i = ins()
    (tmp_path / "labels").mkdir()
    with pytest.raises(UsageError, match=r"other_files: .*labels is a directory"):
        i.get_epoch_end_callback("mxnet", batch_of_epoch=4, other_files=[tmp_path / "labels"])


class _MyAcc(mx.metric.EvalMetric):
    """A custom metric written the usual way: only update(), no global stats."""

    def __init__(self):
        super().__init__("myacc")

    def update(self, labels, preds):
        for label, pred in zip(labels, preds):
            self.sum_metric += float((pred.asnumpy().argmax(1) == label.asnumpy()).sum())
            self.num_inst += len(label)


@pytest.mark.parametrize("metric", ["custom", "f1-free-accuracy"])
def test_a_metric_without_global_counters_after_speedometer_gets_the_value_speedometer_printed(ins, metric):
    i = ins()
    train_iter, _ = make_data()
    printed = {}

    def probe(param):  # sits before Speedometer: what Speedometer is about to print and reset
        if param.nbatch and param.nbatch % 2 == 0:
            printed[(param.epoch, param.nbatch)] = dict(param.eval_metric.get_name_value())

    eval_metric = _MyAcc() if metric == "custom" else mx.metric.create(["acc", _MyAcc()])
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=2, eval_metric=eval_metric,
        batch_end_callback=[probe, mx.callback.Speedometer(BATCH, 2),
                            i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=2)])
    got = {(r["epoch"], r["batch"]): r["value"] for r in records(i, name="myacc", phase="train")
           if r.get("batch") is not None}
    # The custom metric was read after Speedometer's reset_local(): "nan" every time.
    assert got and all(got[k] == pytest.approx(printed[k]["myacc"]) for k in got), (got, printed)


def test_other_files_that_do_not_exist_are_refused_when_the_callback_is_made(ins, tmp_path):
    i = ins()
    # Each epoch's snapshot waited for the missing file: none confirmed, the status still "done".
    with pytest.raises(UsageError, match=r"other_files: .*labels\.txt does not exist"):
        i.get_epoch_end_callback("mxnet", batch_of_epoch=4, other_files=[tmp_path / "labels.txt"])


def test_a_test_score_after_training_is_recorded_where_the_training_is(ins):
    i = ins()
    train_iter, val_iter = make_data()
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    fit(mod, train_iter, epochs=3, batch_end_callback=i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=5))
    mod.score(val_iter, "acc", score_end_callback=mxnet_monitor.score_end_callback(i))
    last_train = max(r["step"] for r in records(i, phase="train"))
    (rec,) = records(i, phase="test")
    # score() says epoch=0: it was recorded at epoch 0 and the step of epoch 0's end.
    assert (rec["epoch"], rec["step"]) == (2, last_train)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_optimizer_states_saved_by_a_checkpoint_callback_listed_after_ours_go_up_too(ins, with_prefix):
    i = ins()
    train_iter, _ = make_data()
    mod = mx.mod.Module(mlp(), context=mx.cpu())
    prefix = i.get_snapshot_base_path() + "/net"
    ours = i.get_epoch_end_callback("mxnet", batch_of_epoch=4, **({"prefix": prefix} if with_prefix else {}))
    fit(mod, train_iter, epochs=2,
        epoch_end_callback=[ours, mx.callback.module_checkpoint(mod, prefix, 1, save_optimizer_states=True)])
    assert ours.wait(30) and i.snapshot_uploader.wait(60)
    stored = Path(i.storage_url[len("file://"):]) / "snapshots"
    # The .states was looked for once, before module_checkpoint wrote it: resumes lost the optimizer.
    for n in (1, 2):
        names = sorted(f["name"] for f in json.loads((stored / f"epoch-{n:04d}" / "MANIFEST.json").read_text())["files"])
        assert names == [f"net-{n:04d}.params", f"net-{n:04d}.states", "net-symbol.json"], (n, names)


def _param(epoch, nbatch, metric, end=False):
    return mx.model.BatchEndParam(epoch=epoch, nbatch=nbatch, eval_metric=metric,
                                  locals={"end_of_batch": end, "data_batch": None})


def test_a_log_metrics_replaced_after_the_callback_is_made_sees_every_batch_record(ins):
    """The callback hands its records to the writer directly only while log_metrics is the
    instance's own: a timer or filter installed later (or removed again) is honoured."""
    i = ins()
    cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=1)
    acc = mx.metric.Accuracy()
    real = i.log_metrics
    seen = []
    i.log_metrics = lambda *a, **k: (seen.append(a[1]), real(*a, **k))
    for nbatch in range(4):
        acc.update([mx.nd.array([1, 0])], [mx.nd.array([[0, 1], [1, 0]])])
        cb(_param(0, nbatch, acc))
    i.log_metrics = real
    for nbatch in range(4, 6):
        cb(_param(0, nbatch, acc))
    assert seen == [1, 2, 3]  # batch 0 starts the clock: records from batch 1 on
    assert [r["step"] for r in records(i, name="accuracy")] == [1, 2, 3, 4, 5]


def test_a_metric_value_changed_in_place_after_the_batch_keeps_that_batchs_value(ins):
    class InPlace(mx.metric.EvalMetric):
        """get() hands out the one array it keeps changing (no global counters: read as it is)."""

        def __init__(self):
            super().__init__("inplace")
            self.arr = np.zeros(1)

        def update(self, labels, preds):
            self.arr += 1
            self.num_inst += 1

        def get(self):
            return self.name, self.arr

    i = ins()
    cb = i.get_monitor_callback("mxnet", batch_size=BATCH, batch_freq=1)
    metric = InPlace()
    for nbatch in range(6):
        metric.update(None, None)
        cb(_param(0, nbatch, metric))
    assert [(r["step"], r["value"]) for r in records(i, name="inplace")] == [(k, k + 1.0) for k in range(1, 6)]


@pytest.mark.parametrize("seed", range(3))
def test_the_window_reader_reads_one_metric_as_its_general_loop_does(seed):
    """WindowReader's path for one plain metric gives what its general loop gives, across
    resets, Speedometer's reset_local, restarts and a metric object replaced."""
    from ava.monitor._mxnet_metrics import WindowReader

    class GeneralOnly(WindowReader):
        def _prepare(self, eval_metric):
            super()._prepare(eval_metric)
            self._single = None

    rng = np.random.RandomState(seed)
    metrics = [mx.metric.CrossEntropy(), mx.metric.CrossEntropy()]
    fast, general = WindowReader(), GeneralOnly()
    metric = metrics[0]
    fast.watch(metric)
    general.watch(metric)
    assert fast._single is not None and general._single is None
    compared = 0
    for _ in range(400):
        action = rng.randint(10)
        if action == 0:
            metric.reset()
        elif action == 1:
            metric.reset_local()
        elif action == 2:
            fast.restart()
            general.restart()
        elif action == 3:
            metric = metrics[rng.randint(2)]
        else:
            n = rng.randint(1, 5)
            label = mx.nd.array(rng.randint(0, 3, size=n))
            pred = mx.nd.array(rng.dirichlet(np.ones(3), size=n))
            metric.update([label], [pred])
        if rng.randint(3) == 0:
            a, b = fast.read(metric), general.read(metric)
            assert a.keys() == b.keys() and all(
                (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-12) for k in a), (a, b)
            compared += 1
    assert compared > 50
