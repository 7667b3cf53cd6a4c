"""Every environment variable and platform `config/` file `ava` reads, in one place.

Nothing is read at import time. An :class:`Env` wraps a mapping (``os.environ`` unless told
otherwise) and answers questions lazily; the library never writes to ``os.environ``.

Example:
    >>> env = Env({"AVA_WORKSPACE": "/tmp/ws", "AVA_DONE_TIMEOUT": "3"})
    >>> env.done_timeout
    3.0
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ava.errors import ConfigError

# Variable names (CONTRACT.md section 3).
AVA_WORKSPACE = "AVA_WORKSPACE"
AVA_TRAINING_INSTANCE_ID = "AVA_TRAINING_INSTANCE_ID"
JOB_NAME = "JOB_NAME"
AVA_STORAGE_URL = "AVA_STORAGE_URL"
AVA_STATUS_HOST = "AVA_STATUS_HOST"
AVA_API_HOST = "AVA_API_HOST"
AVA_ACCESS_KEY = "AVA_ACCESS_KEY"
AVA_SECRET_KEY = "AVA_SECRET_KEY"
AVA_S3_ENDPOINT = "AVA_S3_ENDPOINT"
AVA_DONE_TIMEOUT = "AVA_DONE_TIMEOUT"
AVA_TENSORBOARD = "AVA_TENSORBOARD"
AVA_LOG_LEVEL = "AVA_LOG_LEVEL"
RANK = "RANK"  # torchrun's global rank

DEFAULT_WORKSPACE = "/workspace"
DEFAULT_DONE_TIMEOUT = 10.0

# Names of the platform-provided files under <workspace>/config/.
CONFIG_USER = "user"
CONFIG_WORKER = "worker"
CONFIG_TRAININGSPEC = "trainingspec"


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file, turning a syntax error into a one-line :class:`ConfigError`.

    Args:
        path: the file.
        what: a few words saying what the file is, for the message.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


class Env:
    """A lazy view of the environment a training runs in.

    Args:
        environ: the variables to read; ``os.environ`` when omitted. Tests pass a dict.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return a variable, treating an empty value as unset."""
        value = self._environ.get(name)
        return value if value else default

    # --- workspace ---------------------------------------------------------------------
    @property
    def workspace_override(self) -> str | None:
        """The workspace root the environment asks for, if any."""
        return self.get(AVA_WORKSPACE)

    @property
    def training_instance_id(self) -> str | None:
        return self.get(AVA_TRAINING_INSTANCE_ID)

    @property
    def job_name(self) -> str | None:
        return self.get(JOB_NAME)

    @property
    def job_id(self) -> str | None:
        """The job id: the third ``-``-separated part of ``JOB_NAME`` (old AVA convention)."""
        parts = (self.job_name or "").split("-")
        return parts[2] if len(parts) >= 3 and parts[2] else None

    # --- services ----------------------------------------------------------------------
    @property
    def storage_url(self) -> str | None:
        return self.get(AVA_STORAGE_URL)

    @property
    def s3_endpoint(self) -> str | None:
        return self.get(AVA_S3_ENDPOINT)

    @property
    def done_timeout(self) -> float:
        """Seconds ``done()`` may wait for delivery (``AVA_DONE_TIMEOUT``, default 10)."""
        raw = self.get(AVA_DONE_TIMEOUT)
        if raw is None:
            return DEFAULT_DONE_TIMEOUT
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{AVA_DONE_TIMEOUT}={raw!r} is not a number of seconds; set it to e.g. 10") from None
        if value < 0 or value != value:
            raise ConfigError(f"{AVA_DONE_TIMEOUT}={raw!r} must be zero or more seconds")
        return value

    @property
    def tensorboard(self) -> bool:
        return (self.get(AVA_TENSORBOARD) or "").strip().lower() in {"1", "true", "yes", "on"}

    @property
    def rank(self) -> int:
        """This process's rank in a distributed run (``RANK``, as torchrun sets it); 0 when unset."""
        raw = self.get(RANK)
        if raw is None:
            return 0
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{RANK}={raw!r} is not an integer rank") from None
        if value < 0:
            raise ConfigError(f"{RANK}={raw!r} must be 0 or more")
        return value

    @property
    def log_level(self) -> str | None:
        return self.get(AVA_LOG_LEVEL)

    def status_host(self, config_dir: Path | None = None) -> str | None:
        """The metric endpoint: ``AVA_STATUS_HOST``, else ``config/worker`` ``atnet_status_host``."""
        return self.get(AVA_STATUS_HOST) or self._config_value(config_dir, CONFIG_WORKER, "atnet_status_host")

    def api_host(self, config_dir: Path | None = None) -> str | None:
        """The platform API: ``AVA_API_HOST``, else ``config/worker`` ``atnet_apiserver_host``."""
        return self.get(AVA_API_HOST) or self._config_value(config_dir, CONFIG_WORKER, "atnet_apiserver_host")

    def credentials(self, config_dir: Path | None = None) -> tuple[str | None, str | None]:
        """(access key, secret key): ``AVA_ACCESS_KEY``/``AVA_SECRET_KEY``, else ``config/user``."""
        ak = self.get(AVA_ACCESS_KEY) or self._config_value(config_dir, CONFIG_USER, "key")
        sk = self.get(AVA_SECRET_KEY) or self._config_value(config_dir, CONFIG_USER, "secret")
        return ak, sk

    def _config_value(self, config_dir: Path | None, name: str, key: str) -> str | None:
        if config_dir is None:
            return None
        value = read_config(config_dir, name).get(key)
        return str(value) if value not in (None, "") else None


def config_path(config_dir: Path, name: str) -> Path | None:
    """The file for config ``name`` (``name`` or ``name.json``), or None when absent."""
    for candidate in (config_dir / name, config_dir / f"{name}.json"):
        if candidate.is_file():
            return candidate
    return None


def read_config(config_dir: Path, name: str) -> dict[str, Any]:
    """Read a platform config file (``user``, ``worker``, ``trainingspec``, ...).

    Returns ``{}`` when the file is absent. Raises :class:`ConfigError` naming the file when it
    is not a JSON object.

    Example:
        >>> read_config(Path("/nonexistent"), "worker")
        {}
    """
    path = config_path(config_dir, name)
    if path is None:
        return {}
    data = read_json_file(path, "platform config file")
    if not isinstance(data, dict):
        raise ConfigError(
            f"platform config file {path} holds a JSON {type(data).__name__}, expected an object"
        )
    return data
