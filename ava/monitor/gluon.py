"""MXNet Gluon adapter: event handlers for ``mxnet.gluon.contrib.estimator`` and a helper for
hand-written Gluon loops.

Estimator::

    from ava.monitor import gluon as gluon_monitor
    est = estimator.Estimator(net, loss, train_metrics=mx.metric.Accuracy(), trainer=trainer)
    est.fit(train_loader, val_data=val_loader, epochs=10, event_handlers=[
        gluon_monitor.MonitorHandler(train_ins, log_interval=10),   # metrics
        gluon_monitor.SnapshotHandler(train_ins),                   # per-epoch snapshots
    ])

:class:`MonitorHandler` records, every ``log_interval`` batches, the estimator's training metrics
as its ``LoggingHandler`` prints them (their value since the epoch began), ``lr`` from the
trainer (its scheduler included), ``speed`` (samples/s since the previous report) and
``samples``; at each epoch end the epoch's training values (``batch`` null) and, when the
``ValidationHandler`` evaluated in that epoch (its metrics were reset and updated since the
epoch began), the validation values with ``phase="val"``. Names
lose the estimator's ``training ``/``validation `` prefix. :class:`SnapshotHandler` saves
``net.save_parameters`` and ``trainer.save_states`` into ``run/<id>/output/`` every
``epoch_interval`` epochs and hands them to the background uploader as snapshot ``epoch-NNNN``.
To resume, ``start, step = snapshots.resume(net, trainer)`` loads the newest snapshot; fit
``epochs - start`` more with ``MonitorHandler(..., begin_epoch=start, begin_step=step)``, and
numbering (records, snapshot names, ``LATEST``) goes on from there.

Hand-written loop::

    mon = gluon_monitor.LoopMonitor(train_ins, batch_size=64, log_every=10)
    for epoch in range(epochs):
        for x, y in train_loader:
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            mon.step(loss=loss, trainer=trainer, accuracy=acc_metric)
        mon.epoch_end(net, trainer, epoch, accuracy=val_acc)

``step`` does no device work on steps it does not log; on the ones it logs, ``loss.mean()`` is
queued and read on the writer thread.

Handlers keep no attribute whose name contains "metric": the estimator checks every such
attribute of every handler against its own metric objects.

Example:
    >>> import tempfile
    >>> from ava.train.base import TrainInstance
    >>> ins = TrainInstance("doc-gluon", workspace=tempfile.mkdtemp(), setup_logging=False)
    >>> handler = MonitorHandler(ins, log_interval=10)
    >>> ins.done()
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ava.errors import UsageError
from ava.metrics.record import check_epoch
from ava.utils import preempt
from ava.monitor.mxnet import _as_dict, _Guard, _mx, _positive_int, optimizer_lr

log = logging.getLogger(__name__)

mx = _mx()
from mxnet.gluon.contrib.estimator import event_handler as _eh  # noqa: E402

_PREFIXES = ("training ", "validation ")


def _plain_name(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _values_of(objs: Any) -> dict[str, Any]:
    """name -> value of EvalMetric objects (their ``get()``), names without the estimator's prefix."""
    pairs: list[tuple[str, Any]] = []
    for m in objs or ():
        names, values = m.get()
        if not isinstance(names, list):
            names, values = [names], [values]
        pairs.extend((_plain_name(str(n)), v) for n, v in zip(names, values))
    return _as_dict(pairs)


def _state_objects(objs: Any) -> list[tuple[Any, ...]]:
    """The attribute values of each metric object, to compare by identity later."""
    return [tuple(vars(m).values()) for m in objs or ()]


def _changed(before: list[tuple[Any, ...]], objs: Any) -> bool:
    """True when a metric was reset or updated since ``before`` was taken.

    Resetting and updating assign new objects to a metric's attributes, so identity tells a
    fresh evaluation apart from an untouched metric even when it gives the same values.
    """
    after = _state_objects(objs)
    if len(after) != len(before):
        return True
    return any(len(a) != len(b) or any(x is not y for x, y in zip(a, b)) for a, b in zip(after, before))


