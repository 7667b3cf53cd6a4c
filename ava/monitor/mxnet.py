"""MXNet Module adapter: batch-end, epoch-end and validation callbacks for ``Module.fit``.

The guide's two calls are all a script needs::

    batch_end_cb = train_ins.get_monitor_callback("mxnet", batch_size=32, batch_freq=10)
    epoch_end_cb = [mx.callback.do_checkpoint(prefix, 1),
                    train_ins.get_epoch_end_callback("mxnet", batch_of_epoch=45, epoch_interval=1)]
    mod.fit(train, eval_data=val, batch_end_callback=batch_end_cb, epoch_end_callback=epoch_end_cb)

What reaches the record (CONTRACT.md section 5):

- Every ``batch_freq`` batches (on Speedometer's schedule: batches ``freq``, ``2*freq``, ... of
  each epoch): each name/value of the ``eval_metric`` (composite metrics flattened), ``lr`` from
  the module's optimizer (its scheduler included), ``speed`` in samples/s measured as
  ``mx.callback.Speedometer`` measures it, and ``samples`` (samples so far in this process).
  A metric's value is the one over the batches since the previous report, which is what
  Speedometer prints; it is computed from the metric's global counters, which
  ``Speedometer(auto_reset=True)`` leaves alone, so the order of the callbacks does not matter
  and the user's metric is never reset or changed. F1, MCC, PCC and custom metrics without
  global stats have no additive global counters: they are read from their local part, and
  when a ``Speedometer`` placed before this callback has just reset it, from the value it had
  just before (their ``reset_local`` keeps it: the one change made to such a metric).
- At the last batch of an epoch: the epoch's values (``Epoch[e] Train-x=v``), ``batch`` null.
- Validation: ``Module.fit`` scores ``eval_data`` after the epoch-end callbacks and logs
  ``Epoch[e] Validation-x=v`` through its logger. The callbacks install a handler on that logger
  (the root logger by default) that records these values with ``phase="val"``; it reads the
  logged arguments, not the formatted text, so values are exact. The logger must let INFO
  through (``TrainInstance()`` sets that up); otherwise pass ``eval_end_callback=
  mxnet_monitor.eval_end_callback(train_ins)`` to ``fit``, which does the same.
- ``step`` counts batches across epochs (a batch record's step is its 0-based global index, an
  epoch-level record's step the number of batches done), as ``ava parse-log mxnet`` counts them.

Checkpoints: the epoch-end callback hands ``prefix-symbol.json``, ``prefix-NNNN.params`` (NNNN =
epoch + 1, as ``do_checkpoint`` numbers them), ``prefix-NNNN.states`` when present and the
``other_files`` to the background uploader as snapshot ``epoch-NNNN``, and returns at once. With
``prefix=`` the file names are known; without it, the newest ``*-NNNN.params`` that has a matching
``*-symbol.json`` in ``train_ins.get_snapshot_base_path()`` is taken (so ``do_checkpoint`` should
write there), and its prefix is used for the later epochs. Once the names are known they go to
the uploader at once, which waits for a file not written yet (the callback placed before
``do_checkpoint``) and reports one that never appears, by name, after its bound (10 minutes).
When no prefix is given and nothing is found yet, a daemon thread looks again for up to
``wait_timeout`` seconds, then reports what it looked for (log and a ``snapshot_failed``
event). Local files are never deleted.

mxnet 1.9.1 needs ``np.bool``, which numpy >= 1.24 removed: it is put back (as ``bool``) when
this module imports mxnet, and only then.

Example:
    >>> from ava.monitor import mxnet as mxnet_monitor
    >>> "accuracy" in mxnet_monitor.full_mxnet_metrics()
    True
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from ava.errors import UsageError
from ava.utils import preempt

# Re-exported: every name this module had before it was split stays importable from here
# (ava.monitor.gluon imports _as_dict, _Guard, _mx, _positive_int and optimizer_lr).
from ava.monitor._mxnet_import import _mx, ensure_np_bool  # noqa: F401
from ava.monitor._mxnet_metrics import (  # noqa: F401
    WindowReader, _as_dict, _kind, _leaves, _pairs, _unique, full_mxnet_metrics, optimizer_lr)
from ava.monitor._mxnet_shared import (  # noqa: F401
    _VALIDATION_MSG, _VALIDATION_RE, _capture_validation, _Guard, _positive_int, _RunState, _state, _states,
    _states_lock, _ValidationCapture)
from ava.monitor._mxnet_checkpoint import (  # noqa: F401
    _POLL, DEFAULT_WAIT_TIMEOUT, EpochEndCallback, _OrderedSubmitter, find_checkpoint)

log = logging.getLogger(__name__)

#: Speedometer's default ``frequent``.
DEFAULT_BATCH_FREQ = 50


# --- the batch-end callback -----------------------------------------------------------------------
class BatchEndCallback:
    """Batch-end callback for ``Module.fit``: metrics, lr, speed and samples every ``batch_freq`` batches.

    Args:
        train_ins: the :class:`~ava.train.base.TrainInstance` to record into.
        batch_size: samples per batch (all devices together), for ``speed`` and ``samples``.
        batch_freq: report every this many batches (Speedometer's ``frequent``).
        batch_of_epoch: batches per epoch; lets ``step`` start right when ``fit`` resumes at
            ``begin_epoch`` > 0.

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-mx", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> cb = BatchEndCallback(ins, batch_size=32, batch_freq=10)   # batch_end_callback=cb
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, batch_size: int, batch_freq: int = DEFAULT_BATCH_FREQ, *,
                 batch_of_epoch: int | None = None) -> None:
        self._ins = train_ins
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.batch_freq = _positive_int(batch_freq, "batch_freq")
        self.batch_of_epoch = None if batch_of_epoch is None else _positive_int(batch_of_epoch, "batch_of_epoch")
        self._state = _state(train_ins)
        if self.batch_of_epoch:
            self._state.batch_of_epoch = self.batch_of_epoch
        _capture_validation(train_ins, None, self.batch_of_epoch)
        train_ins.should_stop()  # a stop request now waits for the end of a batch
        self._reader = WindowReader()
        self._epoch: int | None = None
        self._last_nbatch = -1
        self._base = 0  # batches in the earlier epochs
        self._samples = 0
        self._tic = 0.0
        self._ready = False
        self._module: Any = None
        self._optimizer: Any = None
        self._units = {"speed": "samples/s"}
        # The writer's log_own while train_ins.log_metrics stays the object it is now (see
        # TrainInstance.batch_logger); log_metrics itself otherwise.
        self._log_metrics = train_ins.log_metrics
        self._log_own = getattr(train_ins, "batch_logger", lambda: None)()
        self._guard = _Guard("ava mxnet batch-end callback")

    def __call__(self, param: Any) -> None:
        if preempt.STOP.requested:  # the batch is done: leave here (a rewind to the last snapshot)
            self._state.leave_if_preempted()
        try:  # the batch's work inline: this runs after every batch of training
            nbatch = param.nbatch
            epoch = param.epoch
            loc = param.locals or _NO_LOCALS
            if nbatch <= self._last_nbatch or epoch != self._epoch:
                if nbatch == self._last_nbatch and epoch == self._epoch:
                    return  # the same batch again: this callback is listed twice in batch_end_callback
                self._new_epoch(epoch, loc)
            self._last_nbatch = nbatch
            step = self._base + nbatch
            pad = getattr(loc.get("data_batch"), "pad", 0)
            self._samples += self.batch_size - pad if pad else self.batch_size
            state = self._state
            state.last_step = step + 1
            if not self._ready:
                self._ready = True
                self._tic = time.time()
                if param.eval_metric is not None:  # before Speedometer first resets it
                    self._reader.watch(param.eval_metric)
            elif nbatch % self.batch_freq == 0:
                now = time.time()
                elapsed = now - self._tic
                self._tic = now
                eval_metric = param.eval_metric
                values = self._reader.read(eval_metric) if eval_metric is not None else {}
                opt = self._optimizer
                if opt is not None:
                    lr = opt.lr if opt.lr_scheduler is None else optimizer_lr(opt)
                    if lr is not None:
                        values["lr"] = lr
                values["speed"] = self.batch_freq * self.batch_size / elapsed if elapsed > 0 else math.inf
                values["samples"] = self._samples
                log_own = self._log_own
                if log_own is not None and self._ins.log_metrics is self._log_metrics:
                    log_own(values, step, epoch, nbatch, self._units)
                else:
                    self._ins.log_metrics(values, step, epoch, nbatch, units=self._units)
            if loc.get("end_of_batch"):
                state.epoch_steps[epoch] = step + 1
                if param.eval_metric is not None:
                    values = _as_dict(param.eval_metric.get_global_name_value())
                    self._ins.log_metrics(values, step=step + 1, epoch=epoch)
        except Exception as exc:  # noqa: BLE001 - never break the user's training
            self._guard.report(exc)

    def _new_epoch(self, epoch: int, loc: dict[str, Any]) -> None:
        if self._epoch is None:
            # The guide gives batch_of_epoch to the epoch-end callback only: take it from there.
            per_epoch = self.batch_of_epoch or self._state.batch_of_epoch
            if epoch > 0 and per_epoch:
                self._base = epoch * per_epoch
        else:
            self._base += self._last_nbatch + 1
        self._epoch = epoch
        self._ready = False
        self._reader.restart()
        module = loc.get("self")
        if module is not None and module is not self._module:
            self._module = module
            _capture_validation(self._ins, getattr(module, "logger", None), self.batch_of_epoch)
        # Read once an epoch: the optimizer object does not change during an epoch of fit().
        opt = getattr(self._module, "_optimizer", None)
        self._optimizer = opt if hasattr(opt, "lr_scheduler") and hasattr(opt, "lr") else None


