import pytest

from ava.errors import ObjectNotFoundError, StorageError, UsageError
from ava.storage.base import join_url
from ava.storage.registry import get_storage


@pytest.fixture
def store_url(tmp_path):
    return f"file://{tmp_path}/bucket"


def test_round_trip_stat_list_delete(tmp_path, store_url):
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc" * 1000)
    store = get_storage(store_url)
    info = store.upload(src, join_url(store_url, "x/a.bin"))
    assert info.size == 3000 and info.etag == __import__("hashlib").md5(b"abc" * 1000).hexdigest()
    assert store.exists(join_url(store_url, "x/a.bin"))
    assert [i.url for i in store.list(join_url(store_url, "x"))] == [join_url(store_url, "x/a.bin")]
    out = store.download(join_url(store_url, "x/a.bin"), tmp_path / "back" / "a.bin")
    assert out.read_bytes() == src.read_bytes()
    store.delete(join_url(store_url, "x/a.bin"))
    assert not store.exists(join_url(store_url, "x/a.bin"))


def test_missing_objects_are_object_not_found(tmp_path, store_url):
    store = get_storage(store_url)
    with pytest.raises(FileNotFoundError):
        store.stat(join_url(store_url, "nope"))
    with pytest.raises(ObjectNotFoundError, match="no object at"):
        store.download(join_url(store_url, "nope"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ObjectNotFoundError):
        store.upload(tmp_path / "absent", join_url(store_url, "k"))


def test_a_directory_is_not_a_file(tmp_path, store_url):
    with pytest.raises(StorageError, match="is a directory"):
        get_storage(store_url).upload(tmp_path, join_url(store_url, "k"))


def test_unknown_scheme_lists_known_ones():
    with pytest.raises(UsageError, match="unknown storage scheme 'gs'.*known: file"):
        get_storage("gs://bucket/key")


def test_relative_file_url_is_refused():
    with pytest.raises(StorageError, match="not an absolute file:// URL"):
        get_storage("file://relative/x").stat("file://relative/x")


def test_an_interrupted_tree_upload_stops_after_the_files_in_flight(tmp_path, store_url):
    import os
    import signal
    import threading
    import time

    from ava.storage.local import LocalStorage
    from ava.storage.tree import upload_tree

    class Slow(LocalStorage):
        started = 0

        def upload(self, local, url):
            Slow.started += 1
            time.sleep(0.1)
            return super().upload(local, url)

    src = tmp_path / "tree"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02d}.bin").write_bytes(b"x" * 100)
    timer = threading.Timer(0.35, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
    timer.start()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        upload_tree(src, join_url(store_url, "t"), parallelism=2, storage=Slow())
    timer.cancel()
    assert time.monotonic() - t < 2.0  # all 60 would take 3 s
    stored = sorted(p.name for p in (tmp_path / "bucket" / "t").iterdir() if not p.name.startswith("."))
    assert 2 <= len(stored) == Slow.started < 20
    assert all((tmp_path / "bucket" / "t" / n).read_bytes() == b"x" * 100 for n in stored)  # each whole


def test_a_tree_upload_follows_linked_folders_once_and_names_what_it_leaves_out(tmp_path, caplog):
    from ava.storage.tree import upload_tree

    (tmp_path / "real" / "ckpts").mkdir(parents=True)
    (tmp_path / "real" / "ckpts" / "m.bin").write_text("w")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.log").write_text("log")
    (out / "ckpts").symlink_to(tmp_path / "real" / "ckpts", target_is_directory=True)
    (out / "again").symlink_to(tmp_path / "real" / "ckpts", target_is_directory=True)
    (out / "loop").symlink_to(out, target_is_directory=True)
    (out / "dangling.bin").symlink_to(tmp_path / "nonexistent")
    with caplog.at_level("WARNING", logger="ava.storage.tree"):
        infos = upload_tree(out, f"file://{tmp_path}/store/out")
    # The old walk took train.log alone and said nothing of the rest.
    stored = sorted(p.relative_to(tmp_path / "store" / "out").as_posix()
                    for p in (tmp_path / "store" / "out").rglob("*") if p.is_file())
    assert stored == ["again/m.bin", "train.log"] and len(infos) == 2
    assert "left out 3" in caplog.text and "dangling.bin (a dangling link)" in caplog.text
    assert "ckpts/ (already taken)" in caplog.text and "loop/ (already taken)" in caplog.text


def test_a_tree_whose_keys_clash_on_disk_is_refused_before_anything_is_written(tmp_path):
    from ava.storage.tree import download_tree

    store = tmp_path / "store" / "t"
    (store / "x").mkdir(parents=True)
    (store / "a.txt").write_text("a")
    (store / "x" / "y").write_text("y")
    (tmp_path / "store" / "t" / "x.d").write_text("z")
    storage = get_storage(f"file://{tmp_path}/store")

    class Clashing(type(storage)):  # an object store listing both "x" and "x/y"
        def list(self, prefix):
            out = super().list(prefix)
            return out + [type(out[0])(url=prefix + "x", size=1, etag=None, mtime=None)]

    with pytest.raises(StorageError, match=r"x/y would go under x, which is also an object"):
        download_tree(f"file://{tmp_path}/store/t", tmp_path / "out", storage=Clashing())
    assert not (tmp_path / "out").exists()  # it wrote a.txt and x/y, then failed on x
