"""``run/<id>/status.json``: written atomically, one attempt at a time, with earlier attempts kept.

Example:
    >>> import tempfile, pathlib
    >>> f = StatusFile(pathlib.Path(tempfile.mkdtemp()) / "status.json")
    >>> doc = f.begin("demo-1")
    >>> f.finish(doc, STATUS_DONE)["status"]
    'done'
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ava.log.redact import redact
from ava.utils.fileio import atomic_write_text, leftover_temp_files

log = logging.getLogger(__name__)

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_PREEMPTED = "preempted"
STATUS_CRASHED = "crashed"
FINAL_STATUSES = (STATUS_DONE, STATUS_FAILED, STATUS_PREEMPTED)


def process_gone(doc: dict[str, Any]) -> bool:
    """True when the process a status names ran on this machine, in this boot, and has exited
    (a ``running`` status it left is then a crash); False when that cannot be told."""
    pid = doc.get("pid")
    if type(pid) is not int or pid <= 0 or doc.get("host") != socket.gethostname():
        return False
    if doc.get("boot_id") != boot_id():
        return doc.get("boot_id") is not None and boot_id() is not None  # a reboot since: gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def boot_id() -> str | None:
    """This machine's boot id (Linux): with host and pid it names one process of one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds (``2026-11-22T03:04:05.678Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusFile:
    """Read and atomically replace one ``status.json``.

    Args:
        path: the file.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        """The document, or None when absent; a corrupt file is moved aside, never lost."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            return doc
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt")
            os.replace(self.path, aside)
            log.warning("%s was not a JSON object (%s); kept it as %s and started a new one", self.path, exc, aside)
            return None

    def write(self, doc: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    def begin(self, instance_id: str) -> dict[str, Any]:
        """Start an attempt: status ``running``; an earlier attempt moves into ``history``.

        An earlier attempt still marked ``running`` whose process is gone is recorded as
        ``crashed``. The caller must hold the instance's lock (the metrics file's ``flock``).
        """
        prev = self.read()
        # A process that left at once (a second signal, SIGKILL) mid-write leaves its temp file.
        for stale in leftover_temp_files(self.path):
            try:
                stale.unlink()
            except OSError:
                pass
        history: list[dict[str, Any]] = []
        if prev:
            history = [h for h in prev.get("history") or [] if isinstance(h, dict)]
            status = prev.get("status")
            if status == STATUS_RUNNING:
                status = STATUS_CRASHED
                log.warning(
                    "instance %s: the previous attempt (pid %s on %s) never finished; recording it as crashed",
                    instance_id, prev.get("pid"), prev.get("host"),
                )
            attempt = {
                "status": status,
                "start_time": prev.get("start_time"),
                "stop_time": prev.get("stop_time"),
                "pid": prev.get("pid"),
                "host": prev.get("host"),
                "boot_id": prev.get("boot_id"),
            }
            if prev.get("err_msg"):
                attempt["err_msg"] = prev["err_msg"]
            if prev.get("exit_code") is not None:
                attempt["exit_code"] = prev["exit_code"]
            history.append(attempt)
        doc: dict[str, Any] = {
            "id": instance_id,
            "status": STATUS_RUNNING,
            "start_time": now_rfc3339(),
            "stop_time": None,
            "err_msg": "",
            "exit_code": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "boot_id": boot_id(),
            "history": history,
        }
        self.write(doc)
        return doc

    def finish(self, doc: dict[str, Any], status: str, err_msg: str = "", exit_code: int | None = None) -> dict[str, Any]:
        """Record the end of the current attempt and return the new document.

        ``err_msg`` is stored with secrets masked (:func:`ava.log.redact.redact`): it often
        quotes a command's last lines or an exception, which may hold a key or a signed URL.
        """
        doc = dict(doc, status=status, stop_time=now_rfc3339(), err_msg=redact(err_msg or ""), exit_code=exit_code)
        self.write(doc)
        return doc