_NO_LOCALS: dict[str, Any] = {}


# --- validation callbacks ------------------------------------------------------------------------
class ScoreEndCallback:
    """``score_end_callback`` / ``eval_end_callback``: the metric after scoring, with ``phase``.

    As ``eval_end_callback`` of ``fit`` it records validation values (``phase="val"``); the
    validation log capture then skips them. As ``score_end_callback`` of ``Module.score`` it
    records what ``score`` returns (``phase="test"`` by default).

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-mx-s", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> cb = ScoreEndCallback(ins, phase="test")   # mod.score(test_iter, "acc", score_end_callback=cb)
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, phase: str = "val", *, batch_of_epoch: int | None = None) -> None:
        if phase not in ("train", "val", "test"):
            raise UsageError(f"phase must be 'train', 'val' or 'test', got {phase!r}")
        self._ins = train_ins
        self.phase = phase
        self.batch_of_epoch = batch_of_epoch
        self._state = _state(train_ins)
        self._guard = _Guard(f"ava mxnet {phase} score callback")

    def __call__(self, param: Any) -> None:
        try:
            if param.eval_metric is None:
                return
            values = _as_dict(param.eval_metric.get_name_value())
            epoch = param.epoch
            if self.phase == "val":
                with self._state.lock:
                    self._state.val_reported.update((epoch, name) for name in values)
            if self.phase != "val" and self._state.last_step is not None:
                # Module.score() says epoch=0 unless told otherwise: a test score belongs where the
                # training is (its step, and the epoch that step is in).
                step = self._state.last_step
                epoch = max((e for e, s in self._state.epoch_steps.items() if s <= step), default=epoch)
            else:
                step = self._state.step_for_epoch(epoch, self.batch_of_epoch) if epoch is not None else None
            self._ins.log_metrics(values, step=step, epoch=epoch, phase=self.phase)
        except Exception as exc:  # noqa: BLE001
            self._guard.report(exc)


# --- the adapter interface (TrainInstance.get_*_callback) ------------------------------------------
def monitor_callback(train_ins: Any, batch_size: int | None = None, batch_freq: int = DEFAULT_BATCH_FREQ,
                     **kwargs: Any) -> BatchEndCallback:
    """``get_monitor_callback("mxnet", batch_size=..., batch_freq=...)``: a :class:`BatchEndCallback`.

    Raises:
        UsageError: ``batch_size`` missing (the old SDK returned None and nothing was reported).
    """
    if batch_size is None:
        raise UsageError('get_monitor_callback("mxnet") needs batch_size= (the samples per batch, all devices '
                         'together), e.g. get_monitor_callback("mxnet", batch_size=32, batch_freq=50)')
    unknown = set(kwargs) - {"batch_of_epoch"}
    if unknown:
        raise UsageError(f'get_monitor_callback("mxnet") got unknown arguments {sorted(unknown)}; it takes '
                         "batch_size, batch_freq and batch_of_epoch")
    return BatchEndCallback(train_ins, batch_size, batch_freq, **kwargs)


def epoch_end_callback(train_ins: Any, batch_of_epoch: int | None = None, epoch_interval: int = 1,
                       other_files: Sequence[str | Path] | None = (), prefix: str | Path | None = None,
                       **kwargs: Any) -> EpochEndCallback:
    """``get_epoch_end_callback("mxnet", batch_of_epoch=..., epoch_interval=..., other_files=[])``."""
    unknown = set(kwargs) - {"wait_timeout"}
    if unknown:
        raise UsageError(f'get_epoch_end_callback("mxnet") got unknown arguments {sorted(unknown)}; it takes '
                         "batch_of_epoch, epoch_interval, other_files, prefix and wait_timeout")
    return EpochEndCallback(train_ins, batch_of_epoch, epoch_interval, other_files, prefix, **kwargs)


def eval_end_callback(train_ins: Any, batch_of_epoch: int | None = None) -> ScoreEndCallback:
    """For ``fit(eval_end_callback=...)``: validation values with ``phase="val"``."""
    return ScoreEndCallback(train_ins, "val", batch_of_epoch=batch_of_epoch)


def score_end_callback(train_ins: Any, phase: str = "test") -> ScoreEndCallback:
    """For ``Module.score(..., score_end_callback=...)``: the score with ``phase`` (``test``)."""
    return ScoreEndCallback(train_ins, phase)


# The old SDK's names.
batch_end_callback_builder = monitor_callback
epoch_end_callback_builder = epoch_end_callback
