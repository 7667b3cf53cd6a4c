"""From a child process's output to lines: split them, echo them, log them, hand them to hooks.

:class:`OutputPipe` reads one pipe in large chunks, echoes each chunk and splits it with a
:class:`LineSplitter`; :class:`HookList` calls the hooks. Terminators are ``\\n``, ``\\r\\n``
and a lone ``\\r`` (progress bars redraw their line with it). Bytes are decoded as UTF-8 with
replacement, so any input, binary garbage included, yields text. Chunks are split with
``bytes``/``str`` methods, never byte by byte: find the last terminator, decode everything before
it at once, split that. Only the unfinished tail is kept, and it is capped: a line longer than
``max_line`` bytes is delivered in pieces.

Example:
    >>> s = LineSplitter()
    >>> s.feed(b"epoch 1\\r\\nloss 0.5\\rloss 0.4\\npart")
    ['epoch 1', 'loss 0.5', 'loss 0.4']
    >>> s.feed(b"ial"), s.finish()
    ([], ['partial'])
"""

from __future__ import annotations

import logging
import os
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence, Union

from ava.errors import UsageError

if TYPE_CHECKING:
    from ava.log.logger import MultiProcessingLogHandler

# Hook failures are reported under the name of the module users call.
_log = logging.getLogger("ava.utils.cmd")

READ_SIZE = 1 << 20  #: bytes asked for per read of a pipe
_RUN_LOG_RECORD = 64 << 10  # bytes of output per run.log record, about

Hook = Callable[[str], Any]
LogHook = Union[Hook, Sequence[Union[Hook, None]], None]

_CR = 13
_LF = 10


