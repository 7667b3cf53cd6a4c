"""A pure, incremental parser for Caffe training logs (BVLC 2014-2017, NVCaffe, SSD forks).

Feed it whole lines, in order; it keeps what it needs across lines (the iteration each thread
is at, the test being printed, the year) and returns records as CONTRACT.md section 5 shapes
them, minus ``rank``/``seq`` which the writer adds. It never raises on an input line.

What it reads (after the glog prefix ``I0512 10:11:12.123456  1234 file.cpp:228]``, also
``I20261122 ...`` with the year; a line without a prefix is read the same way with ``ts`` None):

- ``Iteration N[ (X iter/s, Ys/K iter[s])][, ...], loss = X`` -> ``smoothed_loss``; the speed in
  parentheses -> ``speed`` (``iter/s``); NVCaffe's ``(X s)`` (iterations 0 and 1, one iteration
  timed) -> ``speed`` = 1/X iter/s.
- ``Iteration N, lr = X[, m = ..., wd = ..., gs = ...]`` -> ``lr``.
- ``Train net output #k: name = v (* w = u loss)`` -> ``name`` = v (the unweighted value), phase
  ``train``, step = the iteration this thread printed last.
- ``Iteration N, Testing net (#j)`` then ``Test net output #k: name = v`` -> phase ``test``,
  ``step`` N, ``net`` j. The 2014 form ``Iteration N, Testing net`` + ``Test score #k: v`` ->
  ``score#k``, net 0.
- Events: ``snapshot`` (``path``, ``kind`` ``model`` or ``solverstate``; step from the file name's
  ``_iter_N``, which Caffe writes before printing the iteration, else the last iteration),
  ``resume`` (``Restoring previous solver status from X``, ``Resuming from X``), ``start``
  (``Solving NAME``: ``net_name``; what ``parse_log.py`` counts seconds from), ``done``,
  ``stopped`` (``Optimization stopped early.``), ``test_interrupted``. An event identical to one
  already reported since the last metric is dropped: caffe.cpp and solver.cpp both print
  ``Optimization Done.``, each GPU thread prints ``Solving``, ``Resuming from X`` is followed
  by ``Restoring previous solver status from X``; and ``Optimization Done.`` right after a
  stop is no ``done`` (caffe.cpp prints it after ``Optimization stopped early.`` too).
- Ignored: W/E/F lines, stack traces, prototxt dumps, anything else.

Multi-GPU logs interleave threads: the iteration and the test being printed are kept per thread
id, and a line from a thread with no state of its own falls back to the last one of any thread.

Timestamps: glog prints local time without a zone; ``ts`` reads it as UTC (POSIX seconds as if
the wall clock were UTC). glog's older prefix has no year: it comes from the ``Log file created
at:`` header, else the ``year`` given, else the current year, and goes up by one when the month
goes backwards (Dec -> Jan). A line a few microseconds late across a month end in a
multi-threaded log (dated the 28th-31st right after a line dated the 1st of the next month)
does not count as a new year; one dated 31 Dec right after 1 Jan belongs to the year before.

Example:
    >>> p = CaffeLogParser(year=2015)
    >>> p.parse_line("I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = 2.30193")[0]["value"]
    2.30193
    >>> r = p.parse_line("I0216 11:58:39.623607 17497 solver.cpp:204]     Train net output #0: loss = nan (* 1 = nan loss)")[0]
    >>> r["name"], r["step"], r["value"], r["ts"]
    ('loss', 0, nan, 1424087919.623607)
"""

from __future__ import annotations

import calendar
import datetime
import logging
import math
import re
import signal
from typing import Any

from ava.monitor.regex import NUMBER, Record, metric, to_float

log = logging.getLogger(__name__)

# Message starts that can produce a record. The search looks for "] " first, a literal that the
# regex engine finds fast, so the ~80-95% of lines that are net set-up and prototxt cost little.
_STARTS = ("Iteration ", "Train net output", "Test", "Snapshotting", "Restoring previous",
           "Resuming from", "Optimization ", "Solving ")
