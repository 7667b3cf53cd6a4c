"""Known fake secrets never reach a file a run produces, nor the console.

Every process runs with fake Qiniu and AWS keys in the environment, a ``config/user`` holding a
fake secret, and logging at DEBUG (so the qiniu SDK, requests, urllib3 and botocore log what they
log). Then every file under the workspace (but ``config/``, which is where the secret is given),
the storage directories, the resume records and the captured console output is searched for each
secret. ``run.log`` must exist and hold the run's lines, so a run that logged nothing cannot pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO
from tests.support.kodo_server import KodoServer
from tests.support.moto_server import moto_s3

pytestmark = pytest.mark.integration

AK = "AKfakeQiniu0123456789abcd"
SK = "SKfake-unique-string-7f3a9c"
AWS_ID = "AKIAFAKE0123456789XY"
AWS_SK = "awsFAKEsecret0123456789abcdefSECRET"
USER_SK = "cfgFAKEsecret-user-0123456789"
SECRETS = (SK, AK, AWS_ID, AWS_SK, USER_SK)

# In a training process: storage through both backends, a signed URL and a signed request
# logged on purpose, a snapshot, a secret in an exception, and a failed status quoting it.
TRAINING = r"""
import logging, os, sys
from pathlib import Path
from ava.storage.registry import get_storage
from ava.train import base as train
from ava.utils.fetcher import Fetcher

ak, sk = os.environ["AVA_ACCESS_KEY"], os.environ["AVA_SECRET_KEY"]
log = logging.getLogger("user.script")
ins = train.TrainInstance()
out = Path(ins.get_snapshot_base_path())
(out / "model.params").write_bytes(os.urandom(9 * 1024 * 1024))  # above 8 MiB: a resumable v2 upload
qiniu = get_storage("qiniu://secrets/x")
qiniu.upload(out / "model.params", "qiniu://secrets/direct/model.params")
signed = qiniu.signed_url("qiniu://secrets/direct/model.params")
log.info("downloading from %s", signed)
with Fetcher() as f:
    f.fetch_huge_file("qiniu://secrets/direct/model.params", out / "back.params")
import qiniu as sdk
token = sdk.Auth(ak, sk).upload_token("secrets", "k", 3600)
log.debug("upload token %s, header Authorization: Qiniu %s:sig=", token, ak)
log.warning("the keys were %s / %s / %s", ak, sk, os.environ["AWS_SECRET_ACCESS_KEY"])
s3 = get_storage("s3://secrets/x")
s3.upload(out / "model.params", "s3://secrets/direct/model.params")
s3.download("s3://secrets/direct/model.params", out / "back-s3.params")
log.info("presigned %s", s3.signed_url("s3://secrets/direct/model.params"))
ins.log_metrics({"loss": 0.5}, step=1)
ins.save_snapshot([out / "model.params"], "epoch-1")
try:
    raise RuntimeError(f"failed while holding {sk} and {signed}")
except RuntimeError as exc:
    log.exception("training failed")
    ins.done(err_msg=str(exc))
