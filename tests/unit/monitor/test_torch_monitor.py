"""TorchMonitor on real (tiny) PyTorch trainings: metrics, checkpoints in storage, resume."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path

import pytest
import torch

from ava.errors import UsageError
from ava.metrics.sinks.jsonl import iter_records
from ava.monitor import torch as torch_monitor
from ava.train import base as train

BATCH = 20
N_TRAIN, N_VAL = 400, 100
PER_EPOCH = N_TRAIN // BATCH


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 16, generator=g) * 0.6
    y = torch.randint(0, 3, (N_TRAIN + N_VAL,), generator=g)
    x = centers[y] + torch.randn(len(y), 16, generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def make_optimizer(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)


def batches(data, epoch):
    x, y = data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    for k in range(0, len(x), BATCH):
        idx = order[k:k + BATCH]
        yield x[idx], y[idx]


def accuracy(model, data):
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def run_epochs(mon, model, opt, sched, train_data, val_data, epochs, seen=None):
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in epochs:
        for x, y in batches(train_data, epoch):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            mon.step(loss=loss, optimizer=opt if seen is None else None)
            if seen is not None:
                seen[mon.global_step] = (loss.item(), opt.param_groups[0]["lr"], lr)
        mon.epoch_end(model, opt, epoch, scheduler=sched, accuracy=accuracy(model, val_data))


@pytest.fixture
def workspace(tmp_path):
    return tmp_path / "ws"


def open_ins(workspace, ins_id=None):
    return train.TrainInstance(ins_id or f"pt-{uuid.uuid4().hex[:8]}", workspace=workspace, setup_logging=False)


def records(ins, **match):
    ins.flush_metrics(30)
    return [r for r in iter_records(ins.metrics_path) if all(r.get(k) == v for k, v in match.items())]


def storage_dir(ins) -> Path:
    return Path(ins.storage_url[len("file://"):]) / "snapshots"


def test_step_records_every_log_every_steps_with_lr_speed_and_samples(workspace):
    ins = open_ins(workspace)
    train_data, val_data = make_data()
    model = make_model()
    opt, sched = make_optimizer(model)
    mon = ins.get_monitor_callback("torch", log_every=3, batch_size=BATCH, optimizer=opt)
    seen = {}
    run_epochs(mon, model, opt, sched, train_data, val_data, range(2), seen)
    ins.done()
    recs = [r for r in records(ins) if "event" not in r and not r["name"].startswith("upload_")]
    train_recs = {(r["step"], r["name"]): r for r in recs if r["phase"] == "train"}
    steps = sorted({s for s, _ in train_recs})
    assert steps == list(range(3, 2 * PER_EPOCH + 1, 3))
    for s in steps:
        loss, lr_after_sched, _ = seen[s]
        assert train_recs[(s, "loss")]["value"] == pytest.approx(loss, rel=1e-6)
        # the optimizer given at construction is read at step() time: after sched.step()
        assert train_recs[(s, "lr")]["value"] == pytest.approx(lr_after_sched)
        assert train_recs[(s, "samples")]["value"] == s * BATCH
        assert train_recs[(s, "loss")]["epoch"] == (s - 1) // PER_EPOCH
        assert train_recs[(s, "loss")]["batch"] == (s - 1) % PER_EPOCH
        speed = train_recs.get((s, "speed"))
        if speed is not None:
            assert speed["unit"] == "samples/s" and speed["value"] > 0
    assert len({train_recs[(s, "lr")]["value"] for s in steps}) > 2  # the scheduler moved it
    val = [r for r in recs if r["phase"] == "val"]
    assert [(r["epoch"], r["step"], r["name"]) for r in val] == [(0, PER_EPOCH, "accuracy"),
                                                                  (1, 2 * PER_EPOCH, "accuracy")]
    assert val[-1]["value"] == pytest.approx(accuracy(model, val_data)) and val[-1]["value"] > 0.8


def test_tensors_are_read_on_the_writer_thread_only_for_recorded_steps(workspace):
    ins = open_ins(workspace)
    reads = []

    class Probe:
        """A one-element 'tensor' that notes who reads it."""

        def __init__(self, v):
            self.v = v

        def numel(self):
            return 1

        def item(self):
            reads.append((self.v, threading.current_thread() is threading.main_thread()))
            return self.v

    mon = torch_monitor.TorchMonitor(ins, log_every=5)
    for k in range(1, 21):
        mon.step(loss=Probe(float(k)), acc=Probe(k / 100))
    ins.flush_metrics(30)
    assert sorted(v for v, _ in reads) == [0.05, 0.1, 0.15, 0.2, 5.0, 10.0, 15.0, 20.0]
    assert not any(on_main for _, on_main in reads)
    ins.done()


def test_checkpoints_reach_storage_and_load_with_torch_load(workspace):
    ins = open_ins(workspace)
    train_data, val_data = make_data()
    model = make_model()
    opt, sched = make_optimizer(model)
    mon = torch_monitor.monitor_callback(ins, log_every=10, batch_size=BATCH)
    epoch_end = ins.get_epoch_end_callback("torch")
    assert epoch_end == mon.epoch_end  # one monitor: one step count
    run_epochs(mon, model, opt, sched, train_data, val_data, range(2))
    ins.done()
    snaps = storage_dir(ins)
    assert (snaps / "LATEST").read_text() == "epoch-0001"
    manifest = json.loads((snaps / "epoch-0001" / "MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["checkpoint-0001.pt"]
    assert manifest["meta"] == {"framework": "torch", "epoch": 1, "step": 2 * PER_EPOCH, "file": "checkpoint-0001.pt"}
    state = torch.load(snaps / "epoch-0001" / "checkpoint-0001.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2 * PER_EPOCH
    for name, value in model.state_dict().items():
        assert torch.equal(state["model"][name], value)
    assert state["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert (Path(ins.get_snapshot_base_path()) / "checkpoint-0000.pt").exists()  # local files stay


@pytest.mark.parametrize("local", [True, False], ids=["from-run-dir", "from-storage"])
def test_resume_continues_from_the_epoch_after_the_last_checkpoint(workspace, local):
    train_data, val_data = make_data()
    ins_id = f"pt-resume-{uuid.uuid4().hex[:6]}"

    # First run: epochs 0, 1, 2, then the job stops.
    ins = open_ins(workspace, ins_id)
    model = make_model()
    opt, sched = make_optimizer(model)
    mon = torch_monitor.TorchMonitor(ins, log_every=5, batch_size=BATCH)
    assert mon.resume(model, opt, scheduler=sched) == (0, 0)
    run_epochs(mon, model, opt, sched, train_data, val_data, range(3))
    ins.done(err_msg="preempted")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    if not local:  # a new machine: the run directory is gone, storage is not
        shutil.rmtree(Path(ins.get_snapshot_base_path()))
        Path(ins.get_snapshot_base_path()).mkdir()

    # Second run, same instance id: fresh objects, state from the checkpoint.
    ins2 = open_ins(workspace, ins_id)
    model2 = make_model()
    opt2, sched2 = make_optimizer(model2)
    mon2 = torch_monitor.TorchMonitor(ins2, log_every=5, batch_size=BATCH)
    start, step = mon2.resume(model2, opt2, scheduler=sched2)
    assert (start, step) == (3, 3 * PER_EPOCH)
    for k, v in saved.items():
        assert torch.equal(model2.state_dict()[k], v)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    assert sched2.last_epoch == sched.last_epoch
    run_epochs(mon2, model2, opt2, sched2, train_data, val_data, range(start, 5))
    ins2.done()

    recs = records(ins2)
    (resume,) = [r for r in recs if r.get("event") == "resume"]
    assert resume["epoch"] == 2 and resume["step"] == 3 * PER_EPOCH
    assert resume["path"].endswith("checkpoint-0002.pt")
    after = [r for r in recs if r["seq"] > resume["seq"] and r.get("name") == "loss"]
    assert after[0]["step"] == 3 * PER_EPOCH + 5 and after[0]["epoch"] == 3
    val_epochs = [r["epoch"] for r in recs if r.get("phase") == "val"]
    assert val_epochs == [0, 1, 2, 3, 4]
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(len(seqs)))  # one record stream across both runs
    assert (storage_dir(ins2) / "LATEST").read_text() == "epoch-0004"


def checkpointed_once(workspace):
    """An instance, a model, its optimizer and a monitor that saved epoch 0's checkpoint."""
    ins = open_ins(workspace)
    model = make_model()
    opt, _ = make_optimizer(model)
    mon = torch_monitor.TorchMonitor(ins, log_every=5, checkpoint_every=1)
    mon.epoch_end(model, opt, 0)
    return ins, model, opt, mon