_ALT = "|".join(re.escape(s) for s in _STARTS)
_KEY = re.compile(r"\] +(?:" + _ALT + ")")
_BARE = re.compile(r" *(?:" + _ALT + "|Log file created at: )")
# The same tests for a block of whole lines (``parse_block``): one regex scan per block instead
# of one call per line. Separate patterns, because each starts with a literal the regex engine
# scans for fast; one alternation of them is ten times slower. (A line start: no spaces, or some.)
_BARE_ALT = "(?:" + _ALT + "|Log file created at: )"
_BARE_NL = re.compile(r"\n(?:" + _BARE_ALT + "| +" + _BARE_ALT + ")")
_BARE_CR = re.compile(r"\r(?:" + _BARE_ALT + "| +" + _BARE_ALT + ")")

_GLOG = re.compile(r"([IWEF])(\d{4}|\d{8}) (\d\d:\d\d):(\d\d\.\d{1,9}) +(\d{1,12}) [^\]]{0,300}\] *")
# The four shapes that make up nearly every record of a Caffe log, prefix included, in one
# match: "Iteration N, loss = X", "Iteration N, lr = X[, m = ...]", "Train/Test net output #k:
# name = v[ (* w = u loss)]". A line that fits none (or whose number float() refuses) takes the
# general path, which gives the same records for these shapes, only slower.
_HOT = re.compile(
    r"I(\d{4}|\d{8}) (\d\d:\d\d):(\d\d\.\d{1,9}) +(\d{1,12}) [^\]\n]*\] +"
    r"(?:Iteration (\d{1,18}), (?:loss = ([^\s,]+)|lr = ([^\s,]+)(?:, (?!loss)\w+ = [^\s,]+)*)"
    r"|(Train|Test) net output #\d{1,9}: (\S+) = ([^\s,]+)(?: \(\*[^\n\r]*)?)[ \t]*(?=[\r\n]|\Z)"
)
# The block scan: one pass that finds every "] <keyword>" and, for the hot shapes, matches the
# message to the line end with its values captured. The glog prefix before the "]" is then
# matched on its own (_HOT_PREFIX), so a hot line costs one scan hit and one short match.
_HOT_MSG = (
    r"(?:Iteration (\d{1,18}), (?:loss = ([^\s,]+)|lr = ([^\s,]+)(?:, (?!loss)\w+ = [^\s,]+)*)"
    r"|(Train|Test) net output #\d{1,9}: (\S+) = ([^\s,]+)(?: \(\*[^\n\r]*)?)[ \t]*(?=[\r\n]|\Z)"
)
_SCAN = re.compile(r"\] +(?:" + _HOT_MSG + "|(?:" + _ALT + "))")
_HOT_PREFIX = re.compile(r"I(\d{4}|\d{8}) (\d\d:\d\d):(\d\d\.\d{1,9}) +(\d{1,12}) [^\]\n\r]*")
_HEADER = re.compile(r"Log file created at: (\d{4})/(\d\d)/(\d\d)")
_ITER = re.compile(r"Iteration (\d{1,18})(?!\d)(?: \(([^)]{0,200})\))?")
_TESTING = re.compile(r", Testing net(?: \(#(\d{1,9})\))?")
_NUM = re.compile(NUMBER)
_SPEED = re.compile(r"\s*(" + NUMBER + r") iter/s")
_LAPSE = re.compile(r"\s*(" + NUMBER + r") ?s\s*")
_OUTPUT = re.compile(r"(Train|Test) net output #\d{1,9}: (\S+) = ")
_SCORE = re.compile(r"Test score #(\d{1,9}): ")
_SNAPSHOT = re.compile(r"Snapshotting (solver state )?to (?:binary proto file |HDF5 file )?(.+)", re.S)
_ITER_IN_PATH = re.compile(r"_iter_(\d{1,18})(?:\.\w+)*$")
_EVENTS = {
    "Optimization Done": "done",
    "Optimization stopped early": "stopped",
}
_MAX_THREADS = 256  # per-thread state kept; a log of many restarts must not grow it forever