def _trainer_lr(trainer: Any) -> float | None:
    if trainer is None:
        return None
    try:
        return float(trainer.learning_rate)
    except Exception:  # noqa: BLE001 - no lr rather than a failed callback
        return optimizer_lr(getattr(trainer, "_optimizer", None))


def _batch_len(batch: Any) -> int | None:
    try:
        return int(batch[0].shape[0])
    except Exception:  # noqa: BLE001 - an unusual batch: no sample count
        return None


class MonitorHandler(_eh.TrainBegin, _eh.EpochBegin, _eh.BatchEnd, _eh.EpochEnd):
    """Estimator event handler recording training and validation values (see the module doc).

    Args:
        train_ins: the :class:`~ava.train.base.TrainInstance` to record into.
        log_interval: record every this many batches (as ``LoggingHandler(log_interval=k)``
            prints), or ``"epoch"`` for epoch-level records only.
        batch_size: samples per batch; None reads it from each batch.
        priority: the handler's place among the estimator's; after its metric and validation
            handlers (-1000), before its logging handler (inf).
        begin_epoch: the epoch ``fit`` starts at, and
        begin_step: the step count then, when a run is resumed (what
            :meth:`SnapshotHandler.resume` returns), so records continue the earlier ones.

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-gluon-m", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> h = MonitorHandler(ins, log_interval="epoch")   # est.fit(..., event_handlers=[h])
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, log_interval: int | str = 50, batch_size: int | None = None, *,
                 priority: float = 0, begin_epoch: int = 0, begin_step: int = 0) -> None:
        if log_interval != "epoch":
            log_interval = _positive_int(log_interval, "log_interval")
        self._ins = train_ins
        self.log_interval = log_interval
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        self.priority = priority
        self._units = {"speed": "samples/s"}
        self._guard = _Guard("ava gluon MonitorHandler")
        self.begin_epoch = check_epoch(begin_epoch, "begin_epoch")
        self.begin_step = check_epoch(begin_step, "begin_step")
        train_ins.should_stop()  # a stop request now waits for the end of a batch
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.step = self.begin_step
        self.epoch = self.begin_epoch
        self.batch_index = 0
        self.samples = 0
        self._window_samples = 0
        self._tic: float | None = None
        self._val_before: list[tuple[Any, ...]] = []

    def train_begin(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        self._reset_counters()

    def epoch_begin(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        self.batch_index = 0
        self._window_samples = 0
        self._tic = time.time()
        self._val_before = _state_objects(estimator.val_metrics)

    def batch_end(self, estimator: Any, *args: Any, **kwargs: Any) -> bool:
        if preempt.STOP.requested:  # leave between batches (a rewind to the last snapshot)
            self._ins.exit_preempted()
        try:
            n = self.batch_size or _batch_len(kwargs.get("batch")) or 0
            self.samples += n
            self._window_samples += n
            if self.log_interval != "epoch" and self.batch_index % self.log_interval == 0:
                now = time.time()
                values = _values_of(estimator.train_metrics)
                lr = _trainer_lr(estimator.trainer)
                if lr is not None:
                    values["lr"] = lr
                if self._tic is not None and now > self._tic:
                    values["speed"] = self._window_samples / (now - self._tic)
                values["samples"] = self.samples
                self._ins.log_metrics(values, step=self.step, epoch=self.epoch, batch=self.batch_index,
                                      units=self._units)
                self._tic, self._window_samples = now, 0
        except Exception as exc:  # noqa: BLE001 - never stop the user's training
            self._guard.report(exc)
        self.batch_index += 1
        self.step += 1
        return False

    def epoch_end(self, estimator: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            self._ins.log_metrics(_values_of(estimator.train_metrics), step=self.step, epoch=self.epoch)
            if _changed(self._val_before, estimator.val_metrics):  # validated in this epoch
                self._ins.log_metrics(_values_of(estimator.val_metrics), step=self.step, epoch=self.epoch,
                                      phase="val")
        except Exception as exc:  # noqa: BLE001
            self._guard.report(exc)
        self.epoch += 1
        return False


class SnapshotHandler(_eh.TrainBegin, _eh.BatchEnd, _eh.EpochEnd):
    """Estimator event handler: every ``epoch_interval`` epochs, save and upload the net and trainer.

    Writes ``<dir>/<prefix>-NNNN.params`` (``net.save_parameters``) and ``<prefix>-NNNN.states``
    (``trainer.save_states``), NNNN = epoch + 1, and submits them as snapshot ``epoch-NNNN``.

    Args:
        train_ins: the instance whose storage receives the snapshots.
        epoch_interval: save every this many epochs.
        prefix: the file name prefix.
        directory: where the files are written; ``train_ins.get_snapshot_base_path()`` by default.
        save_states: also save the trainer's optimizer states.
        begin_epoch: the epoch ``fit`` starts at, and
        begin_step: the step count then, when a run is resumed (:meth:`resume` sets both).

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-gluon-s", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> h = SnapshotHandler(ins, epoch_interval=2)   # est.fit(..., event_handlers=[h])
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, epoch_interval: int = 1, prefix: str = "model",
                 directory: str | Path | None = None, *, save_states: bool = True, priority: float = 0,
                 begin_epoch: int = 0, begin_step: int = 0) -> None:
        if not prefix or "/" in prefix:
            raise UsageError(f"prefix must be a file name prefix without '/', got {prefix!r}")
        self._ins = train_ins
        self.epoch_interval = _positive_int(epoch_interval, "epoch_interval")
        self.prefix = prefix
        self.directory = Path(directory or train_ins.get_snapshot_base_path())
        self.save_states = save_states
        self.priority = priority
        self.begin_epoch = check_epoch(begin_epoch, "begin_epoch")
        self.begin_step = check_epoch(begin_step, "begin_step")
        self.epoch = self.begin_epoch
        self.step = self.begin_step
        self._guard = _Guard("ava gluon SnapshotHandler")

    def resume(self, net: Any, trainer: Any = None) -> tuple[int, int]:
        """Load the newest confirmed Gluon snapshot of this instance into ``net`` (and ``trainer``)
        and continue numbering from it: the next ``fit`` saves ``epoch-NNNN`` after it, never
        over it, and ``LATEST`` only moves forward.

        Returns:
            ``(start_epoch, step)`` (``(0, 0)`` without a snapshot): train ``epochs - start_epoch``
            more, and give both to :class:`MonitorHandler` as ``begin_epoch``/``begin_step``.
        """
        found = _load_snapshot(self._ins, net, trainer)
        if found is None:
            return 0, 0
        epoch, step, _samples = found
        self.begin_epoch, self.begin_step = epoch + 1, step
        self.epoch, self.step = epoch + 1, step
        return epoch + 1, step

    def train_begin(self, estimator: Any, *args: Any, **kwargs: Any) -> None:
        self.epoch = self.begin_epoch
        self.step = self.begin_step

    def batch_end(self, estimator: Any, *args: Any, **kwargs: Any) -> bool:
        self.step += 1
        return False

    def epoch_end(self, estimator: Any, *args: Any, **kwargs: Any) -> bool:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if (epoch + 1) % self.epoch_interval == 0:
            try:
                save_gluon_snapshot(self._ins, estimator.net, estimator.trainer if self.save_states else None,
                                    epoch, self.directory, self.prefix, step=self.step)
            except Exception as exc:  # noqa: BLE001
                self._guard.report(exc)
        self._ins.exit_preempted()  # only after a stop request: the snapshot above is submitted
        return False


