"""Certificates verified unless AVA_TLS_VERIFY=0 (said once); plain HTTP to a remote host warned once."""

from __future__ import annotations

import logging
import ssl

import pytest

from ava.env import Env
from ava.utils import tls
from ava.utils.tls import is_loopback, ssl_context, tls_verify, warn_plain_http
from tests.support.file_server import FileServer
from tests.support.tls_cert import self_signed

TLS_LOGGER = "ava.utils.tls"


@pytest.fixture(autouse=True)
def _fresh_warnings():
    tls._reset_for_tests()
    yield
    tls._reset_for_tests()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == TLS_LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("yes", True), ("", True),
                                             ("0", False), ("false", False), ("Off", False), ("no", False)])
def test_env_tls_verify_is_off_only_by_name(value, expected):
    assert Env({} if value is None else {"AVA_TLS_VERIFY": value}).tls_verify is expected


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST.",
                                        "api.localhost"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "128.0.0.1", "example.com", "localhost.example.com", "", None))


def test_plain_http_warns_once_per_endpoint(caplog):
    caplog.set_level(logging.WARNING, logger=TLS_LOGGER)
    assert warn_plain_http("http://status.example.com/v1", "the metric endpoint")
    assert not warn_plain_http("http://status.example.com/other?token=x", "the metric endpoint")
    assert warn_plain_http("http://status.example.com:8080", "the metric endpoint")  # another port: another endpoint
    for url in ("https://status.example.com", "http://127.0.0.1:9000", "http://[::1]:80", "http://localhost/x",
                None, "not a url"):
        assert not warn_plain_http(url, "x")
    got = warnings_of(caplog)
    assert len(got) == 2 and "http://status.example.com:80 is plain HTTP (the metric endpoint)" in got[0]
    assert "token" not in " ".join(got)


def test_tls_off_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger=TLS_LOGGER)
    assert tls_verify(Env({})) is True and warnings_of(caplog) == []
    assert tls_verify(Env({"AVA_TLS_VERIFY": "0"})) is False
    assert tls_verify(Env({"AVA_TLS_VERIFY": "0"})) is False
    got = warnings_of(caplog)
    assert len(got) == 1 and "AVA_TLS_VERIFY=0" in got[0] and "NOT verified" in got[0]


def test_contexts():
    on, off = ssl_context(True), ssl_context(False)
    assert on.verify_mode == ssl.CERT_REQUIRED and on.check_hostname
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname


def test_http_sink_and_platform_client_follow_the_setting(tmp_path, monkeypatch, caplog):
    from ava.metrics.sinks.http import HttpSink
    from ava.platform.client import PlatformClient

    caplog.set_level(logging.WARNING, logger=TLS_LOGGER)
    sink = HttpSink("https://127.0.0.1:9", "i-1", tmp_path / "m.jsonl")
    try:
        assert sink._conn_kwargs["context"].verify_mode == ssl.CERT_REQUIRED
    finally:
        sink.stop(1.0)
    assert PlatformClient("https://127.0.0.1:9")._session.verify not in (False, None)  # True, or the CA bundle set
    monkeypatch.setenv("AVA_TLS_VERIFY", "0")
    sink = HttpSink("https://127.0.0.1:9", "i-2", tmp_path / "m.jsonl")
    try:
        assert sink._conn_kwargs["context"].verify_mode == ssl.CERT_NONE
    finally:
        sink.stop(1.0)
    assert PlatformClient("https://127.0.0.1:9")._session.verify is False
    sink = HttpSink("http://metrics.example.invalid:9", "i-3", tmp_path / "m.jsonl")
    sink.stop(1.0)
    PlatformClient("http://api.example.invalid:9")
    got = warnings_of(caplog)
    assert len(got) == 3  # TLS off once, then one per plain-HTTP endpoint
    assert sum("AVA_TLS_VERIFY=0" in m for m in got) == 1
    assert any("metrics.example.invalid:9" in m for m in got) and any("api.example.invalid:9" in m for m in got)


def test_s3_and_qiniu_clients_follow_the_setting(tmp_path, monkeypatch):
    import qiniu.http

    from ava.storage.qiniu import QiniuStorage
    from ava.storage.s3 import S3Storage

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    assert S3Storage(endpoint_url="https://127.0.0.1:9").client()._endpoint.http_session._verify is not False
    store = QiniuStorage(access_key="ak-test", secret_key="sk-test-secret")
    assert store._session().verify is True
    monkeypatch.setenv("AVA_TLS_VERIFY", "0")
    assert S3Storage(endpoint_url="https://127.0.0.1:9").client()._endpoint.http_session._verify is False
    sdk_session = qiniu.http.qn_http_client.session
    monkeypatch.setattr(sdk_session, "verify", True)
    monkeypatch.setattr("ava.storage.qiniu._sdk_verify_off", False)
    store = QiniuStorage(access_key="ak-test", secret_key="sk-test-secret")
    store._auth("qiniu://b/k")
    assert store._session().verify is False and sdk_session.verify is False


def test_fetcher_refuses_a_bad_certificate_unless_told_by_name(tmp_path, monkeypatch, caplog):
    from ava.utils.fetcher import FetchError, Fetcher

    _, server_ctx = self_signed(tmp_path)
    root = tmp_path / "srv"
    root.mkdir()
    (root / "a.bin").write_bytes(b"x" * 1000)
    caplog.set_level(logging.WARNING, logger=TLS_LOGGER)
    with FileServer(root, ssl_context=server_ctx) as server:
        url = server.url_for("a.bin")
        with Fetcher(backoff=0.001) as f:
            with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
                f.fetch_huge_file(url, tmp_path / "a.bin")
            res, err = f.fetch(url)
            assert res is None and "CERTIFICATE_VERIFY_FAILED" in str(err)
        monkeypatch.setenv("AVA_TLS_VERIFY", "0")
        with Fetcher(backoff=0.001) as f:
            assert f.fetch_huge_file(url, tmp_path / "a.bin").read_bytes() == b"x" * 1000
            res, err = f.fetch(url)
            assert err is None and res.body == b"x" * 1000
    assert sum("AVA_TLS_VERIFY=0" in m for m in warnings_of(caplog)) == 1
