"""``TrainInstance``: one training run's directories, status, metric record and log.

The old import path is kept: ``from ava.train import base as train``.

Example:
    >>> import tempfile
    >>> from ava.train import base as train
    >>> ins = train.TrainInstance("doc-1", workspace=tempfile.mkdtemp(), setup_logging=False)
    >>> ins.log_metrics({"loss": 0.25}, step=1)
    >>> ins.done()
    >>> ins.status
    'done'
"""

from __future__ import annotations

import atexit
import datetime as _dt
import importlib
import logging
import os
import re
import secrets
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ava.env import Env
from ava.errors import AvaError, InstanceError, UsageError
from ava.log.logger import initialize_logger
from ava.metrics.sinks.base import Sink
from ava.metrics.sinks.http import HttpSink
from ava.metrics.sinks.jsonl import JsonlSink
from ava.metrics.sinks.tensorboard import TensorBoardSink
from ava.metrics.writer import MetricsWriter
from ava.monitor import FRAMEWORKS
from ava.params.params import Params
from ava.snapshot import SnapshotUploader
from ava.storage.base import join_url
from ava.train.platform_link import PlatformLink
from ava.train.status import (
    FINAL_STATUSES,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RUNNING,
    StatusFile,
    now_rfc3339,
)
from ava.workspace import Workspace

log = logging.getLogger(__name__)

TRAIN_INS_STATUS_RUNNING = "running"
TRAIN_INS_STATUS_DONE = STATUS_DONE
TRAIN_INS_STATUS_FAIL = STATUS_FAILED

#: The most done() waits for metrics to reach metrics.jsonl (a stalled disk), before the network budget.
LOCAL_FLUSH_TIMEOUT = 60.0

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_live: "weakref.WeakSet[TrainInstance]" = weakref.WeakSet()