def save_gluon_snapshot(train_ins: Any, net: Any, trainer: Any, epoch: int, directory: str | Path,
                        prefix: str = "model", step: int | None = None, samples: int | None = None) -> list[Path]:
    """Save ``net`` (and ``trainer``'s states) as ``<prefix>-NNNN.*`` and submit snapshot ``epoch-NNNN``
    (its meta: framework, epoch, checkpoint number, step, and ``samples`` when given)."""
    number = epoch + 1
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = directory / f"{prefix}-{number:04d}.params"
    _atomic(params, net.save_parameters)
    files = [params]
    if trainer is not None:
        states = directory / f"{prefix}-{number:04d}.states"
        _atomic(states, trainer.save_states)
        files.append(states)
    meta = {"framework": "gluon", "epoch": epoch, "checkpoint": number, "step": step}
    if samples is not None:
        meta["samples"] = samples
    train_ins.save_snapshot(files, f"epoch-{number:04d}", step=step, meta=meta)
    return files


def _atomic(path: Path, save: Any) -> None:
    """Write through ``save(tmp)`` then rename: the uploader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    save(str(tmp))
    tmp.replace(path)


class LoopMonitor:
    """For hand-written Gluon loops: ``step()`` every batch, ``epoch_end()`` every epoch, and
    ``resume(net, trainer)`` at the start to continue from the newest snapshot.

    Args:
        train_ins: the instance to record into.
        batch_size: samples per batch, unless given to each ``step``.
        log_every: record every this many steps.
        trainer: the ``gluon.Trainer`` whose ``learning_rate`` is recorded as ``lr``.
        checkpoint_every: ``epoch_end`` saves a snapshot every this many epochs (0: never).
        prefix: file name prefix of the snapshots' files.

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-gluon-l", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> mon = LoopMonitor(ins, batch_size=32, log_every=1)
        >>> mon.step(loss=0.5, accuracy=0.75)
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, batch_size: int | None = None, log_every: int = 10, trainer: Any = None,
                 checkpoint_every: int = 1, prefix: str = "model") -> None:
        self._ins = train_ins
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        self.log_every = _positive_int(log_every, "log_every")
        self.trainer = trainer
        if checkpoint_every != 0:
            checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
        self.checkpoint_every = checkpoint_every
        self.prefix = prefix
        self.global_step = 0
        self.epoch = 0
        self.batch = 0
        self.samples = 0
        self._window = 0
        self._tic: float | None = None
        self._units = {"speed": "samples/s"}
        train_ins.should_stop()  # a stop request now waits for the next step()

    def step(self, loss: Any = None, batch_size: int | None = None, trainer: Any = None, **values: Any) -> None:
        """Count one batch; every ``log_every`` steps record ``loss``, ``values``, ``lr``, ``speed``, ``samples``.

        ``values`` may hold numbers, one-element NDArrays or ``mx.metric.EvalMetric`` objects
        (their ``get()``).
        """
        if preempt.STOP.requested:  # the previous batch is done: leave (a rewind to the last snapshot)
            self._ins.exit_preempted()
        n = batch_size or self.batch_size or 0
        self.samples += n
        self._window += n
        self.global_step += 1
        self.batch += 1
        if self._tic is None:
            self._tic = time.time()
            self._window = 0
        if self.global_step % self.log_every:
            return
        out: dict[str, Any] = {}
        if loss is not None:
            out["loss"] = loss.mean() if getattr(loss, "size", 1) != 1 else loss
        for name, value in values.items():
            if hasattr(value, "get_name_value"):
                _as_dict(value.get_name_value(), out)
            else:
                out[name] = value
        lr = _trainer_lr(trainer or self.trainer)
        if lr is not None:
            out["lr"] = lr
        now = time.time()
        if self._window and now > self._tic:
            out["speed"] = self._window / (now - self._tic)
        if self.samples:
            out["samples"] = self.samples
        self._tic, self._window = now, 0
        self._ins.log_metrics(out, step=self.global_step, epoch=self.epoch, batch=self.batch - 1, units=self._units)

    def epoch_begin(self, epoch: int) -> None:
        """The steps from now on belong to ``epoch`` (a loop that counts epochs from 1); without
        it, epochs count from 0 and follow ``epoch_end()``."""
        epoch = check_epoch(epoch)
        if epoch != self.epoch:
            self.epoch, self.batch = epoch, 0

    def epoch_end(self, net: Any, trainer: Any, epoch: int, **val_values: Any) -> list[Path]:
        """Record ``val_values`` (``phase="val"``) and, every ``checkpoint_every`` epochs, save and upload.

        Returns the files written (none when this epoch is not saved).
        """
        epoch = check_epoch(epoch)
        out: dict[str, Any] = {}
        for name, value in val_values.items():
            if hasattr(value, "get_name_value"):
                _as_dict(((_plain_name(str(k)), v) for k, v in value.get_name_value()), out)
            else:
                out[name] = value
        if out:
            self._ins.log_metrics(out, step=self.global_step, epoch=epoch, phase="val")
        files: list[Path] = []
        stopping = preempt.STOP.requested
        if self.checkpoint_every and ((epoch + 1) % self.checkpoint_every == 0 or stopping):
            files = save_gluon_snapshot(self._ins, net, trainer, epoch, self._ins.get_snapshot_base_path(),
                                        self.prefix, step=self.global_step, samples=self.samples)
        self.epoch = epoch + 1
        self.batch = 0
        self._tic = None
        if stopping:
            self._ins.exit_preempted()
        return files


    def resume(self, net: Any, trainer: Any = None) -> tuple[int, int]:
        """Load the newest confirmed Gluon snapshot of this instance into ``net`` (and ``trainer``).

        The snapshot is the one :meth:`~ava.train.base.TrainInstance.resume_info` finds: its
        files from ``run/<id>/output/`` when they are intact there, else downloaded from storage.

        Returns:
            ``(start_epoch, step)``: the epoch after the one saved and the step count then;
            ``(0, 0)`` when there is no Gluon snapshot. The monitor continues counting from there.
        """
        found = _load_snapshot(self._ins, net, trainer)
        if found is None:
            return 0, 0
        epoch, step, samples = found
        self.epoch, self.global_step, self.batch = epoch + 1, step, 0
        self.samples = samples
        self._tic, self._window = None, 0
        return epoch + 1, step


