"""PlatformClient: how its HTTP session is set up."""

from ava.platform.client import PlatformClient


def test_a_ca_bundle_in_the_environment_is_used_though_the_session_ignores_proxies(monkeypatch, tmp_path):
    bundle = tmp_path / "private-ca.pem"
    bundle.write_text("not read until a request is made")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = PlatformClient("https://platform.example:8443", retries=0, deadline=0.5)
    # trust_env is off (proxies not used), which also turned off REQUESTS_CA_BUNDLE.
    assert client._session.trust_env is False and client._session.verify == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert PlatformClient("https://platform.example:8443")._session.verify is True
