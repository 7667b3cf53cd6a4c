"""Records/s from 4 forked processes into one rotating file: MultiProcessingLogHandler vs the
standard library's QueueHandler + QueueListener (multiprocessing.Queue) in the same run.
Every line of both runs is counted: zero lost lines is part of the result.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

WORKERS = 4
PER_WORKER = 50_000
FMT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def _worker(n: int, name: str) -> None:
    log = logging.getLogger(name)
    for i in range(n):
        log.info("step %d loss %.4f lr %.5f", i, 1.0 / (i + 1), 0.01)


def _count(folder: Path, stem: str) -> int:
    return sum(sum(1 for _ in open(p, "rb")) for p in folder.glob(stem + "*"))


def _run(procs_target, name: str) -> float:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=procs_target, args=(PER_WORKER, name)) for _ in range(WORKERS)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return t0


def bench_ava(folder: Path) -> tuple[float, int]:
    from ava.log.logger import MultiProcessingLogHandler

    h = MultiProcessingLogHandler(folder / "ava.log", maxBytes=50 << 20, backupCount=20)
    h.setFormatter(logging.Formatter(FMT))
    log = logging.getLogger("bench.ava")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    t0 = _run(_worker, "bench.ava")
    h.close()  # drains everything sent
    elapsed = time.perf_counter() - t0
    return WORKERS * PER_WORKER / elapsed, _count(folder, "ava.log")


def bench_stdlib(folder: Path) -> tuple[float, int]:
    q = mp.get_context("fork").Queue(-1)
    fh = logging.handlers.RotatingFileHandler(folder / "std.log", maxBytes=50 << 20, backupCount=20)
    fh.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(q, fh)
    qh = logging.handlers.QueueHandler(q)
    qh.setFormatter(logging.Formatter(FMT))  # prepare() formats in the sender, as ours does
    log = logging.getLogger("bench.std")
    log.handlers[:] = [qh]
    log.propagate = False
    log.setLevel(logging.INFO)
    listener.start()
    t0 = _run(_worker, "bench.std")
    listener.stop()  # drains the queue
    elapsed = time.perf_counter() - t0
    fh.close()
    return WORKERS * PER_WORKER / elapsed, _count(folder, "std.log")


def main() -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="ava-bench-log-"))
    expected = WORKERS * PER_WORKER
    ava_rates, std_rates = [], []
    lost = {"ava": 0, "stdlib": 0}
    for r in range(3):  # alternate
        sub = folder / str(r)
        sub.mkdir()
        rate, n = bench_ava(sub)
        ava_rates.append(rate)
        lost["ava"] += expected - n
        rate, n = bench_stdlib(sub)
        std_rates.append(rate)
        lost["stdlib"] += expected - n
    a, s = sorted(ava_rates)[1], sorted(std_rates)[1]
    print(f"MultiProcessingLogHandler: {a:,.0f} records/s (median of 3), lost {lost['ava']}")
    print(f"QueueHandler+QueueListener: {s:,.0f} records/s (median of 3), lost {lost['stdlib']}")
    print(f"  -> {a / s:.2f}x the standard library's rate; target >= 0.8x with zero lost lines")
    return {"ava_rps": a, "stdlib_rps": s, "ratio": a / s, "lost_ava": lost["ava"], "lost_stdlib": lost["stdlib"]}


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["ratio"] >= 0.8 and res["lost_ava"] == 0 else 1)
