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
  and the user's metric is never reset or changed.
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

import collections
import logging
import math
import operator
import re
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ava.errors import AvaError, UsageError
from ava.utils import preempt

log = logging.getLogger(__name__)

#: Speedometer's default ``frequent``.
DEFAULT_BATCH_FREQ = 50
#: How long the epoch-end callback waits (in the background) for a checkpoint file to appear.
DEFAULT_WAIT_TIMEOUT = 120.0
_POLL = 0.1

_VALIDATION_MSG = "Epoch[%d] Validation-%s=%f"  # what BaseModule.fit logs, verbatim
_VALIDATION_RE = re.compile(r"^Epoch\[(\d+)\] Validation-(.+)=(-?(?:\d+\.\d*|nan|inf))$")


# --- importing mxnet -------------------------------------------------------------------------
def ensure_np_bool(np_module: Any) -> bool:
    """Give ``np_module`` a ``bool`` attribute when it has none (numpy >= 1.24); True if added."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            getattr(np_module, "bool")
            return False
        except AttributeError:
            np_module.bool = bool
            return True


def _mx() -> Any:
    """``mxnet``, imported with the ``np.bool`` shim and its import-time warnings silenced."""
    mx = sys.modules.get("mxnet")
    if mx is not None and hasattr(mx, "metric"):
        return mx
    import numpy

    ensure_np_bool(numpy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import mxnet
    return mxnet


def full_mxnet_metrics() -> list[str]:
    """MXNet's common metric names, as ``Module.fit`` prints them (the old SDK's list, extended)."""
    return ["accuracy", "top_k_accuracy_5", "cross-entropy", "nll-loss", "perplexity", "f1", "mcc", "mae",
            "mse", "rmse", "pearsonr", "pcc", "loss"]


# --- reading metrics --------------------------------------------------------------------------
def _leaves(eval_metric: Any) -> list[Any]:
    """The leaf metrics of a (possibly nested) composite metric."""
    children = getattr(eval_metric, "metrics", None)
    if isinstance(children, list) and hasattr(eval_metric, "get_metric"):
        out: list[Any] = []
        for child in children:
            out.extend(_leaves(child))
        return out
    return [eval_metric]


def _kind(leaf: Any) -> str:
    """How a leaf's value over a window is computed from its global counters."""
    mx = _mx()
    m = mx.metric
    if isinstance(leaf, (m.F1, m.MCC, m.PCC)):
        return "local"  # their global sum is not additive across batches
    if isinstance(leaf, m.Perplexity):
        return "exp"
    if isinstance(leaf, m.PearsonCorrelation):
        return "mean" if getattr(leaf, "average", "macro") == "macro" else "local"
    if getattr(leaf, "_has_global_stats", False) and type(leaf).get is m.EvalMetric.get:
        return "mean"
    return "local"


def _pairs(name: Any, value: Any) -> list[tuple[str, Any]]:
    names = name if isinstance(name, list) else [name]
    values = value if isinstance(value, list) else [value]
    return list(zip(names, values))