class LineSplitter:
    """Turn chunks of bytes into lines (``str``, without their terminators).

    The splitter owns one buffer: the unfinished line sits at its start and the next chunk is
    read right after it (:meth:`space`, then :meth:`commit`), so the only large allocation per
    chunk is the decoded text. ``malloc`` serves blocks of a megabyte from fresh ``mmap`` pages,
    and the page faults of a new bytes object or two per chunk cost more than the splitting.

    Args:
        max_line: the longest piece of one line, in bytes, held back waiting for the line's
            end. A longer line is delivered in pieces of at most this many bytes, cut at a
            UTF-8 character boundary where there is one within 3 bytes. At least 16.
        read_size: the most bytes one chunk may hold (capped at ``max_line``).

    Example:
        >>> s = LineSplitter(max_line=16)
        >>> s.feed(b"x" * 40 + b"\\n")
        ['xxxxxxxxxxxxxxxx', 'xxxxxxxxxxxxxxxx', 'xxxxxxxx']
    """

    __slots__ = ("max_line", "_buf", "_view", "_area", "_len", "_skip_lf")

    def __init__(self, max_line: int = 1 << 20, read_size: int = 1 << 20) -> None:
        if max_line < 16:
            raise ValueError(f"max_line must be at least 16 bytes, got {max_line}")
        self.max_line = max_line
        # A chunk no longer than the cap keeps every line that lies wholly inside it in bounds.
        self._area = max(1, min(read_size, max_line))
        self._buf = bytearray(max_line + self._area)
        self._view = memoryview(self._buf)
        self._len = 0  # the unfinished line is _buf[:_len], never longer than max_line
        self._skip_lf = False  # the last chunk ended in "\r": a "\n" opening the next belongs to it

    def space(self) -> memoryview:
        """Where the next chunk goes (e.g. ``os.readv(fd, [space])``); then call :meth:`commit`."""
        return self._view[self._len : self._len + self._area]

    def commit(self, n: int) -> list[str]:
        """``n`` bytes were written at the start of :meth:`space`; return the lines completed."""
        buf = self._buf
        plen = self._len
        total = plen + n
        start = 0
        if n and self._skip_lf:
            self._skip_lf = False
            if buf[0] == _LF:  # the line before ended with "\r", so nothing is pending here
                start = 1
        cap = self.max_line
        out: list[str] = []
        if plen:
            # Only the carried-over line can outgrow the cap; lines inside the chunk are <= cap.
            end = buf.find(b"\n", plen, total)
            cr = buf.find(b"\r", plen, end if end >= 0 else total)
            if cr >= 0:
                end = cr
            if end > cap:
                out, start = self._cut(0, end)
        lf = buf.rfind(b"\n", start, total)
        cr = buf.rfind(b"\r", start, total)
        end = lf if lf > cr else cr
        if end < 0:  # no line ended: keep it all, in pieces if it grew past the cap
            if total - start > cap:
                pieces, start = self._cut(start, total)
                out += pieces
            self._keep(start, total)
            return out
        stop = end - 1 if end == lf and end > start and buf[end - 1] == _CR else end
        text = str(self._view[start:stop], "utf-8", "replace")
        if cr >= 0:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self._skip_lf = end == cr and end + 1 == total
        self._keep(end + 1, total)
        return out + lines if out else lines

    def feed(self, data: bytes) -> list[str]:
        """Add a chunk of any length; return the lines it completed (and pieces of long ones)."""
        lines: list[str] = []
        for at in range(0, len(data), self._area):
            piece = data[at : at + self._area]
            self.space()[: len(piece)] = piece
            lines += self.commit(len(piece))
        return lines

    def finish(self) -> list[str]:
        """End of stream: return the last line if it had no terminator."""
        n, self._len = self._len, 0
        self._skip_lf = False
        return [str(self._view[:n], "utf-8", "replace")] if n else []

    def _keep(self, start: int, stop: int) -> None:
        if start and stop > start:
            self._buf[: stop - start] = self._buf[start:stop]  # a copy first: the ranges may overlap
        self._len = stop - start

    def _cut(self, start: int, stop: int) -> tuple[list[str], int]:
        """Pieces of ``_buf[start:stop]`` (one unfinished line) until at most ``max_line`` is left."""
        buf = self._buf
        cap = self.max_line
        pieces: list[str] = []
        while stop - start > cap:
            cut = start + cap
            # Back up to the first byte of a UTF-8 sequence so a character is not torn in two.
            for k in (cut, cut - 1, cut - 2, cut - 3):
                if buf[k] & 0xC0 != 0x80:
                    cut = k
                    break
            pieces.append(str(self._view[start:cut], "utf-8", "replace"))
            start = cut
        return pieces, start


class HookList:
    """The hooks of one run, called line by line; one that raises is logged once and dropped.

    Args:
        log_hook: a callable taking one line (``str``): a function, bound method, callable
            object or ``functools.partial``; a list or tuple of them (None items are skipped:
            the old ``get_*_callback`` returned None for an unsupported framework); or None.

    Raises:
        UsageError: something in ``log_hook`` is not callable.

    Example:
        >>> seen = []
        >>> hooks = HookList([seen.append, None, lambda line: seen.append(line.upper())])
        >>> hooks.deliver(["a", "b"])
        >>> seen
        ['a', 'A', 'b', 'B']
    """

    __slots__ = ("_hooks",)

    def __init__(self, log_hook: LogHook) -> None:
        if log_hook is None:
            items: list[Any] = []
        elif isinstance(log_hook, (list, tuple)):
            items = [h for h in log_hook if h is not None]
        else:
            items = [log_hook]
        for hook in items:
            if not callable(hook):
                raise UsageError(f"log_hook must be a callable taking one line (str), a list or tuple of "
                                 f"them, or None; got {hook!r}")
        self._hooks: list[Hook] = items

    def __bool__(self) -> bool:
        return bool(self._hooks)

    @property
    def stop_signal(self) -> int | None:
        """The signal the wrapped program stops cleanly on, as a hook knows it (Caffe: SIGINT,
        on which it snapshots and stops; SIGTERM kills it): a hook's ``stop_signal``, else None."""
        for hook in self._hooks:
            sig = getattr(hook, "stop_signal", None)
            if isinstance(sig, int):
                return sig
        return None

    def deliver(self, lines: list[str]) -> None:
        """Call every live hook with each line, in order; a hook that raises is disabled."""
        it = iter(lines)
        while self._hooks:
            hooks = self._hooks
            hook = hooks[0]
            line = ""
            try:
                # Per line this costs the loop and the call only; try is free until something raises.
                if len(hooks) == 1:
                    for line in it:
                        hook(line)
                else:
                    for line in it:
                        for hook in hooks:
                            hook(line)
                return
            except Exception:
                self._drop(hook, line)
                after = hooks[next(i for i, h in enumerate(hooks) if h is hook) + 1 :]
                for other in after:  # the failing line still reaches the hooks after the failed one
                    if other is not hook and any(other is h for h in self._hooks):
                        try:
                            other(line)
                        except Exception:
                            self._drop(other, line)

    def _drop(self, hook: Hook, line: str) -> None:
        self._hooks = [h for h in self._hooks if h is not hook]
        _log.error("log hook %r raised on line %r; it is disabled and the command keeps running",
                   hook, line[:200], exc_info=True)


