"""``ava run [--parser caffe|mxnet|none] [--metric NAME=REGEX ...] [--id ID] -- CMD ...``

Runs CMD inside a training instance: its output streams to the console and to ``run.log``, a
log parser turns it into metric records, the snapshots it announces are uploaded in the
background, and the instance's status follows CMD's exit code (``failed`` with the last error
lines when it is not 0). ``ava run`` exits with CMD's code.

SIGTERM, SIGINT or SIGHUP (a closed terminal) to ``ava run`` is passed to CMD's process group
(``--stop-signal`` chooses what CMD gets; with ``--parser caffe`` it is SIGINT, on which Caffe
writes a snapshot and stops); the snapshot is uploaded within ``AVA_PREEMPT_TIMEOUT``, the
status becomes ``preempted`` and ``ava run`` exits with 128 + the signal's number. A second
signal kills CMD and exits at once.

A script in CMD that opens its own ``TrainInstance()`` joins this instance
(:mod:`ava.train.attached`): what it records comes here, and the parser's records stop.

Example:
    $ ava run --parser caffe -- caffe train -solver solver.prototxt
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

from ava.env import AVA_RUN_LISTENER, AVA_TRAINING_INSTANCE_ID, AVA_WORKSPACE, Env
from ava.errors import UsageError
from ava.metrics.forward import ChildListener
from ava.utils import preempt

log = logging.getLogger(__name__)

_TAIL_LINES = 20


class _Tail:
    """The last lines of output, for the status's error message."""

    def __init__(self, n: int = _TAIL_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=n)

    def __call__(self, line: str) -> None:
        if line.strip() and not _AVA_INFO.match(line):
            self.lines.append(line)

    def error_text(self) -> str:
        lines = list(self.lines)
        # Prefer what looks like an error (glog's E/F lines, Python tracebacks), else the tail.
        flagged = [ln for ln in lines if _GLOG_ERROR.match(ln) or "Error" in ln or "error" in ln or "Traceback" in ln]
        return "\n".join((flagged or lines)[-5:])[-2000:]


_GLOG_ERROR = re.compile(r"[EF]\d{4}")  # glog's E/F lines (E0512 10:11:12...); not any line starting E or F
# ava's own INFO/WARNING lines in the command's output (a joined script's "instance X done"): no error text
_AVA_INFO = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?:DEBUG|INFO|WARNING) \S+\[\d+\] (?:\S+ )?ava[.:]")


