"""TorchMonitor under ``torchrun --nproc_per_node=2`` (gloo, CPU): one set of snapshots, metrics
from both ranks, no duplicate ``(rank, seq)``."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ava.metrics.sinks.jsonl import iter_records
from ava.train import base as train
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

RANKS_SUPPORTED = "rank" in inspect.signature(train.TrainInstance).parameters

# Both scripts: each rank's shard of a 3-class problem, a DDP model and its optimizer.
DATA_AND_MODEL = textwrap.dedent('''
    torch.manual_seed(0)
    centers = torch.randn(3, 16) * 0.6
    y = torch.randint(0, 3, (400,))
    x = centers[y] + torch.randn(400, 16)
    x, y = x[rank::world], y[rank::world]  # each rank trains on its shard
    torch.manual_seed(1)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
''').strip()

SCRIPT = textwrap.dedent('''
    import sys

    import torch
    import torch.distributed as dist

    from ava.train import base as train

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ins = train.TrainInstance(sys.argv[1], setup_logging=False)  # the workspace and rank come from the environment
    # DATA_AND_MODEL
    mon = ins.get_monitor_callback("torch", log_every=5, batch_size=20)
    assert mon.rank == rank, (mon.rank, rank)
    start, _ = mon.resume(model, opt)
    for epoch in range(start, 2):
        for k in range(0, len(x), 20):
            loss = torch.nn.functional.cross_entropy(model(x[k:k + 20]), y[k:k + 20])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss, optimizer=opt)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean()
        mon.epoch_end(model, opt, epoch, accuracy=acc)
    dist.barrier()
    ins.done()
    dist.destroy_process_group()
''').replace("# DATA_AND_MODEL", DATA_AND_MODEL)


@pytest.mark.skipif(not RANKS_SUPPORTED, reason="TrainInstance has no rank support yet (RANK from the environment)")
def test_two_ranks_one_set_of_snapshots_and_metrics_from_both(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    ws = tmp_path / "ws"
    cmd, env = torchrun(script, ws, "ddp-1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run = ws / "run" / "ddp-1"
    storage = ws / "storage" / "ddp-1" / "snapshots"
    assert sorted(p.name for p in storage.iterdir()) == ["LATEST", "epoch-0000", "epoch-0001"]
    for epoch in (0, 1):
        assert sorted(p.name for p in (storage / f"epoch-{epoch:04d}").iterdir()) == [
            "MANIFEST.json", f"checkpoint-{epoch:04d}.pt"]
    assert sorted(p.name for p in (run / "output").iterdir()) == ["checkpoint-0000.pt", "checkpoint-0001.pt"]

    records = [r for f in sorted((run / "logs").glob("metrics*.jsonl")) for r in iter_records(f)]
    metrics = [r for r in records if "event" not in r]
    assert {r["rank"] for r in metrics} == {0, 1}
    for rank in (0, 1):
        steps = sorted(r["step"] for r in metrics if r["rank"] == rank and r["name"] == "loss")
        assert steps == list(range(5, 21, 5))  # 10 steps an epoch on each rank's shard
        assert len([r for r in metrics if r["rank"] == rank and r["phase"] == "val"]) == 2
    keys = [(r["rank"], r["seq"]) for r in records]
    assert len(keys) == len(set(keys))
    snapshot_events = [r for r in records if r.get("event") == "snapshot"]
    assert [(r["rank"], r["snapshot"]) for r in snapshot_events] == [(0, "epoch-0000"), (0, "epoch-0001")]
    assert json.loads((run / "status.json").read_text())["status"] == "done"


PREEMPT_SCRIPT = textwrap.dedent('''
    import json
    import os
    import sys
    import time

    import torch
    import torch.distributed as dist

    from ava.train import base as train

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ins = train.TrainInstance(setup_logging=False)  # the id comes from torchrun (TORCHELASTIC_RUN_ID)
    # DATA_AND_MODEL
    mon = ins.get_monitor_callback("torch", log_every=1, batch_size=20)
    start, step = mon.resume(model, opt)
    # One write(2) of the whole line: both ranks share torchrun's stdout, and print() writes the
    # text and its newline separately, so two ranks' lines could run together.
    os.write(1, (json.dumps({"rank": rank, "id": ins.training_ins_id, "start": start, "step": step}) + "\\n").encode())
    for epoch in range(start, int(sys.argv[1])):
        for k in range(0, len(x), 20):
            loss = torch.nn.functional.cross_entropy(model(x[k:k + 20]), y[k:k + 20])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss=loss, optimizer=opt)
            time.sleep(float(sys.argv[2]))
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean()
        mon.epoch_end(model, opt, epoch, accuracy=acc)
    dist.barrier()
    ins.done()
    dist.destroy_process_group()
''').replace("# DATA_AND_MODEL", DATA_AND_MODEL)


def torchrun(script: Path, ws: Path, *args: str, rdzv_id: str | None = None,
             env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment of ``torchrun --nproc_per_node=2 script args`` on 127.0.0.1."""
    full = {**os.environ, "AVA_WORKSPACE": str(ws), "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("AVA_TRAINING_INSTANCE_ID", None)
    repo = Path(__file__).resolve().parents[2]
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), full.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *([f"--rdzv_id={rdzv_id}"] if rdzv_id else []), str(script), *args]
    return cmd, full


