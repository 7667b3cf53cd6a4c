"""Metrics from forked children (DataLoader workers, ``multiprocessing`` with fork) reach the
parent's record.

A child must not write ``metrics.jsonl`` itself (the parent holds its lock and numbers its
records). Just before a fork, the parent opens a :class:`ChildListener`: a Unix datagram socket
in a private directory, read by a daemon thread that hands each message to the parent's
``log_metrics``/``log_event``. In the child, the instance's ``log_metrics``/``log_event`` become a
:class:`ChildForwarder`, which converts values to plain numbers there (``.item()`` on tensors)
and sends one JSON datagram per call. A full socket makes the child wait: nothing is dropped.
The records carry the parent's rank and get the parent's next ``seq``.

Example:
    >>> import tempfile, os
    >>> got = []
    >>> lis = ChildListener(lambda *a, **k: got.append((a, k)), lambda *a, **k: None)
    >>> ChildForwarder(lis.address).log_metrics({"loss": 0.5}, step=3)
    >>> lis.drain(); lis.close()
    >>> got
    [(({'loss': 0.5}, 3, None, None, 'train'), {})]
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import shutil
import socket
import tempfile
import threading
from typing import Any, Callable, Mapping

from ava.errors import AvaError, MetricsError
from ava.metrics.record import PHASES, check_step, check_units, check_value, plain_details

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 1 << 16
#: Seconds a forked child waits for the parent to take a record before it drops it (an error).
SEND_TIMEOUT = 10.0


def _plain(name: str, value: Any) -> Any:
    """A JSON-able number for ``value`` (tensors and numpy scalars read here, in the child); the
    same values are refused as by the writer (``check_value``: text, None, many elements)."""
    if type(value) not in (int, float):
        check_value(name, value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    if item is None and hasattr(value, "asscalar"):
        item = value.asscalar
    if item is not None:
        try:
            value = item()
        except (ValueError, RuntimeError) as exc:
            raise MetricsError(f"metric {name!r} is not a single number: {exc}") from None
    try:
        return value if isinstance(value, int) else float(value)
    except (TypeError, ValueError):
        raise MetricsError(f"metric {name!r} must be a number, got {type(value).__name__}") from None


def _datagrams(obj: Any) -> list[bytes]:
    """``obj`` as datagrams of at most :data:`_MAX_DATAGRAM` bytes: a metrics call with many
    values in parts (each with its own units); anything else whole, or a :class:`MetricsError`."""
    data = _encode(obj)
    if len(data) <= _MAX_DATAGRAM:
        return [data]
    if obj[0] == "m" and len(obj[1]) > 1:
        items = list(obj[1].items())
        half = len(items) // 2
        units = obj[6].get("units")
        out: list[bytes] = []
        for part in (items[:half], items[half:]):
            kw = dict(obj[6], units={k: units[k] for k, _ in part if k in units}) if units else obj[6]
            out += _datagrams([obj[0], dict(part), *obj[2:6], kw])
        return out
    what = {"m": "one metric value", "s": f"a snapshot of {len(obj[1])} files"}.get(obj[0], "one record")
    raise MetricsError(f"{what} is too long to hand to the process that records for this one: "
                       f"{len(data)} bytes of JSON, at most {_MAX_DATAGRAM}")


def _encode(obj: Any) -> bytes:
    # Non-finite values as strings: the parent's writer takes them back as floats.
    def fix(v: Any) -> Any:
        return repr(v) if isinstance(v, float) and not math.isfinite(v) else v

    if obj[0] == "m":
        obj = [obj[0], {k: fix(v) for k, v in obj[1].items()}, *obj[2:]]
    return json.dumps(obj, separators=(",", ":")).encode()


class HolderGone(MetricsError):
    """The process that records for this one (the parent, or ``ava run``) has stopped taking records."""


class ChildForwarder:
    """``log_metrics``/``log_event`` of an instance inside a forked child (see the module doc).

    Args:
        address: the parent's :class:`ChildListener` socket path.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.dropping = False  # the receiver is gone and the caller chose to go on: calls are checked, not sent

    def _send(self, obj: Any) -> None:
        if self.dropping:
            return
        # Every datagram is built (and its size checked) before the first is sent: a call is
        # recorded whole or not at all.
        for data in _datagrams(obj):
            self._send_data(data)

    def _send_data(self, data: bytes) -> None:
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(SEND_TIMEOUT)
                    sock.connect(self.address)
                    self._sock = sock
                self._sock.send(data)  # waits while the parent's socket is full, at most SEND_TIMEOUT
            except socket.timeout:
                raise HolderGone(f"the process that records for this one (its parent, or ava run) has not taken a "
                                 f"record for {SEND_TIMEOUT:.0f} s (it is stuck, or has finished); this one is "
                                 "dropped") from None
            except OSError as exc:  # the parent's listener is gone: it called done(), or died
                raise HolderGone(f"the training instance of the process that records for this one (its parent, or "
                                 f"ava run) is finished, or that process died: a record is dropped "
                                 f"({exc.strerror or exc})") from None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, epoch: int | None = None,
                    batch: int | None = None, phase: str = "train", **kwargs: Any) -> None:
        if not isinstance(metrics, Mapping):
            raise MetricsError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
        if phase not in PHASES:  # checked here as in the parent: an error the caller sees
            raise MetricsError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        unknown = set(kwargs) - {"net", "units"}
        if unknown:  # as the writer's own signature refuses them
            raise TypeError(f"log_metrics() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        for name in metrics:
            if type(name) is not str:
                raise MetricsError(f"metric name {name!r} is a {type(name).__name__}; metric names must be strings")
        values = {k: _plain(k, v) for k, v in metrics.items()}
        if kwargs.get("units") is not None:
            kwargs = dict(kwargs, units=check_units(kwargs["units"]))
        if kwargs.get("net") is not None:
            kwargs = dict(kwargs, net=check_step(kwargs["net"], "net"))
        self._send(["m", values, check_step(step), None if epoch is None else check_step(epoch, "epoch"),
                    None if batch is None else check_step(batch, "batch"), phase, kwargs])

    def log_event(self, event: str, step: int | None = None, **details: Any) -> None:
        if type(event) is not str or not event:
            raise MetricsError(f"event must be a non-empty string, got {event!r}")
        self._send(["e", event, check_step(step), plain_details(details)])

    def save_snapshot(self, files: list[str], name: str, meta: dict[str, Any], step: int | None) -> None:
        """Ask the holder of the instance to upload a snapshot (``ava run``'s command)."""
        self._send(["s", files, name, plain_details(meta), check_step(step)])

    def finish(self, err_msg: str, exit_code: int | None) -> None:
        """Tell the holder of the instance how this process ended its part (``done()``)."""
        self._send(["d", err_msg, exit_code])

    def join(self) -> None:
        """Tell the holder of the instance that this process records for it (``ava run``'s command)."""
        self._send(["j"])


class ChildListener:
    """The parent's end: receives what forked children log and records it.

    Args:
        log_metrics: the parent's ``log_metrics``.
        log_event: the parent's ``log_event``.
    """

    def __init__(self, log_metrics: Callable[..., None], log_event: Callable[..., None], *,
                 save_snapshot: Callable[..., Any] | None = None, finish: Callable[[str, Any], None] | None = None,
                 joined: Callable[[], None] | None = None) -> None:
        self._log_metrics = log_metrics
        self._log_event = log_event
        self._save_snapshot = save_snapshot
        self._finish = finish
        self._joined = joined
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the thread at once
        self._dir = tempfile.mkdtemp(prefix="ava-children-")
        self.address = os.path.join(self._dir, "metrics.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._lock = threading.Lock()  # one reader at a time: the thread, or drain()
        self._closed = False
        # epoll, not select(): a training process may have more than 1024 files open
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="ava-child-metrics", daemon=True)
        self._thread.start()

    def _handle(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
            if msg[0] == "m":
                values = {k: float(v) if isinstance(v, str) else v for k, v in msg[1].items()}
                self._log_metrics(values, msg[2], msg[3], msg[4], msg[5], **msg[6])
            elif msg[0] == "e":
                self._log_event(msg[1], msg[2], **msg[3])
            elif msg[0] == "s" and self._save_snapshot is not None:
                self._save_snapshot(msg[1], msg[2], msg[3], step=msg[4])
            elif msg[0] == "d" and self._finish is not None:
                self._finish(str(msg[1] or ""), msg[2])
            elif msg[0] == "j" and self._joined is not None:
                self._joined()
            elif msg[0] not in ("d", "j"):
                raise ValueError(f"unexpected message kind {msg[0]!r}")
        except AvaError as exc:  # a refused record or snapshot: the sender goes on
            log.warning("a record from a child process was refused: %s", exc)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the listener
            log.warning("a malformed message from a child process was ignored: %s: %s", type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._closed:
            try:
                events = self._selector.select(1.0)
            except (OSError, ValueError) as exc:
                if not self._closed:  # the records of children now wait for drain(): say why
                    log.warning("the listener for metrics from child processes stopped: %s", exc)
                return
            if not any(key.fileobj is self._sock for key, _ in events):
                continue
            # The lock only around taking and recording one message (in order with drain()),
            # never around the wait: drain() gets it at once.
            with self._lock:
                try:
                    data = self._sock.recv(_MAX_DATAGRAM + 1, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                self._handle(data)

    def drain(self) -> None:
        """Record every message already sent (before the parent closes its writer)."""
        with self._lock:
            while True:
                try:
                    data = self._sock.recv(_MAX_DATAGRAM + 1, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # closed
                    return
                self._handle(data)

    def close(self) -> None:
        """Stop the thread and remove the socket; safe twice."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(1.0)
        self._sock.close()
        self._close_wake()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _close_wake(self) -> None:
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1

    def forget_in_child(self) -> None:
        """In a forked child: close this process's copy of the socket (the parent's stays), so the
        socket ends with the parent and a child sending later gets an error instead of waiting."""
        self._closed = True
        self._sock.close()
        self._close_wake()
