"""The reference platform server over real HTTP: metrics, instances, models, signatures, faults."""

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ava.errors import PlatformError
from ava.platform.client import PlatformClient
from ava.platform.lineproto import encode_records

pytestmark = pytest.mark.integration


def post(url, body, method="POST"):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"{}")


def records(n, start=0, rank=0):
    return [{"ts": 1.0, "step": i, "epoch": 0, "batch": i, "phase": "train", "name": "loss", "value": 1.0 / (i + 1),
             "rank": rank, "seq": i} for i in range(start, start + n)]


def test_metrics_are_stored_once_per_rank_and_seq(platform):
    url = f"{platform.url}/v1/report/trainings/r1/metric"
    assert post(url, encode_records(records(100), "r1")) == (200, {"received": 100, "stored": 100})
    assert post(url, encode_records(records(150, start=50), "r1"))[1] == {"received": 150, "stored": 100}
    assert post(url, encode_records(records(10, rank=1), "r1"))[1]["stored"] == 10
    with urllib.request.urlopen(f"{platform.url}/v1/trainings/r1/metrics", timeout=10) as resp:
        points = json.load(resp)
    assert len(points) == 210
    assert points[0] == {"name": "loss", "step": 0, "epoch": 0, "batch": 0, "phase": "train", "rank": 0, "seq": 0, "value": 1.0}
    db = sqlite3.connect(platform.db_path)
    assert db.execute("SELECT count(*), count(DISTINCT rank || ':' || seq) FROM points").fetchone() == (210, 210)


def test_name_filter_and_nonfinite_values(platform):
    recs = records(3)
    recs[1] = dict(recs[1], name="loss3/top-5", value=float("nan"), phase="test", net=1)
    post(f"{platform.url}/v1/report/trainings/r2/metric", encode_records(recs, "r2"))
    with urllib.request.urlopen(f"{platform.url}/v1/trainings/r2/metrics?name=loss3/top-5", timeout=10) as resp:
        assert json.load(resp) == [{"name": "loss3/top-5", "step": 1, "epoch": 0, "batch": 1, "phase": "test",
                                    "rank": 0, "seq": 1, "value": "nan", "net": 1}]


def test_malformed_body_is_refused_with_the_line_number(platform):
    body = encode_records(records(2), "r3") + b"not line protocol\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        post(f"{platform.url}/v1/report/trainings/r3/metric", body)
    assert info.value.code == 400 and "line 3" in info.value.reason


def test_instances_and_models_through_the_client(platform):
    client = PlatformClient(platform.url)
    created = client.create_instance("job-a", {"status": "running", "params": {"lr": 0.1}})
    assert created["id"] and created["params"] == {"lr": 0.1}
    client.update_instance("job-a", created["id"], {"status": "done", "errMsg": ""})
    assert client.get_instance("job-a", created["id"])["status"] == "done"
    assert client.get_instance("job-a", "nope") is None
    client.create_model({"name": "m1", "type": "snapshot", "file": "s3://b/k"})
    with urllib.request.urlopen(f"{platform.url}/v1/models/m1", timeout=10) as resp:
        assert json.load(resp)["file"] == "s3://b/k"


def test_signatures_are_verified_when_keys_are_set(tmp_path):
    from ava.platform_server import PlatformServer

    server = PlatformServer(str(tmp_path / "p.db"), keys=("AK", "SK"))
    server.start_in_thread()
    try:
        good = PlatformClient(server.url, "AK", "SK")
        assert good.create_instance("j", {"status": "running"})["id"]
        for client in (PlatformClient(server.url, retries=0), PlatformClient(server.url, "AK", "wrong", retries=0)):
            with pytest.raises(PlatformError, match="HTTP 401"):
                client.create_instance("j", {"status": "running"})
    finally:
        server.stop()


def test_client_retries_5xx_then_succeeds(platform):
    platform.faults.mode, platform.faults.count = "500", 2
    assert PlatformClient(platform.url, retries=3).create_instance("j", {"status": "running"})["id"]
    assert platform.faults.hits == 2


def test_client_gives_up_within_its_deadline():
    import time

    from tests.integration.conftest import free_port

    client = PlatformClient(f"http://127.0.0.1:{free_port()}", deadline=1.0, retries=10)
    t0 = time.monotonic()
    with pytest.raises(PlatformError, match="unreachable"):
        client.get_instance("j", "x")
    assert time.monotonic() - t0 < 5


def test_cli_prints_its_url_first_and_serves(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ava.platform_server", "--port", "0", "--db", str(tmp_path / "p.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert post(f"{url}/v1/report/trainings/x/metric", encode_records(records(1), "x"))[1]["stored"] == 1
        status, doc = post(f"{url}/_ava/faults", json.dumps({"mode": "500", "count": 1}).encode())
        with pytest.raises(urllib.error.HTTPError) as info:
            post(f"{url}/v1/report/trainings/x/metric", encode_records(records(1), "x"))
        assert info.value.code == 500
    finally:
        proc.terminate()
        proc.wait(10)
