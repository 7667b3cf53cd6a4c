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

import importlib
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ava.env import Env
from ava.errors import AvaError, ConfigError, InstanceError, InstanceIdError, UsageError
from ava.log.logger import initialize_logger
from ava.metrics.sinks.base import Sink
from ava.metrics.sinks.http import HttpSink
from ava.metrics.sinks.jsonl import JsonlSink
from ava.metrics.sinks.tensorboard import TensorBoardSink
from ava.metrics.forward import ChildListener
from ava.metrics.writer import MetricsWriter
from ava.monitor import FRAMEWORKS
from ava.params.params import Params
from ava.snapshot import SnapshotUploader, has_pending
from ava.storage.base import join_url
from ava.storage.registry import check_storage_url
from ava.train.distributed import initialized_process_group, missing_id_message, shared_instance_id
from ava.train.ids import check_instance_id, new_instance_id  # noqa: F401 - old names, kept here
from ava.train.platform_link import PlatformLink
from ava.train.resume import ResumeInfo, last_progress, newest_snapshot
from ava.train._finish import LOCAL_FLUSH_TIMEOUT, Finishing, _Held, _live, _some, _weak_finisher  # noqa: F401
from ava.train.status import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PREEMPTED,
    STATUS_RUNNING,
    StatusFile,
    now_rfc3339,
)
from ava.utils import preempt
from ava.workspace import Workspace

log = logging.getLogger(__name__)

TRAIN_INS_STATUS_RUNNING = "running"
TRAIN_INS_STATUS_DONE = STATUS_DONE
TRAIN_INS_STATUS_FAIL = STATUS_FAILED



