"""MB/s of log-like text through `cmd.runproc` with a hook on every line, vs `cat FILE > /dev/null`.

Writes AVA_BENCH_CMD_MB (default 1024) MB of Caffe-like log lines (about 100 bytes each) to a
temporary directory, then times, in the same run:
  - baseline: `cat FILE > /dev/null`;
  - ava: a fresh interpreter running `cmd.runproc(["cat", FILE], log_hook=hook)` with its own
    stdout on /dev/null (so the echo is done, and costs what a write to /dev/null costs), where
    the hook makes one substring check per line, standing in for a log parser;
  - for reference (once): the same with run.log on (`initialize_logger`, every line written
    to the file too, until `close_logger()` has drained it), and the old SDK's loop, one
    readline() per line with a per-line echo, decode and hook call.
Every line the hooks see is counted against the number written. Target: >= 150 MB/s through ava.
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

TARGET_MBPS = 150.0
ROUNDS = 3

_WRAPPER = """
import json, sys, time
from ava.log.logger import close_logger, initialize_logger
from ava.utils import cmd
count = 0
def hook(line):
    global count
    if "Iteration " in line:
        count += 1
t = time.perf_counter()
if len(sys.argv) > 3:
    initialize_logger(sys.argv[3], backup_count=1000)  # rotated at 64 MB as usual, but nothing dropped
code = cmd.runproc(["cat", sys.argv[1]], log_hook=hook)
close_logger()  # waits until run.log has every line
seconds = time.perf_counter() - t
with open(sys.argv[2], "w") as f:
    json.dump({"code": code, "count": count, "seconds": seconds}, f)
"""

_READLINE = """
import json, subprocess, sys, time
count = 0
def hook(line):
    global count
    if "Iteration " in line:
        count += 1
t = time.perf_counter()
proc = subprocess.Popen(["cat", sys.argv[1]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
out = sys.stdout.buffer
for raw in iter(proc.stdout.readline, b""):
    out.write(raw)
    hook(raw.decode("utf-8", "replace").rstrip("\\n"))
code = proc.wait()
seconds = time.perf_counter() - t
with open(sys.argv[2], "w") as f:
    json.dump({"code": code, "count": count, "seconds": seconds}, f)
"""


def write_log(path: Path, megabytes: int) -> int:
    """Write about ``megabytes`` MB of Caffe-like lines; return how many contain "Iteration "."""
    blocks = []
    for b in range(8):
        lines = []
        for i in range(b * 5000, b * 5000 + 5000):
            stamp = f"I1122 03:18:{i % 60:02d}.{i % 999983:06d} 12345 solver.cpp"
            loss = 1 / (i + 1)
            lines.append(f"{stamp}:228] Iteration {i * 20} (2.5 iter/s, 40s/100 iter), loss = {loss:.6f}\n")
            lines.append(f"{stamp}:244]     Train net output #0: loss = {loss:.6f} (* 1 = {loss:.1f} loss)\n")
        blocks.append(("".join(lines).encode(), len(lines) // 2))
    size = 0
    matches = 0
    with open(path, "wb") as f:
        while size < megabytes * 1_000_000:
            data, n = blocks[(size // len(blocks[0][0])) % len(blocks)]
            f.write(data)
            size += len(data)
            matches += n
    return matches


def time_cat(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def time_python(code: str, path: Path, result: Path, *extra: str) -> dict[str, float]:
    subprocess.run([sys.executable, "-c", code, str(path), str(result), *extra], stdout=subprocess.DEVNULL,
                   check=True)
    return json.loads(result.read_text())


def main() -> dict[str, float]:
    megabytes = int(os.environ.get("AVA_BENCH_CMD_MB", "1024"))
    folder = Path(tempfile.mkdtemp(prefix="ava-bench-cmd-"))
    try:
        log = folder / "big.log"
        expected = write_log(log, megabytes)
        size_mb = log.stat().st_size / 1e6
        cat_rates, ava_rates, lost = [], [], 0
        for _ in range(ROUNDS):  # alternate, so load from other work hits both alike
            cat_rates.append(size_mb / time_cat(log))
            res = time_python(_WRAPPER, log, folder / "ava.json")
            ava_rates.append(size_mb / res["seconds"])
            lost += expected - int(res["count"]) + (res["code"] != 0)
        old = time_python(_READLINE, log, folder / "old.json")
        with_log = time_python(_WRAPPER, log, folder / "runlog.json", str(folder / "logs"))
        logged = 0
        for part in (folder / "logs").iterdir():  # run.log and its rotated parts
            with open(part, "rb") as f:
                logged += sum(1 for line in f if line.startswith(b"I1122 "))
        lost_log = 2 * expected - logged + expected - int(with_log["count"]) + (with_log["code"] != 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cat, ava = sorted(cat_rates)[ROUNDS // 2], sorted(ava_rates)[ROUNDS // 2]
    old_rate = size_mb / old["seconds"]
    log_rate = size_mb / with_log["seconds"]
    print(f"cmd.runproc(['cat', FILE]) + per-line hook: {ava:,.0f} MB/s (median of {ROUNDS}; "
          f"{size_mb:,.0f} MB, {2 * expected:,} lines), lines lost {lost}")
    print(f"same, and every line into run.log as well:  {log_rate:,.0f} MB/s (once), lines lost {lost_log}")
    print(f"cat FILE > /dev/null:                       {cat:,.0f} MB/s (median of {ROUNDS})")
    print(f"old SDK loop (readline per line) + hook:     {old_rate:,.0f} MB/s (once)")
    print(f"  -> {ava / cat:.3f}x cat, {ava / old_rate:.2f}x the readline loop; target >= {TARGET_MBPS:.0f} MB/s "
          "with zero lost lines")
    return {"ava_mbps": ava, "cat_mbps": cat, "readline_mbps": old_rate, "run_log_mbps": log_rate,
            "ratio": ava / cat, "ratio_readline": ava / old_rate, "lost": lost, "lost_run_log": lost_log,
            "megabytes": size_mb}


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["ava_mbps"] >= TARGET_MBPS and res["lost"] == 0 and res["lost_run_log"] == 0 else 1)