def run(args: argparse.Namespace, env: Env) -> int:
    from ava.monitor.hooks import LogMetricsHook, SnapshotHook
    from ava.monitor.regex import RegexParser
    from ava.parse_log import make_parser
    from ava.train import base as train
    from ava.train.resume import last_progress
    from ava.utils import cmd

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("nothing to run: give the command after --, e.g. ava run --parser caffe -- caffe train ...")
    regex = RegexParser.from_specs(args.metric) if args.metric else None
    for f in args.snapshot_file or ():  # before the instance opens: a usage error, not a failed run
        if Path(f).is_dir():
            raise UsageError(f"--snapshot-file {f}: is a directory; give files (the option can be repeated)")
        if not Path(f).is_file():  # every snapshot would wait for it, and none would be confirmed
            raise UsageError(f"--snapshot-file {f}: no such file")
    ins = train.TrainInstance(args.id, env=env)
    if regex is not None and regex.counted:  # a resumed instance: its counted steps go on, not from 0
        _, last = last_progress(ins.metrics_path, ins.rank)
        if last is not None:
            regex.continue_after(last)
    hooks: list[Any] = []
    snapshots = None
    if args.parser != "none":
        # One parser for metrics and snapshots: a snapshot gets the step the log is at.
        snapshots = SnapshotHook(ins, other_files=args.snapshot_file or ())
        hooks.append(LogMetricsHook(ins, make_parser(args.parser), snapshots=snapshots))
    if regex is not None:
        hooks.append(LogMetricsHook(ins, regex))
    tail = _Tail()
    hooks.append(tail)
    stop = args.stop_signal or ("INT" if args.parser == "caffe" else None)
    signal_map = {sig: _signum(stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)} if stop else None
    # A TrainInstance() in CMD (a guide-style script) joins this instance: ava.train.attached.
    script = _ScriptEnd()

    def joined() -> None:  # the command records for itself: its records, not the parser's (twice)
        parsers = [h for h in hooks if isinstance(h, LogMetricsHook) and h.enabled]
        for hook in parsers:
            hook.enabled = False
        if parsers:
            log.info("the command opened its own TrainInstance: what it records is taken, the metrics and "
                     "snapshots %s reads from its output are not", "--parser/--metric")

    listener = ChildListener(ins.log_metrics, ins.log_event, save_snapshot=_snapshot_saver(ins), finish=script,
                             joined=joined)
    child_env = {**os.environ, AVA_TRAINING_INSTANCE_ID: ins.training_ins_id,
                 AVA_WORKSPACE: str(ins.workspace.root), AVA_RUN_LISTENER: listener.address}
    code = 1
    try:
        # After a stop request the command has AVA_PREEMPT_TIMEOUT to stop, as a training does.
        code = cmd.run_and_forward(command, hooks, signal_map=signal_map, kill_after=env.preempt_timeout,
                                   env=child_env)
    finally:
        listener.drain()  # what the command sent before it exited
        listener.close()
        if snapshots is not None:
            snapshots.flush()
        if preempt.STOP.requested:  # status preempted, whatever CMD's code was
            log.info("%s ended with code %d after %s", command[0], code, preempt.signal_name(preempt.STOP.signum))
            ins.done(exit_code=preempt.STOP.exit_code)
            code = preempt.STOP.exit_code
        elif code == 0 and not script.err_msg:
            ins.done(exit_code=0)
        elif code == 0:  # the script said it failed (done(err_msg=...)) and still exited 0
            ins.done(err_msg=script.err_msg, exit_code=0)
        else:
            what = _how_it_ended(code)
            detail = getattr(code, "reason", None) or script.err_msg or tail.error_text()
            ins.done(err_msg=f"{command[0]} {what}" + (f": {detail}" if detail else ""), exit_code=code)
    return code


class _ScriptEnd:
    """What a script's joined instance said at its ``done()`` (its ``err_msg``)."""

    def __init__(self) -> None:
        self.err_msg = ""

    def __call__(self, err_msg: str, exit_code: Any) -> None:
        if err_msg:
            self.err_msg = err_msg


def _snapshot_saver(ins: Any) -> Any:
    """``save_snapshot`` of a joined script, done here; refused or failed, it is said and recorded."""
    from ava.monitor.hooks import save_or_report

    def save(files: list[str], name: str, meta: dict[str, Any], step: int | None = None) -> None:
        save_or_report(ins, [Path(f) for f in files], name, meta, step)

    return save


def _how_it_ended(code: int) -> str:
    """"exited with code N" or "was killed by signal N (NAME)", from what ended it, not the number."""
    sig = getattr(code, "signal", None)
    if sig is not None:
        return f"was killed by signal {sig}{_signal_suffix(sig)}"
    text = f"exited with code {code}"
    if 128 < code < 128 + 65:  # a shell reports a child killed by signal N as 128 + N
        text += f" (a shell's code for a child killed by signal {code - 128}{_signal_suffix(code - 128)})"
    return text


def _signal_suffix(sig: int) -> str:
    try:
        return f" ({signal.Signals(sig).name})"
    except ValueError:
        return ""


def _signum(name: str) -> int:
    return int(getattr(signal, f"SIG{name}"))


def add_parser(subparsers: Any) -> None:
    """Register ``run`` on the CLI's subparsers."""
    p = subparsers.add_parser("run", help="run a training command inside a training instance",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--parser", choices=("caffe", "mxnet", "none"), default="none",
                   help="how to read metrics from the output (default: none)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=REGEX",
                   help="a metric to read with a regex: the first group is the value, a group named step sets the step")
    p.add_argument("--id", help="the training instance id (default: $AVA_TRAINING_INSTANCE_ID, else a new one)")
    p.add_argument("--snapshot-file", action="append", metavar="FILE",
                   help="a file to upload with every snapshot (repeatable)")
    p.add_argument("--stop-signal", type=str.upper, choices=("TERM", "INT", "HUP", "USR1", "USR2"),
                   help="the signal CMD gets when ava run is asked to stop (default: INT with --parser caffe, "
                        "else the signal received)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=run)
