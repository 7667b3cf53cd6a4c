"""log_metrics with three scalars vs tensorboardX add_scalar called three times, same process.

Prints the median and the mean cost per call on the calling thread. The mean includes the
time the background writer thread takes the GIL from the caller in a tight loop.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

N = 20_000
ROUNDS = 3


def timed_calls(fn, n: int) -> list[float]:
    pc = time.perf_counter
    out = []
    for i in range(n):
        t = pc()
        fn(i)
        out.append(pc() - t)
    return out


def main() -> dict[str, float]:
    from tensorboardX import SummaryWriter

    from ava.train import base as train

    tmp = tempfile.mkdtemp(prefix="ava-bench-")
    ins = train.TrainInstance("bench-log-metrics", workspace=tmp, setup_logging=False, max_buffer=100_000)
    tb = SummaryWriter(logdir=f"{tmp}/tb", flush_secs=1)

    def ava_call(i: int) -> None:
        ins.log_metrics({"loss": 0.5 + i * 1e-6, "accuracy": 0.9, "lr": 0.01}, step=i)

    def tb_call(i: int) -> None:
        tb.add_scalar("loss", 0.5 + i * 1e-6, i)
        tb.add_scalar("accuracy", 0.9, i)
        tb.add_scalar("lr", 0.01, i)

    ava_t: list[float] = []
    tb_t: list[float] = []
    for _ in range(ROUNDS):  # alternate so drift on a shared machine hits both
        ava_t += timed_calls(ava_call, N)
        ins.flush_metrics(60)
        tb_t += timed_calls(tb_call, N)
        tb.flush()
    ins.done()
    tb.close()
    res = {
        "ava_median_us": statistics.median(ava_t) * 1e6,
        "ava_mean_us": statistics.mean(ava_t) * 1e6,
        "tbx_median_us": statistics.median(tb_t) * 1e6,
        "tbx_mean_us": statistics.mean(tb_t) * 1e6,
    }
    res["ratio_median"] = res["tbx_median_us"] / res["ava_median_us"]
    res["ratio_mean"] = res["tbx_mean_us"] / res["ava_mean_us"]
    print(f"log_metrics (3 scalars): median {res['ava_median_us']:.2f} us, mean {res['ava_mean_us']:.2f} us per call")
    print(f"tensorboardX add_scalar x3: median {res['tbx_median_us']:.2f} us, mean {res['tbx_mean_us']:.2f} us per call")
    print(f"  -> log_metrics is {res['ratio_median']:.1f}x cheaper (median), {res['ratio_mean']:.1f}x (mean); target >= 20x")
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["ratio_median"] >= 20 else 1)
