"""redact(), the RedactingFilter, and the filter on every handler ava installs."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import subprocess
import sys

import pytest

from ava.env import Env
from ava.errors import StorageError
from ava.log import redact as redact_mod
from ava.log.logger import (MultiProcessingLogHandler, close_logger, initialize_console_logger, initialize_logger,
                            run_log_handler)
from ava.log.redact import (MASK, RedactingFilter, has_redacting_filter, known_secrets, redact, redact_values,
                            refresh_secrets, register_secret)
from ava.train.status import StatusFile

SK = "SKfake-unique-string-0001"
AK = "AKfake-access-key-0001"
AWS_SK = "awsFAKEsecret/Key+0001xyz"
AWS_TOKEN = "FQoGZXIvYXdzEfakeSessionToken0001"
USER_SK = "config-user-secret-0001"
# An upload token and a signed URL as the qiniu SDK makes them (HMAC-SHA1 in URL-safe base64).
UPLOAD_TOKEN = "AKother12:nPxsUqbymxAyhvfKYd7z5nkcwqo=:eyJzY29wZSI6ImI6ayIsImRlYWRsaW5lIjoxNzk1MzI4ODc1fQ=="
SIGNED = "http://cdn.example.com/k.bin?e=1795328875&token=AKother12:4QLHOWG1mux410QhSQcWYKvpC6M="


@pytest.fixture(autouse=True)
def _fresh_secrets(monkeypatch):
    monkeypatch.setattr(redact_mod, "_registered", set())
    refresh_secrets(Env({}))
    yield
    monkeypatch.undo()
    refresh_secrets()


def test_plain_text_is_left_alone():
    for text in ("step 5 loss 0.2134 lr 0.01", "uploaded qiniu://bucket/run1/a.params in 0.3 s",
                 "AWS endpoint s3://b/k, 3 tokens=", "e=5 and key: value", ""):
        assert redact(text) == text


def test_known_secret_values_from_the_environment_and_config_user(tmp_path):
    config = tmp_path / "ws" / "config"
    config.mkdir(parents=True)
    (config / "user").write_text(json.dumps({"key": "AKconfig-0001", "secret": USER_SK}))
    refresh_secrets(Env({"AVA_SECRET_KEY": SK, "AVA_ACCESS_KEY": AK, "AWS_SECRET_ACCESS_KEY": AWS_SK,
                         "AWS_SESSION_TOKEN": AWS_TOKEN, "AVA_WORKSPACE": str(tmp_path / "ws")}))
    for secret in (SK, AK, AWS_SK, AWS_TOKEN, USER_SK, "AKconfig-0001"):
        assert redact(f"value [{secret}] here") == f"value [{MASK}] here"
        assert secret in known_secrets()


def test_secrets_are_read_lazily_and_again_after_refresh(monkeypatch):
    monkeypatch.setenv("AVA_SECRET_KEY", SK)
    assert SK in redact(f"x {SK}")  # the cache was filled before the variable was set
    refresh_secrets()
    assert redact(f"x {SK}") == f"x {MASK}"


def test_registered_secrets_and_short_values():
    register_secret("abc")  # too short to mask without mangling ordinary words
    register_secret(None)
    register_secret("s3cr3t-registered")
    register_secret("s3cr3t-registered-longer")  # holds the first: masked whole
    assert redact("abc s3cr3t-registered s3cr3t-registered-longer") == f"abc {MASK} {MASK}"
    assert redact_values("raw s3cr3t-registered line") == f"raw {MASK} line"


@pytest.mark.parametrize("text, expected", [
    (f"token {UPLOAD_TOKEN} end", f"token {MASK} end"),
    (f"GET {SIGNED} 200", f"GET http://cdn.example.com/k.bin?e={MASK}&token={MASK} 200"),
    ("Authorization: Qiniu AKx:abc_def-12=", f"Authorization: {MASK}"),
    ("Authorization: QBox AKx:abc_def-12=", f"Authorization: {MASK}"),
    ("{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/20240101/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=abcdef'}", f"{{'Authorization': b'{MASK}'}}"),
    ("headers {'authorization': 'Bearer eyJhbGciOi.xyz'}", f"headers {{'authorization': '{MASK}'}}"),
    ("sent with Bearer eyJhbGciOi.xyz.sig", f"sent with Bearer {MASK}"),
    ("sent with Qiniu AKx:abc_def-12= ok", f"sent with Qiniu {MASK} ok"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2024"
     "&X-Amz-Date=2024&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok123"
     "&X-Amz-Signature=abc123",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Date=2024&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***"
     "&X-Amz-Signature=***"),
    ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIA1&Signature=ab%2Bc&Expires=1",
     f"https://b.s3.amazonaws.com/k?AWSAccessKeyId={MASK}&Signature={MASK}&Expires=1"),
    ("x-amz-security-token:FQoGZXIvYXdzE", f"x-amz-security-token:{MASK}"),
    ("{'X-Amz-Security-Token': b'FQoGZXIvYXdzE'}", f"{{'X-Amz-Security-Token': b'{MASK}'}}"),
    ("posting to http://user:pa55w0rd@status.example.com/v1 failed",
     f"posting to http://user:{MASK}@status.example.com/v1 failed"),
    ("connecting to redis://:hunter2pass@cache:6379/0", f"connecting to redis://:{MASK}@cache:6379/0"),
])
def test_tokens_headers_and_signed_urls(text, expected):
    assert redact(text) == expected


def _record(msg: str, args: tuple = (), exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_filter_formats_first_then_masks_message_and_exception():
    register_secret(SK)
    try:
        raise ValueError(f"bad {SK} in {SIGNED}")
    except ValueError:
        rec = _record("got %s from %s", (SK, SIGNED), sys.exc_info())
    rec.stack_info = f"Stack: {SK}"
    assert RedactingFilter().filter(rec) is True
    assert rec.args is None and rec.msg == f"got {MASK} from http://cdn.example.com/k.bin?e={MASK}&token={MASK}"
    assert SK not in rec.exc_text and "token=***" in rec.exc_text and "ValueError" in rec.exc_text
    assert rec.stack_info == f"Stack: {MASK}"
    out = logging.Formatter().format(rec)
    assert SK not in out and "4QLHOWG1mux" not in out


def test_filter_masks_text_fields_given_with_extra():
    register_secret(SK)
    rec = _record("upload done", (), None)
    rec.creds, rec.url, rec.count = f"key={SK}", SIGNED, 3  # what logging.info(..., extra={...}) adds
    assert RedactingFilter().filter(rec) is True
    out = logging.Formatter("%(message)s %(creds)s %(url)s %(count)d").format(rec)
    assert SK not in out and "4QLHOWG1mux" not in out and out.startswith(f"upload done key={MASK} ") and out.endswith(" 3")


def test_filter_masks_once_and_passes_bad_format_strings_on():
    register_secret(SK)
    rec = _record("a %s", (SK,))
    RedactingFilter().filter(rec)
    rec.msg = SK  # anything changed after the first pass is not looked at again
    assert RedactingFilter().filter(rec) and rec.msg == SK
    bad = _record("%d", ("x",))
    assert RedactingFilter().filter(bad) and bad.args == ("x",)


def test_multiprocessing_handler_masks_records_raw_lines_and_senders(tmp_path):
    register_secret(SK)
    path = tmp_path / "logs" / "run.log"
    handler = MultiProcessingLogHandler(path)
    assert has_redacting_filter(handler)
    sender = pickle.loads(pickle.dumps(handler))  # what a spawned child gets
    assert has_redacting_filter(sender)
    log = logging.getLogger("test.redact.mp")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("key %s url %s", SK, SIGNED)
        handler.write_raw(f"child says {SK}\nsecond line")
        handler.flush()
    finally:
        log.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "child says ***\nsecond line" in text and "token=***" in text
    assert SK not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_run_log_is_0600_after_rotation_too(tmp_path):
    path = tmp_path / "run.log"
    handler = MultiProcessingLogHandler(path, maxBytes=200, backupCount=2)
    try:
        for i in range(10):
            handler.write_raw(f"line {i} " + "x" * 60)
        handler.flush()
    finally:
        handler.close()
    assert (tmp_path / "run.log.1").exists()
    for p in (path, tmp_path / "run.log.1"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_initialize_logger_masks_config_user_secrets_in_file_and_console(tmp_path, capsys):
    ws = tmp_path / "ws"
    (ws / "config").mkdir(parents=True)
    (ws / "config" / "user").write_text(json.dumps({"key": "AKconfig-0002", "secret": USER_SK}))
    logs = ws / "run" / "inst-1" / "logs"
    initialize_logger(logs, env=Env({"AVA_SECRET_KEY": SK}))
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_ava_managed", False)]
    assert ours and all(has_redacting_filter(h) for h in ours)
    logging.getLogger("test.redact").warning("keys %s %s %s", SK, USER_SK, "Authorization: Qiniu AKx:sig=")
    run_log_handler().flush()
    close_logger()
    text = (logs / "run.log").read_text()
    err = capsys.readouterr().err
    for out in (text, err):
        assert f"keys {MASK} {MASK} Authorization: {MASK}" in out
        assert SK not in out and USER_SK not in out


def test_console_logger_for_the_cli_masks_and_steps_aside(tmp_path, capsys):
    handler = initialize_console_logger(Env({"AVA_LOG_LEVEL": "INFO"}))
    assert handler is not None and has_redacting_filter(handler)
    assert initialize_console_logger(Env({})) is None  # one is enough
    register_secret(SK)
    logging.getLogger("test.redact.cli").info("secret %s", SK)
    assert f"INFO test.redact.cli: secret {MASK}" in capsys.readouterr().err
    initialize_logger(tmp_path / "logs", env=Env({}))  # `ava run` starting an instance replaces it
    assert handler not in logging.getLogger().handlers
    close_logger()


def test_cli_errors_and_handlers_mask(tmp_path, monkeypatch, capsys):
    from ava import cli

    register_secret(SK)
    monkeypatch.setenv("AVA_LOG_LEVEL", "DEBUG")
    code = cli.main(["fetch", f"file://{tmp_path}/none-{SK}", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert SK not in err and f"none-{MASK}" in err
    assert any(has_redacting_filter(h) for h in logging.getLogger().handlers)


def test_errors_and_status_are_masked(tmp_path):
    register_secret(SK)
    exc = StorageError(f"download of {SIGNED} failed with {SK}")
    assert SK not in str(exc) and SK not in repr(exc) and "token=***" in str(exc)
    status = StatusFile(tmp_path / "status.json")
    doc = status.finish(status.begin("i-1"), "failed", err_msg=f"train.py exited: Authorization: QBox AKx:s= {SK}")
    on_disk = (tmp_path / "status.json").read_text()
    assert SK not in on_disk and doc["err_msg"] == f"train.py exited: Authorization: {MASK}"


def test_a_spawned_child_masks_the_secrets_its_parent_knows(tmp_path):
    code = """
