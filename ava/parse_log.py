"""``ava parse-log caffe|mxnet LOG [--format jsonl|csv] [--out DIR]``: a finished log to metric
records (JSON lines, CONTRACT.md section 5) or to Caffe ``parse_log.py``-style CSV files.

Everything streams: the log is read in binary blocks, split on ``\\n`` and ``\\r``, decoded as
UTF-8 with replacement, and parsed line by line; CSV rows wait in a temporary file until the set
of columns is known. Memory does not grow with the length of the log. A line longer than 16 MiB
is parsed from its first 16 MiB.

CSV: ``<stem>.train.csv`` and ``<stem>.test.csv`` (stem: the log's file name without its last
suffix) with the columns ``NumIters,Seconds,LearningRate,<outputs>``. A row per iteration that
printed an output (or, train only, an ``lr``); ``Seconds`` counts from the first ``Solving`` line
(else the first record) to the row's first output line; ``LearningRate`` is the ``lr`` printed
for the row's iteration, else the last one printed before the row, else empty. MXNet/Gluon logs
give the same files: ``NumIters`` is the derived step, ``lr`` pairs fill ``LearningRate``, ``val``
rows go to the test file, and every other metric (``speed``, ``time_cost`` too) is a column;
the batch lines of a validation pass (``eval_batch_end_callback``) are in the JSON lines only.

Differences from BVLC ``tools/extra/parse_log.py`` (each checked against it on the logs in
``shared/testdata``):

1. An empty or blank line no longer crashes it (``IndexError`` in ``extract_datetime_from_line``,
   on any such line after the first iteration); nor does a non-UTF-8 byte (``UnicodeDecodeError``).
2. NaN and infinite outputs are kept (written ``nan``, ``inf``). parse_log.py's value pattern
   ``[\\.\\deE+-]+`` skips ``nan``, so an iteration whose outputs are all ``nan`` has no row (17
   of 34 rows of an SSD log), and ``-nan`` crashes it (``float('-')``).
3. A single test evaluation is written. parse_log.py writes a row only when the next row starts
   or when it has as many columns as the first written row, so a lone row is dropped (a test
   file is missing for a log that tested once) and so is a last row cut short (a log killed
   while printing outputs loses its last iteration).
4. Two test nets: parse_log.py puts both in the same columns, so net 1 overwrites net 0 in the
   first row and later iterations get duplicate ``NumIters`` rows that cannot be told apart.
   Here each iteration is one row; net 0 keeps the printed names and net k >= 1 gets its own
   columns ``net<k>/<name>`` (e.g. ``net1/accuracy``).
5. ``LearningRate`` is the rate of the row's own iteration. parse_log.py takes the last ``lr``
   printed before the row's first output; Caffe (since 2015) prints ``Iteration N, lr`` after
   the outputs, so every train row shows the previous display's rate, and its
   ``fix_initial_nan_learning_rate`` copies the second row's rate into the first (the test at
   iteration 0 shows the rate of the second test). An unknown rate is empty, not ``nan``.
6. Columns are the union over the log, in first-seen order, with empty cells where a row has no
   value; parse_log.py takes them from the first row and crashes (``ValueError`` from
   ``DictWriter``) when a later row has another output (concatenated logs of different nets).
7. The year of glog's year-less prefix comes from the ``Log file created at:`` header, else
   ``--year``, else the current year, and rolls over when the month goes back; parse_log.py
   uses the log file's ctime, which is the copy's date for a copied log.
8. A log without a ``Solving`` line gives its rows (``Seconds`` from its first record);
   parse_log.py reads the whole file looking for that line and writes nothing. Outputs printed
   before ``Solving`` are not skipped either (parse_log.py skips every line up to it).
9. The 2014 format is read: ``Test score #k: v`` gives test columns ``score#k``, and the train
   file has a row per ``lr`` line (no ``Train net output`` exists then; parse_log.py writes
   neither file).
10. ``NumIters`` is an integer (``100``, not ``100.0``); lines end in ``\\n``, not ``\\r\\n``; both
    files are always written (header only when there are no rows; a log with no records at all
    also gets a one-line note on stderr); the files are named
    ``<stem>.train.csv``/``.test.csv``, not ``<file name>.train``/``.test``; no ``--delimiter``.
11. ``smoothed_loss`` and ``speed`` are in the JSON lines only, not in the Caffe CSV, so the CSV
    columns stay parse_log.py's.

Example:
    >>> import io, tempfile, pathlib
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "x.log"
    >>> _ = log.write_bytes(b"I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = nan\\n")
    >>> out = io.StringIO(); write_jsonl(parse_file("caffe", log, year=2015), out)
    1
    >>> out.getvalue()
    '{"ts":1424087919.623576,"step":0,"epoch":null,"batch":null,"phase":"train","name":"smoothed_loss","value":"nan","rank":null,"seq":0}\\n'
"""

