from __future__ import annotations

import socket

import pytest


@pytest.fixture
def platform(tmp_path):
    """The reference platform server on 127.0.0.1, in a thread of this process."""
    from ava.platform_server import PlatformServer

    server = PlatformServer(str(tmp_path / "platform.db"))
    server.start_in_thread()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