def test_torchrun_preempted_by_sigterm_resumes_from_its_snapshot(tmp_path):
    """SIGTERM to torchrun mid-training: the run is preempted; the next torchrun with the same
    job id resumes both ranks from the last epoch checkpoint; the record shows both ranks, one
    rewind of the step each, and no duplicate (rank, seq)."""
    import signal
    import time

    script = tmp_path / "ddp_preempt.py"
    script.write_text(PREEMPT_SCRIPT)
    ws = tmp_path / "ws"
    epochs = 8
    cmd, env = torchrun(script, ws, str(epochs), "0.1", rdzv_id="job-preempt", env={"AVA_PREEMPT_TIMEOUT": "5"})
    err = open(tmp_path / "first.txt", "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, text=True)
    run = ws / "run" / "job-preempt"
    latest = ws / "storage" / "job-preempt" / "snapshots" / "LATEST"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # two epochs saved and confirmed
            if latest.exists() and latest.read_text() >= "epoch-0001":
                break
            time.sleep(0.05)
        time.sleep(0.35)  # into the next epoch, so that the stop is mid-epoch
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        first_code = proc.wait(60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:  # a failed test must not leave the training running
            proc.kill()
            proc.wait(30)
            subprocess.run(["pkill", "-KILL", "-f", str(script)], check=False)
    err.seek(0)
    first_out = err.read()
    assert first_code != 0, first_out[-3000:]
    doc = json.loads((run / "status.json").read_text())
    assert doc["status"] == "preempted", first_out[-3000:]
    saved = latest.read_text()
    assert saved < f"epoch-{epochs - 1:04d}"

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    starts = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {s["rank"] for s in starts} == {0, 1} and {s["id"] for s in starts} == {"job-preempt"}
    assert {s["start"] for s in starts} == {int(saved.split("-")[1]) + 1}

    doc = json.loads((run / "status.json").read_text())
    assert doc["status"] == "done" and [h["status"] for h in doc["history"]] == ["preempted"]
    records = [r for f in sorted((run / "logs").glob("metrics*.jsonl")) for r in iter_records(f)]
    keys = [(r["rank"], r["seq"]) for r in records]
    assert len(keys) == len(set(keys))
    for rank in (0, 1):
        mine = sorted((r for r in records if r["rank"] == rank), key=lambda r: r["seq"])
        assert [r["seq"] for r in mine] == list(range(len(mine)))
        steps = [r["step"] for r in mine if r.get("name") == "loss"]
        rewinds = [(a, b) for a, b in zip(steps, steps[1:]) if b <= a]
        resumed_at = (int(saved.split("-")[1]) + 1) * 10  # the step of the checkpoint resumed from
        # One rewind back to the checkpoint's step, unless the stop came right at the end of an
        # epoch (a loaded machine can be that late): then the record simply goes on.
        if rewinds:
            assert len(rewinds) == 1 and rewinds[0][0] > resumed_at and rewinds[0][1] == resumed_at + 1, rewinds
        else:
            assert resumed_at in steps and steps[steps.index(resumed_at) + 1] == resumed_at + 1, steps
        assert steps[-1] == epochs * 10
        assert any(r.get("event") == "resume" for r in mine)
    print(f"FIGURE torchrun-sigterm: torchrun exit {first_code} {took:.2f} s after SIGTERM; resumed both ranks "
          f"from {saved}")
