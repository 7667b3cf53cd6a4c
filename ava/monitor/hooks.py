"""Line hooks for wrapped processes: parse each output line, record what it says.

``LogMetricsHook`` feeds lines to a parser (Caffe, MXNet, regex) and turns its records into
``TrainInstance.log_metrics`` / ``log_event`` calls. ``SnapshotHook`` watches the same kind of
records for snapshot events and hands the files of each snapshot to the instance's background
uploader: for Caffe, the ``.caffemodel`` and ``.solverstate`` of one iteration (submitted once
the solver state is announced, Caffe's last write of a snapshot); for MXNet, ``prefix-NNNN.params``
with its ``prefix-symbol.json``, the ``prefix-NNNN.states`` announced right after it, if any,
and the checkpoints of other prefixes logged right after it in the same epoch (a second
``do_checkpoint``), submitted as one snapshot at the next other line; plus any ``other_files``.
Given to a ``LogMetricsHook`` as ``snapshots=``, it takes that hook's records, so one parser sees
every line and each snapshot gets the step the log is at (``ava run`` does this).

Both are plain callables taking one line, as ``ava.utils.cmd.logproc`` calls hooks.

Example:
    >>> class Ins:
    ...     def __init__(self): self.calls = []
    ...     def log_metrics(self, metrics, step=None, epoch=None, batch=None, phase="train", **kw):
    ...         self.calls.append((metrics, step, phase))
    ...     def log_event(self, event, step=None, **details): self.calls.append((event, step))
    >>> from ava.monitor.regex import RegexParser
    >>> ins = Ins()
    >>> hook = LogMetricsHook(ins, RegexParser.from_specs([r"loss=loss=([0-9.]+)"]))
    >>> hook("step 3 loss=0.25")
    >>> ins.calls
    [({'loss': 0.25}, None, 'train')]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ava.errors import AvaError, UsageError
from ava.utils import cmd

log = logging.getLogger(__name__)


class LogMetricsHook:
    """Record a parser's metrics and events on a training instance.

    Args:
        train_ins: a ``TrainInstance`` (anything with ``log_metrics`` and ``log_event``).
        parser: an object with ``parse_line(line) -> list of records``.
        events: also record the parser's events (``done``, ``resume``, ``snapshot``, ...).
        snapshots: a :class:`SnapshotHook` that uploads the snapshots in these records.
    """

    def __init__(self, train_ins: Any, parser: Any, *, events: bool = True,
                 snapshots: "SnapshotHook | None" = None) -> None:
        self.train_ins = train_ins
        self.parser = parser
        self.events = events
        self.snapshots = snapshots
        self.records = 0
        # What cmd.logproc passes on when the script is stopped (SIGINT for Caffe: snapshot, stop).
        self.stop_signal: int | None = getattr(parser, "stop_signal", None)
        self.enabled = True  # off: lines pass by unread (ava run's command records for itself)

    def __call__(self, line: str | bytes) -> None:
        if not self.enabled:
            return
        if type(line) is not str:
            line = _text(line)
        records = self.parser.parse_line(line)
        snapshots = self.snapshots
        if snapshots is not None and (records or snapshots.waiting):
            snapshots.take(records, line)
        if not records:
            return
        if len(records) == 1:
            self.record(records[0])
            return
        # Records of one line that share step, epoch, batch, phase and net go in one call.
        group: dict[str, Any] = {}
        units: dict[str, str] = {}
        key = None
        for rec in records:
            if "event" in rec:
                self._flush(group, units, key)
                group, units, key = {}, {}, None
                self.record(rec)
                continue
            rec_key = (rec.get("step"), rec.get("epoch"), rec.get("batch"), rec.get("phase") or "train", rec.get("net"))
            if key is not None and (rec_key != key or rec["name"] in group):
                self._flush(group, units, key)
                group, units = {}, {}
            key = rec_key
            group[rec["name"]] = rec["value"]
            if rec.get("unit"):
                units[rec["name"]] = rec["unit"]
        self._flush(group, units, key)

    def _flush(self, group: dict[str, Any], units: dict[str, str], key: Any) -> None:
        if group:
            step, epoch, batch, phase, net = key
            self.train_ins.log_metrics(group, step, epoch, batch, phase, net=net, units=units or None)
            self.records += len(group)

    def record(self, rec: dict[str, Any]) -> None:
        if "event" in rec:
            if self.events:
                details = {k: v for k, v in rec.items() if k not in ("ts", "step", "event", "epoch", "batch")}
                self.train_ins.log_event(rec["event"], rec.get("step"), **details)
            return
        unit = rec.get("unit")
        self.train_ins.log_metrics(
            {rec["name"]: rec["value"]}, rec.get("step"), rec.get("epoch"), rec.get("batch"),
            rec.get("phase") or "train", net=rec.get("net"), units={rec["name"]: unit} if unit else None,
        )
        self.records += 1


class SnapshotHook:
    """Upload the files of each snapshot a wrapped process announces in its log.

    Args:
        train_ins: a ``TrainInstance``.
        parser: a parser whose records include ``{"event": "snapshot", "path", "kind", "step"}``;
            None when the hook is fed a ``LogMetricsHook``'s records (its ``snapshots=``).
        batch_of_epoch: iterations per epoch, to put the epoch in the snapshot's metadata.
        other_files: files uploaded with every snapshot (a deploy prototxt, a label map, ...).
    """

    def __init__(self, train_ins: Any, parser: Any = None, *, batch_of_epoch: int | None = None,
                 other_files: Sequence[str | Path] = ()) -> None:
        self.train_ins = train_ins
        self.parser = parser
        self.stop_signal: int | None = getattr(parser, "stop_signal", None)
        self.batch_of_epoch = batch_of_epoch
        self.other_files = other_files_of(other_files)
        self._pending: dict[int | None, list[Path]] = {}
        self._names: dict[int | None, str] = {}
        self._at_next_line: set[int | None] = set()  # MXNet checkpoints: a .states may follow
        self.submitted: list[str] = []

    def __call__(self, line: str | bytes) -> None:
        if type(line) is not str:
            line = _text(line)
        # The cheap filter: only snapshot lines are parsed; any line can end a checkpoint's wait.
        if "napshot" in line or "checkpoint" in line or "Saved " in line:
            self.take(self.parser.parse_line(line), line)
        elif self._at_next_line:
            self.take([], line)

    @property
    def waiting(self) -> bool:
        """A checkpoint is held until the next line (an MXNet ``.states`` may follow it)."""
        return bool(self._at_next_line)

    def take(self, records: list[dict[str, Any]], line: str) -> None:
        """Act on the snapshot events among ``records``, those of ``line``."""
        # An MXNet checkpoint waits for the next line: its .states, or the checkpoint of another
        # prefix in the same epoch (a second do_checkpoint) join the same snapshot.
        if self._at_next_line and "Saved optimizer state" not in line and "Saved checkpoint" not in line:
            self._submit_waiting()
        for rec in records:
            if rec.get("event") == "snapshot" and rec.get("path"):
                path = Path(rec["path"])
                if not path.is_absolute():  # relative to where the program runs, not to where we do
                    path = Path(cmd.child_cwd() or os.getcwd()) / path
                self.snapshot(path, rec.get("kind"), rec.get("step"))

    def snapshot(self, path: Path, kind: str | None, step: int | None) -> None:
        files = self._pending.setdefault(step, [])
        if path not in files:
            files.append(path)
        mx = _mxnet_checkpoint(path)
        if mx is not None:  # MXNet: prefix-NNNN.params (+ prefix-symbol.json), maybe .states next
            symbol, number = mx
            if symbol.is_file() and symbol not in files:
                files.append(symbol)
            self._names.setdefault(step, f"epoch-{number:04d}")
            self._at_next_line.add(step)
            return
        # Caffe writes the model, then the solver state; anything else is one file per snapshot.
        if kind != "model":
            self.flush(step)

    def _submit_waiting(self) -> None:
        for step in list(self._at_next_line):
            self.flush(step)

    def flush(self, step: int | None = None) -> None:
        """Submit what is pending (for ``step``, or everything when None)."""
        steps = [step] if step is not None else list(self._pending)
        for s in steps:
            self._at_next_line.discard(s)
            files = self._pending.pop(s, [])
            name = self._names.pop(s, None)
            if not files:
                continue
            if name is None:
                name = f"iter-{s:08d}" if s is not None else files[0].stem
            meta: dict[str, Any] = {"step": s}
            if self.batch_of_epoch and s is not None:
                meta["epoch"] = s // self.batch_of_epoch
            if not save_or_report(self.train_ins, [*files, *self.other_files], name, meta, s):
                continue
            self.submitted.append(name)
            log.info("snapshot %s handed to the uploader: %s", name, ", ".join(str(f) for f in files))


def _text(line: Any) -> str:
    """A line as the hooks take it: ``bytes`` (a script reading ``proc.stdout`` itself, as the old
    SDK did) decoded as UTF-8 with replacement, without its line ending."""
    if isinstance(line, (bytes, bytearray)):
        return bytes(line).decode("utf-8", "replace").rstrip("\r\n")
    raise UsageError(f"a log hook takes one line as str (or bytes), not {type(line).__name__}")


def other_files_of(files: Any) -> list[Path]:
    """The files added to every snapshot, as absolute paths: one path alone is one file (not its
    characters), and two files of one name are refused at once (a snapshot keeps file names, so
    every snapshot of the run would fail)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(f).absolute() for f in (files or ())]
    names = [f.name for f in paths]
    if len(set(names)) != len(names):
        raise UsageError(f"other_files has two files with the same name: {sorted(names)}; a snapshot keeps "
                         "file names, so rename one")
    check_other_files(paths)
    return paths


