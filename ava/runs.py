"""``ava runs list`` and ``ava runs show ID [--plot FILE.png]``: what the workspace's runs did.

Example:
    >>> import tempfile
    >>> from ava.workspace import Workspace
    >>> list_runs(Workspace.create(tempfile.mkdtemp()))
    []
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ava.errors import UsageError
from ava.train.status import STATUS_CRASHED, process_gone
from ava.workspace import Workspace

_LOSS_NAMES = ("loss", "smoothed_loss", "train_loss")
_TAIL = 1 << 18


@dataclass
class RunSummary:
    id: str
    status: str
    start_time: str | None
    duration_s: float | None
    last_step: int | None
    last_loss: Any


def _parse_time(text: Any) -> _dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _tail_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of the last part of a metrics file, newest first."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL))
            chunk = fh.read()
    except OSError:  # missing, or not a file: the run shows no last step
        return
    lines = chunk.split(b"\n")
    if size > _TAIL:
        lines = lines[1:]  # the first is probably cut
    for raw in reversed(lines[:-1]):
        if raw.strip():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def metrics_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(rank, file) of each rank's record in the run, lowest rank first: ``metrics.jsonl`` is
    rank 0's, ``metrics.rankN.jsonl`` rank N's (a node may hold only some of them)."""
    found = []
    for path in (run_dir / "logs").glob("metrics*.jsonl"):
        m = _RANK_FILE.fullmatch(path.name)
        if m:
            found.append((int(m.group(1) or 0), path))
    return sorted(found)


_RANK_FILE = re.compile(r"metrics(?:\.rank(\d{1,9}))?\.jsonl")


def summarize(run_dir: Path) -> RunSummary:
    try:
        doc = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):  # valid JSON, but not a status document
        doc = {}
    start, stop = _parse_time(doc.get("start_time")), _parse_time(doc.get("stop_time"))
    if doc.get("status") == "running" and process_gone(doc):
        # Killed without a word (SIGKILL, out of memory): not running, and its duration unknown.
        # The next start of the instance records it as crashed.
        doc = dict(doc, status=STATUS_CRASHED)
    elif start is not None and stop is None and doc.get("status") == "running":
        stop = _dt.datetime.now(_dt.timezone.utc)
    last_step = last_loss = None
    files = metrics_files(run_dir)
    for rec in _tail_records(files[0][1] if files else run_dir / "logs" / "metrics.jsonl"):
        if "event" in rec:
            continue
        if last_step is None and rec.get("step") is not None:
            last_step = rec["step"]
        if last_loss is None and rec.get("phase") == "train" and rec.get("name") in _LOSS_NAMES:
            last_loss = rec["value"]
        if last_step is not None and last_loss is not None:
            break
    status = doc.get("status")
    return RunSummary(run_dir.name, status if isinstance(status, str) else "unknown",
                      doc.get("start_time") if isinstance(doc.get("start_time"), str) else None,
                      (stop - start).total_seconds() if start and stop else None, last_step, last_loss)


def list_runs(ws: Workspace) -> list[RunSummary]:
    if not ws.runs_dir.is_dir():
        return []
    return [summarize(d) for d in sorted(ws.runs_dir.iterdir()) if d.is_dir()]