def test_resume_skips_an_unreadable_newest_checkpoint(workspace):
    ins, model, opt, mon = checkpointed_once(workspace)
    Path(mon.checkpoint_path(1)).write_bytes(b"not a checkpoint")
    assert mon.resume(make_model(), opt) == (1, 0)
    ins.done()


def test_resume_skips_a_file_that_is_not_its_checkpoint_and_names_a_model_that_does_not_fit(workspace, caplog):
    ins, model, opt, mon = checkpointed_once(workspace)
    torch.save(model.state_dict(), mon.checkpoint_path(2))  # a plain state dict under the checkpoint name
    torch.save({"model": model.state_dict()}, mon.checkpoint_path(1))  # no epoch, no step
    fresh = make_model()
    with caplog.at_level("WARNING", logger="ava.monitor.torch"):
        assert mon.resume(fresh, opt) == (1, 0)
    assert "no 'model' state dict in it" in caplog.text and "no integer 'epoch' in it" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    other = torch.nn.Sequential(torch.nn.Linear(16, 4))
    with pytest.raises(UsageError, match=r"checkpoint .*checkpoint-0000\.pt does not fit the model given to resume\(\)"):
        mon.resume(other, None)
    ins.done()


def test_resume_with_an_optimizer_that_does_not_fit_loads_nothing_and_says_why(workspace):
    ins, model, opt, mon = checkpointed_once(workspace)
    fresh = make_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    split = torch.optim.Adam([{"params": list(fresh[0].parameters())}, {"params": list(fresh[2].parameters())}])
    # The old resume loaded the model, then torch's optimizer raised a bare ValueError.
    with pytest.raises(UsageError, match=r"does not fit the optimizer given to resume\(\): .*\[2, 2\].*\[4\]"):
        mon.resume(fresh, split)
    assert all(float(p.detach().abs().sum()) == 0.0 for p in fresh.parameters())  # nothing was loaded
    ins.done()


