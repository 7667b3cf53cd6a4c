"""extract_tar refuses members that escape the target, naming the member, before writing anything."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ava.errors import UsageError
from ava.utils.archive import extract_tar


def make_tar(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """members: (kind, name, data-or-link target); kind is file, dir, sym or lnk."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = extra.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE}[kind]
            info.linkname = extra
            tar.addfile(info)
    return path


def test_a_plain_archive_is_extracted(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [("dir", "data", ""), ("file", "data/a.txt", "a"),
                                                ("sym", "data/link", "a.txt"), ("sym", "data/up", "../c.txt"),
                                                ("file", "./c.txt", "c")])
    files = extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "data" / "a.txt").read_text() == "a"
    assert (tmp_path / "out" / "data" / "link").read_text() == "a"
    assert (tmp_path / "out" / "c.txt").read_text() == "c"
    assert (tmp_path / "out" / "data" / "up").read_text() == "c"
    assert tmp_path / "out" / "data" / "a.txt" in files


@pytest.mark.parametrize("members, named", [
    ([("file", "/etc/evil", "x")], "'/etc/evil'"),
    ([("file", "../evil", "x")], "'../evil'"),
    ([("file", "a/../../evil", "x")], "'a/../../evil'"),
    ([("file", "a/../b", "x")], "'a/../b' holds '..'"),
    ([("sym", "link", "/etc"), ("file", "link/evil", "x")], "'link' is a symlink to '/etc'"),
    ([("sym", "d/link", "../../outside"), ("file", "d/link/evil", "x")], "'d/link' is a symlink to '../../outside'"),
    ([("lnk", "hard", "../outside")], "'hard' is a hard link"),
    ([("sym", "a", "."), ("sym", "a/b", ".."), ("file", "b/x", "x")], "'a/b' goes through the symlink 'a'"),
    ([("sym", "a", "."), ("sym", "b", "a/.."), ("file", "c", "x")], "'b' goes through the symlink 'a'"),
])
def test_members_that_escape_are_refused_before_anything_is_written(tmp_path, members, named):
    archive = make_tar(tmp_path / "bad.tar.gz", [("file", "first.txt", "ok"), *members])
    with pytest.raises(UsageError, match=f"refusing to extract bad.tar.gz: member {named}") as info:
        extract_tar(archive, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name, cut", [("t.tgz", 0.5), ("t.tgz", 0.02), ("empty.tar", 0), ("text.tar", None)])
def test_a_damaged_archive_is_one_line_naming_it(tmp_path, name, cut):
    import os

    good = make_tar(tmp_path / "full.tgz", [("file", f"f{i}.txt", os.urandom(3000).hex()) for i in range(3)])
    data = good.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(b"not an archive at all\n" if cut is None else data[:int(len(data) * cut)])
    with pytest.raises(UsageError, match=f"{name} is not a complete tar archive") as info:
        extract_tar(bad, tmp_path / "out")
    assert "\n" not in str(info.value)
    if cut in (None, 0):  # found at the headers: nothing written
        assert not (tmp_path / "out").exists()