class MetricLines:
    """The metric records of a ``metrics.jsonl`` (events left out), skipping what is not one: a
    line that is not JSON, not an object, or has no name or value (a torn last line is not
    counted). ``skipped`` counts them, for one note after reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            print(f"ava: cannot read {self.path}: {exc.strerror or exc}", file=sys.stderr)
            return
        with fh:
            for raw in fh:
                if not raw.endswith(b"\n") or not raw.strip():
                    continue  # the line being written, or a blank one
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or "event" in rec:
                    self.skipped += rec is None or not isinstance(rec, dict)
                    continue
                if not isinstance(rec.get("name"), str) or "value" not in rec:
                    self.skipped += 1
                    continue
                yield rec

    def note(self) -> None:
        if self.skipped:
            print(f"ava: skipped {self.skipped} line(s) of {self.path} that are not metric records", file=sys.stderr)


def label(rec: dict[str, Any]) -> str:
    """A metric's name as shown: a Caffe test net k >= 1 as ``net<k>/<name>`` (as ``parse-log``'s
    CSV names its columns), so two test nets stay two rows and two curves."""
    net = rec.get("net")
    return f"net{net}/{rec['name']}" if type(net) is int and net > 0 else rec["name"]


def last_values(path: Path) -> dict[tuple[str, str], tuple[int | None, Any]]:
    """(phase, name) -> (step, value) of the last record of each metric."""
    lines = MetricLines(path)
    out: dict[tuple[str, str], tuple[int | None, Any]] = {}
    for rec in lines:
        out[(str(rec.get("phase") or "train"), label(rec))] = (rec.get("step"), rec["value"])
    lines.note()
    return out


def plot(path: Path, out: Path) -> int:
    """Draw each metric against step (train, val and test on the same axes); returns the panel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not path.is_file():
        raise UsageError(f"{path} is not a file: this run has no metrics to plot")
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    lines = MetricLines(path)
    stepless = 0
    for rec in lines:
        step, raw = rec.get("step"), rec["value"]
        if type(step) is not int or isinstance(raw, bool):
            stepless += type(step) is not int
            continue
        try:
            value = float(raw)  # "nan"/"inf" strings parse as floats too
        except (TypeError, ValueError):
            lines.skipped += 1
            continue
        xs, ys = series.setdefault(label(rec), {}).setdefault(str(rec.get("phase") or "train"), ([], []))
        xs.append(step)
        ys.append(value)
    lines.note()
    if not series:
        why = f": its {stepless} metric records have no step" if stepless else ""
        raise UsageError(f"{path} holds no metrics to plot{why}")
    names = sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for phase, (xs, ys) in sorted(series[name].items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=phase)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write the plot to {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return len(names)


def plot_target(text: str) -> Path:
    """Where ``--plot`` writes: the path given, ``.png`` added when it has no suffix; a clear
    error for a directory, a missing directory or a format matplotlib cannot write."""
    out = Path(text)
    if out.is_dir():
        raise UsageError(f"--plot {text}: is a directory; give a file name such as {out / 'metrics.png'}")
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    if not out.parent.is_dir():
        raise UsageError(f"--plot {text}: directory {out.parent} does not exist")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'ava-sdk[plot]'") from None

    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise UsageError(f"--plot {text}: cannot write {out.suffix} files; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _cmd_list(args: argparse.Namespace, ws: Workspace) -> int:
    runs = list_runs(ws)
    if not runs:
        print(f"no runs in {ws.runs_dir}")
        return 0
    rows = [("ID", "STATUS", "START", "DURATION", "LAST STEP", "LAST LOSS")]
    for r in runs:
        duration = f"{r.duration_s:.1f}s" if r.duration_s is not None else "-"
        rows.append((r.id, r.status, r.start_time or "-", duration, _fmt(r.last_step), _fmt(r.last_loss)))
    _print_table(rows)
    return 0


def _cmd_show(args: argparse.Namespace, ws: Workspace) -> int:
    from ava.train.ids import check_instance_id

    run_dir = ws.run_dir(check_instance_id(args.id))
    if not run_dir.is_dir():
        raise UsageError(f"no run {args.id!r} in {ws.runs_dir}; `ava runs list` shows the runs")
    target = plot_target(args.plot) if args.plot else None
    s = summarize(run_dir)
    print(f"{s.id}: {s.status}, started {s.start_time or '-'}" + (f", {s.duration_s:.1f}s" if s.duration_s else ""))
    files = metrics_files(run_dir)
    ranked = len(files) > 1 or any(rank for rank, _ in files)  # a distributed run: say whose value it is
    rows = [(("RANK",) if ranked else ()) + ("PHASE", "METRIC", "STEP", "LAST VALUE")]
    for rank, path in files:
        values = last_values(path)
        rows += [((str(rank),) if ranked else ()) + (phase, name, _fmt(step), _fmt(value))
                 for (phase, name), (step, value) in sorted(values.items())]
    _print_table(rows)
    if target is not None:
        rank, metrics = files[0] if files else (0, run_dir / "logs" / "metrics.jsonl")
        n = plot(metrics, target)
        print(f"plotted {n} metrics to {target}" + (f" (rank {rank})" if ranked else ""))
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def add_parser(subparsers: Any) -> None:
    """Register ``runs list`` and ``runs show`` on the CLI's subparsers."""
    p = subparsers.add_parser("runs", help="list the workspace's training instances, or show one")
    sub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    sub.required = True
    p_list = sub.add_parser("list", help="every instance with status, start, duration, last step and loss")
    p_list.set_defaults(func=lambda a, env: _cmd_list(a, Workspace.discover(env)))
    p_show = sub.add_parser("show", help="the last value of each metric; --plot draws the curves")
    p_show.add_argument("id")
    p_show.add_argument("--plot", metavar="FILE.png", help="write the metrics against step to this PNG")
    p_show.set_defaults(func=lambda a, env: _cmd_show(a, Workspace.discover(env)))
