"""Fifty ``kill -9`` at random moments of a process that logs metrics and uploads snapshots to S3.

One instance id, one moto server, fifty starts of ``tests/integration/crash_worker.py`` in a row.
Each start resumes the instance, runs until a seeded random moment (most of the time after it
has handed at least one new snapshot to the uploader), and is killed with SIGKILL. After each
kill, and before the next start, the test checks what the dead process left:

- every whole line of ``metrics.jsonl`` is a JSON record and ``seq`` continues the earlier
  trials' without a gap or a repeat of ``(rank, seq)``;
- the snapshot ``LATEST`` names has a ``MANIFEST.json`` whose every file is in the bucket with
  the manifest's size, and every other ``MANIFEST.json`` in the bucket still describes the
  objects beside it (size and ETag): a confirmed snapshot is never replaced in place, even when
  a resumed run saves a snapshot of the same name again;
- ``status.json`` still says ``running`` (nobody finished it) with one earlier attempt per trial.

Each start's resume line must then say ``crashed`` and name the snapshot ``LATEST`` named after
the kill (or one the dead process left pending, which the new process's uploader may confirm
before ``resume_info()`` reads ``LATEST``), with its files on local disk at the manifest's sizes.
A last start in this process finishes the instance and its pending uploads.

With ``pytest -s`` a ``FIGURE`` line gives the trials, records, confirmed snapshots, kills that
hit an upload, and the wall time, for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ava.metrics.sinks.jsonl import iter_records
from ava.train import base as train
from tests.conftest import REPO
from tests.unit.storage.test_conformance import moto_endpoint  # noqa: F401 - the module's moto server

pytestmark = pytest.mark.integration

TRIALS = 50
SEED = 4
BUCKET = "crash-trials"
RUN_ID = "crash-trials"
SNAPSHOTS_PREFIX = f"runs/{RUN_ID}/snapshots"
EVERY = 150  # steps between snapshots (about 0.7 s: the uploader keeps up, the backlog stays small)
MAX_SLEEP = 1.5  # the random moment: up to this long after the last awaited line
WAIT_SUBMITS = (0, 1, 1, 1, 2)  # how many "submitted" lines a trial waits for before its sleep
START_TIMEOUT = 60.0
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


class Worker:
    """One start of the crash worker; its stdout lines arrive on a queue (read with a deadline)."""

    def __init__(self, env: dict[str, str], stderr_path: Path, seed: int) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.crash_worker", "--id", RUN_ID, "--every", str(EVERY),
                 "--seed", str(seed)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="crash-worker-stdout", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the worker printed nothing in time; stderr: {self.stderr()}") from None
        if line is None:
            raise AssertionError(f"the worker exited ({self.proc.wait()}); stderr: {self.stderr()}")
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self.proc.stdout.close()


class Record:
    """Reads ``metrics.jsonl`` on from where the last check stopped (always the end of a whole line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.next_seq = 0
        self.seen: set[tuple[int, int]] = set()
        self.torn_tails = 0

    def check_new_lines(self) -> int:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        whole, sep, tail = data.rpartition(b"\n")
        if tail:
            self.torn_tails += 1  # the next open moves it aside; the lines before it must hold
        count = 0
        for n, raw in enumerate(whole.split(b"\n") if whole else []):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                raise AssertionError(f"{self.path} at byte {self.offset}, new line {n}: not JSON: {raw[:200]!r}")
            assert isinstance(rec, dict), raw[:200]
            key = (rec.get("rank") or 0, rec.get("seq"))
            assert key not in self.seen, f"(rank, seq) {key} repeats"
            assert rec["seq"] == self.next_seq, f"seq {rec['seq']} where {self.next_seq} was due: a gap"
            self.seen.add(key)
            self.next_seq += 1
            count += 1
        self.offset += len(whole) + len(sep)
        return count


class Bucket:
    """What the test sees in S3, through its own boto3 client (not ava's storage code)."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        self._manifests: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (ETag, manifest)

    def text(self, key: str) -> str | None:
        try:
            return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        except self.client.exceptions.NoSuchKey:
            return None

    def objects(self) -> dict[str, tuple[int, str]]:
        """key -> (size, etag) of everything under the snapshots prefix."""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=SNAPSHOTS_PREFIX):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
        return found

    def check_manifests(self) -> int:
        """Every MANIFEST.json in the bucket describes the objects beside it (size and ETag); how many."""
        objects = self.objects()
        count = 0
        for key, (_, etag) in objects.items():
            if not key.endswith("/MANIFEST.json"):
                continue
            if self._manifests.get(key, (None,))[0] != etag:
                self._manifests[key] = (etag, json.loads(self.text(key)))
            manifest = self._manifests[key][1]
            snapshot = key.rsplit("/", 2)[1]
            assert manifest["id"] == snapshot and manifest["meta"]["step"] == int(snapshot.split("-")[1]), manifest
            assert manifest["files"], f"{snapshot}: the manifest lists no file"
            for entry in manifest["files"]:
                file_key = f"{SNAPSHOTS_PREFIX}/{snapshot}/{entry['name']}"
                assert file_key in objects, f"{snapshot}'s manifest names {file_key}, which is not in the bucket"
                assert objects[file_key] == (entry["size"], entry["etag"]), (
                    f"{file_key} is {objects[file_key]} (size, ETag) in the bucket, but {snapshot}'s manifest "
                    f"says {(entry['size'], entry['etag'])}: the objects of a confirmed snapshot were replaced")
            count += 1
        return count

    def latest(self) -> tuple[str | None, dict[str, Any] | None]:
        """``(name, manifest)`` of the snapshot LATEST names, after checking it is whole in the bucket."""
        name = self.text(f"{SNAPSHOTS_PREFIX}/LATEST")
        if name is None:
            return None, None
        name = name.strip()
        manifest = self.manifest(name)
        assert manifest is not None, f"LATEST names {name}, which has no MANIFEST.json"
        for entry in manifest["files"]:
            key = f"{SNAPSHOTS_PREFIX}/{name}/{entry['name']}"
            try:
                head = self.client.head_object(Bucket=BUCKET, Key=key)
            except self.client.exceptions.ClientError as exc:
                raise AssertionError(f"LATEST names {name}, but {key} is not in the bucket ({exc})") from None
            assert head["ContentLength"] == entry["size"], (
                f"LATEST names {name}: {key} has {head['ContentLength']} bytes, the manifest says {entry['size']}")
        return name, manifest

    def manifest(self, name: str) -> dict[str, Any] | None:
        text = self.text(f"{SNAPSHOTS_PREFIX}/{name}/MANIFEST.json")
        return None if text is None else json.loads(text)

    def open_multipart_uploads(self) -> int:
        return len(self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def sizes_of(manifest: dict[str, Any]) -> dict[str, int]:
    return {f["name"]: f["size"] for f in manifest["files"]}


def snapshot_state(run: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((run / "snapshots.json").read_text())["snapshots"]
    except FileNotFoundError:
        return []


def check_resume(resume: dict[str, Any], trial: int, before: dict[str, Any], bucket: Bucket,
                 run: Path) -> tuple[bool, bool]:
    """The resume line of start ``trial`` against what the previous kill left.

    Returns ``(from_pending, raced)``: the snapshot was one the dead process left pending (the
    new process's uploader confirmed it before ``resume_info()`` looked); its manifest was being
    replaced by an upload of that pending name while the test read it, so sizes were not compared.
    """
    assert resume["attempts"] == trial, resume
    assert resume["previous_status"] == (None if trial == 0 else "crashed"), resume
    name, latest, pending = resume["snapshot"], before["latest"], before["pending"]
    # The new process's uploader starts on what the dead one left pending as soon as the instance
    # opens, before resume_info() reads LATEST: it may have confirmed one of those, or (when one
    # of them is uploaded again under the name LATEST gave) taken that name out of use.
    assert name == latest or name in pending or latest in pending, (
        f"trial {trial} resumed from {name}; LATEST named {latest}, pending: {pending}")
    if name is None:
        return False, False
    exact = name not in pending  # nothing uploads under this name again: its manifest holds still
    manifest = before["manifest"] if name == latest and exact else bucket.manifest(name)
    local = {Path(path).name: size for path, size in resume["files"]}
    for path, size in resume["files"]:
        assert size is not None and Path(path).parent in (run / "output", run / "restored" / name), path
    if manifest is None or local != sizes_of(manifest) or resume["meta"] != manifest["meta"]:
        assert not exact, f"trial {trial}: resumed from {name} with files {local}, its manifest: {manifest}"
        return name != latest, True
    return name != latest, False


def test_fifty_kill_9_trials_keep_the_record_the_snapshots_and_the_resume(tmp_path, moto_endpoint,  # noqa: F811
                                                                         monkeypatch):
    started = time.monotonic()
    ws = tmp_path / "ws"
    run = ws / "run" / RUN_ID
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVA_", "AWS_"))}
    env.update(AWS)
    env.update({"AVA_WORKSPACE": str(ws), "AVA_STORAGE_URL": f"s3://{BUCKET}/runs", "AVA_S3_ENDPOINT": moto_endpoint,
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})
    bucket = Bucket(moto_endpoint)
    bucket.client.create_bucket(Bucket=BUCKET)
    record = Record(run / "logs" / "metrics.jsonl")
    rng = random.Random(SEED)
    before: dict[str, Any] = {"latest": None, "manifest": None, "pending": []}
    latest_names: set[str] = set()
    kills_in_upload = kills_in_multipart = resumed_from_pending = raced = 0
    open_uploads = 0

    for trial in range(TRIALS):
        worker = Worker(env, tmp_path / f"stderr-{trial:02d}.txt", seed=SEED * 1000 + trial)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            resume = json.loads(worker.next_line(deadline))
            from_pending, manifest_moved = check_resume(resume, trial, before, bucket, run)
            resumed_from_pending += from_pending
            raced += manifest_moved
            for _ in range(rng.choice(WAIT_SUBMITS)):
                line = worker.next_line(deadline)
                assert line.startswith("submitted step-"), line
            time.sleep(rng.uniform(0.0, MAX_SLEEP))  # the random moment
        finally:
            worker.kill()
        assert worker.proc.returncode == -9, worker.stderr()

        # What the dead process left, before anything opens the instance again.
        record.check_new_lines()
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "running" and len(status["history"]) == trial, status
        assert all(h["status"] == "crashed" for h in status["history"]), status["history"]
        name, manifest = bucket.latest()
        bucket.check_manifests()
        if name is not None:
            latest_names.add(name)
        pending = [s["id"] for s in snapshot_state(run) if s["state"] == "pending"]
        kills_in_upload += bool(pending)
        now_open = bucket.open_multipart_uploads()
        kills_in_multipart += now_open > open_uploads
        open_uploads = now_open
        before = {"latest": name, "manifest": manifest, "pending": pending}

    # One more start, in this process: it records the last crash, resumes, and finishes cleanly.
    for key, value in env.items():
        if key.startswith(("AVA_", "AWS_")):
            monkeypatch.setenv(key, value)
    trials_took = time.monotonic() - started
    confirmed_in_trials = sum(s["state"] == "done" for s in snapshot_state(run))
    ins = train.TrainInstance(RUN_ID, workspace=ws, setup_logging=False, handle_signals=False)
    info = ins.resume_info()
    files = [[str(f), f.stat().st_size] for f in info.files]
    check_resume({"attempts": info.attempts, "previous_status": info.previous_status, "snapshot": info.snapshot,
                  "meta": info.snapshot_meta, "files": files}, TRIALS, before, bucket, run)
    ins.done(timeout=120)
    doc = json.loads((run / "status.json").read_text())
    assert doc["status"] == "done" and len(doc["history"]) == TRIALS
    assert all(h["status"] == "crashed" for h in doc["history"])
    state = snapshot_state(run)
    assert not [s["id"] for s in state if s["state"] != "done"], "the last start left snapshots unconfirmed"
    bucket.latest()
    manifests = bucket.check_manifests()
    records = list(iter_records(record.path))  # the whole file once more, as readers see it
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert len({(r.get("rank") or 0, r["seq"]) for r in records}) == len(records)
    took = time.monotonic() - started
    confirmed = sum(s["state"] == "done" for s in state)
    print(f"\nFIGURE crash-trials: {TRIALS} kill -9 trials; {len(records)} records, seq gapless, "
          f"{record.torn_tails} torn tails; {confirmed_in_trials} snapshots confirmed during the trials "
          f"({len(latest_names)} distinct LATEST targets), {confirmed} after the final start "
          f"({manifests} manifests in the bucket, each matching its objects); "
          f"{kills_in_upload} kills with a snapshot pending, {kills_in_multipart} during a multipart upload; "
          f"{resumed_from_pending} resumes from a snapshot left pending, {raced} resume size checks skipped "
          f"(manifest being re-uploaded); {took:.0f} s wall, {trials_took / TRIALS:.1f} s a trial")
