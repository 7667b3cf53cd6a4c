"""Run a command, stream its output, and hand every line to hooks (``from ava.utils import cmd``).

:func:`startproc` starts the child in its own process group with its stderr merged into its
stdout, on one pipe, as the old SDK did (so a loop reading ``proc.stdout`` sees Caffe's glog
lines, which go to stderr); ``stderr=subprocess.PIPE`` keeps them apart. :func:`logproc` reads
the pipes at once until they close: each chunk goes to the console as the child wrote it (its
stdout to ours, its stderr to ours) and to run.log (when
:func:`ava.log.logger.initialize_logger` set one up), each line, as ``str`` without its
terminator, to the hooks. While it reads on the main thread, SIGTERM, SIGINT and SIGHUP are
forwarded to the child's group (the child is in a group of its own, so a signal to this process
or its group would not reach it), unless the script ignores or handles that signal itself; with
a training instance open it is its stop request: the child stops, :func:`logproc` returns, and
the instance finishes as ``preempted``. :func:`runproc` (the old name) and
:func:`run_and_forward` do both and wait, with two streams, and return the exit code as a shell
would: 127 not found, 126 not executable, 128 + N killed by signal N. A command that cannot be
executed does not raise: :func:`startproc` logs one line ("command not found: X") and returns a
finished :class:`NotStarted`, so the old ``startproc``/``logproc``/``wait()`` sequence gets 127.

Example:
    >>> from ava.utils import cmd
    >>> seen = []
    >>> cmd.runproc(["sh", "-c", "echo one; echo two >&2; exit 3"], log_hook=seen.append, echo=False)
    3
    >>> sorted(seen)
    ['one', 'two']
"""

from __future__ import annotations

import atexit
import errno
import io
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Sequence, Union

from ava.utils import preempt
from ava.utils._lines import READ_SIZE, Hook, HookList, LogHook, OutputPipe

_log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  #: the default cap on one line, in bytes (see LineSplitter)
#: Seconds :func:`logproc` goes on reading after the child exits while its pipes stay open (a
#: process it started in the background holds them): what was written by then is read, the
#: rest is not waited for.
EXIT_GRACE = 2.0
_EXIT_POLL = 0.5  # how often the read loop checks whether the child has exited
_PIPE_SIZE = READ_SIZE  # fewer, larger reads and fewer wake-ups of the writer (Linux caps this)
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal or ssh session went away

__all__ = ["Hook", "LogHook", "NotStarted", "logproc", "run_and_forward", "runproc", "startproc"]

Args = Union[str, bytes, "os.PathLike[str]", Sequence[Union[str, bytes, "os.PathLike[str]"]]]


class ExitCode(int):
    """An exit code (an ``int``) that also says which signal killed the child, if one did.

    ``signal`` is N when signal N ended the child (the code is then 128 + N, as a shell reports
    it); None when the child exited, even with a code of 128 or more.

    Example:
        >>> code = ExitCode(137, signal=9)
        >>> code == 137, code.signal, ExitCode(255).signal
        (True, 9, None)
    """

    signal: int | None
    reason: str | None  #: why the command could not even start ("command not found: X"), or None

    def __new__(cls, code: int, signal: int | None = None, reason: str | None = None) -> "ExitCode":
        obj = super().__new__(cls, code)
        obj.signal = signal
        obj.reason = reason
        return obj


class NotStarted(subprocess.Popen):  # type: ignore[type-arg]
    """What :func:`startproc` returns for a command that could not be executed.

    A child that has already exited the way a shell reports the failure: ``returncode`` is 127
    (not found) or 126 (found but not executable), ``pid`` is None, and ``stdout``/``stderr``
    are empty where pipes were asked for. ``wait()``, ``poll()``, ``communicate()``, ``kill()``
    and ``with`` work; :func:`logproc` returns at once.

    Args:
        args: the command as given.
        returncode: 127 or 126.
        reason: the one-line message that was logged.
        pipes: whether stdout and stderr were asked for as pipes.
        text: whether the pipes were asked for in text mode.

    Example:
        >>> proc = startproc(["no-such-command-ava-doc"])
        >>> proc.wait(), proc.reason
        (127, 'command not found: no-such-command-ava-doc')
    """

    def __init__(self, args: Any, returncode: int, reason: str, *, pipes: tuple[bool, bool] = (True, True),
                 text: bool = False) -> None:
        # No Popen.__init__: it would start a process. Set what Popen's other methods read.
        self.args = args
        self.returncode = returncode
        self.reason = reason
        self.pid = None  # type: ignore[assignment]
        self.stdin = None
        empty = io.StringIO if text else io.BytesIO
        self.stdout = empty() if pipes[0] else None  # type: ignore[assignment]
        self.stderr = empty() if pipes[1] else None  # type: ignore[assignment]
        self.text_mode = text
        self.encoding = self.errors = None
        self.pipesize = -1
        self._child_created = False
        self._waitpid_lock = threading.Lock()
        self._sigint_wait_secs = 0.0
        self._communication_started = False
        self._input = None
        self._closed_child_pipe_fds = True

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        empty = "" if self.text_mode else b""
        return (None if self.stdout is None else empty, None if self.stderr is None else empty)


