"""SnapshotUploader: snapshots reach storage in the background, and no local file is lost.

``submit(files, key_prefix, meta)`` returns at once. A daemon thread takes snapshots in order,
waits until each file exists and has stopped growing, uploads each one (retrying with
exponential backoff and jitter, forever while the process lives), checks the stored size,
writes ``<prefix>/MANIFEST.json`` and only then moves the ``LATEST`` pointer. Local files are
deleted only when asked, and only after their snapshot is confirmed. What was submitted but not
confirmed is kept in a state file, so the next process of the same instance uploads it.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "model.bin").write_bytes(b"w" * 10)
    >>> up = SnapshotUploader(f"file://{d}/storage", d / "state.json", stable_seconds=0.01)
    >>> up.submit([d / "model.bin"], "epoch-0001")
    'epoch-0001'
    >>> up.wait(10), (d / "storage" / "LATEST").read_text()
    (True, 'epoch-0001')
    >>> up.close()
"""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ava.errors import AvaError, ObjectNotFoundError, UsageError
from ava.storage.base import join_url
from ava.storage.registry import get_storage
from ava.utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
_KEEP_DONE = 100  # confirmed snapshots remembered in the state file
MANIFEST = "MANIFEST.json"
LATEST = "LATEST"


class SnapshotUploader:
    """Upload snapshots in the background, in order, with a manifest and a ``LATEST`` pointer.

    Args:
        storage_url: where snapshots go; each one under ``<storage_url>/<key_prefix>/``.
        state_file: where unconfirmed snapshots are remembered across processes.
        on_metrics: called with ``{"upload_bytes": n, "upload_seconds": s}`` per snapshot.
        stable_seconds: a file counts as complete once its size and mtime hold this long (a file
            last modified longer ago than that counts at once).
        missing_timeout: how long to wait for a file that does not exist yet.
        max_backoff: the longest pause between retries.
        delete_local: delete local files once their snapshot is confirmed.
        keep_local: keep the local files of only the newest N confirmed snapshots.
    """

    def __init__(self, storage_url: str, state_file: Path | str, *,
                 on_metrics: Callable[[dict[str, float]], None] | None = None,
                 stable_seconds: float = 0.5, missing_timeout: float = 600.0, max_backoff: float = 30.0,
                 delete_local: bool = False, keep_local: int | None = None) -> None:
        self.storage_url = storage_url.rstrip("/")
        self.storage = get_storage(storage_url)
        self.state_file = Path(state_file)
        self._on_metrics = on_metrics
        self._stable = stable_seconds
        self._missing_timeout = missing_timeout
        self._max_backoff = max_backoff
        self._delete_local = delete_local
        self._keep_local = keep_local
        self._cond = threading.Condition()
        self._pruning = 0
        self._stop = False
        self._snapshots: list[dict[str, Any]] = self._load_state()
        self._thread = threading.Thread(target=self._run, name="ava-snapshot-uploader", daemon=True)
        self._thread.start()

    # --- the caller's side -------------------------------------------------------------
    def submit(self, files: Sequence[str | Path], key_prefix: str, meta: dict[str, Any] | None = None) -> str:
        """Queue one snapshot (its files, uploaded under ``key_prefix``); returns at once."""
        key_prefix, paths, plain = checked_snapshot(files, key_prefix, meta)
        entry = {"id": key_prefix, "files": paths, "meta": plain, "state": PENDING, "submitted": time.time()}
        with self._cond:
            self._snapshots.append(entry)
            self._save_state()
            self._cond.notify_all()
        return key_prefix

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted snapshot is confirmed or failed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pruning or any(s["state"] == PENDING for s in self._snapshots):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def pending(self) -> list[str]:
        with self._cond:
            return [s["id"] for s in self._snapshots if s["state"] == PENDING]

    def missing(self) -> dict[str, list[str]]:
        """The pending snapshots that name files not on disk: snapshot -> those paths."""
        with self._cond:
            pending = [(s["id"], list(s["files"])) for s in self._snapshots if s["state"] == PENDING]
        out: dict[str, list[str]] = {}
        for name, files in pending:
            gone = [f for f in files if not os.path.exists(f)]
            if gone:
                out[name] = gone
        return out

    def status(self, key_prefix: str) -> str | None:
        with self._cond:
            for s in reversed(self._snapshots):
                if s["id"] == key_prefix:
                    return s["state"]
        return None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; unconfirmed snapshots stay in the state file for the next process."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- state -----------------------------------------------------------------------------
    def _load_state(self) -> list[dict[str, Any]]:
        snaps = read_state(self.state_file)
        waiting = [s["id"] for s in snaps if s.get("state") == PENDING]
        if waiting:
            log.info("resuming the upload of %d snapshot(s) from an earlier process: %s", len(waiting), ", ".join(waiting))
        return snaps

    def _save_state(self) -> None:
        # Confirmed snapshots beyond the newest _KEEP_DONE are forgotten (storage has them): a
        # run that snapshots every few steps must not rewrite an ever longer file at each one.
        done = [i for i, snap in enumerate(self._snapshots) if snap["state"] == DONE]
        if len(done) > _KEEP_DONE:
            old = set(done[:-_KEEP_DONE])
            self._snapshots = [snap for i, snap in enumerate(self._snapshots) if i not in old]
        # 0600: the storage URL and the errors kept here may name what credentials protect.
        atomic_write_text(self.state_file, json.dumps({"storage_url": self.storage_url, "snapshots": self._snapshots},
                                                      indent=1) + "\n", mode=0o600)

    # --- the worker ------------------------------------------------------------------------
    def _next(self) -> dict[str, Any] | None:
        with self._cond:
            while not self._stop:
                for s in self._snapshots:
                    if s["state"] == PENDING:
                        return s
                self._cond.wait(1.0)
        return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        with self._cond:
            if not self._stop:
                self._cond.wait(seconds)
            return self._stop

    def _run(self) -> None:
        while True:
            snap = self._next()
            if snap is None:
                return
            try:
                self._upload(snap)
            except _Stopped:
                return
            except Exception as exc:  # noqa: BLE001 - a background thread reports, never dies
                log.exception("snapshot %s: unexpected error %s; it stays pending for the next process", snap["id"], exc)
                if self._sleep(self._max_backoff):
                    return

    def _wait_complete(self, path: Path, name: str) -> int | None:
        """The file's size once it has stopped growing; None if it never appeared in time;
        :data:`_FOLDER` for a directory, :data:`_UNREADABLE` for a file this process cannot read."""
        waited = 0.0
        last: tuple[int, float] | None = None
        while True:
            try:
                st = path.stat()
                if stat.S_ISDIR(st.st_mode):
                    return _FOLDER
                if not os.access(path, os.R_OK):
                    return _UNREADABLE
                now = (st.st_size, st.st_mtime)
                if now == last:
                    return st.st_size
                if last is None and time.time() - st.st_mtime >= self._stable:
                    return st.st_size  # unchanged for that long already: no need to watch it again
                last = now
            except FileNotFoundError:
                if waited >= self._missing_timeout:
                    return None
            if self._sleep(self._stable):
                raise _Stopped()
            waited += self._stable

    def _with_retries(self, what: str, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except (AvaError, OSError) as exc:
                attempt += 1
                delay = random.uniform(0.5, 1.0) * min(self._max_backoff, 0.5 * 2 ** min(attempt, 16))
                level = logging.WARNING if attempt in (1, 5) or attempt % 20 == 0 else logging.DEBUG
                log.log(level, "%s failed (attempt %d: %s); retrying in %.1f s, the local file is kept",
                        what, attempt, exc, delay)
                if self._sleep(delay):
                    raise _Stopped() from None

    def _upload_file(self, path: Path, url: str) -> Any:
        """Upload one file; :class:`_Gone` (not retried) when it is no longer a file to upload."""
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                raise _Gone(f"{path} is no longer a regular file")
        except FileNotFoundError:
            raise _Gone(f"{path} was removed") from None
        try:
            return self.storage.upload(path, url)
        except ObjectNotFoundError as exc:  # the backend found no source file
            if not path.exists():
                raise _Gone(f"{path} was removed") from None
            raise exc

    def _upload(self, snap: dict[str, Any]) -> None:
        prefix_url = join_url(self.storage_url, snap["id"])
        self._with_retries(f"taking {snap['id']} out of use before its upload", lambda: self._unconfirm(snap["id"]))
        started = time.monotonic()
        entries = []
        total = 0
        for f in snap["files"]:
            path = Path(f)
            size = self._wait_complete(path, snap["id"])
            if size is None:
                self._finish(snap, FAILED, f"{path} did not appear within {self._missing_timeout:.0f} s")
                return
            if size < 0:
                self._finish(snap, FAILED, f"{path} is {'a directory' if size == _FOLDER else 'not readable'}")
                return
            url = join_url(prefix_url, path.name)
            try:
                info = self._with_retries(f"upload of {path} to {url}", lambda: self._upload_file(path, url))
            except _Gone as exc:
                # Removed or replaced while its upload was retried: start this snapshot again, which
                # waits for the file as for one that never appeared (then fails it, and goes on).
                log.warning("snapshot %s: %s; waiting for it again", snap["id"], exc)
                return
            if info.size != size:
                # The file changed while we uploaded it: try this snapshot again from the start.
                log.warning("snapshot %s: %s changed during upload (%d -> %d bytes); uploading it again",
                            snap["id"], path, size, info.size)
                return
            entries.append({"name": path.name, "size": info.size, "etag": info.etag})
            total += info.size
        manifest = {"id": snap["id"], "files": entries, "meta": snap["meta"], "completed": time.time()}
        self._with_retries(f"manifest of {snap['id']}",
                           lambda: self.storage.put_text(json.dumps(manifest, indent=1), join_url(prefix_url, MANIFEST)))
        self._with_retries(f"LATEST pointer to {snap['id']}",
                           lambda: self.storage.put_text(snap["id"], join_url(self.storage_url, LATEST)))
        seconds = time.monotonic() - started
        # Record before marking it done: done() closes the metric writer once uploads are done.
        if self._on_metrics is not None:
            try:
                self._on_metrics({"upload_bytes": total, "upload_seconds": seconds})
            except AvaError as exc:
                log.debug("upload metrics not recorded: %s", exc)
        with self._cond:  # wait() returns once the local files of what is confirmed are pruned too
            self._pruning += 1
        try:
            self._finish(snap, DONE, None)
            log.info("snapshot %s uploaded: %d files, %d bytes in %.2f s", snap["id"], len(entries), total, seconds)
            self._prune_local()
        finally:
            with self._cond:
                self._pruning -= 1
                self._cond.notify_all()

    def _unconfirm(self, key: str) -> None:
        """A name confirmed earlier is uploaded again (a run that rewound saves it anew): take it
        out of use first, so that no crash can leave ``LATEST`` or a manifest describing objects
        that are being replaced."""
        manifest_url = join_url(self.storage_url, key, MANIFEST)
        try:
            self.storage.stat(manifest_url)
        except ObjectNotFoundError:
            return  # a new name: nothing to protect
        latest_url = join_url(self.storage_url, LATEST)
        if read_latest(self.storage_url) == key:
            with self._cond:
                older = [s["id"] for s in self._snapshots if s["state"] == DONE and s["id"] != key]
            fallback = None
            for prev in reversed(older):  # the newest other snapshot still whole in storage
                try:
                    self.storage.stat(join_url(self.storage_url, prev, MANIFEST))
                    fallback = prev
                    break
                except ObjectNotFoundError:
                    continue
            if fallback is not None:
                self.storage.put_text(fallback, latest_url)
            else:
                self.storage.delete(latest_url)
        self.storage.delete(manifest_url)
        log.info("snapshot %s is saved again: its earlier copy is out of use until the new one is confirmed", key)

    def _finish(self, snap: dict[str, Any], state: str, error: str | None) -> None:
        with self._cond:
            snap["state"] = state
            if error:
                snap["error"] = error
                log.error("snapshot %s failed: %s; nothing of it was deleted", snap["id"], error)
            self._save_state()
            self._cond.notify_all()

    def _prune_local(self) -> None:
        done = [s for s in self._snapshots if s["state"] == DONE and not s.get("local_deleted")]
        doomed = done if self._delete_local else (done[:-self._keep_local] if self._keep_local else [])
        if self._keep_local is not None and self._keep_local <= 0:
            doomed = done
        # A path that a snapshot still pending, failed or kept also names (a script that saves
        # to one "latest.pth" each time) holds newer weights than the confirmed copy: keep it.
        gone = {id(snap) for snap in doomed}
        with self._cond:  # a submit naming one of these paths may come in at any moment
            in_use = {f for snap in self._snapshots if id(snap) not in gone and not snap.get("local_deleted")
                      for f in snap["files"]}
        for snap in doomed:
            for f in snap["files"]:
                if f in in_use:
                    continue
                try:
                    Path(f).unlink()
                except FileNotFoundError:
                    pass
            snap["local_deleted"] = True
        if doomed:
            with self._cond:
                self._save_state()


def read_state(state_file: Path, warn: bool = True) -> list[dict[str, Any]]:
    """The snapshots recorded in an uploader's state file (``[]`` when absent or unreadable)."""
    try:
        doc = json.loads(Path(state_file).read_text())
        return [s for s in doc.get("snapshots", []) if isinstance(s, dict) and s.get("id")]
    except FileNotFoundError:
        return []
    except (ValueError, AttributeError) as exc:
        if warn:
            log.warning("%s is unreadable (%s); earlier unconfirmed snapshots will not be resumed", state_file, exc)
        return []


def has_pending(state_file: Path) -> bool:
    """Whether an uploader's state file holds snapshots not yet confirmed."""
    return any(s.get("state") == PENDING for s in read_state(state_file, warn=False))


class _Stopped(Exception):
    """close() was called while the worker waited."""


class _Gone(Exception):
    """A snapshot's file was removed or replaced by something else while its upload was retried."""


_FOLDER, _UNREADABLE = -1, -2  # what _wait_complete says instead of a size


def read_latest(storage_url: str) -> str | None:
    """The key prefix ``LATEST`` points to, or None when nothing was confirmed yet."""
    store = get_storage(storage_url)
    try:
        return store.get_text(join_url(storage_url, LATEST)).strip() or None
    except ObjectNotFoundError:
        return None


def checked_snapshot(files: Sequence[str | Path], key_prefix: Any,
                     meta: Mapping[str, Any] | None) -> tuple[str, list[str], dict[str, Any]]:
    """A snapshot as :meth:`SnapshotUploader.submit` takes it: ``(name, absolute paths, meta as
    plain JSON)``, or a :class:`UsageError` on the caller's thread (a bad name, no files, a
    directory, two files of one name, meta that is not JSON)."""
    if not isinstance(key_prefix, str):
        raise UsageError(f"snapshot name {key_prefix!r} must be a non-empty relative path without '..'")
    key_prefix = key_prefix.strip("/")
    if not key_prefix or ".." in key_prefix.split("/"):
        raise UsageError(f"snapshot name {key_prefix!r} must be a non-empty relative path without '..'")
    paths = [str(Path(f).absolute()) for f in files]
    if not paths:
        raise UsageError(f"snapshot {key_prefix!r} has no files")
    folders = [p for p in paths if os.path.isdir(p)]
    if folders:
        raise UsageError(f"snapshot {key_prefix!r}: {folders[0]} is a directory; give the files in it "
                         "(a snapshot is a flat set of files), or upload the folder with upload_tree")
    names = [Path(p).name for p in paths]
    if len(set(names)) != len(names):
        raise UsageError(f"snapshot {key_prefix!r} has two files with the same name: {sorted(names)}")
    return key_prefix, paths, _plain_meta(meta or {}, key_prefix)


def _plain_meta(meta: Mapping[str, Any], snapshot: str) -> dict[str, Any]:
    """``meta`` as plain JSON values (numpy and tensor scalars become numbers); a clear error,
    on the caller's thread, for a value that is not one (the state file must stay writable)."""

    def plain(value: Any) -> Any:
        item = getattr(value, "item", None)
        if callable(item):
            try:
                return item()
            except (TypeError, ValueError):
                pass
        raise TypeError(f"{type(value).__name__} {value!r:.80}")

    try:
        return json.loads(json.dumps(dict(meta), default=plain, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"snapshot {snapshot!r}: its meta must hold JSON values (numbers, strings, lists, dicts), "
                         f"got {exc}") from None
