"""Files that may hold credentials are created 0600; tree downloads never leave their directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ava.errors import StorageError
from ava.storage.tree import download_tree


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_qiniu_resume_records_are_0600_in_a_0700_directory(tmp_path):
    pytest.importorskip("qiniu")
    from ava.storage.qiniu import QiniuStorage

    store = QiniuStorage(access_key="ak-test", secret_key="sk-test-secret", resume_dir=tmp_path / "resume")
    recorder = store._recorder_for("bucket")
    recorder.set_upload_record("file.bin", "key", {"upload_id": "u1", "etags": []})
    records = [p for p in (tmp_path / "resume" / "bucket").iterdir()]
    assert len(records) == 1 and json.loads(records[0].read_text())["upload_id"] == "u1"
    assert mode(records[0]) == 0o600 and mode(tmp_path / "resume" / "bucket") == 0o700


def test_snapshot_state_is_0600(tmp_path):
    from ava.snapshot import SnapshotUploader

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.params").write_bytes(b"x" * 10)
    up = SnapshotUploader(f"file://{tmp_path}/store", tmp_path / "snapshots.json", stable_seconds=0.01)
    try:
        up.submit([tmp_path / "out" / "a.params"], "epoch-1")
        assert up.wait(30)
    finally:
        up.close()
    assert json.loads((tmp_path / "snapshots.json").read_text())["snapshots"][0]["state"] == "done"
    assert mode(tmp_path / "snapshots.json") == 0o600


def test_http_sink_offset_is_0600(tmp_path):
    from ava.metrics.sinks.http import HttpSink

    sink = HttpSink("http://user:pw@127.0.0.1:9", "i-1", tmp_path / "metrics.jsonl")
    try:
        sink.offset = 0
        sink._save_offset()
    finally:
        sink.stop(1.0)
    assert mode(tmp_path / "metrics.jsonl.http-offset") == 0o600


def test_download_tree_refuses_a_symlink_leading_out(tmp_path):
    store = tmp_path / "store" / "tree"
    (store / "sub").mkdir(parents=True)
    (store / "sub" / "a.txt").write_text("new")
    (store / "b.txt").write_text("new")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.txt").write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "b.txt").symlink_to(outside / "b.txt")  # the file itself leads out
    with pytest.raises(StorageError, match=r"refusing to download file://.*/b\.txt: .*symlink leading outside"):
        download_tree(f"file://{store}", dest, parallelism=1)
    assert (outside / "b.txt").read_text() == "keep"
    dest = tmp_path / "dest2"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)  # a directory leads out
    with pytest.raises(StorageError, match=r"refusing to download file://.*/sub/a\.txt: .* leads outside"):
        download_tree(f"file://{store}", dest, parallelism=1)
    assert not (outside / "a.txt").exists()