class WindowReader:
    """Read a metric's values over the batches since the last read, from its global counters.

    Global counters survive ``reset_local()`` (what ``Speedometer(auto_reset=True)`` calls), so
    the values do not depend on the order of callbacks. Metrics whose global part is not a
    plain sum (F1, MCC, PCC, micro Pearson, unknown kinds) give their local value when they have
    one, else their global one. Values are Python floats.

    Example:
        >>> import mxnet as mx
        >>> acc = mx.metric.Accuracy()
        >>> r = WindowReader()
        >>> acc.update([mx.nd.array([1, 0])], [mx.nd.array([[0, 1], [0, 1]])])
        >>> r.read(acc)
        {'accuracy': 0.5}
        >>> acc.update([mx.nd.array([1])], [mx.nd.array([[0, 1]])])
        >>> r.read(acc)
        {'accuracy': 1.0}
    """

    def __init__(self) -> None:
        self._metric: Any = None
        self._size = -1
        self._composite = False  # the metric has a ``metrics`` list, whose length is checked at each read
        # leaf, kind, record name, [global sum, global count] at the previous read (updated in place)
        self._plan: list[tuple[Any, str, str, list[float]]] = []

    def _prepare(self, eval_metric: Any) -> None:
        size = len(getattr(eval_metric, "metrics", ()) or ())
        if eval_metric is self._metric and size == self._size:
            return
        self._metric, self._size = eval_metric, size
        self._composite = getattr(eval_metric, "metrics", None) is not None
        taken: set[str] = set()
        self._plan = []
        for leaf in _leaves(eval_metric):
            kind = _kind(leaf)
            self._plan.append((leaf, kind, "" if kind == "local" else _unique(str(leaf.name), taken), [0.0, 0.0]))

    def restart(self) -> None:
        """Forget the previous read (the metric was reset for a new epoch)."""
        for entry in self._plan:
            entry[3][:] = (0.0, 0.0)

    def read(self, eval_metric: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
        """name -> value over the window since the last read (into ``out`` when given)."""
        if eval_metric is not self._metric or (self._composite and self._size != len(eval_metric.metrics or ())):
            self._prepare(eval_metric)
        if out is None:
            out = {}
        for leaf, kind, name, prev in self._plan:
            if kind == "local":
                _as_dict(_pairs(*(leaf.get() if leaf.num_inst else leaf.get_global())), out)
            else:
                # As Python floats: numpy scalar arithmetic costs several times more.
                g_sum = float(leaf.global_sum_metric)
                g_num = float(leaf.global_num_inst)
                p_sum, p_num = prev
                if g_num < p_num:  # reset since the last read
                    p_sum = p_num = 0.0
                prev[0] = g_sum
                prev[1] = g_num
                n = g_num - p_num
                if n:
                    value = (g_sum - p_sum) / n
                    out[name] = math.exp(value) if kind == "exp" else value
                else:
                    out[name] = math.nan
        return out


def _unique(name: str, taken: Any) -> str:
    """``name``, or ``name_2``, ``name_3``... when taken (two outputs with one metric each)."""
    key, n = name, 1
    while key in taken:
        n += 1
        key = f"{name}_{n}"
    if isinstance(taken, set):
        taken.add(key)
    return key


def _as_dict(pairs: Iterable[tuple[str, Any]], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """name -> value, repeated names made unique (see :func:`_unique`)."""
    out = {} if into is None else into
    for name, value in pairs:
        out[_unique(str(name), out)] = value
    return out


def optimizer_lr(optimizer: Any) -> float | None:
    """The current learning rate of an MXNet optimizer (its scheduler applied), or None."""
    if optimizer is None:
        return None
    try:
        lr = optimizer.learning_rate
    except Exception:  # noqa: BLE001 - an unusual optimizer: report no lr rather than fail
        return None
    return lr if isinstance(lr, (int, float)) else None


# --- state shared by one instance's callbacks ---------------------------------------------------
class _RunState:
    """What the batch, epoch-end and validation callbacks of one instance share."""

    def __init__(self, train_ins: Any) -> None:
        self.ins_ref = weakref.ref(train_ins)
        self.epoch_steps: dict[int, int] = {}  # epoch -> batches done at its end
        self.last_step: int | None = None
        self.val_reported: set[tuple[int, str]] = set()  # by eval_end_callback
        self.capture: _ValidationCapture | None = None
        self.lock = threading.Lock()
        self.submitters: "weakref.WeakSet[_OrderedSubmitter]" = weakref.WeakSet()

    def leave_if_preempted(self) -> None:
        """After a stop request: let checkpoints being written reach the uploader, then leave
        through the instance's preemption path (raises SystemExit)."""
        if not preempt.STOP.requested:
            return
        ins = self.ins_ref()
        if ins is None:
            return
        budget = min(10.0, ins._env.preempt_timeout)
        for sub in list(self.submitters):
            sub.wait(budget)
        ins.exit_preempted()

    def step_for_epoch(self, epoch: int, batch_of_epoch: int | None) -> int | None:
        if epoch in self.epoch_steps:
            return self.epoch_steps[epoch]
        if batch_of_epoch:
            return (epoch + 1) * batch_of_epoch
        return self.last_step


_states: "weakref.WeakKeyDictionary[Any, _RunState]" = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state(train_ins: Any) -> _RunState:
    with _states_lock:
        st = _states.get(train_ins)
        if st is None:
            st = _states[train_ins] = _RunState(train_ins)
        return st


class _ValidationCapture(logging.Handler):
    """Turns ``Module.fit``'s ``Epoch[e] Validation-x=v`` log records into ``phase="val"`` metrics."""

    def __init__(self, state: _RunState, batch_of_epoch: int | None) -> None:
        super().__init__(logging.NOTSET)
        self._state = state
        self.batch_of_epoch = batch_of_epoch
        self._loggers: list[logging.Logger] = []
        self._last: logging.LogRecord | None = None

    def attach(self, logger: logging.Logger) -> None:
        if logger not in self._loggers:
            logger.addHandler(self)
            self._loggers.append(logger)
            if not logger.isEnabledFor(logging.INFO):
                log.warning("logger %r is above INFO, so Module.fit's validation lines do not reach ava; set it "
                            "to INFO or pass eval_end_callback=ava.monitor.mxnet.eval_end_callback(train_ins) "
                            "to fit()", logger.name)

    def detach(self) -> None:
        for logger in self._loggers:
            logger.removeHandler(self)
        self._loggers = []

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:
            return
        if record.msg == _VALIDATION_MSG:
            args = record.args
        else:  # a filter of another handler may have formatted the record in place already
            m = _VALIDATION_RE.match(record.msg) if isinstance(record.msg, str) and not record.args else None
            if m is None:
                return
            args = (int(m.group(1)), m.group(2), float(m.group(3)))
        self._last = record  # a record seen through two loggers is counted once
        try:
            epoch, name, value = args  # type: ignore[misc]
            st = self._state
            ins = st.ins_ref()
            if ins is None:
                self.detach()
                return
            with st.lock:
                if (epoch, name) in st.val_reported:
                    return
            ins.log_metrics({name: value}, step=st.step_for_epoch(epoch, self.batch_of_epoch), epoch=epoch,
                            phase="val")
        except AvaError as exc:
            log.debug("validation metric not recorded (%s); no longer capturing", exc)
            self.detach()
        except Exception:  # noqa: BLE001 - logging must never fail because of us
            log.debug("could not record a validation line", exc_info=True)


def _capture_validation(train_ins: Any, logger: Any = None, batch_of_epoch: int | None = None) -> None:
    """Record ``Epoch[e] Validation-`` lines logged through ``logger`` (the root logger by default)."""
    st = _state(train_ins)
    with st.lock:
        if st.capture is None:
            st.capture = _ValidationCapture(st, batch_of_epoch)
            weakref.finalize(train_ins, st.capture.detach)  # no handler outlives its instance
        elif batch_of_epoch and not st.capture.batch_of_epoch:
            st.capture.batch_of_epoch = batch_of_epoch
        cap = st.capture
    root = logging.getLogger()
    if logger is None or logger is logging:
        cap.attach(root)
        return
    if not isinstance(logger, logging.Logger):
        return
    # A logger whose records reach the root through propagation is already covered.
    cur: logging.Logger | None = logger
    while cur is not None:
        if cur is root or cur in cap._loggers:
            return
        if not cur.propagate:
            break
        cur = cur.parent
    cap.attach(logger)


class _Guard:
    """Errors inside a callback are logged (the first few, then every 100th), never raised into fit()."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def report(self, exc: BaseException) -> None:
        self.count += 1
        if self.count <= 3 or self.count % 100 == 0:
            log.error("%s failed (%d times so far): %s; training continues", self.what, self.count, exc,
                      exc_info=not isinstance(exc, AvaError))


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
        self._guard = _Guard("ava mxnet batch-end callback")

    def __call__(self, param: Any) -> None:
        if preempt.STOP.requested:  # the batch is done: leave here (a rewind to the last snapshot)
            self._state.leave_if_preempted()
        try:  # the batch's work inline: this runs after every batch of training
            nbatch = param.nbatch
            epoch = param.epoch
            loc = param.locals or _NO_LOCALS
            if epoch != self._epoch or nbatch < self._last_nbatch:
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
            if epoch > 0 and self.batch_of_epoch:
                self._base = epoch * self.batch_of_epoch
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
            step = self._state.step_for_epoch(epoch, self.batch_of_epoch) if epoch is not None else None
            self._ins.log_metrics(values, step=step, epoch=epoch, phase=self.phase)
        except Exception as exc:  # noqa: BLE001
            self._guard.report(exc)


# --- the epoch-end callback -------------------------------------------------------------------------
class _OrderedSubmitter:
    """Hands snapshots to the uploader in epoch order; one whose files are missing waits on a thread."""

    def __init__(self, train_ins: Any, timeout: float) -> None:
        self._ins_ref = weakref.ref(train_ins)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Callable[[], tuple[list[Path], list[str]]], str, dict[str, Any],
                                             int | None, float]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, resolve: Callable[[], tuple[list[Path], list[str]]], name: str, meta: dict[str, Any],
               step: int | None) -> None:
        with self._lock:
            if not self._queue:
                files, missing = resolve()
                if not missing:
                    self._save(files, name, meta, step)
                    return
            self._queue.append((resolve, name, meta, step, time.monotonic() + self.timeout))
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ava-mxnet-checkpoint-wait", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no snapshot is waiting for its files; False on timeout."""
        return self._idle.wait(timeout)

    def _save(self, files: list[Path], name: str, meta: dict[str, Any], step: int | None) -> None:
        ins = self._ins_ref()
        if ins is None:
            return
        ins.save_snapshot(files, name, meta=meta, step=step)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._idle.set()
                    return
                resolve, name, meta, step, deadline = self._queue[0]
            try:
                files, missing = resolve()
                if not missing:
                    self._save(files, name, meta, step)
                elif time.monotonic() >= deadline:
                    log.error("snapshot %s not uploaded: %s did not appear within %.0f s", name,
                              ", ".join(missing), self.timeout)
                    ins = self._ins_ref()
                    if ins is not None:
                        ins.log_event("snapshot_failed", step=step, name=name, missing=missing,
                                      reason=f"not written within {self.timeout:.0f} s")
                else:
                    time.sleep(_POLL)  # a daemon thread polling the disk: nothing else to wake it
                    continue
            except Exception as exc:  # noqa: BLE001 - a background thread reports, never dies
                log.error("snapshot %s: %s (a snapshot already submitted is uploaded by the next run)", name, exc)
            with self._lock:
                self._queue.popleft()


def find_checkpoint(directory: str | Path, number: int) -> tuple[Path, Path] | None:
    """The newest ``<prefix>-<number:04d>.params`` in ``directory`` with its ``<prefix>-symbol.json``."""
    suffix = f"-{number:04d}.params"
    best: tuple[float, Path, Path] | None = None
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return None
    for params in entries:
        if not params.name.endswith(suffix):
            continue
        symbol = params.with_name(params.name[: -len(suffix)] + "-symbol.json")
        try:
            mtime = params.stat().st_mtime
            if not symbol.is_file():
                continue
        except OSError:
            continue
        if best is None or mtime > best[0]:
            best = (mtime, params, symbol)
    return None if best is None else (best[2], best[1])


class EpochEndCallback:
    """Epoch-end callback for ``Module.fit``: hands the epoch's checkpoint to the snapshot uploader.

    Put it beside ``mx.callback.do_checkpoint(prefix, period)`` in ``epoch_end_callback`` (after it
    is best; before it works too, see the module doc). Every ``epoch_interval`` epochs it submits
    snapshot ``epoch-NNNN`` (NNNN = epoch + 1) with ``prefix-symbol.json``, ``prefix-NNNN.params``,
    ``prefix-NNNN.states`` when present, and ``other_files``; it returns at once (the upload runs
    in the background). In the one case that uses a thread of its own (no ``prefix``, and the
    first checkpoint not written yet), call :meth:`wait` before ``train_ins.done()`` if ``fit``
    may end within ``wait_timeout``; otherwise that snapshot is uploaded by the instance's next run.

    Args:
        train_ins: the instance whose storage receives the snapshots.
        batch_of_epoch: batches per epoch, for the snapshot's ``step`` when no batch callback runs.
        epoch_interval: the ``period`` given to ``do_checkpoint``.
        other_files: more files to upload with every snapshot (labels, configs...).
        prefix: ``do_checkpoint``'s prefix; None finds the newest ``*-NNNN.params`` with its
            ``*-symbol.json`` in ``train_ins.get_snapshot_base_path()``.
        wait_timeout: without ``prefix``, how long the first checkpoint is looked for when it is
            not there yet (in the background).

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-mx-e", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> cb = EpochEndCallback(ins, batch_of_epoch=45, prefix=ins.get_snapshot_base_path() + "/model")
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, batch_of_epoch: int | None = None, epoch_interval: int = 1,
                 other_files: Sequence[str | Path] | None = (), prefix: str | Path | None = None, *,
                 wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> None:
        self._ins = train_ins
        self.batch_of_epoch = None if batch_of_epoch is None else _positive_int(batch_of_epoch, "batch_of_epoch")
        self.epoch_interval = _positive_int(epoch_interval, "epoch_interval")
        if isinstance(other_files, (str, Path)):
            other_files = [other_files]
        self.other_files = [Path(f).absolute() for f in (other_files or ())]
        names = [f.name for f in self.other_files]
        if len(set(names)) != len(names):
            raise UsageError(f"other_files has two files with the same name: {sorted(names)}; a snapshot keeps "
                             "file names, so rename one")
        self.prefix = None if prefix is None else str(Path(prefix).absolute())
        self.snapshot_dir = Path(train_ins.get_snapshot_base_path())
        self._learned: str | None = None  # the prefix found in the snapshot directory
        self._state = _state(train_ins)
        _capture_validation(train_ins, None, self.batch_of_epoch)
        self._submitter = _OrderedSubmitter(train_ins, float(wait_timeout))
        self._state.submitters.add(self._submitter)
        self._guard = _Guard("ava mxnet epoch-end callback")

    def __call__(self, epoch: int, symbol: Any = None, arg_params: Any = None, aux_params: Any = None) -> None:
        try:
            self._on_epoch(int(epoch))
        except Exception as exc:  # noqa: BLE001
            self._guard.report(exc)
        self._state.leave_if_preempted()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no checkpoint is still waiting to be written; False on timeout."""
        return self._submitter.wait(timeout)

    def _resolve(self, number: int) -> tuple[list[Path], list[str]]:
        prefix = self.prefix or self._learned
        if prefix is not None:
            # Known names: the uploader waits for files not written yet (and reports one that never is).
            files = [Path(f"{prefix}-symbol.json"), Path(f"{prefix}-{number:04d}.params")]
            missing: list[str] = []
        else:
            found = find_checkpoint(self.snapshot_dir, number)
            if found is None:
                return [], [f"{self.snapshot_dir}/*-{number:04d}.params with its *-symbol.json"]
            files = list(found)
            missing = []
            self._learned = str(found[1])[: -len(f"-{number:04d}.params")]
        states = Path(str(files[1])[: -len(".params")] + ".states")
        if states.is_file():
            files.append(states)
        taken = {f.name for f in files}
        for extra in self.other_files:
            if extra.name in taken:
                log.warning("other file %s has the name of a checkpoint file; not added to the snapshot", extra)
                continue
            files.append(extra)
        return files, missing

    def _on_epoch(self, epoch: int) -> None:
        if (epoch + 1) % self.epoch_interval:
            return
        number = epoch + 1
        step = self._state.step_for_epoch(epoch, self.batch_of_epoch)
        meta: dict[str, Any] = {"framework": "mxnet", "epoch": epoch, "checkpoint": number, "step": step}
        self._submitter.submit(lambda: self._resolve(number), f"epoch-{number:04d}", meta, step)


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


def _positive_int(value: Any, what: str) -> int:
    try:
        number = operator.index(value)  # int and numpy integers; not floats, not strings
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number <= 0:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return number