from __future__ import annotations

import argparse
import csv
import errno
import itertools
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Iterator

from ava.errors import UsageError
from ava.monitor.regex import LineParser, Record
from ava.utils.fileio import os_reason

KINDS = ("caffe", "mxnet")
MAX_LINE = 16 << 20
_BLOCK = 1 << 20
_CAFFE_NOT_COLUMNS = frozenset({"smoothed_loss", "speed"})
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def make_parser(kind: str, *, year: int | None = None) -> LineParser:
    """A fresh parser for ``kind`` (``caffe`` or ``mxnet``); :class:`UsageError` otherwise."""
    if kind == "caffe":
        from ava.monitor.caffe import CaffeLogParser

        return CaffeLogParser(year=year)
    if kind == "mxnet":
        from ava.monitor.mxnet_log import MXNetLogParser

        return MXNetLogParser()
    raise UsageError(f"unknown log kind {kind!r}; use one of {', '.join(KINDS)}")


def iter_blocks(fh: BinaryIO, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """Blocks of about 1 MiB that end at a line end (``\\n``, else ``\\r``), except perhaps the
    last; a line longer than ``max_line`` keeps its first ``max_line`` bytes."""
    carry = b""
    overflow = False  # inside a line longer than max_line: drop bytes up to its end
    while True:
        block = fh.read(_BLOCK)
        if not block:
            break
        cut = block.rfind(b"\n")
        if cut < 0:
            cut = block.rfind(b"\r")
        if cut < 0:
            if not overflow:
                carry += block
                if len(carry) > max_line:
                    carry, overflow = carry[:max_line], True
            continue
        if overflow:
            first = min(i for i in (block.find(b"\n"), block.find(b"\r")) if i >= 0)
            buf = carry + block[first:cut + 1]
            overflow = False
        else:
            buf = carry + block[:cut + 1] if carry else block[:cut + 1]
        carry = block[cut + 1:]
        if len(carry) > max_line:
            carry, overflow = carry[:max_line], True
        yield buf
    if carry:
        yield carry


def iter_raw_lines(fh: BinaryIO, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """Undecoded lines of a binary stream, split on ``\\n``, ``\\r\\n`` and ``\\r``."""
    for buf in iter_blocks(fh, max_line):
        parts = buf.split(b"\n")
        if not parts[-1]:
            parts.pop()  # the block ends with a line end: no line after it
        for part in parts:
            if b"\r" in part:
                pieces = part.split(b"\r")
                if len(pieces) > 1 and not pieces[-1]:
                    pieces.pop()  # "\r\n": one line ending, not an extra empty line
                yield from pieces
            else:
                yield part


def parse_file(kind: str, path: str | os.PathLike[str], *, year: int | None = None) -> Iterator[Record]:
    """Records of a log file, streamed (see the module doc)."""
    parser = make_parser(kind, year=year)
    with open(path, "rb") as fh:
        if kind == "caffe":
            # Most of a Caffe log is net set-up and prototxt: the parser skips those lines by one
            # regex scan of each block rather than a call per line.
            parse_block = parser.parse_block  # type: ignore[attr-defined]
            for buf in iter_blocks(fh):
                records = parse_block(buf.decode("utf-8", "replace"))
                if records:
                    yield from records
            return
        parse = parser.parse_line
        for raw in iter_raw_lines(fh):
            records = parse(raw.decode("utf-8", "replace"))
            if records:
                yield from records


def to_jsonable(record: Record, seq: int, rank: int | None = None) -> dict[str, Any]:
    """``record`` with ``rank`` and ``seq`` added, keys in the contract's order, values encoded."""
    from ava.metrics.record import to_json_number  # imports ava.metrics: only when writing JSON

    ts = record.get("ts")
    out: dict[str, Any] = {"ts": round(ts, 6) if ts is not None else None, "step": record.get("step")}
    if "event" in record:
        for key, value in record.items():
            if key not in ("ts", "step"):
                out[key] = to_json_number(value) if type(value) is float else value
    else:
        out["epoch"] = record.get("epoch")
        out["batch"] = record.get("batch")
        out["phase"] = record["phase"]
        out["name"] = record["name"]
        out["value"] = to_json_number(record["value"])
    out["rank"] = rank
    out["seq"] = seq
    if record.get("net") is not None:
        out["net"] = record["net"]
    if record.get("unit") is not None:
        out["unit"] = record["unit"]
    return out


def _six(x: float) -> str:
    """``repr(round(x, 6))`` at a fraction of the cost (the same text for ``|x| < 1e10``).

    A glog time has six decimals, so ``repr`` (the shortest text that reads back) is usually
    already the answer; ``"%.6f"`` costs three times as much and is kept for the rest.
    """
    if -1e10 < x < 1e10:
        text = repr(x)
        dot = text.find(".")
        if 0 < dot and len(text) - dot <= 7 and "e" not in text:
            return text
        text = ("%.6f" % x).rstrip("0")
        return text + "0" if text.endswith(".") else text
    return repr(round(x, 6))


def write_jsonl(records: Iterable[Record], out: IO[str]) -> int:
    """Write one JSON object a line (``seq`` 0, 1, 2, ..., ``rank`` null); returns the count.

    The object is :func:`to_jsonable`'s. Metric records without epoch and batch (all of a Caffe
    log) are formatted from a cached middle part per (phase, name, net, unit), three times
    faster than the JSON encoder; the rest go through :func:`to_jsonable` and the encoder.
    """
    from ava.metrics.record import nonfinite

    isfinite = math.isfinite
    parts: dict[tuple[Any, ...], tuple[str, str]] = {}
    reprs: dict[float, str] = {}  # learning rates and the like repeat: format each once
    buf: list[str] = []
    append = buf.append
    seq = 0
    for seq, record in enumerate(records, 1):
        try:
            # The shape of every Caffe metric record: nine keys, no epoch/batch, a float value.
            # Anything else (an event has no "epoch") takes the encoder below.
            if record["epoch"] is not None or record["batch"] is not None or len(record) != 9:
                raise KeyError
            step, value, ts = record["step"], record["value"], record["ts"]
            if type(value) is not float or not (step is None or type(step) is int):
                raise KeyError
            key = (record["phase"], record["name"], record["net"], record["unit"])
        except KeyError:
            append(_dumps(to_jsonable(record, seq - 1)))
        else:
            part = parts.get(key)
            if part is None:
                head = to_jsonable({**record, "ts": None, "step": None, "value": 0.0}, 0)
                text = _dumps(head)
                mid = text[text.index('"epoch":'):text.index(',"value":') + 9]  # names are escaped
                tail = text[text.index(',"seq":0') + 8:-1]
                part = parts[key] = (mid, tail)
            if not (value and isfinite(value)):  # 0.0 == -0.0 and nan != nan: not cache keys
                shown = repr(value) if isfinite(value) else '"' + nonfinite(value) + '"'
            else:
                shown = reprs.get(value)
                if shown is None:
                    if len(reprs) > 4096:
                        reprs.clear()
                    shown = reprs[value] = repr(value)
            if ts is None:
                ts_text = "null"
            else:  # _six inlined: this loop runs once per record
                ts_text = repr(ts)
                dot = ts_text.find(".")
                if not (0 < dot and len(ts_text) - dot <= 7 and "e" not in ts_text and -1e10 < ts < 1e10):
                    ts_text = _six(ts)
            append(
                f'{{"ts":{ts_text},"step":{"null" if step is None else step},{part[0]}{shown}'
                f',"rank":null,"seq":{seq - 1}{part[1]}}}'
            )
        if len(buf) >= 4096:
            out.write("\n".join(buf) + "\n")
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")
    return seq


class _Table:
    """One CSV file: the open row, the rows done (spooled to disk) and the columns seen.

    A spooled row lists its cells in column order as far as its last cell; columns are only
    ever appended, so at the end each row is padded to the full header. Cells are numbers, so
    a spooled line never needs CSV quoting.
    """

    def __init__(self) -> None:
        self.spool = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.pending: list[str] = []
        self.columns: dict[str, int] = {"NumIters": 0, "Seconds": 1, "LearningRate": 2}
        self.row: list[Any] | None = None
        self.step: int | None = None
        self.lr_before: float | None = None
        self.ts_first: float | None = None
        self.ts_output: float | None = None

    def add(self, step: int | None, ts: float | None, column: str, value: Any, last_lr: float | None,
            base: float | None) -> None:
        index = self.columns.get(column)
        if index is None:
            index = self.columns[column] = len(self.columns)
        row = self.row
        if row is None or step != self.step or (index < len(row) and row[index] is not None):
            if row is not None:
                self.close(base)
            row = self.row = [None] * len(self.columns)
            self.step, self.lr_before, self.ts_first, self.ts_output = step, last_lr, ts, None
        elif index >= len(row):
            row.extend([None] * (index + 1 - len(row)))
        row[index] = value
        if index != 2 and self.ts_output is None:
            self.ts_output = ts

    def offer_lr(self, step: int | None, value: float) -> None:
        if self.row is not None and step == self.step and self.row[2] is None:
            self.row[2] = value

    def close(self, base: float | None) -> None:
        row = self.row
        if row is None:
            return
        self.row = None
        ts = self.ts_output if self.ts_output is not None else self.ts_first
        row[0] = self.step
        if row[2] is None:
            row[2] = self.lr_before
        cells = ["" if v is None else repr(v) if type(v) is float else str(v) for v in row]
        cells[1] = _six(ts - base) if ts is not None and base is not None else ""
        self.pending.append(",".join(cells))
        if len(self.pending) >= 1024:
            self.spool.write("\n".join(self.pending) + "\n")
            self.pending.clear()

    def write(self, path: Path) -> None:
        if self.pending:
            self.spool.write("\n".join(self.pending) + "\n")
            self.pending.clear()
        width = len(self.columns)
        self.spool.seek(0)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerow(list(self.columns))
            for line in self.spool:
                fh.write(line[:-1] + "," * (width - 1 - line.count(",")) + "\n")


def write_csv(records: Iterable[Record], out_dir: str | os.PathLike[str], stem: str, *,
              skip_names: Iterable[str] = ()) -> tuple[Path, Path]:
    """Write ``<stem>.train.csv`` and ``<stem>.test.csv`` (see the module doc); returns both paths.

    ``skip_names`` are metric names left out of the columns (``parse-log caffe`` leaves out
    ``smoothed_loss`` and ``speed``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skip = frozenset(skip_names)
    train, test = _Table(), _Table()
    base: float | None = None
    last_lr: float | None = None
    try:
        for record in records:
            ts = record.get("ts")
            if "event" in record:
                if record["event"] == "start" and base is None:
                    base = ts
                continue
            if base is None:
                base = ts
            name, step, value = record["name"], record.get("step"), record["value"]
            if name == "lr":
                test.offer_lr(step, value)  # a test at N is printed before "Iteration N, lr"
                if record["phase"] == "train":
                    train.add(step, ts, "LearningRate", value, last_lr, base)
                last_lr = value
                continue
            if name in skip:
                continue
            if record["phase"] == "train":
                train.add(step, ts, name, value, last_lr, base)
            elif record.get("batch") is not None:
                continue  # a validation pass's running values: a row each, all at one step
            else:
                net = record.get("net")
                column = f"net{net}/{name}" if net else name
                test.add(step, ts, column, value, last_lr, base)
        train.close(base)
        test.close(base)
        paths = out / f"{stem}.train.csv", out / f"{stem}.test.csv"
        train.write(paths[0])
        test.write(paths[1])
        return paths
    finally:
        train.spool.close()
        test.spool.close()


# -- command line -----------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``parse-log`` on an argparse subparsers object; its ``func(args, env)`` runs it."""
    p = subparsers.add_parser(
        "parse-log", help="parse a finished Caffe or MXNet log into metric records",
        description="Parse a finished training log. JSON lines (CONTRACT.md section 5) go to stdout, "
                    "or to DIR/<stem>.jsonl with --out; --format csv writes DIR/<stem>.train.csv and "
                    "DIR/<stem>.test.csv with Caffe parse_log.py's columns.",
    )
    p.add_argument("kind", choices=KINDS, help="which framework wrote the log")
    p.add_argument("log", help="the log file")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default: jsonl)")
    p.add_argument("--out", metavar="DIR", help="output directory (csv default: the current directory)")
    p.add_argument("--year", type=_year, help="the year a Caffe log starts in, for glog prefixes without one "
                                            "when there is no 'Log file created at:' header (default: this year)")
    p.set_defaults(func=run)
    return p


def _year(text: str) -> int:
    """``--year``: a calendar year a log can have been written in."""
    try:
        year = int(text)
    except ValueError:
        year = 0
    if not 1970 <= year <= 9999:
        raise argparse.ArgumentTypeError(f"{text!r} is not a year (1970-9999)")
    return year


def run(args: argparse.Namespace, env: Any = None) -> int:
    """Run ``parse-log``; returns the exit code (2 with a one-line reason for a bad input file)."""
    log_path = Path(args.log)
    problem = None
    if not log_path.exists():
        problem = "no such file"
    elif log_path.is_dir():
        problem = "is a directory, not a log file"
    elif not os.access(log_path, os.R_OK):
        problem = "is not readable"
    if problem:
        print(f"ava: parse-log: {args.log}: {problem}", file=sys.stderr)
        return 2
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"ava: parse-log: --out {args.out} is a file, not a directory", file=sys.stderr)
        return 2
    records = parse_file(args.kind, log_path, year=getattr(args, "year", None))
    stem = log_path.stem or log_path.name
    try:
        first = next(records, None)
        if first is None:  # the (empty) outputs are still written: a script finds what it expects
            print(f"ava: parse-log: {args.log}: no {args.kind} metrics or events in it "
                  f"({'an empty file' if log_path.stat().st_size == 0 else f'is it a {args.kind} log?'})",
                  file=sys.stderr)
        else:
            records = itertools.chain((first,), records)
        if args.format == "csv":
            skip = _CAFFE_NOT_COLUMNS if args.kind == "caffe" else ()
            write_csv(records, args.out or ".", stem, skip_names=skip)
        elif args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            with open(Path(args.out) / f"{stem}.jsonl", "w", encoding="utf-8") as fh:
                write_jsonl(records, fh)
        else:
            write_jsonl(records, sys.stdout)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # An output that cannot be written where --out (or the current directory) says: named.
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        print(f"ava: parse-log: {where}{os_reason(exc)}", file=sys.stderr)
        bad_out = isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError,
                                   PermissionError)) or exc.errno == errno.EROFS
        return 2 if bad_out else 1
    return 0

