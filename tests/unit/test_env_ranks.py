"""Rank, world size and local rank from each launcher's variables."""

from __future__ import annotations

import pytest

from ava.env import Env
from ava.errors import ConfigError


def ranks(env: dict[str, str]) -> tuple[str | None, int, int | None, int | None]:
    e = Env(env)
    return e.rank_source, e.rank, e.world_size, e.local_rank


@pytest.mark.parametrize("env, expected", [
    ({}, (None, 0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ("torchrun", 3, 8, 1)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
     ("openmpi", 5, 6, 2)),
    ({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"}, ("pmi", 2, 4, 0)),
    ({"PMI_RANK": "2", "PMI_SIZE": "4"}, ("pmi", 2, 4, None)),
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1"}, ("horovod", 1, 2, 1)),
    ({"SLURM_PROCID": "7", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3"}, ("slurm", 7, 16, 3)),
    ({"DMLC_ROLE": "worker", "DMLC_WORKER_ID": "1", "DMLC_NUM_WORKER": "3"}, ("dmlc", 1, 3, None)),
    ({"DMLC_ROLE": "worker", "DMLC_TASK_ID": "2", "DMLC_NUM_WORKER": "3"}, ("dmlc", 2, 3, None)),
    # a bare RANK set by hand (what the old SDK read): the rank, and no size to report
    ({"RANK": "2"}, ("torchrun", 2, None, None)),
])
def test_each_launcher_gives_rank_size_and_local_rank(env, expected):
    assert ranks(env) == expected


def test_torchrun_wins_over_the_launcher_that_started_it():
    # one torchrun agent per node, started by srun or mpirun: torchrun numbers the ranks
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
           "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
           "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}
    assert ranks(env) == ("torchrun", 5, 8, 1)


@pytest.mark.parametrize("winner, loser", [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, {"PMI_RANK": "0", "PMI_SIZE": "1"}),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}),
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, {"DMLC_ROLE": "worker", "DMLC_WORKER_ID": "0", "DMLC_NUM_WORKER": "1"}),
])
def test_precedence(winner, loser):
    assert Env({**loser, **winner}).rank == 1
    assert Env({**loser, **winner}).world_size == 2


@pytest.mark.parametrize("role", ["server", "scheduler", ""])
def test_dmlc_servers_and_schedulers_are_not_ranks(role):
    assert ranks({"DMLC_ROLE": role, "DMLC_WORKER_ID": "2", "DMLC_NUM_WORKER": "3"}) == (None, 0, 1, 0)


def test_dmlc_worker_without_an_id_is_not_numbered():
    # MXNet's kvstore assigns the rank itself (kv.rank); without an id variable there is none to read
    assert ranks({"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "3"}) == (None, 0, 1, 0)


def test_empty_values_count_as_unset():
    assert ranks({"RANK": "", "WORLD_SIZE": "", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == ("slurm", 1, 2, None)


@pytest.mark.parametrize("env, variable, prop", [
    ({"RANK": "one"}, "RANK", "rank"),
    ({"RANK": "-1"}, "RANK", "rank"),
    ({"RANK": "1.5", "WORLD_SIZE": "2"}, "RANK", "rank"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE", "world_size"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE", "rank"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK", "rank"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "WORLD_SIZE", "world_size"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK", "local_rank"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK", "local_rank"),
    ({"OMPI_COMM_WORLD_RANK": "r1"}, "OMPI_COMM_WORLD_RANK", "rank"),
    ({"PMI_RANK": "0", "PMI_SIZE": "-4"}, "PMI_SIZE", "world_size"),
    ({"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "-1"}, "MPI_LOCALRANKID", "local_rank"),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "3"}, "SLURM_PROCID", "rank"),
    ({"DMLC_ROLE": "worker", "DMLC_TASK_ID": "w2"}, "DMLC_TASK_ID", "rank"),
    ({"DMLC_ROLE": "worker", "DMLC_WORKER_ID": "0", "DMLC_NUM_WORKER": "many"}, "DMLC_NUM_WORKER", "world_size"),
])
def test_malformed_values_raise_naming_the_variable(env, variable, prop):
    with pytest.raises(ConfigError, match=variable):
        getattr(Env(env), prop)


def test_rank_source_does_not_validate():
    # naming the launcher in a message must not itself fail on the bad value being reported
    assert Env({"RANK": "bad"}).rank_source == "torchrun"


@pytest.mark.parametrize("raw, expected", [(None, None), ("none", None), ("NONE", None), ("", None),
                                           ("job-42", "job-42"), ("3f2a-uuid", "3f2a-uuid")])
def test_torchelastic_run_id_ignores_torchruns_default(raw, expected):
    assert Env({} if raw is None else {"TORCHELASTIC_RUN_ID": raw}).torchelastic_run_id == expected


def test_slurm_job_step():
    assert Env({}).slurm_job_step is None
    assert Env({"SLURM_JOB_ID": "77"}).slurm_job_step == ("77", None)
    assert Env({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "2"}).slurm_job_step == ("77", "2")


def test_rank_variables_name_every_variable_read():
    from ava import env as env_module

    every = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK",
             "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
             "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
             "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_STEP_ID", "DMLC_ROLE", "DMLC_WORKER_ID", "DMLC_TASK_ID",
             "DMLC_NUM_WORKER"}
    assert env_module.RANK_VARIABLES == every
    assert all(getattr(env_module, name) == name for name in every)
