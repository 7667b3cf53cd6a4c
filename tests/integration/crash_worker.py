"""A training-like process for the crash trials (run as ``python -m tests.integration.crash_worker``).

It opens the instance ``--id`` (so every start resumes the same one), asks ``resume_info()`` and
prints it as one JSON line: attempts, previous_status, epoch, step, snapshot, meta and the
snapshot's files with their sizes at that moment. It then continues from the step after the
snapshot's ``meta["step"]`` (or after the last recorded step), logs three metrics a step, and
every ``--every`` steps writes one or two files of random bytes (some above the S3 multipart
threshold, so that multipart uploads are killed too) into ``run/<id>/output/`` and hands them
to ``save_snapshot``, printing ``submitted <name>``. It never stops on its own: the test kills it.

Storage, workspace and credentials come from the environment (``AVA_WORKSPACE``,
``AVA_STORAGE_URL``, ``AVA_S3_ENDPOINT``, ``AWS_*``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB


def file_sizes(rng: random.Random, multipart_threshold: int) -> list[int]:
    """One or two sizes: mostly small, about one file in four just above the multipart threshold."""
    sizes = []
    for _ in range(rng.choice((1, 1, 2))):
        if rng.random() < 0.25:
            sizes.append(multipart_threshold + rng.randrange(1, 4 * MiB))
        else:
            sizes.append(rng.randrange(1, 2 * MiB))
    return sizes


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--every", type=int, default=100, help="steps between snapshots")
    p.add_argument("--step-seconds", type=float, default=0.004, help="the time a step's compute takes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from ava.storage.s3 import DEFAULT_MULTIPART_THRESHOLD
    from ava.train import base as train

    ins = train.TrainInstance(args.id, setup_logging=False)
    info = ins.resume_info()
    print(json.dumps({
        "attempts": info.attempts, "previous_status": info.previous_status, "epoch": info.epoch,
        "step": info.step, "last_seq": info.last_seq, "snapshot": info.snapshot, "meta": info.snapshot_meta,
        "files": [[str(f), f.stat().st_size if f.is_file() else None] for f in info.files],
    }), flush=True)
    if info.snapshot is not None:
        start = int(info.snapshot_meta["step"]) + 1
    else:
        start = 0 if info.step is None else info.step + 1
    rng = random.Random(args.seed * 1_000_003 + info.attempts)
    out = Path(ins.get_snapshot_base_path())
    step = start
    while True:
        epoch = step // 1000
        ins.log_metrics({"loss": 1.0 / (step + 1), "accuracy": (step % 100) / 100.0, "lr": 0.1}, step=step,
                        epoch=epoch, batch=step % 1000)
        if (step + 1) % args.every == 0:
            files = []
            for i, size in enumerate(file_sizes(rng, DEFAULT_MULTIPART_THRESHOLD)):
                path = out / f"step-{step:08d}-{i}.bin"
                path.write_bytes(os.urandom(size))
                files.append(path)
            name = ins.save_snapshot(files, f"step-{step:08d}", meta={"step": step, "epoch": epoch}, step=step)
            print(f"submitted {name}", flush=True)
        time.sleep(args.step_seconds)  # the step's compute
        step += 1


if __name__ == "__main__":
    sys.exit(main())