class TrainInstance(Finishing):
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
        handle_signals: turn SIGTERM/SIGINT into a stop request (:meth:`should_stop`) and finish
            as ``preempted``; None follows ``AVA_HANDLE_SIGNALS`` (on unless ``0``).

    Example:
        >>> import tempfile
        >>> with TrainInstance("doc-2", workspace=tempfile.mkdtemp(), setup_logging=False) as ins:
        ...     ins.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=10, epoch=0, batch=10)
        >>> ins.status
        'done'
    """

    def __new__(cls, training_ins_id: str | None = None, *args: Any, env: Mapping[str, str] | Env | None = None,
                rank: int | None = None, **kwargs: Any) -> "TrainInstance":
        # A script run by ``ava run`` opening the instance ava run holds joins it (ava.train.attached).
        if cls is TrainInstance:
            from ava.train.attached import AttachedInstance, holder_of

            if holder_of(env if isinstance(env, Env) else Env(env), training_ins_id, rank) is not None:
                return super().__new__(AttachedInstance)
        return super().__new__(cls)

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
        handle_signals: bool | None = None,
    ) -> None:
        self._env = env if isinstance(env, Env) else Env(env)
        # Settings are read before anything is written: a bad value fails here and leaves no
        # run directory, no status.json and no lock behind.
        done_timeout = self._env.done_timeout
        preempt_timeout = self._env.preempt_timeout
        if self._env.storage_url:
            try:
                check_storage_url(self._env.storage_url)
            except AvaError as exc:
                raise ConfigError(f"AVA_STORAGE_URL: {exc}") from None
        self.workspace = self._workspace_of(workspace)
        self.workspace.ensure()
        explicit = training_ins_id if training_ins_id is not None else self._env.training_instance_id
        if training_ins_id is None and explicit is not None:
            try:
                check_instance_id(explicit)
            except InstanceIdError as exc:  # say where the id came from
                raise InstanceIdError(f"AVA_TRAINING_INSTANCE_ID: {exc}") from None
        self.rank = self._env.rank if rank is None else int(rank)
        if rank is None and self._env.rank_source is None:
            # No launcher variables (mp.spawn): the process group, when there is one, knows.
            group = initialized_process_group()
            if group is not None:
                self.rank = int(group.get_rank())
        config_dir = self.workspace.config_dir
        # What is said before run.log exists (the platform unreachable...) goes there too, later.
        early = _Held()
        logging.getLogger("ava").addHandler(early)
        try:
            # Rank 0 owns the platform's copy of the instance, status.json and the run's status.
            self._platform = PlatformLink.from_env(self._env, config_dir) if self.rank == 0 else None
            platform = self._platform
            # One id for every rank: explicit, platform, launcher (torchrun, srun) or torch.distributed.
            # shared_instance_id also checks the id, after taking part in any collective it needs.
            explicit = shared_instance_id(
                self._env, explicit, rank=self.rank,
                rank0_open=(lambda found: platform.open(found, self._platform_spec())) if platform is not None else None,
            )
        finally:
            logging.getLogger("ava").removeHandler(early)
        if self.rank > 0 and explicit is None:
            raise InstanceError(missing_id_message(self.rank))
        self.training_ins_id = check_instance_id(explicit) if explicit is not None else new_instance_id()
        self._pid = os.getpid()
        self._done_lock = threading.Lock()
        # Called first thing in done(): adapters hand over what they still hold (an MXNet
        # checkpoint whose files were being waited for) or report it.
        self._before_done: list[Callable[[], None]] = []
        self._status_doc: dict[str, Any] | None = None
        self._writer: MetricsWriter | None = None

        self._set_paths()
        for d in (self.output_dir, self.logs_dir):
            self.workspace._mkdir(d)

        if setup_logging:
            # In a distributed run every line carries the rank (rank 0's too).
            distributed = (self.rank > 0 or self._env.rank_source is not None
                           or initialized_process_group() is not None)
            initialize_logger(self.logs_dir, node=None if self.rank == 0 else f"rank{self.rank}", env=self._env,
                              config_dir=config_dir, label=f"rank{self.rank}" if distributed else None)
            early.replay_into_run_log()
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
        sinks: list[Sink] = [sink]
        try:
            sinks += self._extra_sinks(config_dir, tensorboard)
            self._writer = MetricsWriter(sinks, rank=self.rank, start_seq=start_seq, max_buffer=max_buffer,
                                         atexit_timeout=done_timeout)
            # The hot path: calls go straight to the writer (same signature as the method below).
            self.log_metrics = self._writer.log_metrics  # type: ignore[method-assign]
            self._resume_info: ResumeInfo | None = None
            self._children: ChildListener | None = None  # opened at the first fork
            self._warned_unsharded = False
            self._start_seq = start_seq
            if handle_signals if handle_signals is not None else self._env.handle_signals:
                preempt.install(preempt_timeout)
            preempt.add_finisher(id(self), _weak_finisher(weakref.ref(self)))
            resumed = len(self._status_doc["history"]) > 0
            if resumed and has_pending(self._snapshot_state):
                # What the previous attempt submitted but never confirmed goes up now, in the background.
                _ = self.snapshot_uploader
            _live.add(self)
            log.info("training instance %s %s at %s", self.training_ins_id, "resumed" if resumed else "started",
                     self.run_dir)
        except BaseException as exc:  # an error, or a SIGTERM arriving while the instance opens
            self._abandon_open(sinks, exc)
            raise

    def _workspace_of(self, workspace: str | Path | Workspace | None) -> Workspace:
        """The workspace given, else the one the environment points at."""
        if isinstance(workspace, Workspace):
            return workspace
        return Workspace(workspace) if workspace is not None else Workspace.discover(self._env)

    def _set_paths(self) -> None:
        """``run/<id>/`` and the files in it of this rank (rank k > 0: ``.rank<k>`` in the names)."""
        self.run_dir = self.workspace.run_dir(self.training_ins_id)
        self.output_dir = self.run_dir / "output"
        self.logs_dir = self.run_dir / "logs"
        suffix = "" if self.rank == 0 else f".rank{self.rank}"
        self.metrics_path = self.logs_dir / f"metrics{suffix}.jsonl"
        self.status_path = self.run_dir / "status.json"
        self._snapshot_state = self.run_dir / f"snapshots{suffix}.json"

    def _abandon_open(self, sinks: list[Sink], exc: BaseException) -> None:
        """The constructor failed after status.json was begun: close what it opened (the lock
        goes with the metrics file) and record the attempt as failed, so nothing looks running."""
        self._forget()
        if self._uploader is not None:
            self._uploader.close(timeout=0)
        if self._writer is not None:
            self._writer.close(timeout=LOCAL_FLUSH_TIMEOUT)
        else:
            for sink in sinks:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - the original error is the one to raise
                    pass
        if self.rank == 0 and self._status_doc is not None:
            stopped = preempt.STOP.requested and isinstance(exc, (SystemExit, KeyboardInterrupt))
            try:
                if stopped:
                    self._status_doc = self._status.finish(self._status_doc, STATUS_PREEMPTED,
                                                           self._preempt_message(), preempt.STOP.exit_code)
                else:
                    self._status_doc = self._status.finish(self._status_doc, STATUS_FAILED,
                                                           f"the instance could not be opened: {exc}")
            except OSError:
                pass

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
                self._http = HttpSink(host, self.training_ins_id, self.metrics_path, env=self._env)
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

    def batch_logger(self) -> Callable[[dict[str, Any], int, int | None, int | None, dict[str, str] | None], None] | None:
        """For a framework adapter's batch records: the writer's
        :meth:`~ava.metrics.writer.MetricsWriter.log_own` (``log(metrics, step, epoch, batch,
        units)``: no copy and no checks on the training thread), or None when :meth:`log_metrics`
        is not this instance's own (replaced by a timer or a filter; a joined script's).

        It stands for :meth:`log_metrics` only while ``log_metrics`` is the object it is now: an
        adapter keeps that object and calls ``log_metrics`` instead once it has changed, so a
        wrapper installed later sees every record.
        """
        writer = self._writer
        if writer is not None and self.log_metrics == writer.log_metrics:
            return writer.log_own
        return None

    def log_event(self, event: str, step: int | None = None, **details: Any) -> None:
        """Record an event (``"snapshot"``, ``"resume"``, ...) with its details."""
        self._require_writer().log_event(event, step, **details)

    def flush_metrics(self, timeout: float | None = None) -> bool:
        """Wait until every metric logged so far is in ``metrics.jsonl``; False on timeout."""
        return self._require_writer().flush(timeout)

    # --- preemption and resume ---------------------------------------------------------------
    def should_stop(self) -> bool:
        """True once SIGTERM or SIGINT asked this process to stop: finish the step, then call
        :meth:`exit_preempted` (the framework adapters do both)."""
        preempt.STOP.polled = True
        return preempt.STOP.requested

    def resume_info(self, download: bool = True) -> ResumeInfo:
        """What earlier attempts of this instance left: see :class:`ava.train.resume.ResumeInfo`.

        The newest confirmed snapshot's files are downloaded from storage (into
        ``run/<id>/restored/<name>/``) when they are not in ``run/<id>/output/``.
        """
        if self._resume_info is None or (download and self._resume_info.snapshot and not all(
                f.exists() for f in self._resume_info.files)):
            history = ((self._status_doc or {}).get("history") or []) if self.rank == 0 else self._rank0_history()
            epoch, step = last_progress(self.metrics_path, self.rank) if self._start_seq else (None, None)
            name, meta, files = newest_snapshot(join_url(self.storage_url, "snapshots"), self.output_dir,
                                                self.run_dir / "restored", download=download)
            self._resume_info = ResumeInfo(
                attempts=len(history), previous_status=history[-1].get("status") if history else None,
                epoch=epoch, step=step, last_seq=self._start_seq - 1 if self._start_seq else None,
                snapshot=name, snapshot_meta=meta, files=files)
        return self._resume_info

    def _rank0_history(self) -> list[dict[str, Any]]:
        """The earlier attempts, as rank 0's status.json has them (ranks above 0 keep no status
        of their own): every rank then gives the same ``resumed``. Read only, never repaired here;
        a rank with no such file (another node) counts its own earlier records."""
        try:
            doc = json.loads(self.status_path.read_text(encoding="utf-8"))
            history = [h for h in doc.get("history") or [] if isinstance(h, dict)]
            mine = (self._status_doc or {}).get("start_time") or ""
            # Not running: an attempt before this one (rank 0 has not begun this one yet), unless it
            # stopped after this rank started: then it is this attempt's rank 0, already finished.
            if doc.get("status") != STATUS_RUNNING and str(doc.get("stop_time") or "") < mine:
                history.append({"status": doc.get("status")})
            return history
        except (OSError, ValueError, AttributeError):
            return [{"status": None}] if self._start_seq else []

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
        """The background uploader of this instance (started on first use): ``<storage_url>/snapshots``
        on rank 0, ``<storage_url>/snapshots-rank<k>`` (its shards) on rank k."""
        if self._uploader is None:
            where = "snapshots" if self.rank == 0 else f"snapshots-rank{self.rank}"
            self._uploader = SnapshotUploader(
                join_url(self.storage_url, where), self._snapshot_state,
                on_metrics=lambda m: self.log_metrics(m, step=None),
            )
        return self._uploader

    def save_snapshot(self, files: Sequence[str | Path], name: str, meta: Mapping[str, Any] | None = None,
                      step: int | None = None, *, sharded: bool = False) -> str:
        """Hand a snapshot's files to the background uploader; returns at once.

        The files are uploaded under ``<storage_url>/snapshots/<name>/``; ``LATEST`` moves to
        ``name`` once all of them are confirmed. Local files are never deleted.

        Rank 0 owns the run's snapshots. On another rank the call uploads nothing (with one
        warning) unless ``sharded=True``: then this rank's files go under
        ``<storage_url>/snapshots-rank<k>/<name>/`` with a ``LATEST`` of their own.
        """
        if self.rank != 0 and not sharded:
            if not self._warned_unsharded:
                self._warned_unsharded = True
                log.warning("rank %d: save_snapshot(%r) uploads nothing: rank 0 owns the run's snapshots (pass "
                            "sharded=True to upload this rank's shard); the files stay on disk", self.rank, name)
            return name
        if isinstance(files, (str, os.PathLike)):  # one file given alone, not a list of its characters
            files = [files]
        key = self.snapshot_uploader.submit(files, name, dict(meta or {}))
        self.log_event("snapshot", step=step, snapshot=name, files=[str(f) for f in files])
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

    def __enter__(self) -> "TrainInstance":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or (isinstance(exc, SystemExit) and (preempt.STOP.requested or exc.code in (None, 0))):
            self.done()
            return False
        code = exc.code if isinstance(exc, SystemExit) else None
        self.done(err_msg=f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__,
                  exit_code=code if type(code) is int else (1 if isinstance(exc, SystemExit) else None))
        if preempt.STOP.requested and isinstance(exc, Exception):
            # After Ctrl-C or SIGTERM to the process group, what else got the signal fails too (a
            # DataLoader's workers: "worker exited unexpectedly"): the run was stopped, and leaves
            # as a stopped run does, its error text kept in status.json and run.log.
            log.warning("instance %s: after %s the training ended with %s: %s", self.training_ins_id,
                        preempt.signal_name(preempt.STOP.signum), exc_type.__name__, exc)
            raise SystemExit(preempt.STOP.exit_code) from None
        return False

    def __repr__(self) -> str:
        return f"TrainInstance({self.training_ins_id!r}, status={self.status!r}, dir={str(self.run_dir)!r})"

