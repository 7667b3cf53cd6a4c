import json
import os
import threading
import time
from pathlib import Path

import pytest

from ava.errors import StorageError, UsageError
from ava.snapshot import SnapshotUploader, read_latest
from ava.storage import registry
from ava.storage.local import LocalStorage


class FlakyStorage(LocalStorage):
    """file:// storage behind a flaky:// scheme that fails every other call."""

    scheme = "flaky"
    calls = 0
    lock = threading.Lock()

    def path_of(self, url):
        return super().path_of("file://" + url[len("flaky://"):] if url.startswith("flaky://") else url)

    def url_of(self, path):
        return f"flaky://{path}"

    def upload(self, local, url):
        with FlakyStorage.lock:
            FlakyStorage.calls += 1
            fail = FlakyStorage.calls % 2 == 1
        if fail:
            raise StorageError(f"injected failure uploading {url}")
        return super().upload(local, url)


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "flaky", ("tests.unit.test_snapshot:FlakyStorage", ""))
    FlakyStorage.calls = 0
    yield
    registry._instances.pop("flaky", None)


def make(tmp_path, url=None, **kw):
    kw.setdefault("stable_seconds", 0.02)
    kw.setdefault("max_backoff", 0.05)
    return SnapshotUploader(url or f"file://{tmp_path}/store", tmp_path / "state.json", **kw)


def write(path: Path, n=1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(n))
    return path


