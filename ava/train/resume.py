"""What earlier attempts of an instance left behind: ``train_ins.resume_info()``.

The last epoch and step come from the instance's own metric record (this rank's file); the
newest confirmed snapshot is the one ``LATEST`` names in storage, whose files are taken from
``run/<id>/output/`` when they are there with the size the manifest records, and downloaded
otherwise.

Example:
    >>> import tempfile
    >>> from ava.train.base import TrainInstance
    >>> ws = tempfile.mkdtemp()
    >>> with TrainInstance("doc-resume", workspace=ws, setup_logging=False) as ins:
    ...     ins.log_metrics({"loss": 0.5}, step=40, epoch=1)
    >>> with TrainInstance("doc-resume", workspace=ws, setup_logging=False) as ins:
    ...     info = ins.resume_info()
    >>> info.resumed, info.previous_status, info.epoch, info.step, info.snapshot
    (True, 'done', 1, 40, None)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ava.errors import AvaError, ObjectNotFoundError
from ava.metrics.sinks.jsonl import records_backwards
from ava.snapshot import MANIFEST, read_latest
from ava.storage.base import join_url
from ava.storage.registry import get_storage

log = logging.getLogger(__name__)

#: How many records from the end of the file are looked at for the last step and epoch.
_SCAN_RECORDS = 100_000


@dataclass
class ResumeInfo:
    """Where a restarted instance stands.

    Attributes:
        attempts: earlier attempts of this instance id (0 on a fresh instance).
        previous_status: how the last of them ended (``done``, ``failed``, ``preempted``, ``crashed``).
        epoch: the last epoch recorded by this rank, or None.
        step: the last step recorded by this rank, or None.
        last_seq: the last ``seq`` this rank recorded, or None.
        snapshot: the name of the newest snapshot confirmed in storage, or None.
        snapshot_meta: the ``meta`` it was saved with (epoch, step, framework, ...).
        files: its files on local disk (downloaded when they were not there).
    """

    attempts: int = 0
    previous_status: str | None = None
    epoch: int | None = None
    step: int | None = None
    last_seq: int | None = None
    snapshot: str | None = None
    snapshot_meta: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        """True when an earlier attempt of this instance ran."""
        return self.attempts > 0


def last_progress(path: Path, rank: int) -> tuple[int | None, int | None]:
    """``(epoch, step)`` of the last metric records of ``rank`` in a ``metrics.jsonl``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    epoch = step = None
    try:
        size = os.fstat(fd).st_size
        for n, rec in enumerate(records_backwards(fd, size)):
            if n >= _SCAN_RECORDS or (epoch is not None and step is not None):
                break
            if (rec.get("rank") or 0) != rank or "event" in rec:
                continue
            if step is None and isinstance(rec.get("step"), int):
                step = rec["step"]
            if epoch is None and isinstance(rec.get("epoch"), int):
                epoch = rec["epoch"]
    finally:
        os.close(fd)
    return epoch, step


def newest_snapshot(snapshots_url: str, output_dir: Path, restore_dir: Path,
                    download: bool = True) -> tuple[str | None, dict[str, Any], list[Path]]:
    """The newest confirmed snapshot under ``snapshots_url``: ``(name, meta, local files)``.

    A file is taken from ``output_dir`` when it is there with the manifest's size and was not
    modified after the snapshot was confirmed; otherwise it is downloaded into
    ``restore_dir/<name>/`` (never over a local file). Storage errors are
    logged and give ``(None, {}, [])``: a resume must not fail because storage is away.
    """
    name = None
    try:
        name = read_latest(snapshots_url)
        if name is None:
            return None, {}, []
        store = get_storage(snapshots_url)
        manifest = json.loads(store.get_text(join_url(snapshots_url, name, MANIFEST)))
        files: list[Path] = []
        completed = manifest.get("completed")
        completed = float(completed) if isinstance(completed, (int, float)) else None
        for entry in manifest.get("files", []):
            fname = str(entry.get("name", ""))
            if not fname or "/" in fname or fname in (".", ".."):
                raise AvaError(f"snapshot {name} in {snapshots_url}: manifest names a bad file {fname!r}")
            local = output_dir / fname
            st = local.stat() if local.is_file() else None
            # The local copy is the snapshot's if it has its size and was not written after the upload.
            if st is not None and st.st_size == entry.get("size") and (completed is None or st.st_mtime <= completed):
                files.append(local)
                continue
            target = restore_dir / name / fname
            if download:
                store.download(join_url(snapshots_url, name, fname), target)
                log.info("downloaded %s of snapshot %s from storage to %s", fname, name, target)
            files.append(target)
        meta = manifest.get("meta")
        return name, dict(meta) if isinstance(meta, dict) else {}, files
    except ObjectNotFoundError as exc:
        if name is not None:  # LATEST names it, but a file of it is gone: say so, do not just start over
            log.warning("snapshot %s in %s cannot be restored: %s; starting without it", name, snapshots_url, exc)
        return None, {}, []
    except (AvaError, OSError, ValueError) as exc:
        log.warning("could not find the newest snapshot in %s: %s", snapshots_url, exc)
        return None, {}, []
