"""4 spawned and 4 forked processes log 20,000 records each through one MultiProcessingLogHandler."""

import logging
import multiprocessing as mp
import re

import pytest

from ava.log.logger import MultiProcessingLogHandler

pytestmark = pytest.mark.integration

PER_PROCESS = 20_000
LINE = re.compile(r"^w(\d) r(\d{5}) (x+)$")


def work(worker: int, handler: MultiProcessingLogHandler | None) -> None:
    log = logging.getLogger(f"mp.w{worker}")
    log.propagate = False
    log.setLevel(logging.INFO)
    if handler is not None:  # spawned: the handler arrives pickled, as a sender
        log.handlers[:] = [handler]
    for i in range(PER_PROCESS):
        log.info("w%d r%05d %s", worker, i, "x" * (10 + (i * 7 + worker) % 60))


def test_spawned_and_forked_processes_lose_tear_or_mix_nothing(tmp_path):
    path = tmp_path / "run.log"
    handler = MultiProcessingLogHandler(path, maxBytes=300_000, backupCount=200)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for w in range(4, 8):
        lg = logging.getLogger(f"mp.w{w}")
        lg.handlers[:] = [handler]  # forked children inherit this
    procs = [mp.get_context("spawn").Process(target=work, args=(w, handler)) for w in range(4)]
    procs += [mp.get_context("fork").Process(target=work, args=(w, None)) for w in range(4, 8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    handler.close()

    files = sorted(tmp_path.glob("run.log*"))
    assert len(files) > 10, "rotation should have happened many times"
    seen: dict[int, list[int]] = {w: [] for w in range(8)}
    for f in files:
        assert f.stat().st_size <= 300_000
        for line in f.read_text().splitlines():
            m = LINE.match(line)
            assert m, f"torn or mixed line in {f.name}: {line[:80]!r}"
            w, i, xs = int(m.group(1)), int(m.group(2)), m.group(3)
            assert len(xs) == 10 + (i * 7 + w) % 60
            seen[w].append(i)
    for w, got in seen.items():
        assert sorted(got) == list(range(PER_PROCESS)), f"worker {w} lost or repeated records"
    # Within one process, order is kept (files read oldest first).
    order = sorted(files, key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    per_worker = {w: [] for w in range(8)}
    for f in order:
        for line in f.read_text().splitlines():
            m = LINE.match(line)
            per_worker[int(m.group(1))].append(int(m.group(2)))
    assert all(v == list(range(PER_PROCESS)) for v in per_worker.values())


def test_a_killed_sender_does_not_block_the_others(tmp_path):
    import os
    import signal
    import time

    path = tmp_path / "run.log"
    handler = MultiProcessingLogHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    lg = logging.getLogger("mp.victim")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.INFO)

    def spam():
        while True:
            lg.info("v " + "y" * 5000)

    victim = mp.get_context("fork").Process(target=spam)
    victim.start()
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    survivor = mp.get_context("fork").Process(target=work, args=(1, None))
    lg1 = logging.getLogger("mp.w1")
    lg1.handlers[:] = [handler]
    survivor.start()
    survivor.join(120)
    assert survivor.exitcode == 0
    handler.close()
    lines = path.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith("w1 ")) == PER_PROCESS
    assert all(line == "v " + "y" * 5000 or LINE.match(line) for line in lines)
