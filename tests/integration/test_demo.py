"""The first demo runs from a fresh directory and reports a done status and a non-empty record."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_demo_prints_a_done_status_and_metrics(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "demo_basic.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    status_path = re.search(r"^status:\s+(\S+) \(done\)$", out.stdout, re.M).group(1)
    metrics_path = re.search(r"^metrics:\s+(\S+) \((\d+) records\)$", out.stdout, re.M).group(1)
    assert status_path.startswith(str(tmp_path / "demo-workspace"))
    assert json.loads(open(status_path).read())["status"] == "done"
    records = [json.loads(line) for line in open(metrics_path)]
    assert records and {r["phase"] for r in records} == {"train", "val"}
    val = [r["value"] for r in records if r["phase"] == "val"]
    assert val[-1] > 0.9
    received = int(re.search(r"^server:\s+http://127\.0\.0\.1:\d+ received (\d+) points$", out.stdout, re.M).group(1))
    assert received == len(records)
    run_id = status_path.split("/")[-2]
    png = tmp_path / "loss.png"
    shown = subprocess.run([sys.executable, "-m", "ava", "runs", "show", run_id, "--plot", str(png)], cwd=tmp_path,
                           env={**__import__("os").environ, "AVA_WORKSPACE": str(tmp_path / "demo-workspace")},
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "train  loss" in shown.stdout and png.read_bytes()[:4] == b"\x89PNG"
