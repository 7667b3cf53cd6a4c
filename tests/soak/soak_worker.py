"""One rank of the soak run: metrics through ``log_metrics``, text through the ``ava`` logger.

Started with the ``spawn`` start method by ``test_soak.py``; the run log's handler arrives
pickled, which makes it a sender to the listener in the test's process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

METRIC_NAMES = ("loss", "accuracy", "lr", "top_k_accuracy_5")
PHASES = ("train", "train", "train", "val")
LINE_MIN, LINE_SPREAD = 900, 200  # log messages are 900..1099 bytes
_PAD = "x" * (LINE_MIN + LINE_SPREAD)


@dataclass
class Plan:
    rank: int
    world: int
    workspace: str
    instance_id: str
    records: int  # metric records this rank writes
    seconds: float  # how long the load lasts
    log_bytes_per_second: float  # this rank's share of the log text
    out: str  # where this rank writes its figures (JSON)


def metric_calls(records: int) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(step, metrics, phase) of each call, 1 to 4 names a call, ``records`` records in all.

    Values mix floats, ints and NaN so the writer's fast and slow paths both run.
    """
    step = 0
    left = records
    while left > 0:
        width = min(left, 1 + step % len(METRIC_NAMES))
        metrics: dict[str, Any] = {}
        for k in range(width):
            if k == 2:
                metrics[METRIC_NAMES[k]] = step  # an int
            elif k == 3 and step % 97 == 0:
                metrics[METRIC_NAMES[k]] = math.nan
            else:
                metrics[METRIC_NAMES[k]] = step / (k + 1.0)
        yield step, metrics, PHASES[step % len(PHASES)]
        step += 1
        left -= width


def expected_records(records: int) -> list[tuple[int, str, str]]:
    """(step, phase, name) of each record, in ``seq`` order."""
    return [(step, phase, name) for step, metrics, phase in metric_calls(records) for name in metrics]


def log_message(rank: int, n: int) -> str:
    """The ``n``-th log message of ``rank``; its length depends on (rank, n) only."""
    head = f"soak r{rank} n{n:07d} "
    return head + _PAD[: LINE_MIN + (n * 37 + rank * 11) % LINE_SPREAD - len(head)]


def rss_bytes() -> int:
    with open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> list[str]:
    """What this process's descriptors point at (sockets and pipes by inode), sorted."""
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except FileNotFoundError:  # the directory listdir itself had open
            continue
    return sorted(targets)


class RssSampler(threading.Thread):
    """Samples this process's RSS until stopped; keeps the peak."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.every = every
        self.peak = rss_bytes()
        self.samples = 0
        self._halt = threading.Event()
        #: Held while a sample has /proc/self/status open, so a descriptor count can exclude it.
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            with self.lock:
                rss = rss_bytes()
            self.peak = max(self.peak, rss)
            self.samples += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())


def run_rank(plan: Plan, handler: logging.Handler, start: Any) -> None:
    """The body of one worker process (``multiprocessing`` target)."""
    from ava.log.logger import logger
    from ava.train import base as train

    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("rank %d of %d starting", plan.rank, plan.world)  # opens this process's connection
    fig: dict[str, Any] = {"rank": plan.rank, "pid": os.getpid()}
    fig["fds_before_instance"] = open_fds()
    ins = train.TrainInstance(
        plan.instance_id, plan.workspace, setup_logging=False,
        env={"RANK": str(plan.rank), "WORLD_SIZE": str(plan.world), "AVA_DONE_TIMEOUT": "60"},
    )
    assert ins.rank == plan.rank, (ins.rank, plan.rank)
    fig["fds_after_setup"] = open_fds()
    fig["rss_baseline"] = rss_bytes()
    sampler = RssSampler()
    sampler.start()
    n_calls = sum(1 for _ in metric_calls(plan.records))
    calls = metric_calls(plan.records)  # generated as they are logged: only the writer holds records
    burst = n_calls // 2  # half the calls at once: more than the writer's buffer holds
    paced = n_calls - burst
    start.wait(120)  # every rank is set up; the test's process too
    log_total = int(plan.log_bytes_per_second * plan.seconds)
    lines = log_bytes = 0
    t0 = time.monotonic()
    for _ in range(burst):
        step, metrics, phase = next(calls)
        ins.log_metrics(metrics, step=step, epoch=step // 1000, batch=step % 1000, phase=phase)
    fig["burst_seconds"] = time.monotonic() - t0
    done_calls = burst
    pause = threading.Event()
    while True:
        elapsed = time.monotonic() - t0
        log_due = min(log_total, int(plan.log_bytes_per_second * elapsed))
        while log_bytes < log_due:
            msg = log_message(plan.rank, lines)
            logger.info(msg)
            lines += 1
            log_bytes += len(msg)
        # the rest of the metrics spread over 90% of the run, between the log lines
        calls_due = burst + min(paced, int(paced * elapsed / (0.9 * plan.seconds)))
        while done_calls < calls_due:
            step, metrics, phase = next(calls)
            ins.log_metrics(metrics, step=step, epoch=step // 1000, batch=step % 1000, phase=phase)
            done_calls += 1
        if log_bytes >= log_total and done_calls == n_calls:
            break
        pause.wait(0.005)  # pacing to the target rate, not waiting for a result
    fig["load_seconds"] = time.monotonic() - t0
    with sampler.lock:
        fig["fds_end_of_load"] = open_fds()
    t1 = time.monotonic()
    ins.done()
    fig["done_seconds"] = time.monotonic() - t1
    sampler.stop()
    fig["rss_peak"] = sampler.peak
    fig["rss_samples"] = sampler.samples
    fig["fds_after_done"] = open_fds()
    fig.update(records=plan.records, calls=n_calls, log_lines=lines, log_bytes=log_bytes,
               status=ins.status, plan=asdict(plan))
    handler.close()  # this process's connection only
    with open(plan.out, "w") as fh:
        json.dump(fig, fh)