def _load_snapshot(train_ins: Any, net: Any, trainer: Any) -> tuple[int, int, int] | None:
    """Load the newest confirmed Gluon snapshot into ``net`` (and ``trainer``): its
    ``(epoch, step, samples)``, or None when there is none. An unloadable file is a UsageError."""
    info = train_ins.resume_info()
    meta = info.snapshot_meta or {}
    if info.snapshot is None or meta.get("framework") != "gluon":
        return None
    params = next((f for f in info.files if f.name.endswith(".params")), None)
    states = next((f for f in info.files if f.name.endswith(".states")), None)
    if params is None:
        log.warning("snapshot %s holds no .params file; nothing to resume from", info.snapshot)
        return None
    for path, load in ((params, net.load_parameters),
                       (states, trainer.load_states if trainer is not None else None)):
        if path is None or load is None:
            continue
        try:
            load(str(path))
        except Exception as exc:  # noqa: BLE001 - MXNetError, AssertionError, ValueError...
            raise UsageError(f"snapshot {info.snapshot}: {path} cannot be loaded: "
                             f"{' '.join(str(exc).split()[:40]) or type(exc).__name__}") from None
    epoch, step = int(meta["epoch"]), int(meta.get("step") or 0)
    train_ins.log_event("resume", step=step, path=str(params), epoch=epoch)
    log.info("resumed from snapshot %s: epoch %d done, step %d", info.snapshot, epoch, step)
    return epoch, step, int(meta.get("samples") or 0)


def monitor_callback(train_ins: Any, **kwargs: Any) -> MonitorHandler:
    """``get_monitor_callback("gluon", log_interval=..., batch_size=...)``: a :class:`MonitorHandler`."""
    if "batch_freq" in kwargs:
        kwargs.setdefault("log_interval", kwargs.pop("batch_freq"))
    return MonitorHandler(train_ins, **kwargs)


def epoch_end_callback(train_ins: Any, **kwargs: Any) -> SnapshotHandler:
    """``get_epoch_end_callback("gluon", epoch_interval=...)``: a :class:`SnapshotHandler`."""
    kwargs.pop("batch_of_epoch", None)  # the guide passes it; the handler counts batches itself
    if kwargs.pop("other_files", None):
        raise UsageError("the gluon SnapshotHandler does not take other_files; upload them with "
                         "train_ins.save_snapshot(files, name)")
    return SnapshotHandler(train_ins, **kwargs)
