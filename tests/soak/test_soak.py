"""Load test: 8 ranks of one instance, each writing 100,000 metric records, and 20 MB/s of log
text for 60 s between them. Nothing may be lost or repeated, each worker's memory stays within
a bound, and no file descriptor is left open.

``make soak`` runs it (``pytest -s`` prints the figures). ``AVA_SOAK_SECONDS`` shortens or
lengthens the load (default 60); the log volume follows, the metric count does not.

The log's owner is this test's process: it calls ``initialize_logger`` and the spawned workers
receive its handler pickled, so all of them send to one listener writing one ``run.log``.
(``TrainInstance(setup_logging=True)`` on a rank above 0 would open its own ``run.rank<k>.log``:
independently started ranks have no way to find rank 0's listener.)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time
from multiprocessing.connection import wait
from pathlib import Path

import pytest

from ava.log.logger import close_logger, initialize_logger, run_log_handler
from ava.metrics.sinks.jsonl import iter_records
from ava.train.ids import new_instance_id
from ava.workspace import Workspace
from tests.soak.soak_worker import Plan, expected_records, log_message, rss_bytes, run_rank

pytestmark = pytest.mark.soak

# Read at collection: the suite's autouse fixture clears AVA_* variables before each test runs.
SECONDS = float(os.environ.get("AVA_SOAK_SECONDS", "60"))
RANKS = 8
RECORDS = 100_000
LOG_BYTES_PER_SECOND = 20 * 1000 * 1000
#: The most a worker's RSS may grow over its size after imports and set-up. The writer holds at
#: most max_buffer (10,000) calls in its buffer plus the batch it is writing; measured peaks are
#: in docs/reliability.md.
RSS_GROWTH_BOUND = 64 * 1024 * 1024
#: The test process (the log listener) reads at most 256 KiB per connection at a time.
LISTENER_RSS_GROWTH_BOUND = 64 * 1024 * 1024
LINE = re.compile(rb"soak r(\d) n(\d{7}) (x*)$")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


def test_eight_ranks_lose_nothing_stay_bounded_and_leak_no_fds(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    instance_id = new_instance_id()
    logs = ws.run_dir(instance_id) / "logs"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(RANKS + 1)  # first: it starts multiprocessing's resource tracker, which stays
    parent_fds = _fds()
    # Rotation keeps every byte: 20 MB/s for the run fits in far fewer than backup_count files.
    backups = int(LOG_BYTES_PER_SECOND * 1.2 * SECONDS / (64 << 20)) + 4
    initialize_logger(logs, max_bytes=64 << 20, backup_count=backups)
    handler = run_log_handler()
    assert handler is not None

    plans = [Plan(rank=k, world=RANKS, workspace=str(ws.root), instance_id=instance_id, records=RECORDS,
                  seconds=SECONDS, log_bytes_per_second=LOG_BYTES_PER_SECOND / RANKS,
                  out=str(tmp_path / f"rank{k}.json")) for k in range(RANKS)]
    procs = [ctx.Process(target=run_rank, args=(plan, handler, start), name=f"rank{plan.rank}") for plan in plans]
    for p in procs:
        p.start()
    try:
        start.wait(120)
        t0 = time.monotonic()
        listener_base = rss_bytes()
        listener_peak = listener_base
        deadline = t0 + SECONDS * 2 + 120
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            listener_peak = max(listener_peak, rss_bytes())
            # sample the listener's memory every 0.2 s until the workers end
            wait([p.sentinel for p in procs if p.is_alive()], timeout=0.2)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        load_wall = time.monotonic() - t0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * RANKS, "a worker failed; see its traceback above"
    for p in procs:
        p.close()
    close_logger()  # drains the listener into the file
    assert _fds() == parent_fds, "the log listener left descriptors open"

    figs = [json.loads(Path(plan.out).read_text()) for plan in plans]

    # Metrics: every rank's file parses; exactly RECORDS records, seq 0..RECORDS-1, in order.
    expected = expected_records(RECORDS)
    for fig in figs:
        k = fig["rank"]
        path = logs / ("metrics.jsonl" if k == 0 else f"metrics.rank{k}.jsonl")
        got = list(iter_records(path))
        assert len(got) == RECORDS, f"rank {k}: {len(got)} records"
        assert [r["seq"] for r in got] == list(range(RECORDS)), f"rank {k}: seq has gaps or repeats"
        assert {r["rank"] for r in got} == {k}
        assert [(r["step"], r["phase"], r["name"]) for r in got] == expected, f"rank {k}: records differ"
    assert json.loads((ws.run_dir(instance_id) / "status.json").read_text())["status"] == "done"
    assert all(fig["status"] == "done" for fig in figs)

    # Log: every message each worker wrote is in run.log or a rotated file, whole, exactly once.
    files = sorted(logs.glob("run.log*"))
    seen = [bytearray(fig["log_lines"]) for fig in sorted(figs, key=lambda f: f["rank"])]
    log_file_bytes = 0
    for f in files:
        data = f.read_bytes()
        log_file_bytes += len(data)
        for line in data.split(b"\n"):
            if b" soak r" not in line:
                continue
            m = LINE.search(line)
            assert m, f"torn or mixed line in {f.name}: {line[:120]!r}"
            k, n = int(m.group(1)), int(m.group(2))
            assert line[m.start():].decode() == log_message(k, n), f"rank {k} line {n} altered in {f.name}"
            assert seen[k][n] == 0, f"rank {k} line {n} written twice"
            seen[k][n] = 1
    for k, marks in enumerate(seen):
        assert marks.count(1) == len(marks), f"rank {k}: {marks.count(0)} of {len(marks)} log lines missing"

    # Memory and descriptors.
    for fig in figs:
        growth = fig["rss_peak"] - fig["rss_baseline"]
        assert growth < RSS_GROWTH_BOUND, f"rank {fig['rank']}: RSS grew {growth / 2**20:.1f} MiB"
        assert fig["fds_end_of_load"] == fig["fds_after_setup"], (fig["rank"], fig["fds_after_setup"], fig["fds_end_of_load"])
        assert fig["fds_after_done"] == fig["fds_before_instance"], (fig["rank"], fig["fds_before_instance"], fig["fds_after_done"])
    assert listener_peak - listener_base < LISTENER_RSS_GROWTH_BOUND

    log_bytes = sum(f["log_bytes"] for f in figs)
    summary = {
        "ranks": RANKS, "seconds_planned": SECONDS, "load_wall_seconds": round(load_wall, 2),
        "metric_records": RECORDS * RANKS,
        "metric_records_per_second_paced": round(RECORDS * RANKS / max(f["load_seconds"] for f in figs)),
        "burst_records_per_second_per_rank": round(min(
            (RECORDS // 2) / f["burst_seconds"] for f in figs)),
        "log_lines": sum(f["log_lines"] for f in figs), "log_message_bytes": log_bytes,
        "log_message_mb_per_second": round(log_bytes / 1e6 / max(f["load_seconds"] for f in figs), 2),
        "run_log_bytes_with_rotations": log_file_bytes, "run_log_files": len(files),
        "rss_baseline_mib": round(max(f["rss_baseline"] for f in figs) / 2**20, 1),
        "rss_peak_growth_mib_max": round(max(f["rss_peak"] - f["rss_baseline"] for f in figs) / 2**20, 1),
        "rss_growth_bound_mib": RSS_GROWTH_BOUND / 2**20,
        "listener_rss_growth_mib": round((listener_peak - listener_base) / 2**20, 1),
        "fds_per_worker_before_instance_setup_end_done": sorted({
            (len(f["fds_before_instance"]), len(f["fds_after_setup"]), len(f["fds_end_of_load"]),
             len(f["fds_after_done"])) for f in figs}),
        "done_seconds_max": round(max(f["done_seconds"] for f in figs), 2),
    }
    (tmp_path / "soak.json").write_text(json.dumps({"summary": summary, "ranks": figs}, indent=1))
    print("\nsoak figures:", json.dumps(summary, indent=1), f"\n(all figures: {tmp_path / 'soak.json'})")
    for f in files:  # a gigabyte of text; the figures stay
        f.unlink()