def _number_at(text: str, pos: int) -> float | None:
    """The number printed at ``text[pos:]``: ``float()`` on the token (fast), else :data:`NUMBER`."""
    end = text.find(" ", pos)
    token = (text[pos:] if end < 0 else text[pos:end]).rstrip(",;\r\n")
    if "_" not in token:  # float() would take "1_0"; a log never means that
        try:
            return float(token)
        except ValueError:
            pass
    m = _NUM.match(text, pos)
    return to_float(m.group()) if m else None


def _line_start(text: str, pos: int, has_cr: bool) -> int:
    """Where the line holding ``pos`` starts (after a ``\n``, or a later ``\r``, or the text's start)."""
    start = text.rfind("\n", 0, pos) + 1
    if has_cr:
        start = max(start, text.rfind("\r", start, pos) + 1)
    return start


def _line_end(text: str, pos: int, has_cr: bool) -> int:
    """Where the line holding ``pos`` ends (its ``\n``, or a ``\r`` before it, or the text's end)."""
    end = text.find("\n", pos + 1)
    if end < 0:
        end = len(text)
    if has_cr:
        cr = text.find("\r", pos + 1, end)
        if cr >= 0:
            end = cr
    return end


class CaffeLogParser:
    """Incremental Caffe log parser: :meth:`parse_line` per line, state carried across lines.

    Args:
        year: the year of the first line for glog's year-less prefix (default: the current
            year; a ``Log file created at:`` header overrides it).

    Example:
        >>> p = CaffeLogParser(year=2016)
        >>> p.parse_line("I0124 12:20:27.016808 11911 solver.cpp:340] Iteration 1000, Testing net (#0)")
        []
        >>> r = p.parse_line("I0124 12:22:07.265573 11911 solver.cpp:408]     Test net output #0: accuracy = 0.001")[0]
        >>> r["phase"], r["step"], r["net"], r["name"], r["value"]
        ('test', 1000, 0, 'accuracy', 0.001)
    """

    #: Caffe stops cleanly on SIGINT (``-sigint_effect stop``: it snapshots, then stops); SIGTERM
    #: kills it. ``cmd.logproc`` passes a stop on to Caffe as this signal.
    stop_signal = signal.SIGINT

    def __init__(self, year: int | None = None) -> None:
        self._year = year if year is not None else datetime.date.today().year
        self._month: int | None = None
        self._day = 0
        self._date = ""
        self._day_base: float | None = None
        self._minutes: dict[str, float] = {}
        self._iter: dict[str | None, int] = {}
        self._test: dict[str | None, tuple[int | None, int]] = {}
        self._last_iter: int | None = None
        self._last_test: tuple[int | None, int] | None = None
        self._events_since_metric: set[tuple[Any, ...]] = set()

    def parse_line(self, line: str) -> list[Record]:
        """Records for one line (metrics and events); [] for anything else. Never raises."""
        if _KEY.search(line) is None and _BARE.match(line) is None:
            return []
        try:
            m = _HOT.match(line)
            return (self._hot(m.groups()) if m else None) or self._parse(line)
        except Exception:  # noqa: BLE001 - a log line must never stop training or parsing
            log.debug("unparsable caffe log line ignored: %.200r", line, exc_info=True)
            return []

    def parse_block(self, text: str) -> list[Record]:
        """The records of a block of whole lines (split on ``\\n`` and ``\\r``), in order: the
        same as :meth:`parse_line` on each line, but the lines that cannot hold a record are
        skipped by one regex scan of the block. Never raises."""
        starts = [m.start() for m in _BARE_NL.finditer(text)]
        has_cr = "\r" in text
        if has_cr:
            starts += [m.start() for m in _BARE_CR.finditer(text)]
        if _BARE.match(text) is not None:
            starts.append(-1)
        if starts:
            return self._parse_block_with_bare_lines(text, starts, has_cr)
        out: list[Record] = []
        prefix, hot = _HOT_PREFIX.fullmatch, self._hot
        done = -1  # end of the last line parsed: a second hit in the same line is skipped
        for m in _SCAN.finditer(text):
            pos = m.start()
            if pos < done:
                continue
            start = _line_start(text, pos, has_cr)
            if m.lastindex is not None:  # a hot message: the line ends where the match does
                p = prefix(text, start, pos)
                if p is not None:
                    try:
                        records = hot(p.groups() + m.groups())
                    except Exception:  # noqa: BLE001 - as in parse_line
                        records = None
                    if records:
                        out += records
                        done = m.end()
                        continue
            done = end = _line_end(text, pos, has_cr)
            records = self._parse_span(text, start, end, None)
            if records:
                out += records
        return out

    def _parse_block_with_bare_lines(self, text: str, starts: list[int], has_cr: bool) -> list[Record]:
        """:meth:`parse_block` for a block with lines that hold a keyword but no glog prefix."""
        hits = sorted([m.start() for m in _KEY.finditer(text)] + starts)
        start_set = set(starts)
        out: list[Record] = []
        hot = _HOT.match
        done = -1
        for pos in hits:
            if pos < done:
                continue
            start = pos + 1 if pos in start_set else _line_start(text, pos, has_cr)
            done = end = _line_end(text, pos, has_cr)
            records = self._parse_span(text, start, end, hot)
            if records:
                out += records
        return out

    def _parse_span(self, text: str, start: int, end: int, hot: Any) -> list[Record] | None:
        """The records of ``text[start:end]`` (one line): the hot message first when ``hot`` is
        given, else the general path. Never raises."""
        try:
            m = hot(text, start, end) if hot is not None else None
            return (self._hot(m.groups()) if m else None) or self._parse(text[start:end])
        except Exception:  # noqa: BLE001 - as in parse_line
            log.debug("unparsable caffe log line ignored: %.200r", text[start:end], exc_info=True)
            return None

    def _hot(self, groups: tuple[Any, ...]) -> list[Record] | None:
        date, hm, sec, tid, digits, loss, lr, which, name, text = groups
        if which is None:
            text = loss if loss is not None else lr
        if "_" in text:
            return None
        try:
            value = float(text)
        except ValueError:
            return None  # "-nan(ind)", "1.#QNAN": the general path reads those
        minute = self._minutes.get(hm) if date == self._date else None
        ts = minute + float(sec) if minute is not None else self._timestamp(date, hm, sec)
        if self._events_since_metric:
            self._events_since_metric.clear()
        if which is None:
            step = int(digits)
            if tid in self._iter or len(self._iter) < _MAX_THREADS:
                self._iter[tid] = step
            else:
                self._iter = {tid: step}
            self._last_iter = step
            return [{"ts": ts, "step": step, "epoch": None, "batch": None, "phase": "train",
                     "name": "smoothed_loss" if loss is not None else "lr", "value": value,
                     "net": None, "unit": None}]
        if which == "Train":
            return [{"ts": ts, "step": self._iter.get(tid, self._last_iter), "epoch": None,
                     "batch": None, "phase": "train", "name": name, "value": value, "net": None,
                     "unit": None}]
        step, net = self._test_context(tid)
        return [{"ts": ts, "step": step, "epoch": None, "batch": None, "phase": "test",
                 "name": name, "value": value, "net": net, "unit": None}]

    def _parse(self, line: str) -> list[Record]:
        g = _GLOG.match(line) or _GLOG.search(line, 0, 400)
        if g is None and line.startswith("\0"):  # a crash's zero-filled tail, then a new line
            lead = len(line) - len(line.lstrip("\0"))
            g = _GLOG.search(line, lead, lead + 400)
        if g is None:
            msg = line.lstrip()
            if msg.startswith("Log file created at: "):
                self._header(msg)
                return []
            tid = ts = None
        else:
            level, date, hm, sec, tid = g.groups()  # tid stays a string: it is only a key
            if level != "I":
                return []
            msg = line[g.end():]
            ts = self._timestamp(date, hm, sec)
        first = msg[:1]
        if first == "I":
            return self._iteration(msg, tid, ts) if msg.startswith("Iteration ") else []
        if first == "T":
            return self._test_or_output(msg, tid, ts)
        if msg.startswith("Snapshotting"):
            mm = _SNAPSHOT.match(msg)
            if mm is None:
                return []
            path = mm.group(2).strip()
            kind = "solverstate" if mm.group(1) else "model"
            return self._event(ts, self._step_from_path(path, tid), "snapshot", path=path, kind=kind)
        for start in ("Restoring previous solver status from ", "Resuming from "):
            if msg.startswith(start):
                path = msg[len(start):].strip()
                return self._event(ts, self._step_from_path(path, tid), "resume", path=path)
        if msg.startswith("Solving "):
            return self._event(ts, self._iter.get(tid, self._last_iter), "start", net_name=msg[8:].strip())
        for start, name in _EVENTS.items():
            if msg.startswith(start):
                step = self._iter.get(tid, self._last_iter)
                if name == "done" and (step, "stopped") in self._events_since_metric:
                    return []  # caffe.cpp says "Optimization Done." after a stop too: it is not done
                return self._event(ts, step, name)
        return []

    # -- line kinds -----------------------------------------------------------------------
    def _iteration(self, msg: str, tid: str | None, ts: float | None) -> list[Record]:
        m = _ITER.match(msg)
        if m is None:
            return []
        digits, paren = m.groups()
        step = int(digits)
        if tid in self._iter or len(self._iter) < _MAX_THREADS:
            self._iter[tid] = step
        else:
            self._iter = {tid: step}
        self._last_iter = step
        pos = m.end()
        if msg.startswith(", Testing net", pos):
            testing = _TESTING.match(msg, pos)
            ctx = (step, int(testing.group(1) or 0) if testing else 0)
            if tid in self._test or len(self._test) < _MAX_THREADS:
                self._test[tid] = ctx
            else:
                self._test = {tid: ctx}
            self._last_test = ctx
            return []
        out: list[Record] = []
        if paren is not None:
            speed = _SPEED.match(paren)
            if speed is not None:
                out.append(metric(ts, step, "train", "speed", to_float(speed.group(1)), unit="iter/s"))
            else:
                lapse = _LAPSE.fullmatch(paren)
                seconds = to_float(lapse.group(1)) if lapse else 0.0
                if seconds > 0 and math.isfinite(seconds):
                    out.append(metric(ts, step, "train", "speed", 1.0 / seconds, unit="iter/s"))
        at = msg.find("loss = ", pos)
        if at >= 0:
            value = _number_at(msg, at + 7)
            if value is not None:
                out.append(metric(ts, step, "train", "smoothed_loss", value))
        at = msg.find("lr = ", pos)
        if at >= 0 and msg[at - 1] in " ,":
            value = _number_at(msg, at + 5)
            if value is not None:
                out.append(metric(ts, step, "train", "lr", value))
        if out and self._events_since_metric:
            self._events_since_metric.clear()
        return out

    def _test_or_output(self, msg: str, tid: str | None, ts: float | None) -> list[Record]:
        m = _OUTPUT.match(msg)
        if m is not None:
            value = _number_at(msg, m.end())
            if value is None:
                return []
            if m.group(1) == "Train":
                return self._metric(ts, self._iter.get(tid, self._last_iter), "train", m.group(2), value, None)
            step, net = self._test_context(tid)
            return self._metric(ts, step, "test", m.group(2), value, net)
        m = _SCORE.match(msg)
        if m is not None:
            value = _number_at(msg, m.end())
            if value is None:
                return []
            step, net = self._test_context(tid)
            return self._metric(ts, step, "test", "score#" + m.group(1), value, net)
        if msg.startswith("Test interrupted"):
            return self._event(ts, self._iter.get(tid, self._last_iter), "test_interrupted")
        return []

    def _header(self, msg: str) -> None:
        m = _HEADER.match(msg)
        if m is not None:
            self._year, self._month, self._day = int(m.group(1)), int(m.group(2)), int(m.group(3))
            self._date = ""

    # -- helpers --------------------------------------------------------------------------
    def _metric(self, ts: float | None, step: int | None, phase: str, name: str, value: float,
                net: int | None) -> list[Record]:
        if self._events_since_metric:
            self._events_since_metric.clear()
        return [metric(ts, step, phase, name, value, net=net)]

    def _event(self, ts: float | None, step: int | None, event: str, **details: Any) -> list[Record]:
        key = (step, event, *details.items())
        seen = self._events_since_metric
        if key in seen:
            return []
        if len(seen) >= 64:
            seen.clear()
        seen.add(key)
        return [{"ts": ts, "step": step, "event": event, **details}]

    def _test_context(self, tid: str | None) -> tuple[int | None, int]:
        ctx = self._test.get(tid) or self._last_test
        if ctx is not None:
            return ctx
        # Test output without a "Testing net" header (a cut log): the iteration, net 0.
        return self._iter.get(tid, self._last_iter), 0

    def _step_from_path(self, path: str, tid: str | None) -> int | None:
        m = _ITER_IN_PATH.search(path)
        return int(m.group(1)) if m else self._iter.get(tid, self._last_iter)

    def _timestamp(self, date: str, hm: str, sec: str) -> float | None:
        if date != self._date:  # the year logic runs once per date, not once per line
            self._date = date
            self._day_base = self._day_start(date)
            self._minutes = {}
        minute = self._minutes.get(hm)
        if minute is None:
            if self._day_base is None:
                return None
            minute = self._minutes[hm] = self._day_base + int(hm[:2]) * 3600 + int(hm[3:]) * 60
        return minute + float(sec)

    def _day_start(self, date: str) -> float | None:
        if len(date) == 8:
            year = self._year = int(date[:4])
            month, day = int(date[4:6]), int(date[6:])
            self._month, self._day = month, day
            return _day_start(year, month, day)
        month, day = int(date[:2]), int(date[2:])
        year, last = self._year, self._month
        if last is None or month > last or (month == last and day >= self._day):
            if last == 1 and self._day == 1 and month == 12 and day == 31:
                year -= 1  # a straggler from the old year, printed after New Year
            else:
                self._month, self._day = month, day
        elif month < last and not (last - month == 1 and self._day == 1 and day >= 28):
            year = self._year = year + 1
            self._month, self._day = month, day
        return _day_start(year, month, day)


