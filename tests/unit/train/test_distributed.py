"""Every rank of a run agrees on one instance id."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from ava.env import Env
from ava.errors import InstanceError
from ava.train.distributed import launcher_instance_id, missing_id_message, shared_instance_id
from ava.train.ids import check_instance_id
from tests.conftest import run_python

REPO = Path(__file__).resolve().parents[3]


class FakeGroup(types.ModuleType):
    """A stand-in for ``torch.distributed`` after ``init_process_group``: one rank's view."""

    def __init__(self, rank: int, world: int, initialized: bool = True, rank0_sends: str = "from-rank-0") -> None:
        super().__init__("torch.distributed")
        self.rank, self.world, self.initialized, self.rank0_sends = rank, world, initialized, rank0_sends
        self.broadcasts: list[tuple[list, int]] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def get_world_size(self) -> int:
        return self.world

    def get_rank(self) -> int:
        return self.rank

    def broadcast_object_list(self, objects: list, src: int = 0) -> None:
        self.broadcasts.append((list(objects), src))
        if self.rank != src:
            objects[0] = self.rank0_sends


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)


@pytest.fixture
def group(monkeypatch):
    def install(*args, **kwargs) -> FakeGroup:
        fake = FakeGroup(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "torch.distributed", fake)
        return fake
    return install


def test_explicit_id_wins(no_torch):
    env = Env({"TORCHELASTIC_RUN_ID": "elastic-1", "SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0",
               "SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert shared_instance_id(env, "given-1") == "given-1"


def test_torchelastic_run_id_is_shared(no_torch):
    for rank in (0, 1, 2):
        env = Env({"RANK": str(rank), "WORLD_SIZE": "3", "TORCHELASTIC_RUN_ID": "job-42"})
        assert shared_instance_id(env, None) == "job-42"


def test_a_run_id_torchrun_made_up_is_said_once_on_rank_0(no_torch, monkeypatch, caplog):
    import ava.train.distributed as mod

    monkeypatch.setattr(mod, "_warned_made_up", False)
    made_up = "14cd88ff-f298-414d-b518-05196ec429e5"  # what --standalone or a bare single-node run gets
    with caplog.at_level(logging.WARNING, logger="ava.train.distributed"):
        for rank in (1, 0, 0):
            assert launcher_instance_id(Env({"RANK": str(rank), "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": made_up})) \
                == made_up
        assert launcher_instance_id(Env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "myjob"})) == "myjob"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "AVA_TRAINING_INSTANCE_ID" in said[0] and made_up in said[0]


def test_torchruns_default_run_id_is_not_an_id(no_torch):
    assert shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}), None) is None


