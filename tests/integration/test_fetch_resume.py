"""A 200 MB download through five dropped connections: resumed with Range, hash intact."""

from __future__ import annotations

import hashlib
import os

import pytest

from ava.utils.fetcher import Fetcher
from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

MB = 1 << 20
SIZE = 200 * MB
DROP_EVERY = 30 * MB
DROPS = 5


def test_fetch_huge_file_resumes_200mb_through_five_drops(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    want = hashlib.md5(usedforsecurity=False)
    block = os.urandom(MB)
    with open(root / "big.bin", "wb") as fh:
        for i in range(SIZE // MB):
            chunk = i.to_bytes(8, "little") + block[8:]  # every MiB differs: a misplaced range shows
            want.update(chunk)
            fh.write(chunk)
    with FileServer(root) as srv:
        srv.faults.drop_after, srv.faults.drop_count = DROP_EVERY, DROPS
        with Fetcher(backoff=0.01, max_backoff=0.05) as fetcher:
            out = fetcher.fetch_huge_file(srv.url_for("big.bin"), tmp_path / "out" / "big.bin")
        gets = srv.stats.gets("big.bin")
        served = srv.stats.body_bytes

    got = hashlib.md5(usedforsecurity=False)
    with open(out, "rb") as fh:
        while chunk := fh.read(8 * MB):
            got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
    # Resumed, not restarted: every byte was served once, each retry asked for the rest.
    assert served == SIZE
    assert [g.range for g in gets] == [None] + [f"bytes={k * DROP_EVERY}-" for k in range(1, DROPS + 1)]
    assert [g.status for g in gets] == [200] + [206] * DROPS
    assert [g.sent for g in gets] == [DROP_EVERY] * DROPS + [SIZE - DROPS * DROP_EVERY]
    assert sorted(p.name for p in out.parent.iterdir()) == ["big.bin"]
