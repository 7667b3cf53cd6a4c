"""A 64 MB upload through the qiniu backend is killed half way; the next process finishes it.

The Kodo protocol server holds every v2 part after the 8th, the uploading process is killed with
SIGKILL once its resume record lists 8 stored parts, and a new process uploads the same file: it
must reuse the upload id and send only the parts the record did not list (the server counts the
requests per part).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.kodo_server import KodoServer, kodo_etag

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PARTS = 16  # 64 MiB in 4 MiB parts
HOLD_AFTER = 8

CHILD = """
import sys
from pathlib import Path
from ava.storage import registry
registry.BACKENDS.setdefault("qiniu", ("ava.storage.qiniu:QiniuStorage", ""))
info = registry.get_storage(sys.argv[2]).upload(Path(sys.argv[1]), sys.argv[2])
print(info.etag)
"""


def record_path(resume_dir: Path, key: str, file_name: str) -> Path:
    """Where qiniu's UploadProgressRecorder keeps the record of ``key`` (md5 of ``key/file_name``)."""
    return resume_dir / hashlib.md5(f"{key}/{file_name}".encode()).hexdigest()


def read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for_record(path: Path, parts: int, child: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise AssertionError(f"the uploader exited early ({child.returncode}): {child.stderr.read()}")
        if len(read_record(path).get("etags", [])) >= parts:
            return
        time.sleep(0.02)
    raise AssertionError(f"the resume record {path} never listed {parts} parts")


def test_a_killed_upload_is_finished_by_a_new_process_without_resending_parts(tmp_path):
    src = tmp_path / "model-0064.params"
    with open(src, "wb") as fh:
        for _ in range(PARTS):
            fh.write(os.urandom(4 * MiB))
    url = "qiniu://models/run1/model-0064.params"
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.create_bucket("models")
        env = {**os.environ, **kodo.env(), "AVA_QINIU_RESUME_DIR": str(tmp_path / "resume"),
               "AVA_WORKSPACE": str(tmp_path / "ws")}
        kodo.hold_parts_after = HOLD_AFTER
        first = subprocess.Popen([sys.executable, "-c", CHILD, str(src), url], env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        record_file = record_path(tmp_path / "resume" / "models", "run1/model-0064.params", src.name)
        try:
            wait_for_record(record_file, HOLD_AFTER, first, time.monotonic() + 90)
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        record = read_record(record_file)  # what the dead process left for the next one
        finished = {p["partNumber"] for p in record["etags"]}
        upload_id = record["upload_id"]
        assert len(finished) == HOLD_AFTER and kodo.completed_parts == HOLD_AFTER
        assert not kodo.buckets["models"], "nothing may be stored before the upload completes"
        kodo.release_held()

        second = subprocess.run([sys.executable, "-c", CHILD, str(src), url], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == kodo_etag(src.read_bytes())

        assert kodo.counts["init"] == 1, "the new process must continue the same upload"
        assert kodo.counts["complete"] == 1
        assert {p for (u, p) in kodo.part_requests if u == upload_id} == set(range(1, PARTS + 1))
        resent = {p: kodo.part_requests[(upload_id, p)] for p in finished if kodo.part_requests[(upload_id, p)] != 1}
        assert resent == {}, f"finished parts were sent again: {resent}"
        assert kodo.object_bytes("models", "run1/model-0064.params") == src.read_bytes()
        assert list((tmp_path / "resume" / "models").iterdir()) == [], "the record outlived the upload"
