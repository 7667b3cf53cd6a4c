"""The old `Uploader(ak, sk, bucket).upload_file(filepath, key)` against the Kodo protocol server."""

import pytest

from ava.errors import ObjectNotFoundError, StorageError, UsageError
from ava.utils.uploader import Uploader
from tests.support.kodo_server import KodoServer


def test_upload_file_reaches_the_bucket_and_keeps_the_local_file(tmp_path, monkeypatch):
    with KodoServer(tmp_path / "kodo") as kodo:
        for name, value in kodo.env().items():
            if not name.endswith("_KEY"):  # the keys come from the constructor, as in old scripts
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("AVA_QINIU_RESUME_DIR", str(tmp_path / "resume"))
        kodo.create_bucket("models")
        src = tmp_path / "model.tar.gz"
        src.write_bytes(b"m" * 300_000)
        up = Uploader(kodo.access_key, kodo.secret_key, bucket="models")
        info = up.upload_file(src, "ava/default/models/m1/model.tar.gz")
        assert info.size == 300_000 and src.exists()
        stored = tmp_path / "kodo" / "objects" / "models"
        assert any(p.read_bytes() == src.read_bytes() for p in stored.rglob("*") if p.is_file())
        with pytest.raises(StorageError):
            Uploader(kodo.access_key, "wrong-secret", bucket="models").upload_file(src, "k2")


def test_clear_errors_before_any_network(tmp_path):
    with pytest.raises(UsageError, match="no bucket"):
        Uploader("ak", "sk").upload_file(tmp_path / "x", "k")
    with pytest.raises(ObjectNotFoundError, match="no such file"):
        Uploader("ak", "sk", bucket="b").upload_file(tmp_path / "missing.bin", "k")
    with pytest.raises(UsageError, match="is a directory"):  # was "no such file"
        Uploader("ak", "sk", bucket="b").upload_file(tmp_path, "k")


def test_a_key_with_a_leading_slash_is_said_to_be_stored_without_it(tmp_path, monkeypatch, caplog):
    with KodoServer(tmp_path / "kodo") as kodo:
        kodo.point_env(monkeypatch, tmp_path / "resume")
        kodo.create_bucket("models")
        src = tmp_path / "a.txt"
        src.write_bytes(b"a")
        info = Uploader(kodo.access_key, kodo.secret_key, bucket="models").upload_file(src, "/lead/a.txt")
    assert info.url == "qiniu://models/lead/a.txt"
    assert any("key '/lead/a.txt' is stored as 'lead/a.txt'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bucket", ["a/b", " a", "a "])
def test_a_bucket_that_is_not_a_name_is_refused(tmp_path, bucket):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match="is not a bucket name"):
        Uploader("AK", "SK").upload_file(f, "k", bucket=bucket)