def new_instance_id() -> str:
    """A new id that sorts by creation time: ``20261122T030405123Z-1a2b3c``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def check_instance_id(instance_id: Any) -> str:
    """Return ``instance_id`` if it is safe as a directory name; else a clear error."""
    if not isinstance(instance_id, str):
        raise InstanceError(f"training instance id must be a string, got {instance_id!r}")
    if not _ID_RE.match(instance_id) or ".." in instance_id:
        raise InstanceError(
            f"training instance id {instance_id!r} is not usable as a directory name; use letters, digits, "
            "'.', '_' and '-' (no '/' or '..'), at most 128 characters"
        )
    return instance_id


class TrainInstance:
    """One training run: ``run/<id>/{output,logs}``, ``status.json``, metrics and the run log.

    The id comes from ``training_ins_id``, else ``AVA_TRAINING_INSTANCE_ID``, else a new
    time-sortable id. Opening an id that exists resumes it: same directories, metrics appended
    with ``seq`` continuing, the earlier attempt kept in ``status.json``'s ``history``.

    Args:
        training_ins_id: the instance id, or None.
        workspace: the workspace root; None finds it from the environment.
        env: the environment mapping to read (``os.environ`` by default).
        tensorboard: write TensorBoard event files; None follows ``AVA_TENSORBOARD``.
        rank: this process's rank (None: ``RANK``, else 0). Rank 0 owns ``status.json`` and the
            platform's copy; rank k > 0 records to ``logs/metrics.rank<k>.jsonl`` and needs the id.
        setup_logging: call :func:`ava.log.logger.initialize_logger` on ``logs/`` (as the old SDK did).
        max_buffer: metric calls buffered before ``log_metrics`` waits.

    Example:
        >>> import tempfile
        >>> with TrainInstance("doc-2", workspace=tempfile.mkdtemp(), setup_logging=False) as ins:
        ...     ins.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=10, epoch=0, batch=10)
        >>> ins.status
        'done'
    """

    def __init__(
        self,
        training_ins_id: str | None = None,
        workspace: str | Path | Workspace | None = None,
        *,
        env: Mapping[str, str] | Env | None = None,
        setup_logging: bool = True,
        max_buffer: int = 10_000,
        tensorboard: bool | None = None,
        rank: int | None = None,
    ) -> None:
        self._env = env if isinstance(env, Env) else Env(env)
        if isinstance(workspace, Workspace):
            self.workspace = workspace
        elif workspace is not None:
            self.workspace = Workspace(workspace)
        else:
            self.workspace = Workspace.discover(self._env)
        self.workspace.ensure()
        explicit = training_ins_id if training_ins_id is not None else self._env.training_instance_id
        if explicit is not None:
            check_instance_id(explicit)
        self.rank = self._env.rank if rank is None else int(rank)
        if self.rank > 0 and explicit is None:
            raise InstanceError(
                f"rank {self.rank} needs the instance id of rank 0: pass training_ins_id= or set "
                "AVA_TRAINING_INSTANCE_ID (every rank of a run shares one instance)"
            )
        config_dir = self.workspace.config_dir
        # Rank 0 owns the platform's copy of the instance, status.json and the run's status.
        self._platform = PlatformLink.from_env(self._env, config_dir) if self.rank == 0 else None
        if self._platform is not None:
            explicit = self._platform.open(explicit, self._platform_spec()) or explicit
        self.training_ins_id = check_instance_id(explicit) if explicit is not None else new_instance_id()
        self._pid = os.getpid()
        self._done_lock = threading.Lock()
        self._status_doc: dict[str, Any] | None = None
        self._writer: MetricsWriter | None = None

        self.run_dir = self.workspace.run_dir(self.training_ins_id)
        self.output_dir = self.run_dir / "output"
        self.logs_dir = self.run_dir / "logs"
        for d in (self.output_dir, self.logs_dir):
            self.workspace._mkdir(d)
        suffix = "" if self.rank == 0 else f".rank{self.rank}"
        self.metrics_path = self.logs_dir / f"metrics{suffix}.jsonl"
        self.status_path = self.run_dir / "status.json"
        self._snapshot_state = self.run_dir / f"snapshots{suffix}.json"

        if setup_logging:
            initialize_logger(self.logs_dir, node=None if self.rank == 0 else f"rank{self.rank}", env=self._env)
        # The metrics file's flock is the instance's lock: take it before touching status.json.
        sink = JsonlSink(self.metrics_path, rank=self.rank)
        start_seq = 0 if sink.last_seq is None else sink.last_seq + 1
        self._status = StatusFile(self.status_path)
        try:
            if self.rank == 0:
                self._status_doc = self._status.begin(self.training_ins_id)
            else:  # other ranks keep their status in memory; rank 0 writes the run's
                self._status_doc = {"id": self.training_ins_id, "status": STATUS_RUNNING,
                                    "start_time": now_rfc3339(), "history": []}
        except BaseException:
            sink.close()
            raise
        self._http: HttpSink | None = None
        self._uploader: SnapshotUploader | None = None
        sinks: list[Sink] = [sink, *self._extra_sinks(config_dir, tensorboard)]
        self._writer = MetricsWriter(sinks, rank=self.rank, start_seq=start_seq, max_buffer=max_buffer,
                                     atexit_timeout=self._env.done_timeout)
        # The hot path: calls go straight to the writer (same signature as the method below).
        self.log_metrics = self._writer.log_metrics  # type: ignore[method-assign]
        resumed = len(self._status_doc["history"]) > 0
        log.info("training instance %s %s at %s", self.training_ins_id, "resumed" if resumed else "started", self.run_dir)
        _live.add(self)

    def _platform_spec(self) -> dict[str, Any]:
        try:
            params = Params(self.workspace.params_dir).get_all()
        except AvaError as exc:
            log.warning("params not sent to the platform: %s", exc)
            params = {}
        return {"status": STATUS_RUNNING, "params": params, "startTime": now_rfc3339()}

    def _extra_sinks(self, config_dir: Path, tensorboard: bool | None) -> list[Sink]:
        """The HTTP sink when a status host is set, the TensorBoard sink when asked for."""
        sinks: list[Sink] = []
        try:
            host = self._env.status_host(config_dir)
            if host:
                self._http = HttpSink(host, self.training_ins_id, self.metrics_path)
                sinks.append(self._http)
        except AvaError as exc:
            log.error("metrics are not sent to the platform: %s; they are kept in %s", exc, self.metrics_path)
        if tensorboard if tensorboard is not None else self._env.tensorboard:
            try:
                sinks.append(TensorBoardSink(self.logs_dir / "tensorboard"))
            except AvaError as exc:
                log.error("%s", exc)
        return sinks

    # --- the old getters ---------------------------------------------------------------
    def get_training_ins_id(self) -> str:
        return self.training_ins_id

    def get_base_path(self) -> str:
        """``run/<id>``: this instance's directory."""
        return str(self.run_dir)

    def get_snapshot_base_path(self) -> str:
        """``run/<id>/output``: where the training writes snapshots."""
        return str(self.output_dir)

    def get_log_base_path(self) -> str:
        """``run/<id>/logs``: ``run.log`` and ``metrics.jsonl``."""
        return str(self.logs_dir)

    def get_trainset_base_path(self) -> str:
        return str(self.workspace.trainset_dir)

    def get_valset_base_path(self) -> str:
        return str(self.workspace.valset_dir)

    def get_testset_base_path(self) -> str:
        return str(self.workspace.testset_dir)

    def get_model_base_path(self) -> str:
        return str(self.workspace.model_dir)

    # --- metrics -------------------------------------------------------------------------
    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        epoch: int | None = None,
        batch: int | None = None,
        phase: str = "train",
        **kwargs: Any,
    ) -> None:
        """Record metrics; returns at once (conversion and writing happen on a daemon thread).

        Args:
            metrics: name -> number (Python, numpy, or a one-element torch/mxnet tensor).
            step: the global iteration counter.
            epoch: the epoch, when known.
            batch: the batch within the epoch, when known.
            phase: ``"train"``, ``"val"`` or ``"test"``.
            **kwargs: ``net`` (a test-net index) and ``units`` (name -> unit).
        """
        self._require_writer().log_metrics(metrics, step, epoch, batch, phase, **kwargs)

    def log_event(self, event: str, step: int | None = None, **details: Any) -> None:
        """Record an event (``"snapshot"``, ``"resume"``, ...) with its details."""
        self._require_writer().log_event(event, step, **details)

    def flush_metrics(self, timeout: float | None = None) -> bool:
        """Wait until every metric logged so far is in ``metrics.jsonl``; False on timeout."""
        return self._require_writer().flush(timeout)

    def _require_writer(self) -> MetricsWriter:
        if self._writer is None:
            raise InstanceError("this training instance was not opened")
        return self._writer

    # --- snapshots -------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        """Where this instance's snapshots go: ``<AVA_STORAGE_URL or file://<workspace>/storage>/<id>``."""
        base = self._env.storage_url or f"file://{self.workspace.root / 'storage'}"
        return join_url(base, self.training_ins_id)

    @property
    def snapshot_uploader(self) -> SnapshotUploader:
        """The background uploader of this instance (started on first use)."""
        if self._uploader is None:
            self._uploader = SnapshotUploader(
                join_url(self.storage_url, "snapshots"), self._snapshot_state,
                on_metrics=lambda m: self.log_metrics(m, step=None),
            )
        return self._uploader

    def save_snapshot(self, files: Sequence[str | Path], name: str, meta: Mapping[str, Any] | None = None,
                      step: int | None = None) -> str:
        """Hand a snapshot's files to the background uploader; returns at once.

        The files are uploaded under ``<storage_url>/snapshots/<name>/``; ``LATEST`` moves to
        ``name`` once all of them are confirmed. Local files are never deleted.
        """
        key = self.snapshot_uploader.submit(files, name, dict(meta or {}))
        self.log_event("snapshot", step=step, name=name, files=[str(f) for f in files])
        return key

    # --- framework callbacks ---------------------------------------------------------------
    def get_monitor_callback(self, framework: str, **kwargs: Any) -> Callable[..., Any]:
        """The batch-level monitor callback for ``framework`` (``mxnet``, ``caffe``, ``torch``)."""
        return self._adapter(framework).monitor_callback(self, **kwargs)

    def get_epoch_end_callback(self, framework: str, **kwargs: Any) -> Callable[..., Any]:
        """The epoch-end (snapshot) callback for ``framework``."""
        return self._adapter(framework).epoch_end_callback(self, **kwargs)

    @staticmethod
    def _adapter(framework: str) -> Any:
        module = FRAMEWORKS.get(framework) if isinstance(framework, str) else None
        if module is None:
            raise UsageError(f"unknown framework {framework!r}; known: {', '.join(sorted(FRAMEWORKS))}")
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise UsageError(f"framework {framework!r} has no adapter in this version of ava") from None
            raise

    # --- status ----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return (self._status_doc or {}).get("status", "unknown")

    def done(self, err_msg: str = "", *, exit_code: int | None = None, timeout: float | None = None) -> None:
        """Finish the instance: write buffered metrics, wait for delivery, then write the status.

        Writing ``metrics.jsonl`` may take up to :data:`LOCAL_FLUSH_TIMEOUT` seconds (only a
        stalled disk takes that long); delivery to the platform at most ``timeout`` seconds
        (``AVA_DONE_TIMEOUT``, default 10), after which the rest waits for the next run.

        ``done`` with an empty ``err_msg`` is a success; a non-empty one marks it ``failed``.
        Calling it again does nothing.
        """
        if os.getpid() != self._pid:
            log.warning("done() called in a forked child of the instance's process; ignored")
            return
        with self._done_lock:
            if self._status_doc is None or self._status_doc.get("status") in FINAL_STATUSES:
                return
            budget = self._env.done_timeout if timeout is None else timeout
            end = time.monotonic() + budget
            # Uploads first: their upload_bytes/upload_seconds records still reach the writer.
            if self._uploader is not None:
                if not self._uploader.wait(budget):
                    log.warning("instance %s: snapshots %s not uploaded within %.1f s; their files are kept and the "
                                "next run of this instance uploads them", self.training_ins_id,
                                ", ".join(self._uploader.pending()), budget)
                self._uploader.close()
            # Writing the local record is not network work: it gets its own bound, so a short
            # AVA_DONE_TIMEOUT never costs records that are already in memory.
            if self._writer is not None and not self._writer.close(timeout=LOCAL_FLUSH_TIMEOUT + budget):
                log.warning("instance %s: metrics not fully written to %s", self.training_ins_id, self.metrics_path)
            if self._http is not None:
                if not self._http.wait(end - time.monotonic()):
                    log.warning("instance %s: %d bytes of metrics not delivered to %s within %.1f s; they stay in "
                                "%s and are sent when this instance is resumed", self.training_ins_id,
                                self._http.backlog_bytes(), self._http.base_url, budget, self.metrics_path)
                self._http.stop()
            status = STATUS_FAILED if err_msg else STATUS_DONE
            if self.rank != 0:
                self._status_doc = dict(self._status_doc, status=status, err_msg=str(err_msg or ""),
                                        stop_time=now_rfc3339(), exit_code=exit_code)
                _live.discard(self)
                return
            self._status_doc = self._status.finish(self._status_doc, status, str(err_msg or ""), exit_code)
            if self._platform is not None:
                self._platform.finish(self.training_ins_id, status, str(err_msg or ""),
                                      self._status_doc["start_time"], self._status_doc["stop_time"])
            _live.discard(self)
            log.info("training instance %s %s", self.training_ins_id, status)

    def __enter__(self) -> "TrainInstance":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.done()
        else:
            self.done(err_msg=f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__)
        return False

    def __repr__(self) -> str:
        return f"TrainInstance({self.training_ins_id!r}, status={self.status!r}, dir={str(self.run_dir)!r})"


def _finish_at_exit() -> None:
    """An instance still open at exit: failed if an exception is ending the process, else done."""
    last = getattr(sys, "last_value", None)
    for ins in list(_live):
        try:
            if last is not None:
                ins.done(err_msg=f"{type(last).__name__}: {last}")
            else:
                log.warning("instance %s: the process exits without done(); marking it done", ins.training_ins_id)
                ins.done()
        except Exception as exc:  # noqa: BLE001 - never fail the interpreter's exit
            sys.stderr.write(f"ava: could not finish instance {ins.training_ins_id}: {exc}\n")


atexit.register(_finish_at_exit)
# A forked child inherits the parent's instances but must never finish them.
os.register_at_fork(after_in_child=lambda: _live.clear())
