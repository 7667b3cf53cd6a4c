"""How a :class:`~ava.train.base.TrainInstance` ends: ``done()``, the preemption path, and the
process-wide hooks that finish what is still open (at exit, on a signal, across ``fork``).

:class:`Finishing` holds the instance's ending methods (the instance inherits them); the hooks
keep the open instances in :data:`_live`.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ava.log.logger import run_log_handler
from ava.metrics.forward import ChildForwarder, ChildListener
from ava.metrics.sinks.http import OFFSET_SUFFIX
from ava.storage.base import join_url
from ava.storage.registry import get_storage
from ava.train.status import FINAL_STATUSES, STATUS_DONE, STATUS_FAILED, STATUS_PREEMPTED, now_rfc3339
from ava.utils import preempt

if TYPE_CHECKING:
    from ava.train.base import TrainInstance

log = logging.getLogger("ava.train.base")  # the instance's messages keep the logger they always had

#: The most done() waits for metrics to reach metrics.jsonl (a stalled disk), before the network budget.
LOCAL_FLUSH_TIMEOUT = 60.0

# Open instances, held until done(): one that goes out of scope unfinished is still finished at exit.
_live: "set[TrainInstance]" = set()


class Finishing:
    """``done()``, ``exit_preempted()`` and what they share; mixed into ``TrainInstance``."""

    _env: Any
    _pid: int
    _status_doc: dict[str, Any] | None

    def exit_preempted(self) -> None:
        """Leave after a stop request: flush metrics, wait (bounded) for uploads and delivery, set
        status ``preempted``, and raise :class:`SystemExit` with 128 + the signal's number.

        Does nothing when no stop was requested, so it can be called at every step boundary.
        """
        if not preempt.STOP.requested:
            return
        preempt.begin()
        started = time.monotonic()
        preempt.run_finishers(self._env.preempt_timeout)
        log.info("preemption path took %.2f s", time.monotonic() - started)
        preempt.end()
        raise SystemExit(preempt.STOP.exit_code)

    def _finishing(self, err_msg: str) -> bool:
        """The start of ``done()`` (under its lock): False when the instance is finished already
        (a failure reported after the end is said, not lost silently); else the hooks adapters
        registered to hand over what they hold have run, and True."""
        if self._status_doc is None or self._status_doc.get("status") in FINAL_STATUSES:
            if err_msg and self._status_doc is not None:
                log.warning("instance %s is %s already; done(err_msg=%r) changes nothing (call done() once, "
                            "at the end)", self.training_ins_id, self._status_doc.get("status"), str(err_msg)[:200])
            return False
        for hook in self._before_done:
            try:
                hook()
            except Exception as exc:  # noqa: BLE001 - finishing must go on
                log.error("instance %s: %s", self.training_ins_id, exc)
        return True

    def _finish_preempted(self, budget: float, quick: bool) -> None:
        if os.getpid() != self._pid:
            return
        if not quick:
            self.done(timeout=budget)
            return
        # A second signal: what is buffered goes to metrics.jsonl (bounded), then the status, never
        # waiting for a lock this thread may hold.
        if self._writer is not None:
            self._writer.flush_quick(0.5)
        doc = self._status_doc
        if self.rank == 0 and doc is not None and doc.get("status") not in FINAL_STATUSES:
            self._status_doc = self._status.finish(doc, STATUS_PREEMPTED, self._preempt_message(),
                                                   preempt.STOP.exit_code)

    @staticmethod
    def _preempt_message() -> str:
        return f"preempted by {preempt.signal_name(preempt.STOP.signum)}"

    def done(self, err_msg: str = "", *, exit_code: int | None = None, timeout: float | None = None) -> None:
        """Finish the instance: write buffered metrics, wait for delivery, then write the status.

        Writing ``metrics.jsonl`` may take up to :data:`LOCAL_FLUSH_TIMEOUT` seconds (only a
        stalled disk takes that long); delivery to the platform at most ``timeout`` seconds
        (``AVA_DONE_TIMEOUT``, default 10), after which the rest waits for the next run.

        ``done`` with an empty ``err_msg`` is a success; a non-empty one marks it ``failed``.
        Calling it again does nothing.
        """
        if os.getpid() != self._pid:
            log.warning("done() called in a forked child of the instance's process; ignored")
            return
        with self._done_lock:
            if not self._finishing(err_msg):
                return
            preempted = preempt.STOP.requested
            if timeout is None:
                timeout = self._env.preempt_timeout if preempted else self._env.done_timeout
            budget = timeout
            end = time.monotonic() + budget
            # Uploads first: their upload_bytes/upload_seconds records still reach the writer.
            if self._uploader is not None:
                if not self._uploader.wait(budget):
                    missing = self._uploader.missing()
                    waiting = [n for n in self._uploader.pending() if n not in missing]
                    if waiting:
                        log.warning("instance %s: snapshots %s not uploaded within %.1f s; their files are kept and "
                                    "the next run of this instance uploads them", self.training_ins_id,
                                    _some(waiting), budget)
                    for name, paths in missing.items():  # not "uploaded later": their files are not there
                        log.error("instance %s: snapshot %s names files that do not exist: %s; it is uploaded only "
                                  "if they appear before the next run of this instance", self.training_ins_id,
                                  name, ", ".join(paths))
                        self.log_event("snapshot_failed", snapshot=name, missing=paths, reason="files do not exist")
                self._uploader.close(timeout=max(0.0, end - time.monotonic()))
            if self._children is not None:  # what forked children sent before this point
                self._children.drain()
                self._children.close()
                self._children = None
            # Writing the local record is not network work: it gets its own bound, so a short
            # AVA_DONE_TIMEOUT never costs records that are already in memory.
            if self._writer is not None and not self._writer.close(timeout=LOCAL_FLUSH_TIMEOUT + budget):
                log.warning("instance %s: metrics not fully written to %s", self.training_ins_id, self.metrics_path)
            if self._http is not None:
                # A refusal was said when it came (once, with its reason): no second, vaguer line.
                if not self._http.wait(end - time.monotonic()) and not self._http.refused:
                    log.warning("instance %s: %d bytes of metrics not delivered to %s within %.1f s; they stay in "
                                "%s and are sent when this instance is resumed", self.training_ins_id,
                                self._http.backlog_bytes(), self._http.base_url, budget, self.metrics_path)
                self._http.stop(timeout=max(0.0, end - time.monotonic()))
            status = STATUS_FAILED if err_msg else STATUS_DONE
            if preempted:  # whatever ends a preempted run, it was preempted
                status = STATUS_PREEMPTED
                err_msg = self._preempt_message() + (f"; {err_msg}" if err_msg else "")
                exit_code = preempt.STOP.exit_code if exit_code is None else exit_code
            if self.rank != 0:
                self._status_doc = dict(self._status_doc, status=status, err_msg=str(err_msg or ""),
                                        stop_time=now_rfc3339(), exit_code=exit_code)
                self._forget()
                self._upload_logs(end)
                return
            # The finisher stays registered until the status is written: a second signal while it
            # is being written still finishes it (quick path) instead of leaving it "running".
            try:
                self._status_doc = self._status.finish(self._status_doc, status, str(err_msg or ""), exit_code)
            finally:
                self._forget()
            if self._platform is not None:
                # What is left of done()'s budget (at least half a second): one bound for the whole call.
                self._platform.finish(self.training_ins_id, status, str(err_msg or ""),
                                      self._status_doc["start_time"], self._status_doc["stop_time"],
                                      deadline=end - time.monotonic())
            log.info("training instance %s %s", self.training_ins_id, status)
            self._upload_logs(end)

    def _upload_logs(self, end: float) -> None:
        """This rank's files of ``run/<id>/logs/`` (and rank 0's ``status.json``) to
        ``<storage>/<id>/logs/``, within what is left of done()'s budget. Each is
        copied first: run.log may still grow while it goes up. On failure the files stay here,
        and the next run of the instance uploads them again (with what it adds)."""
        own = (lambda name: ".rank" not in name) if self.rank == 0 else (lambda name: f".rank{self.rank}." in name)
        try:
            files = [p for p in sorted(self.logs_dir.iterdir())
                     if p.is_file() and own(p.name) and not p.name.endswith(OFFSET_SUFFIX)]
        except OSError as exc:
            log.warning("instance %s: logs not uploaded: %s", self.training_ins_id, exc)
            return
        if self.rank == 0 and self.status_path.is_file():
            files.append(self.status_path)
        target = join_url(self.storage_url, "logs")
        failed: list[BaseException] = []

        def upload() -> None:
            try:
                store = get_storage(target)
                with tempfile.TemporaryDirectory(prefix="ava-logs-") as tmp:
                    for path in files:
                        copy = Path(tmp) / path.name
                        shutil.copyfile(path, copy)
                        shutil.copymode(path, copy)  # run.log is 0600: it may quote what keys protect
                        store.upload(copy, join_url(target, path.name))
            except Exception as exc:  # noqa: BLE001 - reported below, never raised from done()
                failed.append(exc)

        left = end - time.monotonic()
        worker = threading.Thread(target=upload, name="ava-logs-upload", daemon=True)
        try:
            if left > 0:  # AVA_DONE_TIMEOUT bounds this too
                worker.start()
                worker.join(left)
        except RuntimeError as exc:  # the interpreter is shutting down: no new threads
            failed.append(exc)
        if left <= 0 or worker.is_alive() or failed:
            why = str(failed[0]) if failed else f"no time left of the {self._env.done_timeout:g} s done() may take"
            log.warning("instance %s: logs not uploaded to %s (%s); they stay in %s", self.training_ins_id,
                        target, why, self.logs_dir)

    def _forget(self) -> None:
        """This instance is finished: off the exit and preemption lists; signals back as they were
        when it was the last open one."""
        _live.discard(self)
        preempt.remove_finisher(id(self))
        if not _live and not preempt.STOP.requested:
            preempt.uninstall()


class _Held(logging.Handler):
    """Warnings of ava's loggers while an instance opens, before its run.log exists: they reach
    the console as usual, and run.log once it is set up."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 100:
            self.records.append(record)
        # Being a handler, this one keeps logging's last resort (stderr) from running: do its part.
        if not self._others_take(record) and logging.lastResort is not None \
                and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)

    def _others_take(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self and record.levelno >= h.level for h in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None  # type: ignore[assignment]
        return False

    def replay_into_run_log(self) -> None:
        handler = run_log_handler()
        if handler is not None:
            for record in self.records:
                handler.handle(record)
        self.records.clear()


def _some(names: list[str], shown: int = 10) -> str:
    """``names`` for a message: the first ``shown`` of them, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _weak_finisher(ref: "weakref.ref[TrainInstance]") -> preempt.Finisher:
    def finish(budget: float, quick: bool) -> None:
        ins = ref()
        if ins is not None:
            ins._finish_preempted(budget, quick)
    return finish


def _finish_at_exit() -> None:
    """An instance still open at exit: failed if an exception is ending the process, else done."""
    last = getattr(sys, "last_value", None)
    for ins in list(_live):
        try:
            if preempt.STOP.requested:
                ins.done()  # status preempted
            elif last is not None:
                ins.done(err_msg=f"{type(last).__name__}: {last}")
            else:
                log.warning("instance %s: the process exits without done(); marking it done", ins.training_ins_id)
                ins.done()
        except Exception as exc:  # noqa: BLE001 - never fail the interpreter's exit
            sys.stderr.write(f"ava: could not finish instance {ins.training_ins_id}: {exc}\n")


atexit.register(_finish_at_exit)


def _before_fork() -> None:
    """A child is about to be forked: give each open instance a listener for what it logs."""
    for ins in list(_live):
        if ins._children is None and ins._writer is not None and os.getpid() == ins._pid:
            try:
                ins._children = ChildListener(ins._writer.log_metrics, ins._writer.log_event)
            except OSError as exc:
                log.warning("metrics from forked children of instance %s cannot be recorded: %s",
                            ins.training_ins_id, exc)


def _after_fork_in_child() -> None:
    """In the child: the instances log through the parent's listener, and are never finished here."""
    for ins in list(_live):
        if ins._children is not None:
            forwarder = ChildForwarder(ins._children.address)
            ins.log_metrics = forwarder.log_metrics  # type: ignore[method-assign]
            ins.log_event = forwarder.log_event  # type: ignore[method-assign]
            ins._children.forget_in_child()
        ins._children = None
    _live.clear()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