def startproc(args: Args, **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``args`` with its stderr merged into its stdout on one pipe, in a new process group.

    Popen keywords override the defaults ``stdout=PIPE``, ``stderr=STDOUT`` (the old SDK's: one
    stream, read from ``proc.stdout``) and ``start_new_session=True`` (the last unless
    ``start_new_session`` or ``process_group`` is given); ``stderr=subprocess.PIPE`` gives two
    streams, which :func:`logproc` reads together.

    Returns:
        The running ``subprocess.Popen``. For a command that does not exist or cannot be
        executed, a :class:`NotStarted` (exit code 127 or 126), after logging one ERROR line.

    Raises:
        OSError: for failures that are not the command's own, such as a missing ``cwd``.
    """
    kw: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen_kwargs}
    if "start_new_session" not in kw and "process_group" not in kw:
        kw["start_new_session"] = True
    try:
        proc = subprocess.Popen(args, **kw)
    except OSError as exc:
        failed = _not_started(args, kw, exc)
        if failed is None:
            raise
        return failed
    # Where it started: what its relative paths mean if it exits before /proc is read (child_cwd).
    proc._ava_cwd = os.path.abspath(os.fsdecode(kw["cwd"])) if kw.get("cwd") is not None else os.getcwd()  # type: ignore[attr-defined]
    if kw.get("start_new_session") or kw.get("process_group") is not None:
        _started.add(proc)  # a stop of this process reaches it at exit, even outside logproc
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            _grow_pipe(f.fileno())
    return proc


def logproc(proc: subprocess.Popen[Any], log_hook: LogHook = None, *, echo: bool = True,
            prefix_stream: bool = False, max_line: int = MAX_LINE, forward_signals: bool = True) -> None:
    """Read the child's output (one stream as :func:`startproc` starts it, or stdout and stderr)
    until it closes, passing every line on.

    On the main thread, with ``forward_signals`` and a child that leads its own process group
    (as :func:`startproc` starts it), SIGTERM, SIGINT and SIGHUP are forwarded to the child's group while
    this reads, instead of stopping this process (as the signal a hook names in its
    ``stop_signal``, if one does: the Caffe hooks name SIGINT, on which Caffe snapshots and
    stops, where SIGTERM would kill it): the first is recorded as the stop request
    (:data:`ava.utils.preempt.STOP`), reading goes on until the child exits, and a child still
    running the preemption timeout after it is killed (when a training instance set one); a
    second signal kills the child's group and leaves at once. Once the child's output is all
    read, the signal takes effect here as it would have: with a training instance, SystemExit
    (status ``preempted``, exit 143/130) unless the training checks ``should_stop()``; without
    one, the handler that was there (KeyboardInterrupt for Ctrl-C).

    When the child has exited but a process it started in the background still holds the pipes
    open, reading stops :data:`EXIT_GRACE` seconds after the exit (with a warning) rather than
    waiting for that process.

    Both pipes are read together in large chunks, so a child filling one while the other is
    quiet never blocks. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; bytes are decoded as UTF-8
    with replacement; a line longer than ``max_line`` bytes arrives in pieces. Hooks run on
    this thread, one line at a time and in order per stream; while they run, the child can
    write at most a pipe's worth before it waits for us. A hook that raises is logged once
    with its traceback and disabled; the others and the child go on.

    Args:
        proc: what :func:`startproc` returned (any Popen whose stdout/stderr are pipes).
        log_hook: a callable taking one line (``str``), a list or tuple of them, or None.
        echo: write the child's output to our stdout and stderr, raw, as it arrives.
        prefix_stream: prefix each line on the console and in run.log with ``[stdout] `` or
            ``[stderr] `` (the console then gets whole, decoded lines; hooks never see it).
        max_line: the longest line, in bytes, held back waiting for its end.

    Raises:
        UsageError: ``log_hook`` is not a callable, a list/tuple of callables, or None.
    """
    hooks = log_hook if isinstance(log_hook, HookList) else HookList(log_hook)
    if isinstance(proc, NotStarted):
        return
    if forward_signals and _leads_own_group(proc):
        stop = hooks.stop_signal  # a Caffe hook: SIGINT, on which Caffe snapshots and stops
        signal_map = {sig: stop for sig in _FORWARDED} if stop is not None else None
        instance = preempt.installed()  # a TrainInstance has the signals: the stop is its stop request
        with _Forwarder(signal_map, kill_after=preempt.grace() if instance else None, record=instance,
                        leave_users=True) as forwarder:
            forwarder.attach(proc)
            _read(proc, hooks, echo, prefix_stream, max_line)
        for sig in forwarder.received:
            _log.info("received %s; forwarded it to the command's process group", _signame(sig))
        if forwarder.received:
            _after_forwarding(forwarder.received[0])
        return
    _read(proc, hooks, echo, prefix_stream, max_line)


def _after_forwarding(sig: int) -> None:
    """The child stopped after a signal this process passed on: now it takes effect here too,
    as it would have without the forwarding (deferred until the child's output was all read)."""
    if preempt.installed():
        if not preempt.STOP.polled:  # nobody checks should_stop(): leave as preempted
            raise SystemExit(preempt.STOP.exit_code)
        preempt.watch()  # the training loop reads the stop request, within the preemption timeout
        return
    if threading.current_thread() is threading.main_thread():
        signal.raise_signal(sig)  # the handler there before: KeyboardInterrupt, the default exit, the user's


def _leads_own_group(proc: subprocess.Popen[Any]) -> bool:
    """The child is the leader of a process group that is not ours (signals must be passed on)."""
    try:
        return os.getpgid(proc.pid) == proc.pid != os.getpgrp()
    except (OSError, TypeError):  # gone already, or not a real process
        return False


_reading = threading.local()  # the child whose lines this thread's logproc is passing to hooks
_started: "weakref.WeakSet[subprocess.Popen[Any]]" = weakref.WeakSet()  # startproc's children, own groups


def _stop_children_at_exit() -> None:
    """The process leaves after a stop request (SIGTERM with nobody checking should_stop(), even
    between startproc and logproc): the children startproc put in groups of their own would not
    get it, so they get it here."""
    if not preempt.STOP.requested:
        return
    for proc in list(_started):
        if proc.poll() is None:
            _signal_group(proc, preempt.STOP.signum or signal.SIGTERM)


atexit.register(_stop_children_at_exit)


def child_cwd() -> str | None:
    """The working directory of the child whose output :func:`logproc` is passing to the
    calling hook (a relative path it prints is relative to that): read while it runs; after it
    exited, the last one read, else the one it was started in. None outside a hook."""
    proc = getattr(_reading, "proc", None)
    if proc is None:
        return None
    try:
        _reading.cwd = os.readlink(f"/proc/{proc.pid}/cwd")
    except (OSError, TypeError):  # exited (its last lines are read after), or no /proc
        pass
    return getattr(_reading, "cwd", None)


def _read(proc: subprocess.Popen[Any], hooks: HookList, echo: bool, prefix_stream: bool, max_line: int) -> None:
    """:func:`logproc`'s loop: read the pipes until they close (or the exit grace runs out)."""
    outer = getattr(_reading, "proc", None), getattr(_reading, "cwd", None)
    _reading.proc, _reading.cwd = proc, getattr(proc, "_ava_cwd", None)
    try:
        child_cwd()  # read at the start too: a child that exits fast (after no cd) is resolved right
        _read_pipes(proc, hooks, echo, prefix_stream, max_line)
    finally:
        _reading.proc, _reading.cwd = outer


def _read_pipes(proc: subprocess.Popen[Any], hooks: HookList, echo: bool, prefix_stream: bool,
                max_line: int) -> None:
    from ava.log.logger import run_log_handler  # ava.log sits above ava.utils: import on use

    handler = run_log_handler()
    pipes = [
        OutputPipe(file, console if echo else None, f"[{name}] " if prefix_stream else "", max_line)
        for file, console, name in ((proc.stdout, sys.stdout, "stdout"), (proc.stderr, sys.stderr, "stderr"))
        if file is not None
    ]
    sel = selectors.DefaultSelector()  # one thread, no locks: hooks run here, in order
    try:
        for pipe in pipes:
            sel.register(pipe.fd, selectors.EVENT_READ, pipe)
        open_pipes = len(pipes)
        exited_at: float | None = None
        give_up = False
        next_poll = time.monotonic() + _EXIT_POLL
        while open_pipes:
            if exited_at is None:
                events = sel.select(_EXIT_POLL)
                if not events or time.monotonic() >= next_poll:  # not a waitpid per read
                    next_poll = time.monotonic() + _EXIT_POLL
                    child_cwd()  # kept fresh: lines read after the exit resolve against the last one
                    if proc.poll() is not None:
                        exited_at = time.monotonic()
            else:
                left = exited_at + EXIT_GRACE - time.monotonic()
                events = sel.select(max(0.0, left))
                give_up = left <= 0
            for key, _ in events:
                pipe = key.data
                lines = pipe.read()
                if lines is None:  # end of the stream
                    lines = _close_pipe(sel, pipe)
                    open_pipes -= 1
                if lines:
                    _pass_on(pipe, lines, handler, hooks)
            if give_up and open_pipes:
                # The child exited EXIT_GRACE seconds ago and a process it left behind still holds
                # the pipes: pass on the last partial lines and stop reading.
                for key in list(sel.get_map().values()):
                    lines = _close_pipe(sel, key.data)
                    if lines:
                        _pass_on(key.data, lines, handler, hooks)
                _log.warning("command %s exited, but a process it started still holds its output open; not "
                             "waiting for it (what it writes from now on is not captured)", _program(proc.args, {}))
                break
    finally:
        sel.close()


def _close_pipe(sel: Any, pipe: OutputPipe) -> list[str]:
    """Stop reading ``pipe``; returns its last, unterminated line (if any) as lines to pass on."""
    sel.unregister(pipe.fd)
    pipe.file.close()
    return pipe.splitter.finish()


def _pass_on(pipe: OutputPipe, lines: list[str], handler: Any, hooks: HookList) -> None:
    """Lines of one pipe to run.log (and the console, when prefixed) and to the hooks."""
    if handler is not None or pipe.prefix:
        pipe.write_lines(lines, handler)
    if hooks:
        hooks.deliver(lines)


def run_and_forward(args: Args, log_hook: LogHook = None, *, echo: bool = True, prefix_stream: bool = False,
                    signal_map: dict[int, int] | None = None, kill_after: float | None = None,
                    **popen_kwargs: Any) -> int:
    """Run ``args`` to the end with :func:`startproc` and :func:`logproc`; return its exit code.

    While the child runs (and only when called on the main thread), SIGTERM, SIGINT and SIGHUP sent to
    us are forwarded to the child's process group instead of stopping us; the previous handlers
    are restored afterwards. The first such signal is also recorded as this process's stop
    request (:data:`ava.utils.preempt.STOP`: a training instance then finishes as ``preempted``);
    a second one kills the child's group, writes the instances' status and exits at once.
    ``signal_map`` translates what is forwarded (``{SIGTERM: SIGINT}`` makes Caffe snapshot and
    stop). With ``kill_after``, a child still running that many seconds after the first signal
    is killed (SIGKILL to its group). If this call fails (a hook raised a BaseException), the
    child's group gets SIGTERM, then SIGKILL after 5 s, before the error propagates.

    Returns:
        The child's exit code, an :class:`ExitCode`: 128 + N if signal N killed it (logged; its
        ``signal`` is then N); 127 or 126 if it could not be executed (logged).
    """
    hooks = HookList(log_hook)  # a bad hook fails before anything starts
    with _Forwarder(signal_map, kill_after) as forwarder:
        proc = startproc(args, **{"stderr": subprocess.PIPE, **popen_kwargs})
        forwarder.attach(proc)
        try:
            logproc(proc, hooks, echo=echo, prefix_stream=prefix_stream, forward_signals=False)
            proc.wait()
        except BaseException:
            _stop(proc)
            raise
    for sig in forwarder.received:
        _log.info("received %s; forwarded it to the command's process group", _signame(sig))
    code = proc.returncode
    if code < 0:
        _log.warning("command %s was killed by %s; exit code %d", _program(args, popen_kwargs), _signame(-code),
                     128 - code)
        return ExitCode(128 - code, signal=-code)
    return ExitCode(code, reason=getattr(proc, "reason", None) if isinstance(proc, NotStarted) else None)


def runproc(args: Args, log_hook: LogHook = None, **kwargs: Any) -> int:
    """Run ``args``, log its output, and return its exit code (the old SDK's name).

    The same as :func:`run_and_forward`: keywords ``echo``, ``prefix_stream`` and Popen's.
    """
    return run_and_forward(args, log_hook, **kwargs)


class _Forwarder:
    """While the child runs, SIGTERM, SIGINT and SIGHUP go to its process group instead of stopping us."""

    def __init__(self, signal_map: dict[int, int] | None = None, kill_after: float | None = None, *,
                 record: bool = True, leave_users: bool = False) -> None:
        self.proc: subprocess.Popen[Any] | None = None
        self.received: list[int] = []
        self._saved: dict[int, Any] = {}
        self._map = dict(signal_map or {})
        self._kill_after = kill_after
        self._timer: threading.Timer | None = None
        self._record = record  # make the first signal this process's stop request
        self._leave_users = leave_users  # a handler the script installed keeps its signal

    def __enter__(self) -> _Forwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in _FORWARDED:
                previous = signal.getsignal(sig)
                if previous is None:  # installed outside Python: it could not be put back
                    continue
                if previous is signal.SIG_IGN:  # nohup, or a background job's SIGINT: ignored, child too
                    continue
                if self._leave_users and not (previous in (signal.SIG_DFL, signal.default_int_handler)
                                              or preempt.is_ours(previous)):
                    continue
                self._saved[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved.clear()

    def attach(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc
        for sig in self.received:  # arrived while the child was being started
            _signal_group(proc, self._map.get(sig, sig))
        if self.received:
            self._arm()

    def _arm(self) -> None:
        """A child that does not stop within ``kill_after`` seconds of the signal is killed: the
        platform's own SIGKILL would otherwise come first and leave the run "running"."""
        if self._kill_after is None or self._timer is not None or self.proc is None:
            return
        self._timer = threading.Timer(self._kill_after, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            preempt.write_stderr(f"ava: the command did not stop within {self._kill_after:g} s of "
                          f"{_signame(self.received[0])}; killing it\n")
            _signal_group(proc, signal.SIGKILL)

    def _handle(self, signum: int, frame: object) -> None:
        # No logging here: this can run in the middle of this thread's own write to run.log.
        self.received.append(signum)
        if len(self.received) > 1:  # a second signal: leave now
            if self.proc is not None:
                _signal_group(self.proc, signal.SIGKILL)
            preempt.request(signum)
            preempt.run_finishers(0.0, quick=True)
            os._exit(preempt.STOP.exit_code)
        if self._record:
            preempt.request(signum)
        if self.proc is not None:
            _signal_group(self.proc, self._map.get(signum, signum))
            self._arm()


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    if proc.pid is None or proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the caller kept the child in our group: signal just the child
        proc.send_signal(sig)
    except PermissionError:
        pass


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.pid is None or proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _program(args: Args, kw: dict[str, Any]) -> Any:
    if kw.get("executable"):
        return kw["executable"]
    if isinstance(args, (str, bytes, os.PathLike)):
        return args
    return args[0] if args else None


def _not_started(args: Args, kw: dict[str, Any], exc: OSError) -> NotStarted | None:
    """The stand-in for a program that exec could not run; None if the failure is not that."""
    prog = _program(args, kw)
    if kw.get("shell") or prog is None or exc.filename != prog:
        return None  # e.g. a missing cwd: the caller's mistake, raised as is
    name = os.fsdecode(prog)
    if exc.errno == errno.ENOENT:
        code, reason = 127, f"command not found: {name}"
        if os.sep in name and os.path.isfile(os.path.join(os.fsdecode(kw.get("cwd") or "."), name)):
            reason += " (the file exists: the interpreter on its #! line does not)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR):
        code, reason = 126, f"command not executable: {name} ({exc.strerror})"
    else:
        return None
    _log.error("%s", reason)
    text = any(kw.get(k) for k in ("text", "universal_newlines", "encoding", "errors"))
    pipes = (kw.get("stdout") == subprocess.PIPE, kw.get("stderr") == subprocess.PIPE)
    return NotStarted(args, code, reason, pipes=pipes, text=text)


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or over the per-user pipe quota: the default size works, only slower


def _signame(sig: int) -> str:
    try:
        return f"{signal.Signals(sig).name} (signal {sig})"
    except ValueError:
        return f"signal {sig}"