def test_snapshots_upload_in_order_with_manifest_and_latest(tmp_path):
    up = make(tmp_path)
    for e in range(3):
        up.submit([write(tmp_path / "out" / f"e{e}.params"), write(tmp_path / "out" / f"e{e}.json", 10)],
                  f"epoch-{e:04d}", {"epoch": e})
    assert up.wait(30)
    up.close()
    store = tmp_path / "store"
    assert (store / "LATEST").read_text() == "epoch-0002"
    manifest = json.loads((store / "epoch-0001" / "MANIFEST.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["e1.params", "e1.json"] and manifest["meta"] == {"epoch": 1}
    for e in range(3):
        assert (store / f"epoch-{e:04d}" / f"e{e}.params").read_bytes() == (tmp_path / "out" / f"e{e}.params").read_bytes()
    assert read_latest(f"file://{store}") == "epoch-0002"


def test_submit_returns_at_once_and_waits_for_a_growing_file(tmp_path):
    up = make(tmp_path, stable_seconds=0.2)
    path = tmp_path / "out" / "big.bin"
    path.parent.mkdir()
    fh = open(path, "wb")
    fh.write(b"a" * 1000)
    fh.flush()
    t0 = time.perf_counter()
    up.submit([path], "s1")
    assert time.perf_counter() - t0 < 0.5
    for _ in range(5):  # still being written
        time.sleep(0.1)
        fh.write(b"b" * 1000)
        fh.flush()
    fh.close()
    assert up.wait(30)
    assert (tmp_path / "store" / "s1" / "big.bin").stat().st_size == 6000
    up.close()


def test_a_file_unchanged_for_longer_than_the_stable_time_is_not_watched_again(tmp_path):
    # Every file was watched for stable_seconds: 30 snapshots of finished files took 15 s at
    # the default 0.5 s, more than done() waits. A file written just now is still watched.
    up = make(tmp_path, stable_seconds=5)
    old = write(tmp_path / "out" / "old.bin")
    os.utime(old, (time.time() - 60, time.time() - 60))
    up.submit([old], "old")
    assert up.wait(3)  # no 5 s watch
    up.submit([write(tmp_path / "out" / "new.bin")], "new")
    assert not up.wait(1)  # watched for 5 s
    assert up.status("new") == "pending"
    up.close()


def test_a_missing_file_is_reported_by_name_after_the_bound(tmp_path, caplog):
    up = make(tmp_path, missing_timeout=0.3)
    up.submit([tmp_path / "never.bin"], "s1")
    assert up.wait(30)
    assert up.status("s1") == "failed"
    assert any("never.bin did not appear" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "store" / "LATEST").exists()
    up.close()


def test_failing_storage_is_retried_and_nothing_local_is_deleted(tmp_path, flaky):
    up = make(tmp_path, url=f"flaky://{tmp_path}/store")
    files = [write(tmp_path / "out" / f"f{i}.bin") for i in range(6)]
    for i in range(3):
        up.submit(files[2 * i:2 * i + 2], f"snap-{i}")
    assert up.wait(60)
    up.close()
    assert FlakyStorage.calls >= 16
    assert (tmp_path / "store" / "LATEST").read_text() == "snap-2"
    assert all(f.exists() for f in files)
    for i in range(3):
        assert len(json.loads((tmp_path / "store" / f"snap-{i}" / "MANIFEST.json").read_text())["files"]) == 2


def test_pending_snapshots_are_uploaded_by_the_next_process(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "down", ("tests.unit.test_snapshot:DownStorage", ""))
    files = [write(tmp_path / "out" / "a.bin")]
    first = SnapshotUploader(f"down://{tmp_path}/store", tmp_path / "state.json", stable_seconds=0.02, max_backoff=0.05)
    first.submit(files, "s1")
    assert not first.wait(0.5)
    first.close()
    registry._instances.pop("down", None)
    assert json.loads((tmp_path / "state.json").read_text())["snapshots"][0]["state"] == "pending"
    second = make(tmp_path)  # the storage works now
    assert second.wait(30)
    assert (tmp_path / "store" / "s1" / "a.bin").exists() and (tmp_path / "store" / "LATEST").read_text() == "s1"
    second.close()


class DownStorage(LocalStorage):
    scheme = "down"

    def upload(self, local, url):
        raise StorageError("storage is down")


def test_delete_local_only_after_confirmation_and_keep_local(tmp_path):
    up = make(tmp_path, keep_local=1)
    files = [write(tmp_path / "out" / f"e{e}.bin") for e in range(3)]
    for e, f in enumerate(files):
        up.submit([f], f"e{e}")
    assert up.wait(30)
    up.close()
    assert [f.exists() for f in files] == [False, False, True]
    assert all((tmp_path / "store" / f"e{e}" / f"e{e}.bin").exists() for e in range(3))


@pytest.mark.parametrize("prefix", ["", "../x", "a/../../b"])
def test_bad_prefixes_are_refused(tmp_path, prefix):
    up = make(tmp_path)
    with pytest.raises(UsageError):
        up.submit([tmp_path / "x"], prefix)
    up.close()


def test_meta_of_numpy_numbers_is_kept_as_numbers_and_other_objects_are_refused(tmp_path):
    import numpy as np

    up = make(tmp_path)
    up.submit([write(tmp_path / "out" / "a.params")], "epoch-0001", {"epoch": np.int64(0), "acc": np.float32(0.5),
                                                                     "tags": ["x", np.int32(3)]})
    with pytest.raises(UsageError, match="'epoch-0002': its meta must hold JSON values.*object"):
        up.submit([write(tmp_path / "out" / "b.params")], "epoch-0002", {"net": object()})
    assert up.wait(30)
    up.close()
    manifest = json.loads((tmp_path / "store" / "epoch-0001" / "MANIFEST.json").read_text())
    assert manifest["meta"] == {"epoch": 0, "acc": 0.5, "tags": ["x", 3]}
    assert up.status("epoch-0002") is None  # refused at the call: nothing queued


def test_done_names_the_files_of_a_snapshot_that_do_not_exist(tmp_path, caplog):
    from ava.metrics.sinks.jsonl import iter_records
    from ava.train import base as train

    ins = train.TrainInstance("gone", workspace=tmp_path / "ws", setup_logging=False, env={"AVA_DONE_TIMEOUT": "1"})
    real = write(tmp_path / "out" / "real.caffemodel")
    ins.save_snapshot([real, tmp_path / "out" / "never.solverstate"], "iter-00000100", step=100)
    with caplog.at_level("WARNING", logger="ava.train.base"):
        ins.done()
    assert "snapshot iter-00000100 names files that do not exist" in caplog.text
    assert str(tmp_path / "out" / "never.solverstate") in caplog.text and "next run of this instance uploads" not in caplog.text
    (failed,) = [r for r in iter_records(ins.metrics_path) if r.get("event") == "snapshot_failed"]
    assert failed["snapshot"] == "iter-00000100" and "name" not in failed and failed["missing"] == [str(tmp_path / "out" / "never.solverstate")]
    assert real.exists()  # what exists is never touched


def test_a_directory_is_refused_at_submit_and_later_snapshots_still_go_up(tmp_path):
    up = make(tmp_path)
    (tmp_path / "ckpt-100").mkdir()
    write(tmp_path / "ckpt-100" / "model.safetensors")
    with pytest.raises(UsageError, match=r"ckpt-100 is a directory; give the files in it"):
        up.submit([tmp_path / "ckpt-100"], "step-100")
    # One that becomes a directory after submit fails alone instead of being retried forever.
    later = tmp_path / "later"
    up.submit([later], "step-150")
    later.mkdir()
    up.submit([write(tmp_path / "ckpt-200.bin")], "step-200")
    assert up.wait(30)
    assert up.status("step-150") == "failed" and up.status("step-200") == "done"
    assert (tmp_path / "store" / "LATEST").read_text() == "step-200"
    up.close()


class GoneStorage(FlakyStorage):
    """Fails every upload until the test removes the source file: then it works again."""

    scheme = "gone"

    def path_of(self, url):
        return LocalStorage.path_of(self, "file://" + url[len("gone://"):] if url.startswith("gone://") else url)

    def upload(self, local, url):
        if Path(local).name == "a.bin" and Path(local).exists():
            with FlakyStorage.lock:
                FlakyStorage.calls += 1
            raise StorageError(f"injected failure uploading {url}")
        return LocalStorage.upload(self, local, url)


def test_a_file_removed_while_its_upload_is_retried_fails_its_snapshot_and_the_next_goes_up(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(registry.BACKENDS, "gone", ("tests.unit.test_snapshot:GoneStorage", ""))
    FlakyStorage.calls = 0
    up = make(tmp_path, url=f"gone://{tmp_path}/store", missing_timeout=0.5)
    a = write(tmp_path / "a.bin")
    up.submit([a], "epoch-1")
    deadline = time.monotonic() + 30
    while FlakyStorage.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    a.unlink()  # the user's clean-up removes it while the upload is being retried
    up.submit([write(tmp_path / "b.bin")], "epoch-2")
    assert up.wait(30)  # the old uploader retried epoch-1 forever, and epoch-2 never went up
    assert up.status("epoch-1") == "failed" and up.status("epoch-2") == "done"
    assert any("a.bin was removed" in r.getMessage() for r in caplog.records)
    up.close()
    registry._instances.pop("gone", None)


def test_keep_local_never_deletes_a_path_a_newer_snapshot_still_names(tmp_path):
    # stable_seconds: epoch-1 is still being waited for when epoch-2 is submitted.
    up = make(tmp_path, delete_local=True, missing_timeout=1, stable_seconds=0.5)
    latest = tmp_path / "latest.pth"  # a script that saves to one path each epoch
    latest.write_bytes(b"epoch weights")
    up.submit([latest], "epoch-1")
    up.submit([latest], "epoch-2")
    assert up.wait(30)
    # The old uploader deleted latest.pth once epoch-1 was confirmed: epoch-2 then failed.
    assert up.status("epoch-1") == "done" and up.status("epoch-2") == "done"
    assert (tmp_path / "store" / "epoch-2" / "latest.pth").read_bytes() == b"epoch weights"
    assert not latest.exists()  # deleted once the last snapshot naming it was confirmed
    up.close()


def test_the_state_file_stays_short_when_a_run_snapshots_very_often(tmp_path, monkeypatch):
    import ava.snapshot as mod

    monkeypatch.setattr(mod, "_KEEP_DONE", 5)
    up = make(tmp_path, stable_seconds=0.001)
    f = write(tmp_path / "w.bin", 10)
    for i in range(12):
        up.submit([f], f"step-{i:03d}")
        assert up.wait(30)
    up.close()
    kept = [s["id"] for s in json.loads((tmp_path / "state.json").read_text())["snapshots"]]
    assert kept == [f"step-{i:03d}" for i in range(7, 12)]  # it held all 12: rewritten whole at each submit
    assert (tmp_path / "store" / "LATEST").read_text() == "step-011"
