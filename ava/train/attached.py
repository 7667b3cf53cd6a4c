"""A training script run by ``ava run`` joins the instance ``ava run`` holds.

``ava run -- python train.py`` opens the instance and holds its lock (``metrics.jsonl``) and its
``status.json``; a ``TrainInstance()`` in ``train.py`` would find the lock taken (with the
platform's ``AVA_TRAINING_INSTANCE_ID``) or open a second instance under a new id (without).
So ``ava run`` gives its command the instance's id, its workspace and ``AVA_RUN_LISTENER`` (a
Unix socket it reads), and ``TrainInstance()`` there, for that id and on rank 0, is an
:class:`AttachedInstance`: the same calls, but what it records goes to ``ava run`` (metrics,
events, snapshots to upload), which writes, delivers and uploads it as its own. Its ``done()``
tells ``ava run`` how the script ended (an ``err_msg`` makes the run ``failed`` even when the
command exits 0); the status is written by ``ava run``, from the command's exit code. Its log
lines go to the console only: ``ava run`` puts the command's output into ``run.log``.

Example (in a script started by ``ava run --id r1 -- python train.py``):
    >>> from ava.train import base as train            # doctest: +SKIP
    >>> ins = train.TrainInstance()                    # doctest: +SKIP
    >>> type(ins).__name__, ins.get_training_ins_id()  # doctest: +SKIP
    ('AttachedInstance', 'r1')
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

from ava.env import Env
from ava.errors import UsageError
from ava.log.logger import initialize_logger
from ava.metrics.forward import ChildForwarder, HolderGone
from ava.metrics.record import check_step
from ava.metrics.sinks.jsonl import _last_seq
from ava.snapshot import checked_snapshot
from ava.train._finish import _live, _weak_finisher
from ava.train.base import TrainInstance
from ava.train.distributed import initialized_process_group
from ava.train.ids import check_instance_id
from ava.train.status import STATUS_DONE, STATUS_FAILED, STATUS_PREEMPTED, STATUS_RUNNING, StatusFile
from ava.utils import preempt
from ava.workspace import Workspace

log = logging.getLogger("ava.train.base")


def holder_of(env: Env, training_ins_id: str | None, rank: int | None) -> str | None:
    """The socket of the ``ava run`` holding the instance a ``TrainInstance(training_ins_id)``
    would open here, when this process is its command's rank 0; else None."""
    address = env.run_listener
    if not address or not env.training_instance_id:
        return None
    if (training_ins_id if training_ins_id is not None else env.training_instance_id) != env.training_instance_id:
        return None  # the script opens an instance of its own
    if rank is None:
        rank = env.rank
        if env.rank_source is None:  # mp.spawn: the process group knows
            group = initialized_process_group()
            if group is not None:
                rank = int(group.get_rank())
    return address if int(rank) == 0 else None


class AttachedInstance(TrainInstance):
    """The ``TrainInstance`` of a script that ``ava run`` runs (see the module doc)."""

    def __init__(self, training_ins_id: str | None = None, workspace: str | Path | Workspace | None = None, *,
                 env: Mapping[str, str] | Env | None = None, setup_logging: bool = True,
                 handle_signals: bool | None = None, **_: Any) -> None:
        self._env = env if isinstance(env, Env) else Env(env)
        preempt_timeout = self._env.preempt_timeout
        address = self._env.run_listener or ""
        self.workspace = self._workspace_of(workspace)
        self.rank = 0
        self.training_ins_id = check_instance_id(training_ins_id or self._env.training_instance_id or "")
        self._pid = os.getpid()
        self._done_lock = threading.Lock()
        self._before_done: list[Any] = []
        self._writer = self._http = self._uploader = self._platform = self._children = None
        self._resume_info = None
        self._warned_unsharded = False
        self._set_paths()
        self._status = StatusFile(self.status_path)
        self._status_doc = self._status.read() or {"id": self.training_ins_id, "status": STATUS_RUNNING,
                                                   "history": []}
        self._status_doc = dict(self._status_doc, status=STATUS_RUNNING)
        self._start_seq = self._earlier_records()
        self._holder = ChildForwarder(address)
        self._send(self._holder.join)  # ava run then takes this process's records, not its log parser's
        if setup_logging:  # the console only: ava run writes this process's output into run.log
            initialize_logger(self.logs_dir, env=self._env, file=False)
        if handle_signals if handle_signals is not None else self._env.handle_signals:
            preempt.install(preempt_timeout)
        preempt.add_finisher(id(self), _weak_finisher(weakref.ref(self)))
        _live.add(self)
        log.info("training instance %s joined: the ava run that holds it records what this process logs",
                 self.training_ins_id)

    def _earlier_records(self) -> int:
        """1 + the last seq of rank 0 in metrics.jsonl when an earlier attempt left records (for
        :meth:`resume_info`), else 0."""
        if not self._status_doc.get("history"):
            return 0
        try:
            fd = os.open(self.metrics_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            last = _last_seq(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        return 0 if last is None else last + 1

    def _send(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A message to ``ava run``; if it is gone (killed) or stuck, said once: training goes on."""
        try:
            fn(*args, **kwargs)  # the call's own checks run even when nothing can be sent any more
        except HolderGone as exc:
            self._holder.dropping = True
            log.error("instance %s: the ava run that holds it no longer takes records (%s); what this "
                      "process records from now on is lost, the training goes on", self.training_ins_id, exc)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, epoch: int | None = None,
                    batch: int | None = None, phase: str = "train", **kwargs: Any) -> None:
        self._send(self._holder.log_metrics, metrics, step, epoch, batch, phase, **kwargs)

    def log_event(self, event: str, step: int | None = None, **details: Any) -> None:
        self._send(self._holder.log_event, event, step, **details)

    def flush_metrics(self, timeout: float | None = None) -> bool:
        """True: each call was handed to ``ava run`` before it returned."""
        return True

    @property
    def snapshot_uploader(self) -> Any:
        raise UsageError("this instance is held by ava run, which uploads its snapshots: use save_snapshot()")

    def save_snapshot(self, files: Sequence[str | Path], name: str, meta: Mapping[str, Any] | None = None,
                      step: int | None = None, *, sharded: bool = False) -> str:
        """Hand a snapshot to ``ava run``'s uploader, checked here as ``submit`` checks it (paths
        made absolute here: its directory is not ours)."""
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        name, paths, plain = checked_snapshot(files, name, meta)
        self._send(self._holder.save_snapshot, paths, name, plain, check_step(step))
        return name

    def done(self, err_msg: str = "", *, exit_code: int | None = None, timeout: float | None = None) -> None:
        """Tell ``ava run`` how this script ended; it writes the status when the command exits."""
        if os.getpid() != self._pid:
            return
        with self._done_lock:
            if not self._finishing(err_msg):
                return
            status = STATUS_PREEMPTED if preempt.STOP.requested else STATUS_FAILED if err_msg else STATUS_DONE
            self._send(self._holder.finish, str(err_msg or ""), exit_code)
            self._status_doc = dict(self._status_doc, status=status, err_msg=str(err_msg or ""))
            self._forget()
            log.info("training instance %s %s (ava run writes the status)", self.training_ins_id, status)

    def _finish_preempted(self, budget: float, quick: bool) -> None:
        self.done()

    def __repr__(self) -> str:
        return f"AttachedInstance({self.training_ins_id!r}, status={self.status!r}, dir={str(self.run_dir)!r})"
