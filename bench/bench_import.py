"""`python -c "import ava"` time against `python -c "pass"`, and which heavy modules it loads."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

HEAVY = ["torch", "mxnet", "boto3", "qiniu", "tornado"]
RUNS = 15


def _time(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main() -> dict[str, float]:
    base, ava = [], []
    for _ in range(RUNS):  # alternate
        base.append(_time("pass"))
        ava.append(_time("import ava"))
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys, json, ava; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
        capture_output=True, text=True, check=True,
    )
    loaded = json.loads(probe.stdout)
    full = []
    for _ in range(RUNS):
        full.append(_time("from ava.train import base; from ava.params import params; from ava.log.logger import logger"))
    b, a, f = statistics.median(base), statistics.median(ava), statistics.median(full)
    print(f"python -c 'import ava': {a * 1000:.1f} ms (interpreter alone {b * 1000:.1f} ms: +{(a - b) * 1000:.1f} ms)")
    print(f"importing TrainInstance, params and logger: {f * 1000:.1f} ms (+{(f - b) * 1000:.1f} ms)")
    print(f"  heavy modules loaded by 'import ava': {loaded or 'none'} (of {', '.join(HEAVY)})")
    return {"import_ms": a * 1000, "python_ms": b * 1000, "core_ms": f * 1000, "heavy": loaded}


if __name__ == "__main__":
    sys.exit(0 if not main()["heavy"] else 1)
