"""Downloads from the tornado file server (tests/support/file_server.py, run in its own process so
it does not share a GIL with the client), each figure against a baseline from the same run.

1. One file of ``AVA_BENCH_FETCH_MB`` MiB (default 1024): ``Fetcher.fetch_huge_file`` against
   ``curl -o`` on the same file, alternating, best of ROUNDS each. Ours runs in a child process
   that reports its own transfer time and peak RSS (``VmHWM``); curl reports
   ``%{time_total}``. The target compares like with like: the server sends no ETag, so ours,
   like curl, checks the size only. Target: >= 80% of curl's throughput, peak memory < 100 MB.
   Then the same download with the hash checked as it arrives, for information: a Qiniu etag
   (SHA-1 per 4 MiB block, what Kodo serves) and an MD5 ETag (S3, MinIO). Those are bound by
   the hash itself (the speed of one core for it is printed beside them), on two cores shared
   with the server: when one core hashes slower than 80% of curl's rate (MD5 here), no
   overlap can hide it.
2. 2,000 files of 20 KB, the server waiting 10 ms before each response (an object store's
   time to first byte; loopback alone has none): ``fetch_many(concurrency=16)`` against
   ``fetch_huge_file`` one file at a time. Target: >= 5x. The same without the wait is printed
   for information: then both sides are CPU-bound on two cores and concurrency gains little.

Files go to /dev/shm when it has room (so disk writeback does not blur the figures), else to the
temp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1 << 20
ROUNDS = 5
MANY = 2000
MANY_SIZE = 20_000
LATENCY = 0.010
TARGET_RATIO = 0.80
TARGET_PEAK_MB = 100
TARGET_MANY = 5.0
VARIANTS = {"none": "size checked, as curl", "qiniu": "+ Qiniu etag verified", "md5": "+ MD5 ETag verified"}
PRIMARY = "none"
HASH_OF = {"qiniu": "sha1", "md5": "md5"}

# The child's own peak is VmHWM (its address space's high-water mark). Not ru_maxrss: Linux
# carries the pre-exec address space's peak into it, and subprocess forks (vfork) from this
# process, so ru_maxrss would report the parent's peak (600+ MB inside `make bench`).
CHILD = r"""
import json, sys, time
from ava.utils.fetcher import Fetcher
f = Fetcher()
t = time.perf_counter()
f.fetch_huge_file(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": int(hwm.split()[1]) / 1024}))
"""


def workdir(need: int) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > need:
        return Path(tempfile.mkdtemp(prefix="ava-bench-fetch-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="ava-bench-fetch-"))


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/support/file_server.py"), str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    return proc, proc.stdout.readline().strip()  # type: ignore[union-attr]


def make_big(path: Path, mib: int) -> None:
    block = bytearray(os.urandom(MIB))
    with open(path, "wb") as fh:
        for i in range(mib):
            block[:8] = i.to_bytes(8, "little")  # every MiB differs
            fh.write(block)


def run_curl(url: str, out: Path) -> float:
    res = subprocess.run(["curl", "-sSf", "-o", str(out), "-w", "%{time_total}", url],
                         capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


def run_ours(url: str, out: Path) -> tuple[float, float]:
    res = subprocess.run([sys.executable, "-c", CHILD, url, str(out)], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if res.returncode != 0:
        raise RuntimeError(f"fetch_huge_file failed: {res.stderr.strip()[-500:]}")
    doc = json.loads(res.stdout)
    return doc["seconds"], doc["peak_mb"]


def bench_huge(tmp: Path, url: str, mib: int) -> dict[str, float]:
    import urllib.request

    size = mib * MIB
    for kind in ("md5", "qiniu"):  # the server hashes the file once per kind, before the clock
        urllib.request.urlopen(urllib.request.Request(f"{url}/big.bin?etag={kind}", method="HEAD"), timeout=600)
    out = tmp / "out.bin"
    times: dict[str, list[float]] = {"curl": [], **{k: [] for k in VARIANTS}}
    peak = 0.0
    for _ in range(ROUNDS):  # alternate, so drift hits every contender
        times["curl"].append(run_curl(f"{url}/big.bin", out))
        assert out.stat().st_size == size
        out.unlink()
        for kind in VARIANTS:
            seconds, peak_mb = run_ours(f"{url}/big.bin?etag={kind}", out)
            assert out.stat().st_size == size
            out.unlink()
            times[kind].append(seconds)
            peak = max(peak, peak_mb)
    mbps = {k: size / 1e6 / min(v) for k, v in times.items()}
    print(f"download of {mib} MiB from the file server (best of {ROUNDS}):")
    print(f"  {'curl -o (baseline):':<40} {mbps['curl']:5.0f} MB/s          runs "
          f"{', '.join(f'{t:.2f}' for t in times['curl'])} s")
    for kind, label in VARIANTS.items():
        alone = f"; {HASH_OF[kind]} alone: {hash_speed(HASH_OF[kind]):.0f} MB/s" if kind in HASH_OF else ""
        print(f"  {'fetch_huge_file, ' + label + ':':<40} {mbps[kind]:5.0f} MB/s = {mbps[kind] / mbps['curl'] * 100:3.0f}%   "
              f"runs {', '.join(f'{t:.2f}' for t in times[kind])} s{alone}")
    ratio = mbps[PRIMARY] / mbps["curl"]
    print(f"  -> {ratio * 100:.0f}% of curl ({VARIANTS[PRIMARY]}), peak RSS {peak:.0f} MB; "
          f"target >= {TARGET_RATIO * 100:.0f}% and < {TARGET_PEAK_MB} MB")
    res = {"curl_mbps": mbps["curl"], "fetch_mbps": mbps[PRIMARY], "ratio": ratio, "peak_mb": peak}
    res.update({f"fetch_{k}_mbps": mbps[k] for k in VARIANTS})
    return res


def hash_speed(name: str) -> float:
    """MB/s of one core for ``name`` over 256 MiB, in 4 MiB updates."""
    import hashlib

    block = os.urandom(4 * MIB)
    h = hashlib.new(name)
    t0 = time.perf_counter()
    for _ in range(64):
        h.update(block)
    return 256 * MIB / 1e6 / (time.perf_counter() - t0)


def bench_many(tmp: Path, url: str) -> dict[str, float]:
    from ava.utils.fetcher import Fetcher

    res: dict[str, float] = {}
    with Fetcher() as fetcher:
        for latency in (LATENCY, 0.0):
            urls = [f"{url}/many/{i:04d}.bin?latency={latency}" for i in range(MANY)]
            dest_many, dest_one = tmp / "many-concurrent", tmp / "many-one-by-one"
            t0 = time.perf_counter()
            fetcher.fetch_many(urls, dest_many, concurrency=16)
            many = time.perf_counter() - t0
            t0 = time.perf_counter()
            for u in urls:
                fetcher.fetch_huge_file(u, dest_one / u.rsplit("/", 1)[1].split("?")[0])
            one = time.perf_counter() - t0
            assert len(os.listdir(dest_many)) == len(os.listdir(dest_one)) == MANY
            shutil.rmtree(dest_many)
            shutil.rmtree(dest_one)
            key = "" if latency else "_no_latency"
            res.update({f"many_fps{key}": MANY / many, f"one_fps{key}": MANY / one, f"many_ratio{key}": one / many})
            print(f"{MANY:,} files of {MANY_SIZE // 1000} KB, {latency * 1000:.0f} ms before each response:")
            print(f"  one by one (baseline):          {MANY / one:7.0f} files/s ({one:.2f} s)")
            print(f"  fetch_many(concurrency=16):     {MANY / many:7.0f} files/s ({many:.2f} s)")
            goal = f"; target >= {TARGET_MANY:.0f}x" if latency else " (for information: CPU-bound on both sides)"
            print(f"  -> {one / many:.1f}x{goal}")
    return res


def main() -> dict[str, float]:
    mib = int(os.environ.get("AVA_BENCH_FETCH_MB", "1024"))
    tmp = workdir(3 * mib * MIB + MANY * MANY_SIZE * 3)
    print(f"(files under {tmp})")
    try:
        root = tmp / "srv"
        (root / "many").mkdir(parents=True)
        make_big(root / "big.bin", mib)
        for i in range(MANY):
            (root / "many" / f"{i:04d}.bin").write_bytes(os.urandom(MANY_SIZE))
        proc, url = start_server(root)
        try:
            res = bench_huge(tmp, url, mib)
            print()
            res.update(bench_many(tmp, url))
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def met(res: dict[str, float]) -> bool:
    return res["ratio"] >= TARGET_RATIO and res["peak_mb"] < TARGET_PEAK_MB and res["many_ratio"] >= TARGET_MANY


if __name__ == "__main__":
    sys.exit(0 if met(main()) else 1)