import logging, multiprocessing as mp, sys
from ava.env import Env
from ava.log.logger import initialize_logger, run_log_handler, close_logger
from ava.log.redact import register_secret

def child(handler):
    log = logging.getLogger("child"); log.addHandler(handler); log.setLevel(logging.INFO)
    log.propagate = False
    log.info("%s: %s %s", mp.current_process().name, "registered-secret-42", "config-user-secret-0001")

if __name__ == "__main__":
    initialize_logger(sys.argv[1] + "/run/x/logs", env=Env({"AVA_WORKSPACE": sys.argv[1]}))
    register_secret("registered-secret-42")
    for method in ("fork", "spawn", "forkserver"):
        p = mp.get_context(method).Process(target=child, args=(run_log_handler(),))
        p.start(); p.join()
    close_logger()
"""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "user").write_text(json.dumps({"key": "AKconfig-0002", "secret": USER_SK}))
    script = tmp_path / "spawner.py"  # spawn and forkserver import the main module again
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in (tmp_path / "run" / "x" / "logs" / "run.log").read_text().splitlines() if "Process" in ln]
    assert len(lines) == 3 and all(f"{MASK} {MASK}" in ln for ln in lines), lines
    assert "registered-secret-42" not in "".join(lines) and USER_SK not in "".join(lines)


def test_a_long_run_of_letters_and_digits_is_masked_in_one_pass():
    from tests.conftest import run_python

    code = f"""
import os
from ava.log.redact import redact
dump = os.urandom(150_000).hex()  # a hex dump: 300,000 characters that could each start a Qiniu token
out = redact("bad sample id=17: " + dump + " then {UPLOAD_TOKEN}")
print(out == "bad sample id=17: " + dump + " then ***")
"""
    # Linear: well under a second. Scanned again from each character, it took minutes (the regex
    # engine holds the GIL, hence a process with a timeout rather than a thread).
    res = run_python(code, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-2000:]
