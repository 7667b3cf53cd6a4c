from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ava.env import RANK_VARIABLES
from ava.log.logger import close_logger
from ava.utils import preempt
from ava.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """Keep every test away from a real /workspace and from the caller's AVA_* settings."""
    for name in list(os.environ):
        if name.startswith("AVA_") or name == "JOB_NAME" or name in RANK_VARIABLES or name == "TORCHELASTIC_RUN_ID":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "default-ws"))
    yield
    close_logger()
    preempt.uninstall()
    preempt.reset()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def run_python(code: str, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run a Python snippet in a fresh interpreter of this venv."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
