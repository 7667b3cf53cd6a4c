"""The storage fails every other request for a whole (short, simulated) training.

A training writes a snapshot each epoch and hands it to the SnapshotUploader, which keeps only the
newest snapshot's files locally. Every other request to the store fails: on S3 (a moto server) a
botocore hook closes the connection with boto3's own retries off, on Qiniu the Kodo protocol server
answers 503. At the end every snapshot is in storage with its manifest, ``LATEST`` names the newest,
and at every request the files of each unconfirmed snapshot were still on disk.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ava.snapshot import SnapshotUploader, read_latest
from ava.storage import registry
from ava.storage.base import join_url
from ava.storage.registry import get_storage
from tests.support.kodo_server import KodoServer

pytestmark = pytest.mark.integration

EPOCHS = 4
MiB = 1024 * 1024


@pytest.fixture
def backends(monkeypatch) -> Iterator[None]:
    monkeypatch.setitem(registry.BACKENDS, "s3", ("ava.storage.s3:S3Storage", "pip install 'ava-sdk[s3]'"))
    monkeypatch.setitem(registry.BACKENDS, "qiniu", ("ava.storage.qiniu:QiniuStorage", "pip install 'ava-sdk[qiniu]'"))
    for scheme in ("s3", "qiniu"):
        registry._instances.pop(scheme, None)
    yield
    for scheme in ("s3", "qiniu"):
        registry._instances.pop(scheme, None)


class Training:
    """A simulated training: each epoch writes weights (one epoch's are large) and submits them."""

    def __init__(self, out: Path, large_epoch: int | None = None) -> None:
        self.out = out
        self.large_epoch = large_epoch
        self.written: dict[str, dict[str, bytes]] = {}
        self.uploader: SnapshotUploader | None = None
        self.violations: list[str] = []
        self.lock = threading.Lock()

    def run(self, uploader: SnapshotUploader) -> None:
        self.uploader = uploader
        self.out.mkdir(parents=True, exist_ok=True)
        for epoch in range(1, EPOCHS + 1):
            size = 9 * MiB if epoch == self.large_epoch else 150_000 + epoch
            files = {f"model-{epoch:04d}.params": os.urandom(size),
                     f"model-{epoch:04d}.json": json.dumps({"epoch": epoch}).encode()}
            for name, data in files.items():
                (self.out / name).write_bytes(data)
            snap = f"epoch-{epoch:04d}"
            with self.lock:
                self.written[snap] = files
            uploader.submit([self.out / n for n in files], snap, {"epoch": epoch})

    def check_nothing_deleted_early(self) -> None:
        """Called at each storage request: unconfirmed snapshots keep all their local files."""
        if self.uploader is None:
            return
        with self.lock:
            snaps = dict(self.written)
        for snap, files in snaps.items():
            state = self.uploader.status(snap)
            if state is not None and state != "done":
                missing = [n for n in files if not (self.out / n).exists()]
                if missing:
                    self.violations.append(f"{snap} ({state}) lost {missing}")


def run_and_check(storage_url: str, tmp_path: Path, training: Training, heal: Callable[[], None]) -> None:
    uploader = SnapshotUploader(storage_url, tmp_path / "state.json", stable_seconds=0.02, max_backoff=0.05,
                                keep_local=1)
    try:
        training.run(uploader)
        assert uploader.wait(120), f"still pending: {uploader.pending()}"
    finally:
        uploader.close()
        heal()
    store = get_storage(storage_url)
    for snap, files in training.written.items():
        assert uploader.status(snap) == "done"
        manifest = json.loads(store.get_text(join_url(storage_url, snap, "MANIFEST.json")))
        assert sorted(f["name"] for f in manifest["files"]) == sorted(files)
        for name, data in files.items():
            back = store.download(join_url(storage_url, snap, name), tmp_path / "back" / snap / name)
            assert back.read_bytes() == data, f"{snap}/{name} differs in storage"
    assert read_latest(storage_url) == f"epoch-{EPOCHS:04d}"
    assert training.violations == []
    newest = training.written[f"epoch-{EPOCHS:04d}"]
    assert sorted(p.name for p in training.out.iterdir()) == sorted(newest), "only the newest snapshot stays local"


def test_snapshots_survive_an_s3_store_failing_every_other_request(backends, monkeypatch, tmp_path):
    from botocore.exceptions import ConnectionClosedError
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AVA_S3_ENDPOINT": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(name, value)
        bucket = f"snaps-{uuid.uuid4().hex[:8]}"
        storage_url = f"s3://{bucket}/run1/snapshots"
        client = get_storage(storage_url).client()
        client.create_bucket(Bucket=bucket)
        training = Training(tmp_path / "output")
        state = {"on": True, "requests": 0, "failed": 0}
        lock = threading.Lock()

        def every_other(request, **_):
            training.check_nothing_deleted_early()
            with lock:
                if not state["on"]:
                    return None
                state["requests"] += 1
                if state["requests"] % 2 == 0:
                    return None
                state["failed"] += 1
            raise ConnectionClosedError(endpoint_url=request.url)

        client.meta.events.register("before-send.s3", every_other)

        def heal() -> None:
            with lock:
                state["on"] = False

        run_and_check(storage_url, tmp_path, training, heal)
        assert state["failed"] >= 2 * EPOCHS, state
    finally:
        server.stop()


def test_snapshots_survive_a_kodo_server_failing_every_other_request(backends, monkeypatch, tmp_path):
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.point_env(monkeypatch, tmp_path / "resume")
        kodo.create_bucket("snaps")
        storage_url = "qiniu://snaps/run1/snapshots"
        get_storage(storage_url).retry_delay = 0.01  # type: ignore[attr-defined]
        training = Training(tmp_path / "output", large_epoch=2)  # 9 MiB: a resumable upload under faults
        kodo.on_request = lambda kind: training.check_nothing_deleted_early()
        kodo.fail_every_other = True

        def heal() -> None:
            kodo.fail_every_other = False

        run_and_check(storage_url, tmp_path, training, heal)
        assert kodo.failed >= 2 * EPOCHS
        assert kodo.counts["part"] >= 3, "the large snapshot went through the resumable protocol"
