"""What the MXNet Module callbacks of one instance share: run state, validation capture,
the error guard that keeps callback failures out of ``fit()``, and the argument check.

``ava.monitor.mxnet`` re-exports these names; ``ava.monitor.gluon`` uses :class:`_Guard` and
:func:`_positive_int` through it.
"""

from __future__ import annotations

import logging
import operator
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ava.errors import AvaError, UsageError
from ava.utils import preempt

if TYPE_CHECKING:  # a type hint only: the checkpoint module imports this one
    from ava.monitor._mxnet_checkpoint import _OrderedSubmitter

# The adapter's logger: records keep the name they had when this code lived in mxnet.py.
log = logging.getLogger("ava.monitor.mxnet")

_VALIDATION_MSG = "Epoch[%d] Validation-%s=%f"  # what BaseModule.fit logs, verbatim
_VALIDATION_RE = re.compile(r"^Epoch\[(\d+)\] Validation-(.+)=(-?(?:\d+\.\d*|nan|inf))$")


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
        self.batch_of_epoch: int | None = None  # given to any of the callbacks (the guide gives it to one)
        hooks = getattr(train_ins, "_before_done", None)
        if isinstance(hooks, list):
            hooks.append(self.settle)

    def settle(self) -> None:
        """The instance is finishing: checkpoints waited for are submitted, or reported missing."""
        for sub in list(self.submitters):
            sub.settle()

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
        batch_of_epoch = batch_of_epoch or self.batch_of_epoch
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
        self._names_epoch: int | None = None
        self._names: dict[str, int] = {}  # name -> times printed in that epoch

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
            # Two metrics of one name (two heads with Accuracy) are printed alike: number them
            # as the training records are (accuracy, accuracy_2), in the order fit prints them.
            if epoch != self._names_epoch:
                self._names_epoch, self._names = epoch, {}
            seen = self._names.get(name, 0)
            self._names[name] = seen + 1
            name = name if seen == 0 else f"{name}_{seen + 1}"
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


def _positive_int(value: Any, what: str) -> int:
    try:
        number = operator.index(value)  # int and numpy integers; not floats, not strings
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number <= 0:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return number
