"""TrainInstance and the platform API: created there, updated at done(), local when unreachable."""

import json
import logging
import time

import pytest

from ava.platform.client import PlatformClient
from ava.train import base as train
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_instance_is_created_and_finished_on_the_platform(ws, platform):
    (ws.root / "config").mkdir()
    (ws.root / "config" / "trainingspec").write_text(json.dumps({"name": "digits"}))
    (ws.params_dir / "default.json").write_text(json.dumps({"lr": 0.1}))
    ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={"AVA_API_HOST": platform.url})
    remote = PlatformClient(platform.url).get_instance("digits", ins.get_training_ins_id())
    assert remote["status"] == "running" and remote["params"] == {"lr": 0.1}
    ins.done(err_msg="diverged")
    remote = PlatformClient(platform.url).get_instance("digits", ins.get_training_ins_id())
    assert remote["status"] == "failed" and remote["errMsg"] == "diverged" and remote["stopTime"]


def test_explicit_id_is_registered_when_the_platform_lacks_it(ws, platform):
    ins = train.TrainInstance("given-id", workspace=ws.root, setup_logging=False,
                              env={"AVA_API_HOST": platform.url, "JOB_NAME": "ava-job-42"})
    ins.done()
    assert PlatformClient(platform.url).get_instance("ava-job-42", "given-id")["status"] == "done"


def test_signed_requests_with_keys_from_config_user(ws, tmp_path):
    from ava.platform_server import PlatformServer

    server = PlatformServer(str(tmp_path / "p.db"), keys=("AK", "SK"))
    server.start_in_thread()
    try:
        (ws.root / "config").mkdir()
        (ws.root / "config" / "user").write_text(json.dumps({"key": "AK", "secret": "SK"}))
        (ws.root / "config" / "worker").write_text(json.dumps({"atnet_apiserver_host": server.url}))
        ins = train.TrainInstance(workspace=ws.root, setup_logging=False, env={})
        ins.done()
        assert PlatformClient(server.url, "AK", "SK").get_instance("default", ins.get_training_ins_id())["status"] == "done"
    finally:
        server.stop()


def test_unreachable_api_degrades_to_a_local_instance_in_bounded_time(ws, caplog):
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    ins = train.TrainInstance(workspace=ws.root, setup_logging=False,
                              env={"AVA_API_HOST": f"http://127.0.0.1:{free_port()}", "AVA_DONE_TIMEOUT": "2"})
    ins.log_metrics({"loss": 1.0}, step=1)
    ins.done()
    assert time.monotonic() - t0 < 20
    assert json.loads(ins.status_path.read_text())["status"] == "done"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("continuing as a local instance" in w for w in warnings)
    assert any("status.json has it" in w for w in warnings)
