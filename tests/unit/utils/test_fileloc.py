"""The old ``ava.utils.fileloc``: mkdir_p and rm_path."""

from pathlib import Path

import pytest

from ava.errors import UsageError
from ava.utils import fileloc


def test_mkdir_p_and_rm_path(tmp_path):
    d = fileloc.mkdir_p(tmp_path / "a" / "b")
    (d / "f.txt").write_text("x")
    target = tmp_path / "kept"
    target.mkdir()
    (target / "k.txt").write_text("k")
    (d / "link").symlink_to(target, target_is_directory=True)
    assert fileloc.rm_path(tmp_path / "a") is True
    assert not (tmp_path / "a").exists()
    assert (target / "k.txt").read_text() == "k"  # a link's target is left alone
    assert fileloc.rm_path(tmp_path / "a") is False
    f = tmp_path / "one.txt"
    f.write_text("1")
    assert fileloc.rm_path(str(f)) is True and not f.exists()


def test_rm_path_refuses_the_root_home_empty_and_the_current_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work / "sub")
    for p in ("/", str(Path.home()), "", ".", "..", str(work)):  # "" deleted the current directory
        with pytest.raises(UsageError, match="refused"):
            fileloc.rm_path(p)
    assert (work / "precious.txt").read_text() == "keep"
