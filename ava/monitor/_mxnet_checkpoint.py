"""The MXNet epoch-end callback: hands each epoch's checkpoint to the snapshot uploader.

How the checkpoint files are named and found is described in ``ava.monitor.mxnet``'s module
doc; ``ava.monitor.mxnet`` re-exports these names.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

from ava.errors import UsageError
from ava.monitor.hooks import other_files_of, save_or_report
from ava.monitor._mxnet_shared import _capture_validation, _Guard, _positive_int, _state

# The adapter's logger: records keep the name they had when this code lived in mxnet.py.
log = logging.getLogger("ava.monitor.mxnet")

#: How long the epoch-end callback waits (in the background) for a checkpoint file to appear.
DEFAULT_WAIT_TIMEOUT = 120.0
_POLL = 0.1
_WARN_AFTER = 5.0  # a checkpoint still missing this long after its epoch ended is warned about
_STATES_GRACE = 0.5  # how long a .states is looked for once its .params is there


# --- the epoch-end callback -------------------------------------------------------------------------
class _OrderedSubmitter:
    """Hands snapshots to the uploader in epoch order; one whose files are missing waits on a thread."""

    def __init__(self, train_ins: Any, timeout: float) -> None:
        self._ins_ref = weakref.ref(train_ins)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Callable[[], tuple[list[Path], list[str]]], str, dict[str, Any],
                                             int | None, float]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.settling = False  # settle() runs: the instance finishes, nothing more is waited for

    def submit(self, resolve: Callable[[], tuple[list[Path], list[str]]], name: str, meta: dict[str, Any],
               step: int | None) -> None:
        with self._lock:
            if not self._queue:
                files, missing = resolve()
                if not missing:
                    self._save(files, name, meta, step)
                    return
            self._queue.append((resolve, name, meta, step, time.monotonic() + self.timeout))
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ava-mxnet-checkpoint-wait", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no snapshot is waiting for its files; False on timeout."""
        return self._idle.wait(timeout)

    def _save(self, files: list[Path], name: str, meta: dict[str, Any], step: int | None) -> None:
        ins = self._ins_ref()
        if ins is None:
            return
        save_or_report(ins, files, name, meta, step)

    def _run(self) -> None:
        warned = False
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._idle.set()
                    return
                item = self._queue[0]
            resolve, name, meta, step, deadline = item
            try:
                files, missing = resolve()
            except Exception as exc:  # noqa: BLE001 - a background thread reports, never dies
                log.error("snapshot %s: %s (a snapshot already submitted is uploaded by the next run)", name, exc)
                files, missing = [], []
            if missing and time.monotonic() < deadline:
                if not warned and time.monotonic() >= deadline - self.timeout + _WARN_AFTER:
                    warned = True
                    log.warning("snapshot %s: no %s yet, %.0f s after the epoch ended; still looking for %.0f s. "
                                "If do_checkpoint writes elsewhere, give its prefix to "
                                "get_epoch_end_callback(..., prefix=...)", name, ", ".join(missing), _WARN_AFTER,
                                self.timeout - _WARN_AFTER)
                time.sleep(_POLL)  # a daemon thread polling the disk: nothing else to wake it
                continue
            with self._lock:
                if not self._queue or self._queue[0] is not item:
                    continue  # settle() took it meanwhile
                self._queue.popleft()
                if files and not missing:
                    self._save(files, name, meta, step)
                elif missing:
                    self._report_missing(name, step, missing, f"not written within {self.timeout:.0f} s")

    def settle(self) -> None:
        """The instance is finishing: submit the snapshots whose files are there now, and report
        the others as not uploaded (nothing will wait for them any more)."""
        self.settling = True
        with self._lock:
            while self._queue:
                resolve, name, meta, step, _ = self._queue.popleft()
                try:
                    files, missing = resolve()
                except Exception as exc:  # noqa: BLE001 - finishing must go on
                    log.error("snapshot %s: %s", name, exc)
                    continue
                if not missing:
                    self._save(files, name, meta, step)
                else:
                    self._report_missing(name, step, missing, "not written when the instance finished")

    def _report_missing(self, name: str, step: int | None, missing: list[str], reason: str) -> None:
        log.error("snapshot %s not uploaded: %s %s. If do_checkpoint writes elsewhere, give its prefix to "
                  "get_epoch_end_callback(..., prefix=...)", name, ", ".join(missing), reason)
        ins = self._ins_ref()
        if ins is not None:
            ins.log_event("snapshot_failed", step=step, snapshot=name, missing=missing, reason=reason)


def find_checkpoint(directory: str | Path, number: int) -> tuple[Path, Path] | None:
    """The newest ``<prefix>-<number:04d>.params`` in ``directory`` with its ``<prefix>-symbol.json``."""
    suffix = f"-{number:04d}.params"
    best: tuple[float, Path, Path] | None = None
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return None
    for params in entries:
        if not params.name.endswith(suffix):
            continue
        symbol = params.with_name(params.name[: -len(suffix)] + "-symbol.json")
        try:
            mtime = params.stat().st_mtime
            if not symbol.is_file():
                continue
        except OSError:
            continue
        if best is None or mtime > best[0]:
            best = (mtime, params, symbol)
    return None if best is None else (best[2], best[1])