def test_a_run_id_unusable_as_a_directory_becomes_the_same_valid_id_on_every_rank(no_torch):
    ids = {shared_instance_id(Env({"RANK": str(r), "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "team/job 7"}), None)
           for r in (0, 1)}
    assert len(ids) == 1
    (only,) = ids
    assert check_instance_id(only).startswith("team-job-7-")
    other = shared_instance_id(Env({"TORCHELASTIC_RUN_ID": "team:job 7"}), None)
    assert other != only  # cleaned up alike, kept apart by the hash


def test_slurm_job_and_step_for_an_srun_launch(no_torch):
    env = {"SLURM_JOB_ID": "9001", "SLURM_STEP_ID": "3", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"}
    assert shared_instance_id(Env(env), None) == "slurm-9001.3"
    # MPI ranks started by srun are numbered by PMI; the step is still the launch
    mpi = {"SLURM_JOB_ID": "9001", "SLURM_STEP_ID": "4", "PMI_RANK": "1", "PMI_SIZE": "2"}
    assert shared_instance_id(Env(mpi), None) == "slurm-9001.4"


@pytest.mark.parametrize("env", [
    # one task: a plain run inside a job; two of them in one batch script must not share an id
    {"SLURM_JOB_ID": "9001", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
    # no step: the batch script itself, which may start several runs one after another
    {"SLURM_JOB_ID": "9001", "RANK": "1", "WORLD_SIZE": "2"},
    {"SLURM_JOB_ID": "9001", "SLURM_STEP_ID": "4294967294", "RANK": "1", "WORLD_SIZE": "2"},
    {"SLURM_JOB_ID": "9001", "SLURM_STEP_ID": "batch", "RANK": "1", "WORLD_SIZE": "2"},
    {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},  # mpirun has no job id
    {},
])
def test_no_launcher_id(no_torch, env):
    assert launcher_instance_id(Env(env)) is None
    assert shared_instance_id(Env(env), None) is None


def test_rank0_open_runs_on_rank_0_only_and_its_id_is_used(no_torch):
    calls = []

    def rank0_open(found):
        calls.append(found)
        return "platform-7"

    assert shared_instance_id(Env({}), None, rank=0, rank0_open=rank0_open) == "platform-7"
    assert shared_instance_id(Env({}), "given", rank=0, rank0_open=lambda found: None) == "given"
    assert shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), "given", rank0_open=rank0_open) == "given"
    assert calls == [None]


def test_a_platform_id_other_than_the_launchers_is_not_taken(no_torch, caplog):
    env = Env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job-42"})
    with caplog.at_level(logging.WARNING, logger="ava.train.distributed"):
        assert shared_instance_id(env, None, rank0_open=lambda found: "platform-other") == "job-42"
    assert "every rank keeps job-42" in caplog.text


def test_an_invalid_explicit_id_is_refused(no_torch):
    with pytest.raises(InstanceError, match="not usable as a directory name"):
        shared_instance_id(Env({}), "../up")


def test_rank_0_sends_a_new_id_through_torch_distributed(group):
    fake = group(rank=0, world=2)
    got = shared_instance_id(Env({"RANK": "0", "WORLD_SIZE": "2"}), None)
    assert check_instance_id(got) == got
    assert [(objs, src) for objs, src in fake.broadcasts] == [([got], 0)]


def test_rank_0_sends_its_platform_id(group):
    fake = group(rank=0, world=2)
    got = shared_instance_id(Env({}), None, rank=0, rank0_open=lambda found: "platform-7")
    assert got == "platform-7" and fake.broadcasts == [(["platform-7"], 0)]


def test_other_ranks_take_rank_0s_id(group):
    fake = group(rank=1, world=2, rank0_sends="from-rank-0")
    assert shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), None) == "from-rank-0"
    assert fake.broadcasts == [([None], 0)]
    # given the same id as rank 0: the collective still runs (rank 0 cannot know) and agrees
    assert shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), "from-rank-0") == "from-rank-0"
    assert len(fake.broadcasts) == 2


def test_another_id_than_rank_0s_is_an_error_after_the_collective(group):
    fake = group(rank=1, world=2, rank0_sends="from-rank-0")
    with pytest.raises(InstanceError, match="rank 1 was given instance id 'mine' but rank 0 uses 'from-rank-0'"):
        shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), "mine")
    assert len(fake.broadcasts) == 1  # it took part, so rank 0 is not left waiting


def test_rank_0_sending_garbage_is_an_error(group):
    group(rank=1, world=2, rank0_sends="../../etc")
    with pytest.raises(InstanceError, match="not usable"):
        shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), None)


@pytest.mark.parametrize("env", [{"AVA_TRAINING_INSTANCE_ID": "env-id"}, {"TORCHELASTIC_RUN_ID": "env-id"}])
def test_no_collective_when_the_environment_already_agrees(group, env):
    fake = group(rank=1, world=2)
    assert shared_instance_id(Env({**env, "RANK": "1", "WORLD_SIZE": "2"}), env.get("AVA_TRAINING_INSTANCE_ID")) == "env-id"
    assert fake.broadcasts == []


@pytest.mark.parametrize("kwargs", [{"world": 1}, {"world": 2, "initialized": False}])
def test_no_collective_without_a_group_of_several_ranks(group, kwargs):
    fake = group(rank=0, **kwargs)
    assert shared_instance_id(Env({}), None) is None
    assert fake.broadcasts == []


def test_missing_id_message_says_what_to_do():
    msg = missing_id_message(3)
    assert msg.startswith("rank 3 needs the instance id of rank 0")
    for hint in ("training_ins_id=", "AVA_TRAINING_INSTANCE_ID", "--rdzv-id", "init_process_group"):
        assert hint in msg


