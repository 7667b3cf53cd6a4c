"""MetricsWriter: the training thread appends to a bounded buffer; a daemon thread does the rest.

The calling thread only checks types and appends a tuple under a lock. The writer thread drains
the buffer once every ``flush_interval`` seconds at most (sooner when the buffer is half full, on
``flush()`` and on ``close()``), so it wakes rarely and works on large batches: it converts values
(tensors included), numbers each record with ``seq``, and hands the batch to the sinks: first the
durable one, then any others. When the buffer is full, the caller waits: a
record is never dropped. A failure of the durable sink keeps the batch for a retry and surfaces
once, as a :class:`MetricsError` on the next ``log_metrics`` call; it never kills the thread.

Example:
    >>> from ava.metrics.sinks.base import Sink
    >>> class Collect(Sink):
    ...     def __init__(self): self.records = []
    ...     def write(self, records): self.records.extend(records)
    >>> sink = Collect()
    >>> w = MetricsWriter([sink])
    >>> w.log_metrics({"loss": 0.5, "acc": 0.9}, step=1)
    >>> w.close(timeout=5)
    True
    >>> [(r["name"], r["seq"]) for r in sink.records]
    [('loss', 0), ('acc', 1)]
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Any, Mapping, Sequence

from ava.errors import MetricsError
from ava.metrics.record import (
    PHASES, check_metrics, check_step, check_units, plain_details, records_of, to_json_number, to_micros)
from ava.metrics.sinks.base import Sink

log = logging.getLogger(__name__)

DEFAULT_MAX_BUFFER = 10_000
DEFAULT_FLUSH_INTERVAL = 0.5
_RETRY_LOG_EVERY = 60.0

_FAST_TYPES = (float, int)
_NO_RECORDS: list[dict[str, Any]] = []  # what sinks that do not read records get (they only need the call)
_live: "weakref.WeakSet[MetricsWriter]" = weakref.WeakSet()


class MetricsWriter:
    """Buffer metric records on the caller's thread and write them to sinks on a daemon thread.

    Args:
        sinks: where records go; the first is the durable one (its errors are retried).
        rank: the ``rank`` of every record.
        start_seq: the ``seq`` of the first record (one more than the last one on disk).
        max_buffer: calls buffered before the caller waits (backpressure).
        flush_interval: the longest a record waits in the buffer, in seconds.
        atexit_timeout: how long the interpreter's exit may wait for the buffer to drain.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        rank: int = 0,
        start_seq: int = 0,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        atexit_timeout: float = 10.0,
    ) -> None:
        if not sinks:
            raise ValueError("MetricsWriter needs at least one sink")
        self._sinks = list(sinks)
        # A durable sink that takes converted calls (JsonlSink) gets them without a dict per record;
        # the records are built only for sinks that read them.
        self._write_calls = getattr(self._sinks[0], "write_calls", None)
        self._others_want_records = any(getattr(s, "wants_records", True) for s in self._sinks[1:])
        self.rank = rank
        self._seq = start_seq
        self._max = max(1, max_buffer)
        self._wake_at = max(1, self._max // 2)
        self._interval = flush_interval
        self.atexit_timeout = atexit_timeout
        self._lock = threading.Lock()  # the hot path takes it directly (Condition's own methods are Python)
        self._cond = threading.Condition(self._lock)
        self._buf: list[tuple[Any, ...]] = []
        self._enqueued = 0
        self._done = 0
        self._flush_wanted = False
        self._closing = False
        self._abandon = False  # close() gave up waiting: stop retrying
        self._forked = False
        self._units_given: Any = None  # the last units mapping given (the adapters reuse one)
        self._units_copy: dict[str, str] = {}  # ... and the checked copy of it that records hold
        self._write_failing = False
        self._surface: MetricsError | None = None  # raised once, on the caller's next call
        self._sink_failed: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="ava-metrics-writer", daemon=True)
        self._thread.start()
        _live.add(self)

    # --- the caller's side ---------------------------------------------------------------
    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        epoch: int | None = None,
        batch: int | None = None,
        phase: str = "train",
        *,
        net: int | None = None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        """Buffer one record per metric; tensors are converted later, on the writer thread."""
        if phase not in PHASES:
            raise MetricsError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if type(step) is not int:
            step = check_step(step)
        if epoch is not None and type(epoch) is not int:
            epoch = check_step(epoch, "epoch")
        if batch is not None and type(batch) is not int:
            batch = check_step(batch, "batch")
        # check_metrics inlined: this is the training thread's hot path.
        if type(metrics) is dict:
            metrics = metrics.copy()  # the caller may change its dict after the call
            for name, value in metrics.items():
                if type(name) is not str or type(value) not in _FAST_TYPES:
                    metrics = check_metrics(metrics)  # raises, or keeps tensors safely (detached)
                    break
        else:
            metrics = check_metrics(metrics)
        if units is not None:  # adapters pass one dict each call: checked again only when it changed
            if units is not self._units_given or units != self._units_copy:
                self._units_copy = check_units(units)  # a copy: a later change to the caller's dict is not ours
                self._units_given = units
            units = self._units_copy
        if net is not None and type(net) is not int:
            net = check_step(net, "net")
        self._enqueue((time.time(), step, epoch, batch, phase, metrics, net, units))

    def log_own(self, metrics: dict[str, Any], step: int, epoch: int | None, batch: int | None,
                units: dict[str, str] | None) -> None:
        """:meth:`log_metrics` of a ``train`` record for a framework adapter's batch: ``metrics``
        is a dict of str names the caller built for this call and gives away, ``step``, ``epoch``
        and ``batch`` are ints (or None), and ``units`` is a dict already checked that the caller
        never changes. Nothing is copied or checked here; a value that cannot be converted is
        said on the writer thread and raised at the next call, as for :meth:`log_metrics`.
        """
        self._enqueue((time.time(), step, epoch, batch, "train", metrics, None, units))

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        """Append a checked call to the buffer: under the lock when there is room and nothing to
        surface (the hot path of :meth:`log_metrics` and :meth:`log_own`), else :meth:`_put`,
        which waits for room or raises."""
        if self._forked or self._surface is not None:
            self._put(item)
            return
        with self._lock:
            if not (self._closing or len(self._buf) >= self._max):
                self._buf.append(item)
                self._enqueued += 1
                if len(self._buf) == self._wake_at:
                    self._cond.notify_all()
                return
        self._put(item)

    def log_event(self, event: str, step: int | None = None, **details: Any) -> None:
        """Buffer an event record (``{"event": ..., **details}``, no name/value)."""
        if type(event) is not str or not event:
            raise MetricsError(f"event must be a non-empty string, got {event!r}")
        self._put((time.time(), check_step(step), event, plain_details(details)))

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._forked:
            raise MetricsError(
                f"metrics cannot be logged from a forked child (pid {os.getpid()}); "
                "log them from the process that opened the training instance"
            )
        # An error of an earlier call (found on the writer thread) is raised here, after this
        # call's own record is buffered: reporting it must not cost a good record.
        surfaced, self._surface = self._surface, None
        with self._cond:
            if self._closing:
                raise MetricsError("the metric writer is closed (done() was called); open a new TrainInstance")
            while len(self._buf) >= self._max:
                self._cond.notify_all()
                self._cond.wait(0.1)
                if self._closing:
                    raise MetricsError("the metric writer was closed while this call waited")
            self._buf.append(item)
            self._enqueued += 1
            if len(self._buf) == self._wake_at:
                self._cond.notify_all()
        if surfaced is not None:
            raise surfaced

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is written; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            self._flush_wanted = True
            self._cond.notify_all()
            while self._done < target:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def flush_quick(self, timeout: float) -> bool:
        """:meth:`flush` for a process about to leave at once (a second signal, run on a thread
        that may hold the buffer's lock): waits at most ``timeout`` seconds, for the lock too."""
        if self._forked or not self._thread.is_alive() or not self._lock.acquire(timeout=timeout):
            return False
        try:
            target = self._enqueued
            self._flush_wanted = True
            self._cond.notify_all()
        finally:
            self._lock.release()
        deadline = time.monotonic() + timeout
        while self._done < target and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._done >= target

    def close(self, timeout: float | None = 10.0) -> bool:
        """Drain the buffer (at most ``timeout`` seconds), stop the thread, close the sinks.

        Returns True when every record reached the durable sink. Safe to call twice.
        """
        if self._forked:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            already = self._closing
            self._closing = True
            self._cond.notify_all()
        if not already:
            self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                with self._cond:
                    self._abandon = True
                    self._cond.notify_all()
        drained = self._done == self._enqueued
        if not drained and not already:
            log.warning(
                "metric writer: %d buffered calls not written within %.1f s; they are lost with this process",
                self._enqueued - self._done, timeout or 0.0,
            )
        return drained

    @property
    def pending(self) -> int:
        """Calls logged but not yet written to the durable sink."""
        return self._enqueued - self._done

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closing

    # --- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        pending: list[Any] = []  # converted calls and event records not yet in the durable sink
        pending_items = 0
        last_retry_log = 0.0
        next_drain = time.monotonic() + self._interval
        while True:
            with self._cond:
                # Drain at most once an interval, in one batch (one write(2)), unless flush() or
                # close() waits or the buffer is half full: fewer wake-ups, less work per record.
                while not (self._closing or self._flush_wanted or len(self._buf) >= self._wake_at):
                    left = next_drain - time.monotonic()
                    if left <= 0:
                        if self._buf or pending:
                            break
                        left = self._interval
                        next_drain = time.monotonic() + left
                    self._cond.wait(left)
                next_drain = time.monotonic() + self._interval
                # While the durable sink is failing, take no more than the buffer's worth.
                room = self._max - len(pending) if pending else len(self._buf)
                take = self._buf[: max(0, room)] if pending else self._buf
                self._buf = self._buf[len(take):]
                flush_wanted, self._flush_wanted = self._flush_wanted, False
                closing = self._closing and not self._buf
                self._cond.notify_all()
            if take:
                pending.extend(self._convert(take))
                pending_items += len(take)
            if pending:
                records = None
                try:
                    if self._write_calls is not None:
                        self._write_calls(pending)
                    else:
                        records = records_of(pending)
                        self._sinks[0].write(records)
                except Exception as exc:  # noqa: BLE001 - a background thread must not die
                    now = time.monotonic()
                    if not self._write_failing or now - last_retry_log > _RETRY_LOG_EVERY:
                        log.error("cannot write metrics to %s: %s; keeping %d calls to retry",
                                  getattr(self._sinks[0], "path", self._sinks[0]), exc, len(pending))
                        last_retry_log = now
                    if not self._write_failing:
                        self._write_failing = True
                        self._surface = MetricsError(
                            f"metrics cannot be written: {exc}; they are kept in memory and retried")
                    if self._abandon:
                        break
                    with self._cond:
                        self._cond.wait(min(1.0, self._interval * 4))
                    continue
                if self._write_failing:
                    self._write_failing = False
                    log.info("metrics are being written again; %d calls caught up", len(pending))
                if self._others_want_records:
                    self._write_others(records if records is not None else records_of(pending))
                else:
                    self._write_others(_NO_RECORDS)
                written = pending_items
                pending, pending_items = [], 0
                with self._cond:
                    self._done += written
                    self._cond.notify_all()
            if flush_wanted or closing:
                for index, sink in enumerate(self._sinks):
                    self._call_sink(index, sink.flush)
            if closing:
                break
        for index, sink in enumerate(self._sinks):
            self._call_sink(index, sink.close)
        with self._cond:
            self._cond.notify_all()

    def _convert(self, items: list[tuple[Any, ...]]) -> list[Any]:
        """Buffered calls -> converted calls (:data:`~ava.metrics.record.CallEntry`) and event records.

        No per-record object is built here: a call whose values are all finite floats or ints
        (the common case) keeps its private mapping as it is.
        """
        entries: list[Any] = []
        append = entries.append
        rank = self.rank
        seq = self._seq
        try:
            for item in items:
                if len(item) == 4:
                    ts, step, event, details = item
                    rec: dict[str, Any] = {"ts": to_micros(ts), "step": step, "event": event}
                    rec.update(details)
                    rec["rank"], rec["seq"] = rank, seq
                    seq += 1
                    append(rec)
                    continue
                ts, step, epoch, batch, phase, metrics, net, units = item
                for value in metrics.values():
                    vt = type(value)
                    if not (vt is int or (vt is float and value - value == 0.0)):
                        metrics = self._convert_values(metrics, step)
                        break
                if metrics:
                    append((to_micros(ts), step, epoch, batch, phase, metrics, net, units, seq, rank))
                    seq += len(metrics)
        finally:
            self._seq = seq
        return entries

    def _convert_values(self, metrics: dict[str, Any], step: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in metrics.items():
            try:
                out[name] = to_json_number(value)
            except Exception as exc:  # noqa: BLE001 - surfaced to the caller below
                err = MetricsError(f"metric {name!r} at step {step} could not be converted to a number: {exc}")
                log.error("%s", err)
                if self._surface is None:
                    self._surface = err
        return out

    def _write_others(self, records: list[dict[str, Any]]) -> None:
        for index, sink in enumerate(self._sinks[1:], 1):
            self._call_sink(index, sink.write, records)

    def _call_sink(self, index: int, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one sink's failure must not stop the others
            if index not in self._sink_failed:
                self._sink_failed.add(index)
                log.error("metric sink %s failed: %s (further failures of it are not logged)",
                          type(self._sinks[index]).__name__, exc)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        # The child must not keep the parent's files (the metrics file's lock is the instance's
        # lock): a child that outlives the parent would keep the instance from being reopened.
        for sink in self._sinks:
            forget = getattr(sink, "forget_in_child", None)
            if forget is not None:
                try:
                    forget()
                except OSError:
                    pass


def _close_all_at_exit() -> None:
    for writer in list(_live):
        writer.close(timeout=writer.atexit_timeout)


def _mark_forked() -> None:
    for writer in list(_live):
        writer._after_fork_in_child()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_mark_forked)
