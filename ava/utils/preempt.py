"""Preemption: SIGTERM and SIGINT become one process-wide stop request.

A training container is stopped with SIGTERM, then SIGKILL after a grace period. The handler
installed here turns the first SIGTERM (or SIGINT) into :data:`STOP`, which training code and the
framework adapters read at step boundaries (``train_ins.should_stop()``); they then finish the
step, save what they can, and leave through the preemption path (flush, bounded upload wait,
status ``preempted``, exit code 128 + N). The pieces:

- **Nobody polls** (a script that never asks ``should_stop`` and uses no adapter): the handler
  raises :class:`SystemExit` with the conventional code at once, like Ctrl-C does, and the
  instance finishes as ``preempted`` on the way out.
- **Somebody polls**: the handler only records the request; a watchdog thread gives the training
  ``grace`` seconds to reach a step boundary and leave, then runs the finishers itself and exits.
- **A second signal** runs the quick finishers (status only) and exits at once.
- Handlers the user installed before are called too (chained); Python's defaults are not.

This module is the lowest layer: it knows nothing of instances. The train layer registers
finishers (:func:`add_finisher`); :func:`ava.utils.cmd.run_and_forward` records requests while a
child runs (:func:`request`) without raising.

Example:
    >>> s = StopRequest()
    >>> s.requested, s.exit_code
    (False, 143)
    >>> s.request(2)
    True
    >>> s.requested, s.exit_code
    (True, 130)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The stop request of this process: whether one came, which signal, when."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.time: float | None = None  # time.monotonic() of the first request
        self.polled = False  # something reads `requested` at step boundaries

    @property
    def exit_code(self) -> int:
        """The conventional exit code for the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + (self.signum or signal.SIGTERM)

    def request(self, signum: int = signal.SIGTERM) -> bool:
        """Record a request; True if it is the first."""
        if self.requested:
            return False
        self.signum, self.time, self.requested = int(signum), time.monotonic(), True
        return True

    def reset(self) -> None:
        """Forget a request (tests, and a process that starts a new run after handling one)."""
        self.__init__()  # type: ignore[misc]


#: The process's stop request.
STOP = StopRequest()

# A finisher is called with the seconds it may take, and `quick` (True on a second signal: write
# the status and nothing else).
Finisher = Callable[[float, bool], None]
_finishers: dict[int, Finisher] = {}
_lock = threading.Lock()
_saved: dict[int, Any] = {}
_grace = 20.0
_started = threading.Event()  # the main thread began the preemption path
_finished = threading.Event()  # ... and completed it
_watchdog: threading.Thread | None = None


def add_finisher(key: int, fn: Finisher) -> None:
    """Register ``fn`` (by a key, e.g. ``id(instance)``) to run on preemption."""
    with _lock:
        _finishers[key] = fn


def remove_finisher(key: int) -> None:
    with _lock:
        _finishers.pop(key, None)


def install(grace: float) -> bool:
    """Install the handlers (main thread only; idempotent). ``grace``: seconds the preemption path
    may take (the upload wait), also what the watchdog allows the training to reach a step end."""
    global _grace
    _grace = max(float(grace), 0.0)
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if current is _handle or current is None:  # ours already, or set outside Python
            continue
        if current is signal.SIG_IGN:  # the parent asked this process to ignore it (nohup)
            continue
        _saved[sig] = current
        signal.signal(sig, _handle)
    return bool(_saved)


def uninstall() -> None:
    """Put back the handlers that were there before (only where ours is still installed)."""
    STOP.polled = False
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_saved.items()):
        if signal.getsignal(sig) is _handle:
            signal.signal(sig, previous)
        del _saved[sig]


def installed() -> bool:
    return any(signal.getsignal(sig) is _handle for sig in HANDLED)


def is_ours(handler: Any) -> bool:
    """``handler`` is the one :func:`install` puts in place."""
    return handler is _handle


def watch() -> None:
    """A stop request recorded without this module's handler (a signal passed on to a child):
    start the watchdog that makes the process leave within the grace, as the handler does."""
    if STOP.requested:
        _start_watchdog()


def grace() -> float:
    """Seconds the preemption path may take (what :func:`install` was given)."""
    return _grace


def request(signum: int = signal.SIGTERM) -> bool:
    """Record a stop request without raising (for code that handles the signal itself)."""
    return STOP.request(signum)


def begin() -> None:
    """The preemption path has started on the main thread (the watchdog then waits for it)."""
    _started.set()


