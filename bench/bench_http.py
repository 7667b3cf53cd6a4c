"""Platform reporting: training-thread cost with the HTTP sink on (server answering after 200 ms)
against the sink off, and delivery throughput to the reference server on loopback against
one record per request (the same server, connection and records).

The server runs in its own process (`python -m ava.platform_server`), as a platform would.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

CALLS = 20_000
ROUNDS = 3
DELIVER = 200_000
SINGLE = 2_000


def start_server(db: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ava.platform_server", "--port", "0", "--db", str(db), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


def per_call(ins, n: int) -> list[float]:
    pc = time.perf_counter
    out = []
    for i in range(n):
        t = pc()
        ins.log_metrics({"loss": 0.5, "accuracy": 0.9, "lr": 0.01}, step=i)
        out.append(pc() - t)
    return out


def bench_cost(tmp: Path) -> dict[str, float]:
    from ava.train import base as train

    proc, url = start_server(tmp / "slow.db", "--fault", "delay", "--fault-delay", "0.2")
    off: list[float] = []
    on: list[float] = []
    try:
        for r in range(ROUNDS):  # alternate, so drift hits both
            a = train.TrainInstance(f"off-{r}", workspace=tmp, setup_logging=False, env={}, max_buffer=100_000)
            off += per_call(a, CALLS)
            a.done()
            b = train.TrainInstance(f"on-{r}", workspace=tmp, setup_logging=False, max_buffer=100_000,
                                    env={"AVA_STATUS_HOST": url, "AVA_DONE_TIMEOUT": "0.5"})
            on += per_call(b, CALLS)
            b.done()
    finally:
        proc.terminate()
        proc.wait(10)
    res = {"off_median_us": statistics.median(off) * 1e6, "on_median_us": statistics.median(on) * 1e6,
           "off_mean_us": statistics.mean(off) * 1e6, "on_mean_us": statistics.mean(on) * 1e6}
    res["overhead_median"] = res["on_median_us"] / res["off_median_us"] - 1
    res["overhead_mean"] = res["on_mean_us"] / res["off_mean_us"] - 1
    print(f"log_metrics, HTTP sink off: median {res['off_median_us']:.2f} us, mean {res['off_mean_us']:.2f} us")
    print(f"log_metrics, HTTP sink on, server answering after 200 ms: median {res['on_median_us']:.2f} us, "
          f"mean {res['on_mean_us']:.2f} us")
    print(f"  -> overhead {res['overhead_median'] * 100:+.1f}% (median), {res['overhead_mean'] * 100:+.1f}% (mean); "
          "target within 10%")
    return res


def bench_delivery(tmp: Path) -> dict[str, float]:
    from ava.metrics.sinks.http import HttpSink
    from ava.platform.lineproto import encode_records
    from ava.train import base as train

    ins = train.TrainInstance("deliver", workspace=tmp, setup_logging=False, env={}, max_buffer=100_000)
    for i in range(DELIVER // 2):
        ins.log_metrics({"loss": 1.0 / (i + 1), "accuracy": 0.5}, step=i, epoch=i // 1000, batch=i % 1000)
    ins.done()
    proc, url = start_server(tmp / "fast.db")
    try:
        sink = HttpSink(url, "deliver", ins.metrics_path)
        t0 = time.perf_counter()
        assert sink.wait(600), "delivery did not finish"
        batched = DELIVER / (time.perf_counter() - t0)
        sink.stop()
        # Baseline: the same kind of records, one POST each, on one keep-alive connection.
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        recs = [{"ts": 1.0, "step": i, "epoch": 0, "batch": i, "phase": "train", "name": "loss", "value": 0.5,
                 "rank": 0, "seq": i} for i in range(SINGLE)]
        t0 = time.perf_counter()
        for r in recs:
            conn.request("POST", "/v1/report/trainings/single/metric", body=encode_records([r], "single"))
            conn.getresponse().read()
        single = SINGLE / (time.perf_counter() - t0)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"delivery of {DELIVER:,} records, batched: {batched:,.0f} records/s")
    print(f"one record per request (baseline): {single:,.0f} records/s")
    print(f"  -> {batched / single:.1f}x; target >= 50,000 records/s")
    return {"batched_rps": batched, "single_rps": single, "ratio": batched / single}


def main() -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ava-bench-http-"))
    res = bench_cost(tmp)
    res.update(bench_delivery(tmp))
    return res


if __name__ == "__main__":
    r = main()
    sys.exit(0 if r["overhead_median"] <= 0.10 and r["batched_rps"] >= 50_000 else 1)
