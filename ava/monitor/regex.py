r"""Metrics picked out of arbitrary log lines by user-given regular expressions (``--metric``),
and the number syntax every log parser in :mod:`ava.monitor` shares.

A spec is ``NAME=REGEX``. The regex is searched in each line; its first capture group (not
counting a group named ``step``) is the value, and a group named ``step`` sets the step. A line
without a ``step`` group match takes the last step any spec captured on an earlier line, so
``--metric "loss=Iteration (?P<step>\d+), loss = (\S+)"`` feeds the step to the other specs
(0 before the first one is captured). When no spec has a ``step`` group, the step counts the
lines that held a metric (0, 1, 2, ...: the values of one line share a step; ``ava run`` on an
instance that ran before counts on from its last step), so every record has a step, as
CONTRACT.md section 5 wants, and plots have an x axis.
Every record has phase ``train``: the phase is where a value was printed, and a regex cannot tell.

Example:
    >>> p = RegexParser.from_specs([r"loss=step (?P<step>\d+) loss (\S+)"])
    >>> [(r["name"], r["step"], r["value"]) for r in p.parse_line("step 7 loss 0.25")]
    [('loss', 7, 0.25)]
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterable, Protocol

from ava.errors import UsageError

log = logging.getLogger(__name__)

#: A number as logs print it: C++ streams (``2.3e-05``, ``nan``, ``-nan``, ``inf``), MSVC
#: (``-nan(ind)``, ``1.#QNAN``, ``1.#INF``) and Python (``nan``, ``inf``, ``Infinity``). The
#: lookahead keeps ``info`` or ``0.5.1`` from passing for a number.
NUMBER = (
    r"(?:[-+]?(?:\d\.#(?:QNAN|SNAN|IND|INF)\d*"
    r"|(?i:nan|inf(?:inity)?)(?:\(ind\))?"
    r"|\d+\.?\d*(?:[eE][-+]?\d+)?"
    r"|\.\d+(?:[eE][-+]?\d+)?))(?![\w.#])"
)
_NUMBER_FULL = re.compile(r"\s*(" + NUMBER + r")\s*")
_TRAILING = ",;:)]}"  # what a greedy (\S+) takes after a number in "loss: 0.5, acc: 0.9"

Record = dict[str, Any]


class LineParser(Protocol):
    r"""What every log parser offers: whole lines in, records (CONTRACT.md section 5) out.

    Example:
        >>> parser: LineParser = RegexParser.from_specs([r"loss=loss (\S+)"])
        >>> [r["value"] for r in parser.parse_line("loss 0.5")]
        [0.5]
    """

    def parse_line(self, line: str) -> list[Record]:
        """Records for one line (without its line ending); never raises."""


def to_float(text: str) -> float:
    """Convert a string matched by :data:`NUMBER` to a float (NaN and infinities kept).

    Example:
        >>> to_float("-nan"), to_float("1.#INF"), to_float("2.5e-3")
        (nan, inf, 0.0025)
    """
    try:
        return float(text)
    except ValueError:
        pass
    low = text.lower()
    if "inf" in low:
        return -math.inf if low.startswith("-") else math.inf
    return math.nan


def parse_number(text: str) -> float | None:
    """The float in ``text`` when ``text`` is exactly one number (spaces allowed), else None."""
    m = _NUMBER_FULL.fullmatch(text)
    return to_float(m.group(1)) if m else None


def metric(ts: float | None, step: int | None, phase: str, name: str, value: float,
           *, epoch: int | None = None, batch: int | None = None, net: int | None = None,
           unit: str | None = None) -> Record:
    """One metric record as the parsers emit it (the writer adds ``rank`` and ``seq``)."""
    return {"ts": ts, "step": step, "epoch": epoch, "batch": batch, "phase": phase,
            "name": name, "value": value, "net": net, "unit": unit}


class RegexParser:
    r"""Metrics from ``NAME=REGEX`` specs; build it with :meth:`from_specs`.

    Args:
        specs: (name, compiled pattern) pairs; each pattern has at least one capture group
            besides ``step``.

    Example:
        >>> p = RegexParser.from_specs([r"acc=acc: (\d+\.\d+)", r"loss=^it (?P<step>\d+) loss (\S+)"])
        >>> [(r["name"], r["step"]) for r in p.parse_line("it 3 loss 0.7")]
        [('loss', 3)]
        >>> [(r["name"], r["step"], r["value"]) for r in p.parse_line("acc: 0.5")]
        [('acc', 3, 0.5)]
    """

    def __init__(self, specs: Iterable[tuple[str, re.Pattern[str]]]) -> None:
        self._specs: list[tuple[str, re.Pattern[str], int, bool]] = []
        for name, pattern in specs:
            value_group = _value_group(pattern)
            if value_group is None:
                raise UsageError(
                    f"metric {name!r}: the regex {pattern.pattern!r} needs a capture group for the "
                    "value, e.g. loss=loss: (\\S+)"
                )
            self._specs.append((name, pattern, value_group, "step" in pattern.groupindex))
        self._counted = not any(has_step for *_, has_step in self._specs)
        self._said: set[str] = set()
        self._step = -1 if self._counted else 0

    @classmethod
    def from_specs(cls, specs: Iterable[str]) -> RegexParser:
        """Parse ``NAME=REGEX`` strings; a malformed one raises :class:`UsageError` naming it."""
        compiled = []
        for spec in specs:
            name, sep, regex = str(spec).partition("=")
            name = name.strip()
            if not sep or not name or not regex or any(c.isspace() for c in name):
                raise UsageError(f"metric spec {spec!r} is not NAME=REGEX; write it as e.g. loss=loss: (\\S+)")
            try:
                pattern = re.compile(regex)
            except (re.error, OverflowError, RecursionError) as exc:
                # OverflowError: "a{99999999999}"; RecursionError: thousands of nested groups
                raise UsageError(f"metric spec {spec!r}: invalid regular expression ({exc})") from None
            if _value_group(pattern) is None:
                raise UsageError(f"metric spec {spec!r} has no capture group for the value; write e.g. {name}=: (\\S+)")
            compiled.append((name, pattern))
        return cls(compiled)

    @property
    def counted(self) -> bool:
        """No spec has a ``step`` group: steps count the lines that held a metric."""
        return self._counted

    def continue_after(self, step: int) -> None:
        """Count on from ``step`` (the last step of an earlier attempt of the same instance)."""
        if self._counted:
            self._step = max(self._step, int(step))

    def parse_line(self, line: str) -> list[Record]:
        """Records for every spec whose regex matches ``line``; non-numeric captures are skipped."""
        out: list[Record] = []
        found: list[tuple[str, float, int | None]] = []
        for name, pattern, value_group, has_step in self._specs:
            m = pattern.search(line)
            if m is None:
                continue
            step = None
            if has_step:
                step = _to_step(m.group("step"))
                if step is not None:
                    self._step = step
            text = m.group(value_group)
            value = None if text is None else parse_number(text)
            if value is None and text:
                value = parse_number(text.rstrip(",;:")) if text[-1] in ",;:" else None
                if value is None:
                    value = parse_number(text.rstrip(_TRAILING))
            if value is not None:
                found.append((name, value, step))
            elif name not in self._said:  # a match that is no number: said once, not silently dropped
                self._said.add(name)
                log.warning("metric %s: its regex matched %r, which is not a number; such lines are skipped "
                            "(make the value group match only the number, e.g. ([-+.\\deE]+))", name, text)
        if found and self._counted:
            self._step += 1
        for name, value, step in found:
            out.append(metric(None, step if step is not None else self._step, "train", name, value))
        return out


def _value_group(pattern: re.Pattern[str]) -> int | None:
    step_index = pattern.groupindex.get("step")
    for index in range(1, pattern.groups + 1):
        if index != step_index:
            return index
    return None


def _to_step(text: str | None) -> int | None:
    if not text:
        return None
    value = parse_number(text)
    if value is None or not math.isfinite(value) or value != int(value) or abs(value) > 2**62:
        return None
    return int(value)
