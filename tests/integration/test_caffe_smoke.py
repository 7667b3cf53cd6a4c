"""A real CPU caffe trains LeNet on synthetic bars, snapshots, and resumes from a solverstate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.caffe_support import (
    caffe_binary,
    iteration_losses,
    net_outputs,
    write_lenet_dataset,
    write_lenet_solver,
)

pytestmark = [pytest.mark.caffe, pytest.mark.integration]

MAX_ITER = 200
TEST_INTERVAL = 50
SNAPSHOT = 100
DISPLAY = 10
RESUME_MAX_ITER = 150
# Measured on 2 cores over data seeds 0-7: accuracy 0.2 at iteration 0, 0.76-0.90 at 50 and
# 0.98-0.995 at 200. 0.9 leaves room for other BLAS builds and still proves the net learned.
MIN_ACCURACY = 0.9
TRAIN_TIMEOUT = 240


def run_caffe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run caffe with glog's stderr merged into stdout, as a log parser would see it."""
    return subprocess.run([caffe_binary(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=cwd, timeout=TRAIN_TIMEOUT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One LeNet training run shared by the tests: (workdir, snapshot prefix, log)."""
    work = tmp_path_factory.mktemp("caffe-lenet")
    data = write_lenet_dataset(work / "data", n_train=2000, n_test=400, seed=0)
    prefix = work / "snapshots" / "lenet"
    solver = write_lenet_solver(work, data.dir, max_iter=MAX_ITER, test_interval=TEST_INTERVAL,
                                snapshot=SNAPSHOT, snapshot_prefix=prefix, display=DISPLAY)
    proc = run_caffe("train", "-solver", str(solver), cwd=work)
    (work / "train.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return work, prefix, proc.stdout


def test_lenet_trains_to_high_accuracy_and_snapshots(trained):
    work, prefix, log = trained
    losses = iteration_losses(log)
    assert [it for it, _ in losses] == list(range(0, MAX_ITER + 1, DISPLAY)), log[-3000:]
    assert losses[-1][1] < losses[0][1]
    assert "Train net output #0: loss = " in log
    assert "Test net output #0: accuracy = " in log
    assert "Optimization Done." in log
    accuracies = net_outputs(log, "accuracy")
    assert len(accuracies) == MAX_ITER // TEST_INTERVAL + 1  # iteration 0 tests too
    assert accuracies[-1] > MIN_ACCURACY, accuracies
    for it in range(SNAPSHOT, MAX_ITER + 1, SNAPSHOT):
        for ext in ("caffemodel", "solverstate"):
            snap = Path(f"{prefix}_iter_{it}.{ext}")
            assert snap.is_file() and snap.stat().st_size > 0, snap
            assert f"{snap}" in log


def test_resume_from_solverstate(trained, tmp_path):
    work, prefix, _ = trained
    state = Path(f"{prefix}_iter_{SNAPSHOT}.solverstate")
    resume_prefix = tmp_path / "snapshots" / "lenet"
    solver = write_lenet_solver(tmp_path, work / "data", max_iter=RESUME_MAX_ITER,
                                test_interval=RESUME_MAX_ITER - SNAPSHOT, snapshot=RESUME_MAX_ITER,
                                snapshot_prefix=resume_prefix, display=DISPLAY)
    proc = run_caffe("train", "-solver", str(solver), "-snapshot", str(state), cwd=tmp_path)
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]
    assert f"Resuming from {state}" in log
    assert "SGDSolver: restoring history" in log
    iters = [it for it, _ in iteration_losses(log)]
    assert iters and iters[0] == SNAPSHOT and iters[-1] == RESUME_MAX_ITER, iters
    assert net_outputs(log, "accuracy")[-1] > MIN_ACCURACY
    assert Path(f"{resume_prefix}_iter_{RESUME_MAX_ITER}.solverstate").is_file()
    assert "Optimization Done." in log
