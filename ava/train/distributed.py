"""One instance id for every rank of a distributed run.

Every rank of a run records into the same ``run/<id>/``, so they must agree on ``<id>`` without
one id generated per rank. In order, the id is:

1. the explicit one: ``TrainInstance(training_ins_id=)``, ``AVA_TRAINING_INSTANCE_ID``, or the
   platform's (rank 0 opens the platform's copy and the other ranks learn it through step 4);
2. torchrun's ``TORCHELASTIC_RUN_ID`` (its ``--rdzv-id``; the default ``"none"`` does not count).
   torchrun keeps ``--rdzv-id`` only with a rendezvous it is told of (``--rdzv-backend=c10d
   --rdzv-endpoint=HOST:PORT``, or ``--master-port`` on one node); with ``--standalone``, or on
   one node without either, it makes up a new UUID each launch, so a relaunch is a new instance
   (said once, on rank 0): give ``AVA_TRAINING_INSTANCE_ID`` to resume;
3. Slurm's ``slurm-<SLURM_JOB_ID>.<SLURM_STEP_ID>``, for a run of more than one rank started by
   ``srun`` (the step tells two launches in one job apart, so the batch step itself is not used);
4. when ``torch.distributed`` is already imported and initialised with more than one rank, rank
   0's id (the explicit or platform one, else a new one), sent to every rank with
   ``broadcast_object_list``. torch is never imported here.

Otherwise there is no agreement: rank 0 generates an id as a single process does, and another
rank must be told the id.

Whether step 4 runs depends only on the environment and on torch's state, which are the same
on every rank, never on an argument one rank might get and another not: a collective that only
some ranks enter would hang the others.

Example:
    >>> from ava.env import Env
    >>> shared_instance_id(Env({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job-42"}), None)
    'job-42'
    >>> shared_instance_id(Env({}), None) is None
    True
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Callable

from ava.env import Env
from ava.errors import InstanceError
from ava.train.ids import as_instance_id, check_instance_id, new_instance_id

log = logging.getLogger(__name__)

#: The step id Slurm gives a batch script (``SLURM_BATCH_SCRIPT``); not a launch of the ranks.
SLURM_BATCH_STEP = {"4294967294", "batch"}


_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_warned_made_up = False


def launcher_instance_id(env: Env) -> str | None:
    """The id every rank can read from its launcher's variables (steps 2 and 3), or None."""
    global _warned_made_up
    run_id = env.torchelastic_run_id
    if run_id is not None:
        if _UUID4.fullmatch(run_id) and env.training_instance_id is None and env.rank == 0 and not _warned_made_up:
            _warned_made_up = True
            log.warning("instance id %s is the run id torchrun made up for this launch (--standalone, or one "
                        "node without --rdzv-endpoint/--master-port: torchrun drops --rdzv-id then); a relaunch "
                        "will be a new instance. Set AVA_TRAINING_INSTANCE_ID to resume it", run_id)
        return as_instance_id(run_id)
    slurm = env.slurm_job_step
    if slurm is not None and slurm[1] is not None and slurm[1] not in SLURM_BATCH_STEP and env.world_size != 1:
        return as_instance_id(f"slurm-{slurm[0]}.{slurm[1]}")
    return None


def initialized_process_group() -> Any | None:
    """``torch.distributed`` when this process already imported it and joined a group of more
    than one rank; else None. Never imports torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return dist if dist.get_world_size() > 1 else None
    except Exception as exc:  # noqa: BLE001 - a broken torch must not stop the instance
        log.warning("torch.distributed state unreadable (%s); the ranks do not agree on an id through it", exc)
        return None


def shared_instance_id(
    env: Env,
    explicit: str | None,
    *,
    rank: int | None = None,
    rank0_open: Callable[[str | None], str | None] | None = None,
) -> str | None:
    """The instance id all ranks of this run share, or None when they have no way to agree.

    Args:
        env: the environment (launcher variables, ``AVA_TRAINING_INSTANCE_ID``).
        explicit: the id this process was given (``training_ins_id=`` or the environment's), or None.
        rank: this process's rank; ``env.rank`` when None.
        rank0_open: called on rank 0 only, with the id found so far (or None), before it is sent
            to the other ranks; returns the id rank 0 settles on (the platform's copy of the
            instance) or None to keep it.

    Returns:
        The id. None only when no explicit, platform, launcher or ``torch.distributed`` id
        exists; rank 0 then generates one, and any other rank cannot know it.

    Raises:
        InstanceError: this rank was given an id and rank 0 uses another one.
    """
    rank = env.rank if rank is None else rank
    launcher_id = launcher_instance_id(env)
    from_env = env.training_instance_id is not None or launcher_id is not None
    dist = None if from_env else initialized_process_group()
    try:
        agreed = explicit if explicit is not None else launcher_id
        if agreed is not None:
            check_instance_id(agreed)
        if rank == 0 and rank0_open is not None:
            opened = rank0_open(agreed)
            if opened is not None and agreed is not None and agreed == launcher_id and opened != agreed:
                # The other ranks read the launcher's id and cannot learn the platform's one.
                log.warning("the platform answered instance id %s for launcher id %s; every rank keeps %s",
                            opened, agreed, agreed)
            elif opened is not None:
                agreed = opened
    except BaseException:
        if dist is not None:
            # Still take part in the collective, sending no id: the other ranks fail at once
            # (rank 0's failure) or carry on (another rank's), rather than wait for this one.
            _broadcast(dist, None)
        raise
    if dist is None:
        return agreed
    return _broadcast_from_rank0(dist, agreed)


def _broadcast(dist: Any, mine: str | None) -> Any:
    """Rank 0's ``mine`` on every rank (None from rank 0 means it failed)."""
    box: list[Any] = [mine if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_from_rank0(dist: Any, proposal: str | None) -> str:
    """Rank 0's id (its proposal, or a new id) on every rank of the default group."""
    me = dist.get_rank()
    got = _broadcast(dist, proposal if proposal is not None else new_instance_id())
    # Checked only after the collective: raising before it would leave the other ranks waiting.
    if not isinstance(got, str):
        raise InstanceError(f"rank {me}: rank 0 sent no usable instance id ({got!r}); see rank 0's error")
    check_instance_id(got)
    if me != 0 and proposal is not None and proposal != got:
        raise InstanceError(
            f"rank {me} was given instance id {proposal!r} but rank 0 uses {got!r}; give every rank the "
            "same id (AVA_TRAINING_INSTANCE_ID), or none and let rank 0's id reach them"
        )
    return got


def missing_id_message(rank: int) -> str:
    """What to tell a rank above 0 that found no shared id."""
    return (
        f"rank {rank} needs the instance id of rank 0 (every rank of a run shares one instance): pass "
        "training_ins_id=, set AVA_TRAINING_INSTANCE_ID, start the ranks with torchrun --rdzv-id=<id> "
        "--rdzv-backend=c10d --rdzv-endpoint=HOST:PORT, or create the TrainInstance on every rank after "
        "torch.distributed.init_process_group()"
    )