def end() -> None:
    """The preemption path is complete."""
    _finished.set()


def run_finishers(budget: float, quick: bool = False) -> None:
    """Run every registered finisher; errors go to stderr, never up."""
    with _lock:
        fns = list(_finishers.values())
    for fn in fns:
        try:
            fn(budget, quick)
        except Exception as exc:  # noqa: BLE001 - the process is leaving; say why, keep going
            write_stderr(f"ava: preemption: {type(exc).__name__}: {exc}\n")


_leaving = False  # the second signal's quick finish is running


def _handle(signum: int, frame: Any) -> None:
    # No logging here: the signal may have interrupted this very thread inside a log handler.
    global _leaving
    if STOP.requested:
        if _leaving:  # a third signal while the second one's quick finish runs (bounded): let it end
            return
        _leaving = True
        write_stderr(f"ava: second {signal_name(signum)}: leaving now\n")
        run_finishers(0.0, quick=True)
        os._exit(STOP.exit_code)
    STOP.request(signum)
    previous = _saved.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)
    _start_watchdog()
    if not STOP.polled:
        raise SystemExit(STOP.exit_code)


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is None:
        _watchdog = threading.Thread(target=_watch, name="ava-preempt-watchdog", daemon=True)
        _watchdog.start()


def _watch() -> None:
    """Make sure the process leaves, finished, whatever the training does after the signal.

    - The training never reaches a step end (``grace`` seconds): finish from here, then leave.
    - The main thread is leaving (SystemExit) but the interpreter waits for threads that never end
      (a stuck HTTP pool) before running ``atexit``: finish from here at once, then leave.
    - The main thread's path ran but its exit hangs on such threads: leave 0.25 s after it ended.
    """
    t0 = time.monotonic()
    while not _finished.wait(0.05):
        waited = time.monotonic() - t0
        main_gone = _main_leaving()
        if main_gone or (not _started.is_set() and waited >= _grace):
            if not main_gone:
                write_stderr(f"ava: the training did not stop within {_grace:.0f} s of {signal_name(STOP.signum)}; "
                        "finishing here\n")
            run_finishers(_grace)
            _hard_exit()
        if waited >= 2 * _grace + 5.0:  # the path itself is stuck
            write_stderr("ava: preemption path did not complete in time; leaving now\n")
            run_finishers(0.0, quick=True)
            _hard_exit()
    while not _main_leaving():
        time.sleep(0.05)
    time.sleep(0.25)  # a normal exit ends this daemon thread before it gets here
    _hard_exit()


def _main_leaving() -> bool:
    """The main thread has ended its script: the interpreter is joining threads or finalising."""
    # threading sets _SHUTTING_DOWN before it joins worker pools (concurrent.futures), which is
    # where a stuck HTTP request would hold the exit.
    return (getattr(threading, "_SHUTTING_DOWN", False) or not threading.main_thread().is_alive()
            or sys.is_finalizing())


def _hard_exit() -> None:
    _flush_std()
    os._exit(STOP.exit_code)


def reset() -> None:
    """Forget the stop request and the watchdog (a forked child; tests between cases)."""
    global _watchdog, _leaving
    STOP.reset()
    _started.clear()
    _finished.clear()
    _watchdog = None
    _leaving = False


def signal_name(signum: int | None) -> str:
    """``SIGTERM`` for 15 (the default when None)."""
    try:
        return signal.Signals(signum or signal.SIGTERM).name
    except ValueError:
        return f"signal {signum}"


def write_stderr(text: str) -> None:
    """A line to stderr straight to the descriptor (safe in a signal handler or at exit); never raises."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


def _after_fork_in_child() -> None:
    reset()
    _finishers.clear()
    # The child gets the handlers it would have had without ava: it has no instance to finish,
    # and a worker that leaves by SystemExit on the terminal's Ctrl-C (which the whole process
    # group receives) makes torch's DataLoader fail the training ("worker exited unexpectedly").
    # A child that opens an instance of its own installs them again.
    for sig, previous in list(_saved.items()):
        try:
            if signal.getsignal(sig) is _handle:
                signal.signal(sig, previous)
        except (ValueError, OSError):  # forked from a thread that is not the main one
            continue
        del _saved[sig]


# A forked child starts with no request of its own, no watchdog, and none of the parent's instances.
os.register_at_fork(after_in_child=_after_fork_in_child)