def check_other_files(files: Sequence[Path]) -> None:
    """A snapshot is a flat set of files that exist: a directory, or a file missing, among the
    files added to every snapshot is refused at once (each snapshot would wait for it, and none
    would be confirmed)."""
    for f in files:
        if f.is_dir():
            raise UsageError(f"other_files: {f} is a directory; give the files in it")
        if not f.is_file():
            raise UsageError(f"other_files: {f} does not exist")


def save_or_report(train_ins: Any, files: Sequence[Path], name: str, meta: dict[str, Any], step: int | None) -> bool:
    """Hand a snapshot to ``train_ins``; one that cannot be taken (a file that cannot be a
    snapshot's) fails alone: an error, a ``snapshot_failed`` record, False. The next go on."""
    try:
        train_ins.save_snapshot(files, name, meta, step=step)
        return True
    except AvaError as exc:
        log.error("snapshot %s not uploaded: %s", name, exc)
        train_ins.log_event("snapshot_failed", step=step, snapshot=name, reason=str(exc))
        return False


def _mxnet_checkpoint(path: Path) -> tuple[Path, int] | None:
    """(``prefix-symbol.json``, NNNN) for an MXNet ``prefix-NNNN.params`` or ``.states``, else None."""
    stem, dot, ext = path.name.rpartition(".")
    if ext not in ("params", "states") or not dot:
        return None
    prefix, dash, digits = stem.rpartition("-")
    if not dash or not digits.isdigit():
        return None
    return path.with_name(f"{prefix}-symbol.json"), int(digits)