class EpochEndCallback:
    """Epoch-end callback for ``Module.fit``: hands the epoch's checkpoint to the snapshot uploader.

    Put it beside ``mx.callback.do_checkpoint(prefix, period)`` in ``epoch_end_callback`` (after it
    is best; before it works too, see the module doc). Every ``epoch_interval`` epochs it submits
    snapshot ``epoch-NNNN`` (NNNN = epoch + 1) with ``prefix-symbol.json``, ``prefix-NNNN.params``,
    ``prefix-NNNN.states`` when present, and ``other_files``; it returns at once (the upload runs
    in the background). In the one case that uses a thread of its own (no ``prefix``, and the
    first checkpoint not written yet), the files are looked for until ``wait_timeout`` (a warning
    after 5 s names the pattern); ``train_ins.done()`` then submits them if they are there, or
    logs an error and records a ``snapshot_failed`` event for each one that never appeared.

    Args:
        train_ins: the instance whose storage receives the snapshots.
        batch_of_epoch: batches per epoch, for the snapshot's ``step`` when no batch callback runs.
        epoch_interval: the ``period`` given to ``do_checkpoint``.
        other_files: more files to upload with every snapshot (labels, configs...).
        prefix: ``do_checkpoint``'s prefix; None finds the newest ``*-NNNN.params`` with its
            ``*-symbol.json`` in ``train_ins.get_snapshot_base_path()``.
        wait_timeout: without ``prefix``, how long the first checkpoint is looked for when it is
            not there yet (in the background).

    Example:
        >>> import tempfile
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-mx-e", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> cb = EpochEndCallback(ins, batch_of_epoch=45, prefix=ins.get_snapshot_base_path() + "/model")
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, batch_of_epoch: int | None = None, epoch_interval: int = 1,
                 other_files: Sequence[str | Path] | None = (), prefix: str | Path | None = None, *,
                 wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> None:
        self._ins = train_ins
        self.batch_of_epoch = None if batch_of_epoch is None else _positive_int(batch_of_epoch, "batch_of_epoch")
        self.epoch_interval = _positive_int(epoch_interval, "epoch_interval")
        self.other_files = other_files_of(other_files)
        self.prefix = None if prefix is None else str(Path(prefix).absolute())
        self.snapshot_dir = Path(train_ins.get_snapshot_base_path())
        self._learned: str | None = None  # the prefix found in the snapshot directory
        self._params_seen: dict[int, float] = {}  # checkpoint number -> when its .params was first seen
        self._state = _state(train_ins)
        if self.batch_of_epoch:
            self._state.batch_of_epoch = self.batch_of_epoch
        _capture_validation(train_ins, None, self.batch_of_epoch)
        self._submitter = _OrderedSubmitter(train_ins, float(wait_timeout))
        self._state.submitters.add(self._submitter)
        self._guard = _Guard("ava mxnet epoch-end callback")

    def __call__(self, epoch: int, symbol: Any = None, arg_params: Any = None, aux_params: Any = None) -> None:
        try:
            self._on_epoch(int(epoch))
        except Exception as exc:  # noqa: BLE001
            self._guard.report(exc)
        self._state.leave_if_preempted()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no checkpoint is still waiting to be written; False on timeout."""
        return self._submitter.wait(timeout)

    def _resolve(self, number: int) -> tuple[list[Path], list[str]]:
        prefix = self.prefix or self._learned
        if prefix is not None:
            files = [Path(f"{prefix}-symbol.json"), Path(f"{prefix}-{number:04d}.params")]
            missing: list[str] = []
            # Known names, but a checkpoint callback listed after this one has not written them yet:
            # wait (in the background) for the .params, then a moment for the .states that
            # save_checkpoint(save_optimizer_states=True) writes right after it.
            if not files[1].is_file():
                return files, [str(files[1])]
            seen = self._params_seen.setdefault(number, time.monotonic())
            states = Path(str(files[1])[: -len(".params")] + ".states")
            if not states.is_file() and time.monotonic() - seen < _STATES_GRACE and not self._submitter.settling:
                return files, [str(states) + " (if it is written)"]
        else:
            found = find_checkpoint(self.snapshot_dir, number)
            if found is None:
                return [], [f"{self.snapshot_dir}/*-{number:04d}.params with its *-symbol.json"]
            files = list(found)
            missing = []
            self._learned = str(found[1])[: -len(f"-{number:04d}.params")]
        states = Path(str(files[1])[: -len(".params")] + ".states")
        if states.is_file():
            files.append(states)
        taken = {f.name for f in files}
        for extra in self.other_files:
            if extra.name in taken:
                log.warning("other file %s has the name of a checkpoint file; not added to the snapshot", extra)
                continue
            files.append(extra)
        return files, missing

    def _on_epoch(self, epoch: int) -> None:
        if (epoch + 1) % self.epoch_interval:
            return
        number = epoch + 1
        step = self._state.step_for_epoch(epoch, self.batch_of_epoch)
        meta: dict[str, Any] = {"framework": "mxnet", "epoch": epoch, "checkpoint": number, "step": step}
        self._submitter.submit(lambda: self._resolve(number), f"epoch-{number:04d}", meta, step)