print("RUN_LOG", Path(ins.get_base_path()) / "logs" / "run.log")
print("STATUS", Path(ins.get_base_path()) / "status.json")
"""


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def leaks(paths: list[Path], extra_texts: dict[str, str]) -> list[str]:
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    for where, text in extra_texts.items():
        found += [f"{where}: {s}" for s in SECRETS if s in text]
    return found


@pytest.fixture
def kodo(tmp_path) -> Iterator[KodoServer]:
    with KodoServer(tmp_path / "kodo", access_key=AK, secret_key=SK) as server:
        server.create_bucket("secrets")
        yield server


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def secret_env(tmp_path, kodo, moto_endpoint) -> dict[str, str]:
    import boto3

    ws = tmp_path / "ws"
    (ws / "config").mkdir(parents=True)
    (ws / "config" / "user").write_text(json.dumps({"key": AK, "secret": USER_SK}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVA_", "AWS_"))}
    env.update(kodo.env())
    env.update({
        "AVA_WORKSPACE": str(ws), "AVA_LOG_LEVEL": "DEBUG", "AVA_STORAGE_URL": "qiniu://secrets/runs",
        "AVA_QINIU_RESUME_DIR": str(tmp_path / "resume"), "AVA_S3_ENDPOINT": moto_endpoint,
        "AWS_ACCESS_KEY_ID": AWS_ID, "AWS_SECRET_ACCESS_KEY": AWS_SK, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache"),
    })
    boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=AWS_ID, aws_secret_access_key=AWS_SK,
                 region_name="us-east-1").create_bucket(Bucket="secrets")
    return env


def test_a_training_run_and_transfers_leak_no_secret(tmp_path, kodo, secret_env):
    ws = Path(secret_env["AVA_WORKSPACE"])
    consoles: dict[str, str] = {}

    run = subprocess.run([sys.executable, "-c", TRAINING], env=secret_env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    consoles["training stdout"], consoles["training stderr"] = run.stdout, run.stderr
    run_log = Path(run.stdout.split("RUN_LOG ", 1)[1].split("\n", 1)[0])
    status = json.loads(Path(run.stdout.split("STATUS ", 1)[1].split("\n", 1)[0]).read_text())
    assert status["status"] == "failed" and "failed while holding ***" in status["err_msg"]
    assert "token=***" in status["err_msg"]
    log_text = run_log.read_text()
    assert "downloading from http://127.0.0.1" in log_text and "token=***" in log_text
    assert "the keys were *** / *** / ***" in log_text and "Traceback" in log_text
    assert "DEBUG" in log_text  # the SDKs' DEBUG records went through the masking handler too

    # `ava run` writes the child's raw output to run.log: known secrets are masked there as well.
    child = subprocess.run([sys.executable, "-m", "ava", "run", "--id", "raw-child", "--", sys.executable, "-c",
                            f"import sys; print('raw line {SK}'); print('Error: {AWS_SK}', file=sys.stderr); "
                            "sys.exit(3)"], env=secret_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert child.returncode == 3, child.stderr[-3000:]
    consoles["ava run stderr"] = child.stderr  # the console echo is raw; only the logged part is checked
    raw_log = ws / "run" / "raw-child" / "logs" / "run.log"
    assert "raw line ***" in raw_log.read_text()
    raw_status = json.loads((ws / "run" / "raw-child" / "status.json").read_text())
    assert raw_status["status"] == "failed" and "Error: ***" in raw_status["err_msg"]
    del consoles["ava run stderr"]

    # The CLI moving files through both protocols, logging at DEBUG to stderr.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(os.urandom(1000))
    for i, argv in enumerate((["upload", str(src), "qiniu://secrets/tree"],
                              ["fetch", "qiniu://secrets/tree", str(tmp_path / "back-qiniu")],
                              ["upload", str(src), "s3://secrets/tree"],
                              ["fetch", "s3://secrets/tree", str(tmp_path / "back-s3")],
                              ["fetch", "qiniu://secrets/none-such", str(tmp_path / "none")])):
        out = subprocess.run([sys.executable, "-m", "ava", *argv], env=secret_env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == (2 if "none-such" in argv[1] else 0), out.stderr[-3000:]
        consoles[f"ava {argv[0]} #{i} stdout"], consoles[f"ava {argv[0]} #{i} stderr"] = out.stdout, out.stderr
    assert (tmp_path / "back-qiniu" / "sub" / "a.bin").read_bytes() == (src / "sub" / "a.bin").read_bytes()
    assert (tmp_path / "back-s3" / "sub" / "a.bin").read_bytes() == (src / "sub" / "a.bin").read_bytes()
    assert "DEBUG" in consoles["ava upload #0 stderr"]

    produced = [p for p in files_under(ws, tmp_path / "resume", tmp_path / "cache", kodo.root)
                if not p.is_relative_to(ws / "config")]
    assert run_log in produced and raw_log in produced and run_log.stat().st_size > 0
    assert len(produced) > 10
    assert leaks(produced, consoles) == []


def test_the_demo_leaks_no_secret(tmp_path, secret_env):
    demo_ws = tmp_path / "demo-workspace"
    (demo_ws / "config").mkdir(parents=True)
    (demo_ws / "config" / "user").write_text(json.dumps({"key": AK, "secret": USER_SK}))
    env = dict(secret_env, AVA_DEMO_WORKSPACE=str(demo_ws), AVA_STORAGE_URL="")
    env.pop("AVA_WORKSPACE")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "demo_basic.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = list(demo_ws.glob("run/*/logs/run.log"))
    assert logs and all(p.stat().st_size > 0 for p in logs)
    produced = [p for p in files_under(demo_ws) if not p.is_relative_to(demo_ws / "config")]
    assert leaks(produced, {"demo stdout": out.stdout, "demo stderr": out.stderr}) == []
