"""The Gluon estimator handlers and the plain-loop helper on real (tiny) Gluon trainings."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from ava.errors import UsageError
from ava.metrics.sinks.jsonl import iter_records
from ava.monitor import gluon as gluon_monitor
from ava.train import base as train

mx = gluon_monitor.mx
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon.contrib.estimator import estimator, event_handler  # noqa: E402

BATCH = 20
N_TRAIN, N_VAL = 400, 100


def loaders(seed: int = 0):
    rng = np.random.RandomState(seed)
    centers = rng.normal(scale=0.6, size=(3, 16))
    y = rng.randint(0, 3, size=N_TRAIN + N_VAL)
    x = (centers[y] + rng.normal(size=(len(y), 16))).astype("float32")
    y = y.astype("float32")
    train_dl = gluon.data.DataLoader(gluon.data.ArrayDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=BATCH, shuffle=True)
    val_dl = gluon.data.DataLoader(gluon.data.ArrayDataset(x[N_TRAIN:], y[N_TRAIN:]), batch_size=BATCH)
    return train_dl, val_dl


def make_net():
    mx.random.seed(1)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(32, activation="relu"), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    return net


def make_trainer(net):
    sched = mx.lr_scheduler.FactorScheduler(step=7, factor=0.5, base_lr=0.1)
    return gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "lr_scheduler": sched})


@pytest.fixture
def ins(tmp_path):
    made = []

    def make():
        i = train.TrainInstance(f"gl-{uuid.uuid4().hex[:8]}", workspace=tmp_path / "ws", setup_logging=False)
        made.append(i)
        return i

    yield make
    for i in made:
        i.done()


def records(ins, **match):
    assert ins.flush_metrics(30)
    return [r for r in iter_records(ins.metrics_path) if all(r.get(k) == v for k, v in match.items())]


def by_key(recs):
    out = {}
    for r in recs:
        if "event" in r or r["name"].startswith("upload_"):
            continue
        key = (r["phase"], r["epoch"], r["batch"], r["name"])
        assert key not in out, f"duplicate record {key}"
        out[key] = r
    return out


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


BATCH_LINE = re.compile(r"\[Epoch (\d+)\]\[Batch (\d+)\]\[Samples (\d+)\] time/interval: [\d.]+s training accuracy: "
                        r"([\d.]+), training softmaxcrossentropyloss: ([\d.]+)")
VAL_LINE = re.compile(r"Finished in [\d.]+s, validation accuracy: ([\d.]+), "
                      r"validation softmaxcrossentropyloss: ([\d.]+)")


def test_estimator_handler_matches_logging_handler(ins):
    i = ins()
    train_dl, val_dl = loaders()
    net = make_net()
    trainer = make_trainer(net)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    est = estimator.Estimator(net, loss, trainer=trainer)  # its default metrics: accuracy and the loss
    out = Collect()
    est.logger.addHandler(out)
    lrs = {}

    class LrProbe(event_handler.BatchEnd):
        def __init__(self):
            self.n = 0

        def batch_end(self, estimator, *args, **kwargs):
            lrs[self.n] = estimator.trainer.learning_rate
            self.n += 1

    monitor = gluon_monitor.monitor_callback(i, log_interval=5)
    est.fit(train_dl, val_data=val_dl, epochs=2, event_handlers=[
        monitor, LrProbe(), event_handler.LoggingHandler(log_interval=5, metrics=est.train_metrics)])

    recs = by_key(records(i))
    printed = [m for m in map(BATCH_LINE.search, out.lines) if m]
    assert len(printed) == 2 * 4  # batches 0, 5, 10, 15 of two epochs
    per_epoch = N_TRAIN // BATCH
    for m in printed:
        epoch, batch = int(m.group(1)), int(m.group(2))
        assert recs[("train", epoch, batch, "accuracy")]["value"] == pytest.approx(float(m.group(4)), abs=5e-5)
        assert recs[("train", epoch, batch, "softmaxcrossentropyloss")]["value"] == pytest.approx(float(m.group(5)),
                                                                                                    abs=5e-5)
        assert recs[("train", epoch, batch, "samples")]["value"] == int(m.group(3))
        step = epoch * per_epoch + batch
        assert recs[("train", epoch, batch, "accuracy")]["step"] == step
        assert recs[("train", epoch, batch, "lr")]["value"] == pytest.approx(lrs[step])
        if batch:
            assert recs[("train", epoch, batch, "speed")]["unit"] == "samples/s"
    val_printed = [m for m in map(VAL_LINE.search, out.lines) if m]
    assert len(val_printed) == 2
    for epoch, m in enumerate(val_printed):
        assert recs[("val", epoch, None, "accuracy")]["value"] == pytest.approx(float(m.group(1)), abs=5e-5)
        assert recs[("val", epoch, None, "softmaxcrossentropyloss")]["value"] == pytest.approx(float(m.group(2)),
                                                                                                 abs=5e-5)
        assert recs[("val", epoch, None, "accuracy")]["step"] == (epoch + 1) * per_epoch
    assert recs[("val", 1, None, "accuracy")]["value"] > 0.8


def test_validation_only_on_epochs_that_validated(ins):
    i = ins()
    train_dl, val_dl = loaders()
    net = make_net()
    est = estimator.Estimator(net, gluon.loss.SoftmaxCrossEntropyLoss(), train_metrics=mx.metric.Accuracy(),
                              trainer=make_trainer(net))
    est.logger.disabled = True
    est.fit(train_dl, val_data=val_dl, epochs=4, event_handlers=[
        gluon_monitor.MonitorHandler(i, log_interval="epoch"),
        event_handler.ValidationHandler(val_dl, est.evaluate, epoch_period=2)])
    assert [r["epoch"] for r in records(i, phase="val", name="accuracy")] == [1, 3]
    assert [r["epoch"] for r in records(i, phase="train", name="accuracy")] == [0, 1, 2, 3]
    assert not [r for r in records(i) if r.get("batch") is not None]


def test_snapshot_handler_uploads_loadable_params_and_states(ins):
    i = ins()
    train_dl, _ = loaders()
    net = make_net()
    trainer = make_trainer(net)
    est = estimator.Estimator(net, gluon.loss.SoftmaxCrossEntropyLoss(), train_metrics=mx.metric.Accuracy(),
                              trainer=trainer)
    est.logger.disabled = True
    est.fit(train_dl, epochs=2, event_handlers=[gluon_monitor.epoch_end_callback(i, epoch_interval=1)])
    i.done()
    snaps = Path(i.storage_url[len("file://"):]) / "snapshots"
    assert (snaps / "LATEST").read_text() == "epoch-0002"
    manifest = json.loads((snaps / "epoch-0002" / "MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["model-0002.params", "model-0002.states"]
    assert manifest["meta"]["step"] == 2 * (N_TRAIN // BATCH)
    fresh = make_net()
    fresh.load_parameters(str(snaps / "epoch-0002" / "model-0002.params"))
    x = mx.nd.ones((2, 16))
    np.testing.assert_allclose(fresh(x).asnumpy(), net(x).asnumpy(), rtol=1e-6)
    make_trainer(fresh).load_states(str(snaps / "epoch-0002" / "model-0002.states"))


def test_plain_loop_helper(ins):
    i = ins()
    train_dl, val_dl = loaders()
    net = make_net()
    trainer = make_trainer(net)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    acc = mx.metric.Accuracy()
    mon = gluon_monitor.LoopMonitor(i, batch_size=BATCH, log_every=4, trainer=trainer)
    losses = {}
    for epoch in range(2):
        acc.reset()
        for x, y in train_dl:
            with autograd.record():
                out = net(x)
                loss = loss_fn(out, y)
            loss.backward()
            trainer.step(x.shape[0])
            acc.update(y, out)
            mon.step(loss=loss, accuracy=acc)
            losses[mon.global_step] = (float(loss.mean().asscalar()), acc.get()[1], trainer.learning_rate)
        val = mx.metric.Accuracy()
        for x, y in val_dl:
            val.update(y, net(x))
        files = mon.epoch_end(net, trainer, epoch, accuracy=val)
        assert [f.name for f in files] == [f"model-{epoch + 1:04d}.params", f"model-{epoch + 1:04d}.states"]
    recs = by_key(records(i))
    logged = {(k[1], k[2]) for k in recs if k[0] == "train" and k[2] is not None}
    assert len(logged) == 2 * (N_TRAIN // BATCH) // 4
    for (phase, epoch, batch, name), r in recs.items():
        if phase == "train" and name == "loss":
            want_loss, want_acc, want_lr = losses[r["step"]]
            assert r["value"] == pytest.approx(want_loss, rel=1e-6)
            assert recs[(phase, epoch, batch, "accuracy")]["value"] == pytest.approx(want_acc)
            assert recs[(phase, epoch, batch, "lr")]["value"] == pytest.approx(want_lr)
            assert recs[(phase, epoch, batch, "samples")]["value"] == r["step"] * BATCH
    assert recs[("val", 1, None, "accuracy")]["value"] == pytest.approx(val.get()[1])
    i.done()
    assert (Path(i.storage_url[len("file://"):]) / "snapshots" / "LATEST").read_text() == "epoch-0002"


def test_plain_loop_takes_numpy_epochs_and_refuses_what_is_not_an_epoch(ins):
    import numpy as np

    from ava.errors import UsageError

    i = ins()
    train_dl, _ = loaders()
    net = make_net()
    trainer = make_trainer(net)
    mon = gluon_monitor.LoopMonitor(i, batch_size=BATCH, log_every=4, trainer=trainer)
    _train_epochs(net, trainer, mon, train_dl, [np.int64(e) for e in range(3)])
    for bad in (-1, 2.5, "1", True):
        with pytest.raises(UsageError, match="epoch must be a non-negative integer"):
            mon.epoch_end(net, trainer, bad)
    i.done()
    snaps = Path(i.storage_url[len("file://"):]) / "snapshots"
    assert (snaps / "LATEST").read_text() == "epoch-0003"
    assert json.loads((snaps / "epoch-0003" / "MANIFEST.json").read_text())["meta"]["epoch"] == 2


def _loop(ins):
    """A new net, its trainer and a LoopMonitor on ``ins`` (a loss every 5 batches)."""
    net = make_net()
    trainer = make_trainer(net)
    return net, trainer, gluon_monitor.LoopMonitor(ins, batch_size=BATCH, log_every=5, trainer=trainer)


def _train_epochs(net, trainer, mon, train_dl, epochs):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for epoch in epochs:
        for x, y in train_dl:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            mon.step(loss=loss)
        mon.epoch_end(net, trainer, epoch)


def test_plain_loop_resumes_from_its_snapshot_downloaded_from_storage(tmp_path):
    ws = tmp_path / "ws"
    train_dl, _ = loaders()
    first = train.TrainInstance("gl-resume", workspace=ws, setup_logging=False)
    net, trainer, mon = _loop(first)
    assert mon.resume(net, trainer) == (0, 0)  # a fresh instance: nothing to resume from
    _train_epochs(net, trainer, mon, train_dl, range(2))
    saved_step, saved_lr = mon.global_step, trainer.learning_rate
    x = mx.nd.ones((2, 16))
    want = net(x).asnumpy()
    first.done()
    for f in first.output_dir.iterdir():  # a new machine: only storage has the snapshot
        f.unlink()

    second = train.TrainInstance("gl-resume", workspace=ws, setup_logging=False)
    fresh = make_net()
    fresh.initialize(mx.init.Uniform(), force_reinit=True)
    fresh_trainer = make_trainer(fresh)
    mon2 = gluon_monitor.LoopMonitor(second, batch_size=BATCH, log_every=5, trainer=fresh_trainer)
    assert mon2.resume(fresh, fresh_trainer) == (2, saved_step)
    np.testing.assert_allclose(fresh(x).asnumpy(), want, rtol=1e-6)
    assert fresh_trainer.learning_rate == pytest.approx(saved_lr)  # the scheduler's place came back too
    assert mon2.samples == saved_step * BATCH
    _train_epochs(fresh, fresh_trainer, mon2, train_dl, range(2, 3))
    second.done()
    recs = list(iter_records(second.metrics_path))  # both attempts: the first one's resume() found nothing
    resume = [r for r in recs if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == saved_step and "restored" in resume[0]["path"]
    later = [r for r in recs if r["seq"] > resume[0]["seq"] and r.get("name") == "loss"]
    assert later and min(r["step"] for r in later) == saved_step + 5 and all(r["epoch"] == 2 for r in later)
    assert (Path(second.storage_url[len("file://"):]) / "snapshots" / "LATEST").read_text() == "epoch-0003"


def test_resume_names_a_snapshot_it_cannot_restore_or_load(tmp_path, caplog):
    ws = tmp_path / "ws"
    train_dl, _ = loaders()
    first = train.TrainInstance("gl-damaged", workspace=ws, setup_logging=False)
    net, trainer, mon = _loop(first)
    _train_epochs(net, trainer, mon, train_dl, range(2))
    first.done()
    stored = Path(first.storage_url[len("file://"):]) / "snapshots" / "epoch-0002"
    local = first.output_dir / "model-0002.params"
    local.write_bytes(local.read_bytes()[:100])  # damaged on disk: the stored copy is the one to use
    good = (stored / "model-0002.params").read_bytes()
    (stored / "model-0002.params").write_bytes(good[:100])  # ... and damaged there too
    second = train.TrainInstance("gl-damaged", workspace=ws, setup_logging=False)
    _, _, mon2 = _loop(second)
    with pytest.raises(UsageError, match=r"snapshot epoch-0002: .*model-0002\.params cannot be loaded"):
        mon2.resume(make_net(), None)
    second.done()
    (stored / "model-0002.params").unlink()  # now gone from storage altogether
    third = train.TrainInstance("gl-damaged", workspace=ws, setup_logging=False)
    _, _, mon3 = _loop(third)
    with caplog.at_level("WARNING", logger="ava.train.resume"):
        assert mon3.resume(make_net(), None) == (0, 0)
    assert "snapshot epoch-0002 in " in caplog.text and "cannot be restored" in caplog.text
    third.done()


def test_bad_arguments(ins):
    i = ins()
    with pytest.raises(UsageError, match="log_interval"):
        gluon_monitor.MonitorHandler(i, log_interval=0)
    with pytest.raises(UsageError, match="prefix"):
        gluon_monitor.SnapshotHandler(i, prefix="a/b")
    with pytest.raises(UsageError, match="other_files"):
        gluon_monitor.epoch_end_callback(i, other_files=["x"])


def test_a_resumed_estimator_run_continues_numbering_and_never_saves_over_earlier_snapshots(tmp_path):
    ws = tmp_path / "ws"
    steps_per_epoch = N_TRAIN // BATCH

    def attempt(epochs_wanted):
        ins = train.TrainInstance("gl-resume", workspace=ws, setup_logging=False)
        net = make_net()
        trainer = make_trainer(net)
        snap = gluon_monitor.SnapshotHandler(ins)
        start_epoch, step = snap.resume(net, trainer)
        mon = gluon_monitor.MonitorHandler(ins, log_interval="epoch", begin_epoch=start_epoch, begin_step=step)
        est = estimator.Estimator(net, gluon.loss.SoftmaxCrossEntropyLoss(), trainer=trainer)
        est.fit(loaders()[0], epochs=epochs_wanted - start_epoch, event_handlers=[mon, snap])
        assert ins.snapshot_uploader.wait(60)
        ins.done()
        return ins, start_epoch, step

    first, start, _ = attempt(3)
    assert start == 0
    manifest_2 = (ws / "storage" / "gl-resume" / "snapshots" / "epoch-0002" / "MANIFEST.json").read_text()
    second, start, step = attempt(5)
    assert (start, step) == (3, 3 * steps_per_epoch)
    snaps = ws / "storage" / "gl-resume" / "snapshots"
    # The old handlers started again at epoch 0: epoch-0001 and -0002 were saved over, LATEST went back.
    assert (snaps / "LATEST").read_text() == "epoch-0005"
    assert (snaps / "epoch-0002" / "MANIFEST.json").read_text() == manifest_2
    train_epochs = [(r["epoch"], r["step"]) for r in iter_records(second.metrics_path)
                    if r.get("name") == "accuracy" and r.get("phase") == "train"]
    assert train_epochs == [(e, (e + 1) * steps_per_epoch) for e in range(5)]
