"""A pure, incremental parser for MXNet (Module/FeedForward ``Speedometer``, ``fit.py``) and
GluonCV training logs.

Feed it whole lines in order; it returns records as CONTRACT.md section 5 shapes them, minus
``rank``/``seq``. It never raises on an input line. Any logger prefix is accepted (none,
``INFO:root:``, ``2017-01-01 12:00:00,123 ...``, ``train.py[line:42] - INFO:``) and ANSI colour
codes are removed; an asctime prefix gives ``ts`` (read as UTC), else ``ts`` is None.

What it reads (names as printed, minus a ``Train-``/``Validation-`` prefix):

- ``Epoch[e] Batch [b]`` / ``Batch [a-b]`` (batch = b) and Gluon's ``[Epoch e][Batch b]``, with
  ``Speed: X samples/sec`` (``speed``, unit ``samples/s``, once per batch even when MXNet prints
  the batch once per metric) and ``name=value`` pairs separated by tabs, commas or spaces
  (at most :data:`MAX_PAIRS` a line): phase ``train``, ``epoch`` e, ``batch`` b.
- ``Epoch[e] Train-x=v`` (phase ``train``), ``Epoch[e] Validation-x=v`` (phase ``val``),
  ``Epoch[e] Time cost=X`` (``time_cost``, unit ``s``): epoch-level, ``batch`` None.
- Batch lines of epoch e printed after its ``Train-``/``Time cost`` lines and before its
  ``Validation-`` lines come from ``fit(eval_batch_end_callback=Speedometer(...))`` scoring the
  validation set: phase ``val``, at the step the epoch ended, not counted as training batches.
- Gluon ``[Epoch e] training: a=x b=y`` (train), ``[Epoch e] validation: a=x`` (val),
  ``[Epoch e] speed: X samples/sec<TAB>time cost: Y``, ``[Epoch e] Training cost: Y, a=x``
  (``time_cost``), and ``[Epoch e] Validation:`` followed by one ``name=value`` per line (GluonCV
  detection: per-class AP then ``mAP``), which ends at the first line of another shape.
- ``Saved checkpoint to "X"`` -> event ``snapshot`` (kind ``model``; ``Saved optimizer state to``
  -> kind ``solverstate``); ``Update[n]: Change learning rate to X`` -> ``lr``.

``step`` is a global batch counter derived from the log, since MXNet prints none: a batch
record's step is the number of batches in the earlier epochs of this log plus its batch index,
where an earlier epoch counts as (the highest batch index it logged + 1); an epoch-level record's
step is that count at the end of its epoch. MXNet prints only every n-th batch, so the batches
after an epoch's last log line are not counted: the step is exact for the first epoch and a
slight undercount later, but it always increases. When the epoch goes back (a restarted run
appended to the log) or a batch index goes back within an epoch, counting continues from the
current count, so steps stay increasing.

Example:
    >>> p = MXNetLogParser()
    >>> [(r["name"], r["step"], r["value"]) for r in p.parse_line(
    ...     "INFO:root:Epoch[0] Batch [20]\\tSpeed: 142.33 samples/sec\\taccuracy=0.562500")]
    [('speed', 20, 142.33), ('accuracy', 20, 0.5625)]
"""

from __future__ import annotations

import calendar
import logging
import re
from ava.monitor.regex import NUMBER, Record, metric, to_float

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_KEY = re.compile(r"Epoch|Saved (?:checkpoint|optimizer state)|Change learning rate")
_ASCTIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[,.](\d{1,9}))?")
_PREFIX = re.compile(
    r"\s*(?:\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?\s*)?(?:-\s*)?"
    r"(?:\S+\.py\[line:\s*\d+\]\s*-?\s*)?"
    r"(?:(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s*(?::\s*[\w.]+\s*)?[:\-]\s*)?"
)
_BATCH = re.compile(r"Epoch\[(\d{1,9})\]\s*Batch\s*\[(?:\d{1,12}-)?(\d{1,12})\]")
_GBATCH = re.compile(r"\[Epoch (\d{1,9})\]\s*\[Batch (\d{1,12})\]")
_EPOCH = re.compile(r"Epoch\[(\d{1,9})\]")
_GEPOCH = re.compile(r"\[Epoch (\d{1,9})\]")
_SAVED = re.compile(r'Saved (checkpoint|optimizer state) to "?([^"]*)"?')
_LR_CHANGE = re.compile(r"Update\[\d{1,18}\]: Change learning rate to (" + NUMBER + ")")
_PHASE_WORD = re.compile(r"\s*(training|train|validation|validating|val|testing|test)\s*:", re.I)
_TIME_COST = re.compile(r"(?:Time|time|Training|training) cost\s*[:=]\s*(" + NUMBER + ")")
_SPEED = re.compile(r"[Ss]peed\s*[:=]\s*(" + NUMBER + r")(\s*(?:samples|images|img)/s(?:ec)?)?")
_PAIR = re.compile(r"([A-Za-z_][\w\-/.@#]*)\s*[=:]\s*(" + NUMBER + ")")
_BARE_PAIR = re.compile(r"([A-Za-z_][\w\-/.@#]*)\s*[=:]\s*(" + NUMBER + r")\s*")
_EPOCH_END = re.compile(r"\s*(?:Train-|Time cost|Resetting Data Iterator)")
_NAME_PHASE = (("Train-", "train"), ("Validation-", "val"), ("Test-", "test"))
_SOURCE_FILES = (".py", ".pyx", ".cc", ".cpp", ".cxx", ".c", ".h", ".hpp", ".cu")
#: At most this many ``name=value`` pairs are read from one line.
MAX_PAIRS = 256


