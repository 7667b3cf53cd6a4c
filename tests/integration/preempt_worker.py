"""A training-like process for the preemption tests (run as ``python -m tests.integration.preempt_worker``).

Each step logs three metrics; every ``--epoch-steps`` steps an "epoch" ends and, with
``--snapshot-bytes``, writes a file of that size and hands it to the snapshot uploader. It
prints ``ready`` once the first epoch has ended, and at exit writes how many ``log_metrics``
calls it made to ``<workspace>/calls.json`` (the tests compare that with the record).

Modes: ``poll`` checks ``should_stop()`` after each step and leaves through
``exit_preempted()``; ``nopoll`` never asks; ``stuck`` declares it polls but never looks (so
the watchdog must act); ``chain`` installs its own SIGTERM handler first, which writes
``<workspace>/user-handler``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path

calls = 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--mode", default="poll", choices=("poll", "nopoll", "stuck", "chain"))
    p.add_argument("--epoch-steps", type=int, default=200)
    p.add_argument("--snapshot-bytes", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0)
    args = p.parse_args()
    ws = Path(os.environ["AVA_WORKSPACE"])

    def write_calls() -> None:  # registered before ava's: runs after the instance finished
        (ws / "calls.json").write_text(json.dumps({"calls": calls}))

    atexit.register(write_calls)
    if args.mode == "chain":
        signal.signal(signal.SIGTERM, lambda s, f: (ws / "user-handler").write_text(str(s)))

    from ava.train import base as train

    ins = train.TrainInstance(args.id)
    info = ins.resume_info()
    start = (info.step or -1) + 1 if info.snapshot is None else int(info.snapshot_meta.get("step", -1)) + 1
    print(json.dumps({"resumed_from": info.snapshot, "start": start}), flush=True)
    if args.mode == "stuck":
        ins.should_stop()
    global calls
    step = start
    ready = False
    while True:
        ins.log_metrics({"loss": 1.0 / (step + 1), "accuracy": (step % 100) / 100.0, "lr": 0.1}, step=step,
                        epoch=step // args.epoch_steps, batch=step % args.epoch_steps)
        calls += 1
        if (step + 1) % args.epoch_steps == 0:
            epoch = step // args.epoch_steps
            if args.snapshot_bytes:
                out = Path(ins.get_snapshot_base_path()) / f"weights-{epoch:04d}.bin"
                out.write_bytes(os.urandom(args.snapshot_bytes))
                ins.save_snapshot([out], f"epoch-{epoch:04d}", meta={"epoch": epoch, "step": step}, step=step)
            if not ready:  # the first epoch end of this process
                ready = True
                print("ready", flush=True)
        if args.mode in ("poll", "chain") and ins.should_stop():
            ins.exit_preempted()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        step += 1


if __name__ == "__main__":
    sys.exit(main())