def _day_start(year: int, month: int, day: int) -> float | None:
    if not (1 <= month <= 12 and 1 <= day <= 31 and 1 <= year <= 9999):
        return None
    return float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)) + (day - 1) * 86400)


# --- the adapter: TrainInstance.get_monitor_callback("caffe") / get_epoch_end_callback("caffe") ---

def monitor_callback(train_ins: Any, **kwargs: Any) -> Any:
    """A line hook for ``cmd.logproc`` that records Caffe's metrics and events on ``train_ins``.

    Args:
        train_ins: the ``TrainInstance``.
        **kwargs: ``year`` for logs whose glog prefix has no year and no header.
    """
    from ava.monitor.hooks import LogMetricsHook

    return LogMetricsHook(train_ins, CaffeLogParser(year=kwargs.get("year")))


def epoch_end_callback(train_ins: Any, batch_of_epoch: int | None = None, other_files: Any = (), **kwargs: Any) -> Any:
    """A line hook that uploads each snapshot Caffe announces: its ``.caffemodel`` and
    ``.solverstate`` (once both are written) plus ``other_files``, in the background.

    Args:
        train_ins: the ``TrainInstance``.
        batch_of_epoch: iterations per epoch, recorded as the snapshot's epoch.
        other_files: files uploaded with every snapshot.
    """
    from ava.monitor.hooks import SnapshotHook

    return SnapshotHook(train_ins, CaffeLogParser(year=kwargs.get("year")), batch_of_epoch=batch_of_epoch,
                        other_files=other_files or ())