class MXNetLogParser:
    """Incremental MXNet/Gluon log parser: :meth:`parse_line` per line, state across lines.

    Example:
        >>> p = MXNetLogParser()
        >>> _ = p.parse_line("Epoch[0] Batch [99]\\tSpeed: 90.0 samples/sec\\taccuracy=0.5")
        >>> [(r["phase"], r["name"], r["step"], r["epoch"], r["batch"]) for r in p.parse_line(
        ...     "INFO:root:Epoch[0] Validation-accuracy=0.7")]
        [('val', 'accuracy', 100, 0, None)]
    """

    def __init__(self) -> None:
        self._epoch: int | None = None
        self._base = 0
        self._max_batch = -1
        self._last_speed: tuple[str, int, int] | None = None
        self._val_epoch: int | None = None  # an epoch whose training has ended, its validation not yet
        self._block: tuple[str, int, int, float | None] | None = None  # phase, epoch, step, ts

    def parse_line(self, line: str) -> list[Record]:
        """Records for one line; [] for anything else. Never raises."""
        try:
            return self._parse(line)
        except Exception:  # noqa: BLE001 - a log line must never stop training or parsing
            log.debug("unparsable mxnet log line ignored: %.200r", line, exc_info=True)
            return []

    def _parse(self, line: str) -> list[Record]:
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        if self._block is not None:
            start = _PREFIX.match(line)
            m = _BARE_PAIR.fullmatch(line, start.end() if start else 0)
            if m is not None:
                phase, epoch, step, ts = self._block
                return [metric(ts, step, phase, m.group(1), to_float(m.group(2)), epoch=epoch)]
            self._block = None
        key = _KEY.search(line)
        if key is None:
            return []
        m = _BATCH.search(line) or _GBATCH.search(line)
        if m is not None:
            return self._batch_line(line, m)
        m = _GEPOCH.search(line)
        if m is not None:
            return self._gluon_epoch_line(line, m)
        m = _EPOCH.search(line)
        if m is not None:
            epoch = int(m.group(1))
            ts = self._ts(line, m.start())
            step = self._epoch_step(epoch)
            if epoch == self._epoch:
                if "Validation-" in line:
                    self._val_epoch = None
                elif _EPOCH_END.match(line, m.end()):
                    self._val_epoch = epoch  # batch lines of this epoch from here on score eval_data
            return self._pairs(line[m.end():], ts, step, "train", epoch, None)
        m = _SAVED.search(line)
        if m is not None:
            kind = "model" if m.group(1) == "checkpoint" else "solverstate"
            return [{"ts": self._ts(line, m.start()), "step": self._epoch_step(self._epoch),
                     "epoch": self._epoch, "event": "snapshot", "path": m.group(2), "kind": kind}]
        m = _LR_CHANGE.search(line)
        if m is not None:
            step = self._epoch_step(self._epoch)
            return [metric(self._ts(line, m.start()), step, "train", "lr", to_float(m.group(1)))]
        return []

    # -- line kinds -----------------------------------------------------------------------
    def _batch_line(self, line: str, m: re.Match[str]) -> list[Record]:
        epoch, batch = int(m.group(1)), int(m.group(2))
        if epoch == self._val_epoch and epoch == self._epoch:
            return self._val_batch_line(line, m, epoch, batch)
        if self._epoch is None or epoch != self._epoch:
            self._enter(epoch)
        elif batch < self._max_batch:
            self._base += self._max_batch + 1  # the batch went back: a restart within the epoch
            self._max_batch = -1
        self._max_batch = max(self._max_batch, batch)
        step = self._base + batch
        ts = self._ts(line, m.start())
        out, rest = self._speed(line[m.end():], ts, step, "train", epoch, batch)
        return out + self._pairs(rest, ts, step, "train", epoch, batch)

    def _val_batch_line(self, line: str, m: re.Match[str], epoch: int, batch: int) -> list[Record]:
        """A Speedometer line of ``fit``'s ``eval_batch_end_callback``: the validation pass of
        ``epoch`` at the step the epoch ended; the training's batch count is left alone."""
        step = self._base + self._max_batch + 1
        ts = self._ts(line, m.start())
        out, rest = self._speed(line[m.end():], ts, step, "val", epoch, batch)
        return out + self._pairs(rest, ts, step, "val", epoch, batch)

    def _speed(self, rest: str, ts: float | None, step: int, phase: str, epoch: int,
               batch: int) -> tuple[list[Record], str]:
        """The ``speed`` record of a batch line (once per batch, though MXNet may print the
        batch once per metric), and the rest of the line without it."""
        speed = _SPEED.search(rest)
        if speed is None:
            return [], rest
        rest = rest[:speed.start()] + " " + rest[speed.end():]
        if self._last_speed == (phase, epoch, batch):
            return [], rest
        self._last_speed = (phase, epoch, batch)
        return [metric(ts, step, phase, "speed", to_float(speed.group(1)), epoch=epoch, batch=batch,
                       unit="samples/s")], rest

    def _gluon_epoch_line(self, line: str, m: re.Match[str]) -> list[Record]:
        epoch = int(m.group(1))
        rest = line[m.end():]
        if not rest.strip():
            return []  # "Start training from [Epoch 0]"
        ts = self._ts(line, m.start())
        step = self._epoch_step(epoch)
        phase = "train"
        word = _PHASE_WORD.match(rest)
        if word is not None:
            phase = _phase_of(word.group(1))
            rest = rest[word.end():]
        out: list[Record] = []
        speed = _SPEED.search(rest)
        if speed is not None:
            out.append(metric(ts, step, phase, "speed", to_float(speed.group(1)), epoch=epoch, unit="samples/s"))
            rest = rest[:speed.start()] + " " + rest[speed.end():]
        out += self._pairs(rest, ts, step, phase, epoch, None)
        if not out and word is not None:
            self._block = (phase, epoch, step, ts)  # "[Epoch 0] Validation:" then one pair a line
        return out

    def _pairs(self, rest: str, ts: float | None, step: int, phase: str, epoch: int | None,
               batch: int | None) -> list[Record]:
        out: list[Record] = []
        cost = _TIME_COST.search(rest)
        if cost is not None:
            out.append(metric(ts, step, phase, "time_cost", to_float(cost.group(1)), epoch=epoch,
                              batch=batch, unit="s"))
            rest = rest[:cost.start()] + " " + rest[cost.end():]
        for count, pair in enumerate(_PAIR.finditer(rest)):
            if count == MAX_PAIRS:
                break  # a garbage line of a million "a=1" must not flood the metric stream
            name, pair_phase = pair.group(1), phase
            if name.endswith(_SOURCE_FILES) and ":" in rest[pair.end(1):pair.start(2)]:
                continue  # a logger's "(base_module.py:558)": a file and its line, not a metric
            for prefix, prefix_phase in _NAME_PHASE:
                if name.startswith(prefix) and len(name) > len(prefix):
                    name, pair_phase = name[len(prefix):], prefix_phase
                    break
            out.append(metric(ts, step, pair_phase, name, to_float(pair.group(2)), epoch=epoch, batch=batch))
        return out

    # -- step bookkeeping -----------------------------------------------------------------
    def _enter(self, epoch: int) -> None:
        if self._epoch is not None:
            self._base += self._max_batch + 1
        self._epoch, self._max_batch, self._val_epoch = epoch, -1, None

    def _epoch_step(self, epoch: int | None) -> int:
        if epoch is None:
            return self._base + self._max_batch + 1
        if self._epoch is None or epoch > self._epoch:
            self._enter(epoch)
        elif epoch < self._epoch:
            return self._base  # a late line about an earlier epoch: the count when this one began
        return self._base + self._max_batch + 1

    @staticmethod
    def _ts(line: str, end: int) -> float | None:
        m = _ASCTIME.search(line, 0, end)
        if m is None:
            return None
        year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= month <= 12 and 1 <= day <= 31 and year >= 1):
            return None
        frac = m.group(7) or "0"
        return (calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)) + (day - 1) * 86400
                + int(m.group(4)) * 3600 + int(m.group(5)) * 60 + int(m.group(6))
                + int(frac) / 10 ** len(frac))


def _phase_of(word: str) -> str:
    word = word.lower()
    if word.startswith("val"):
        return "val"
    if word.startswith("test"):
        return "test"
    return "train"