def test_checkpoints_of_a_compiled_model_load_into_a_plain_one_and_back(workspace):
    ins = open_ins(workspace)
    model = make_model()
    compiled = torch.compile(model)  # the wrapper is made at once; nothing is compiled until a call
    mon = torch_monitor.TorchMonitor(ins, checkpoint_every=1)
    path = mon.epoch_end(compiled, None, 0)
    assert not any(k.startswith("_orig_mod.") for k in torch.load(path, weights_only=True)["model"])
    plain = torch_monitor.TorchMonitor(ins)
    assert plain.resume(make_model(), None) == (1, 0)
    assert plain.resume(torch.compile(make_model()), None) == (1, 0)
    ins.done()


def test_non_zero_rank_records_but_does_not_save(workspace):
    ins = open_ins(workspace)
    model = make_model()
    opt, _ = make_optimizer(model)
    mon = torch_monitor.TorchMonitor(ins, log_every=1, rank=1)
    mon.step(loss=torch.tensor(1.0))
    assert mon.epoch_end(model, opt, 0, accuracy=0.5) is None
    assert list(Path(ins.get_snapshot_base_path()).iterdir()) == []
    ins.done()
    assert [r["name"] for r in records(ins) if "event" not in r] == ["loss", "accuracy"]


def test_nan_loss_and_no_batch_size(workspace):
    ins = open_ins(workspace)
    mon = torch_monitor.TorchMonitor(ins, log_every=2)
    for _ in range(4):
        mon.step(loss=torch.tensor(float("nan")))
    ins.done()
    recs = records(ins)
    assert [r["value"] for r in recs if r["name"] == "loss"] == ["nan", "nan"]
    assert all(r["unit"] == "iter/s" for r in recs if r["name"] == "speed")
    assert not [r for r in recs if r["name"] == "samples"]


def test_epoch_end_takes_a_numpy_epoch(workspace):
    import numpy as np

    ins = open_ins(workspace)
    mon = torch_monitor.TorchMonitor(ins)
    path = mon.epoch_end(make_model(), None, np.int64(0))
    saved = torch.load(path, weights_only=False)
    assert saved["epoch"] == 0 and type(saved["epoch"]) is int
    ins.done()
    assert mon.latest_checkpoint() is not None


def test_bad_arguments(workspace):
    ins = open_ins(workspace)
    with pytest.raises(UsageError, match="log_every"):
        torch_monitor.TorchMonitor(ins, log_every=0)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(UsageError, match="epoch must be a non-negative integer"):
            torch_monitor.TorchMonitor(ins).epoch_end(make_model(), None, bad)
    with pytest.raises(UsageError, match="other_files"):
        ins.get_epoch_end_callback("torch", other_files=["x"])
    ins.done()