class OutputPipe:
    """One of a child's output pipes, and where its bytes go: console, splitter, run.log.

    Args:
        file: the pipe (``proc.stdout`` or ``proc.stderr``).
        console: where to echo (``sys.stdout`` or ``sys.stderr``), or None.
        prefix: put before each line on the console and in run.log (then the console gets
            whole decoded lines, not the raw bytes).
        max_line: the line cap of the splitter.

    Example:
        >>> import subprocess
        >>> proc = subprocess.Popen(["echo", "hi"], stdout=subprocess.PIPE)
        >>> pipe = OutputPipe(proc.stdout, None, "", 1 << 20)
        >>> pipe.read(), pipe.read(), pipe.splitter.finish(), proc.wait()
        (['hi'], None, [], 0)
        >>> proc.stdout.close()
    """

    __slots__ = ("file", "fd", "splitter", "console", "raw", "prefix", "nbytes")

    def __init__(self, file: IO[Any], console: IO[str] | None, prefix: str, max_line: int) -> None:
        self.file = file
        self.fd = file.fileno()
        self.splitter = LineSplitter(max_line, READ_SIZE)
        self.console = console
        self.raw: IO[bytes] | None = getattr(console, "buffer", None)
        self.prefix = prefix
        self.nbytes = 0  # of the last chunk

    def read(self) -> list[str] | None:
        """Read one chunk, echo it and return the lines it completed; None at the end."""
        space = self.splitter.space()
        n = self.nbytes = os.readv(self.fd, [space])
        if not n:
            return None
        if self.console is not None and not self.prefix:
            self.echo(space[:n])
        return self.splitter.commit(n)

    def write_lines(self, lines: list[str], handler: MultiProcessingLogHandler | None) -> None:
        """Send lines to the console (when prefixed) and to run.log (when ``handler``)."""
        glue = "\n" + self.prefix
        if self.prefix and self.console is not None:
            self.echo((self.prefix + glue.join(lines) + "\n").encode("utf-8", "replace"))
        if handler is not None:
            # Many lines a record, but records under malloc's mmap threshold (128 KiB): with
            # megabyte records every copy on their way to the file faults in fresh pages.
            step = max(1, len(lines) * _RUN_LOG_RECORD // max(1, self.nbytes))
            for at in range(0, len(lines), step):
                handler.write_raw(self.prefix + glue.join(lines[at : at + step]))

    def echo(self, data: bytes | memoryview) -> None:
        console = self.console
        assert console is not None
        try:
            console.flush()  # what a hook printed goes out first
            if self.raw is not None:
                self.raw.write(data)
                self.raw.flush()
            else:  # a text-only stream (a test's StringIO): a character cut between chunks is replaced
                console.write(str(data, "utf-8", "replace"))
                console.flush()
        except (OSError, ValueError) as exc:
            self.console = None
            _log.warning("cannot echo the command's output to the console any more (%s)", exc)