def test_importing_the_module_does_not_import_torch():
    proc = run_python("import sys, ava.train.distributed; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


AGREE = textwrap.dedent('''
    import json, sys
    import torch.distributed as dist
    from ava.env import Env
    from ava.errors import InstanceError
    from ava.train.distributed import shared_instance_id

    dist.init_process_group("gloo")
    env = Env()
    rank = env.rank
    out = {"rank": rank, "world": env.world_size, "source": env.rank_source,
           "run_id": env.torchelastic_run_id}
    out["generated"] = shared_instance_id(env, None)
    out["platform"] = shared_instance_id(env, None, rank0_open=lambda found: "platform-%d" % rank)
    try:
        out["mismatch"] = shared_instance_id(env, None if rank == 0 else "mine")
    except InstanceError as exc:
        out["mismatch"] = "error: %s" % exc
    dist.barrier()
    dist.destroy_process_group()
    with open("%s/rank%d.json" % (sys.argv[1], rank), "w") as fh:
        json.dump(out, fh)
''')


@pytest.mark.integration
def test_two_torchrun_ranks_agree_through_torch_distributed(tmp_path):
    from tests.integration.conftest import free_port

    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVA_", "TORCHELASTIC_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH")))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [(r["rank"], r["world"], r["source"], r["run_id"]) for r in (r0, r1)] == [
        (0, 2, "torchrun", None), (1, 2, "torchrun", None)]  # torchrun's run id is "none": not an id
    assert r0["generated"] == r1["generated"] and check_instance_id(r0["generated"])
    assert r0["platform"] == r1["platform"] == "platform-0"
    assert r0["mismatch"] != r1["mismatch"]
    assert r1["mismatch"] == f"error: rank 1 was given instance id 'mine' but rank 0 uses {r0['mismatch']!r}; " \
        "give every rank the same id (AVA_TRAINING_INSTANCE_ID), or none and let rank 0's id reach them"


INSTANCE = textwrap.dedent('''
    import sys
    import torch.distributed as dist
    from ava.train import base as train

    dist.init_process_group("gloo")
    ins = train.TrainInstance(setup_logging=False)  # no id given to any rank
    ins.log_metrics({"loss": float(dist.get_rank())}, step=1)
    dist.barrier()
    ins.done()
    dist.destroy_process_group()
''')


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(__import__("ava.train.base").train.base, "shared_instance_id"),
                    reason="TrainInstance does not use shared_instance_id yet")
def test_two_torchrun_ranks_without_an_id_open_one_instance(tmp_path):
    from ava.metrics.sinks.jsonl import iter_records
    from tests.integration.conftest import free_port

    script = tmp_path / "instance.py"
    script.write_text(INSTANCE)
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVA_", "TORCHELASTIC_", "SLURM_"))}
    env.update(AVA_WORKSPACE=str(ws), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH")))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (run,) = (ws / "run").iterdir()
    logs = run / "logs"
    assert [(r["rank"], r["value"]) for r in iter_records(logs / "metrics.jsonl")] == [(0, 0.0)]
    assert [(r["rank"], r["value"]) for r in iter_records(logs / "metrics.rank1.jsonl")] == [(1, 1.0)]
    assert json.loads((run / "status.json").read_text())["status"] == "done"


def test_a_rank_failing_before_the_collective_still_takes_part(group):
    fake = group(rank=1, world=2)
    with pytest.raises(InstanceError, match="not usable as a directory name"):
        shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), "bad/id")
    assert fake.broadcasts == [([None], 0)]


def test_rank_0_failing_before_the_collective_sends_no_id_and_the_others_stop(group):
    def broken_open(found):
        raise OSError("platform unreachable")

    fake0 = group(rank=0, world=2)
    with pytest.raises(OSError, match="platform unreachable"):
        shared_instance_id(Env({}), None, rank=0, rank0_open=broken_open)
    assert fake0.broadcasts == [([None], 0)]
    group(rank=1, world=2, rank0_sends=None)
    with pytest.raises(InstanceError, match="rank 0 sent no usable instance id"):
        shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2"}), None)


def test_mp_spawn_ranks_without_launcher_variables_open_one_instance_as_their_ranks(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "spawned.py"
    script.write_text(textwrap.dedent("""
        import datetime, os, sys
        import torch.distributed as dist
        import torch.multiprocessing as mp

        def worker(rank, port):
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", port
            dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
            from ava.train import base as train
            ins = train.TrainInstance(setup_logging=False)  # no RANK in the environment: mp.spawn sets none
            ins.log_metrics({"loss": float(rank)}, step=1)
            print(f"rank {ins.rank} id {ins.training_ins_id}", flush=True)
            dist.barrier()
            ins.done()
            dist.destroy_process_group()

        if __name__ == "__main__":
            mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
    """))
    from tests.integration.conftest import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "AVA_TRAINING_INSTANCE_ID")}
    env.update(AVA_WORKSPACE=str(tmp_path / "ws"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(script), str(free_port())], capture_output=True, text=True, env=env,
                         timeout=180)
    # Both opened the instance as rank 0 and the second failed on metrics.jsonl's lock.
    assert res.returncode == 0, res.stderr[-3000:]
    lines = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("rank "))
    assert [ln.split()[1] for ln in lines] == ["0", "1"] and len({ln.split()[3] for ln in lines}) == 1
    logs = next((tmp_path / "ws" / "run").iterdir()) / "logs"
    assert (logs / "metrics.jsonl").exists() and (logs / "metrics.rank1.jsonl").exists()