def test_epoch_end_callback_with_settings_configures_the_monitor_the_batches_use(workspace):
    ins = open_ins(workspace, "pt-cb-kwargs")
    mon = ins.get_monitor_callback("torch", log_every=2, batch_size=4)
    epoch_end = ins.get_epoch_end_callback("torch", checkpoint_every=1)
    model = make_model()
    opt, _ = make_optimizer(model)
    for epoch in range(2):
        for b in range(4):
            mon.step(loss=float(b))
        path = epoch_end(model, opt, epoch, acc=0.5)
    # The old code made a second monitor: the second epoch's batches were still epoch 0, the
    # validation records were at step 0 and the checkpoint said step 0 after 8 steps.
    train_recs = records(ins, name="loss")
    assert [(r["step"], r["epoch"], r["batch"]) for r in train_recs] == [(2, 0, 1), (4, 0, 3), (6, 1, 1), (8, 1, 3)]
    assert [(r["step"], r["epoch"]) for r in records(ins, name="acc", phase="val")] == [(4, 0), (8, 1)]
    assert torch.load(path, weights_only=True)["step"] == 8
    with pytest.raises(UsageError, match="unknown arguments"):
        ins.get_epoch_end_callback("torch", checkpoint_evry=1)
    ins.done()


def test_epoch_begin_labels_a_loop_that_counts_epochs_from_one(workspace):
    ins = open_ins(workspace)
    mon = torch_monitor.TorchMonitor(ins, log_every=2, checkpoint_every=0)
    model = make_model()
    opt, _ = make_optimizer(model)
    for epoch in range(1, 4):
        mon.epoch_begin(epoch)
        for b in range(4):
            mon.step(loss=float(epoch))
        mon.epoch_end(model, opt, epoch, val_loss=float(epoch))
    # Without epoch_begin, epoch 1's training records said epoch 0 and its validation epoch 1.
    train_recs = [(r["value"], r["epoch"], r["batch"]) for r in records(ins, name="loss")]
    assert train_recs == [(float(e), e, b) for e in (1, 2, 3) for b in (1, 3)]
    assert [(r["value"], r["epoch"]) for r in records(ins, name="val_loss")] == [(float(e), e) for e in (1, 2, 3)]
    ins.done()


def test_resume_prefers_storages_copy_of_a_damaged_newest_checkpoint_to_an_older_local_one(workspace):
    ins = open_ins(workspace, "pt-damaged")
    model = make_model()
    opt, _ = make_optimizer(model)
    mon = torch_monitor.TorchMonitor(ins, log_every=5, checkpoint_every=1)
    for epoch in range(3):
        for _ in range(3):
            mon.step(loss=1.0)
        mon.epoch_end(model, opt, epoch)
    assert ins.snapshot_uploader.wait(60)
    ins.done()
    newest = mon.checkpoint_path(2)
    newest.write_bytes(newest.read_bytes()[:100])  # a power cut while it was written
    again = open_ins(workspace, "pt-damaged")
    fresh = make_model()
    # The old resume went back to the local epoch 1 although storage held epoch 2 intact.
    assert torch_monitor.TorchMonitor(again, log_every=5).resume(fresh, make_optimizer(fresh)[0]) == (3, 9)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    again.done()


def test_resume_that_finds_no_checkpoint_of_a_run_that_had_epochs_says_so(workspace, caplog):
    ins = open_ins(workspace, "pt-lost")
    model = make_model()
    opt, _ = make_optimizer(model)
    mon = torch_monitor.TorchMonitor(ins, log_every=1, checkpoint_every=1)
    for epoch in range(2):
        mon.step(loss=1.0)
        mon.epoch_end(model, opt, epoch)
    assert ins.snapshot_uploader.wait(60)
    ins.done()
    for f in ins.output_dir.iterdir():  # a new container: the local files are gone ...
        f.unlink()
    (workspace / "storage" / "pt-lost" / "snapshots" / "LATEST").write_text("")  # ... and LATEST is damaged
    again = open_ins(workspace, "pt-lost")
    with caplog.at_level("WARNING", logger="ava.monitor.torch"):
        assert torch_monitor.TorchMonitor(again, log_every=1).resume(make_model(), None) == (0, 0)
    # It started again at epoch 0 without a word.
    assert "recorded up to epoch 1 before, but no checkpoint was found" in caplog.text
    again.done()
