"""`make bench`: every benchmark, each printing its figure against a baseline from the same run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cmd  # noqa: E402
import bench_fetch  # noqa: E402
import bench_frameworks  # noqa: E402
import bench_http  # noqa: E402
import bench_import  # noqa: E402
import bench_log_metrics  # noqa: E402
import bench_mp_log  # noqa: E402
import bench_parse_log  # noqa: E402
import bench_storage  # noqa: E402


def main() -> int:
    ok = True
    print("== log_metrics cost on the calling thread ==")
    ok &= bench_log_metrics.main()["ratio_median"] >= 20
    print("\n== MultiProcessingLogHandler throughput, 4 processes ==")
    res = bench_mp_log.main()
    ok &= res["ratio"] >= 0.8 and res["lost_ava"] == 0
    print("\n== import time ==")
    ok &= not bench_import.main()["heavy"]
    print("\n== platform reporting ==")
    res = bench_http.main()
    ok &= res["overhead_median"] <= 0.10 and res["batched_rps"] >= 50_000
    print("\n== ava parse-log caffe against BVLC parse_log.py ==")
    res = bench_parse_log.main()
    ok &= min(res["ratio_csv"], res["ratio_jsonl"]) >= bench_parse_log.TARGET_RATIO
    print("\n== the process wrapper (ava.utils.cmd) ==")
    res = bench_cmd.main()
    ok &= res["ava_mbps"] >= bench_cmd.TARGET_MBPS and res["lost"] == 0
    print("\n== framework adapters ==")
    ok &= bench_frameworks.targets_met(bench_frameworks.main())
    print("\n== object storage ==")
    ok &= bench_storage.targets_met(bench_storage.main())
    print("\n== downloads ==")
    ok &= bench_fetch.met(bench_fetch.main())
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
