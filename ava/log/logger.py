"""The ``ava`` logger and the handlers :func:`initialize_logger` installs.

:func:`initialize_logger` writes a run's log through a
:class:`~ava.log.mp_handler.MultiProcessingLogHandler` (many processes, one rotated file),
plus a stderr handler; both mask secrets. The handler lives in :mod:`ava.log.mp_handler` and is
imported on first use, so importing this module stays light;
``from ava.log.logger import MultiProcessingLogHandler`` keeps working.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ava.env import Env
from ava.log.redact import add_redacting_filter, refresh_secrets

if TYPE_CHECKING:
    from ava.log.mp_handler import MultiProcessingLogHandler

__all__ = [
    "CONSOLE_FORMAT", "DEFAULT_FORMAT", "MultiProcessingLogHandler", "close_logger", "console_handler",
    "initialize_console_logger", "initialize_logger", "initialize_test_logger", "logger", "run_log_handler",
]

#: The logger the library and old scripts use (``from ava.log.logger import logger``).
logger = logging.getLogger("ava")

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def __getattr__(name: str) -> Any:
    """``from ava.log.logger import MultiProcessingLogHandler`` (the old path), imported on first use."""
    if name == "MultiProcessingLogHandler":
        from ava.log.mp_handler import MultiProcessingLogHandler

        return MultiProcessingLogHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MANAGED = "_ava_managed"


def console_handler(level: int, formatter: logging.Formatter | None = None) -> logging.Handler:
    """A stderr handler that masks secrets, marked as installed by ava (``close_logger`` removes it).

    Records logged with ``extra={"ava_console": False}`` (e.g. a child's output that was already
    echoed raw) are left out.
    """
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter or logging.Formatter(DEFAULT_FORMAT))
    console.setLevel(level)
    console.addFilter(lambda record: getattr(record, "ava_console", True))
    add_redacting_filter(console)
    setattr(console, _MANAGED, True)
    return console


def _config_dir_of(workdir: Path) -> Path | None:
    """``<workspace>/config`` when ``workdir`` is a run's ``<workspace>/run/<id>/logs``."""
    try:
        parents = workdir.resolve().parents
        if len(parents) >= 3 and parents[1].name == "run":
            config = parents[2] / "config"
            return config if config.is_dir() else None
    except OSError:
        pass
    return None


def initialize_logger(workdir: str | os.PathLike[str], node: str | None = None, debug: bool = False, *,
                      max_bytes: int = 64 << 20, backup_count: int = 10, env: Env | None = None,
                      config_dir: str | os.PathLike[str] | None = None, label: str | None = None,
                      file: bool = True) -> logging.Logger:
    """Log to ``<workdir>/run.log`` (``run.<node>.log`` with a node) and to stderr.

    ``workdir`` is a run's ``logs/`` directory (``TrainInstance`` passes its own). Handlers go on
    the root logger, so the training script's own ``logging`` calls land in the file too; the
    user's handlers are left alone, and a stderr handler is added only if none writes to the
    console yet. Calling it again replaces what the previous call installed.

    Args:
        workdir: the directory of the log file (created if missing).
        node: a node name, for runs whose nodes share one filesystem.
        debug: log at DEBUG; otherwise ``AVA_LOG_LEVEL`` or INFO.
        config_dir: the workspace's ``config/``, whose ``user`` secrets are masked in the log;
            found from ``workdir`` (``<workspace>/run/<id>/logs``) or the environment by default.
        label: a word put in every line before the logger's name (default: ``node``), e.g. the
            rank of a distributed run (``rank0``).
        file: False for stderr only (a command of ``ava run``, which writes its output to run.log).

    Every handler it installs masks secrets (:class:`~ava.log.redact.RedactingFilter`), which
    are read again from the environment and ``config/user`` at each call.

    Returns:
        The ``ava`` logger.
    """
    from ava.log.mp_handler import MultiProcessingLogHandler

    env = env or Env()
    config = Path(config_dir) if config_dir is not None else _config_dir_of(Path(workdir))
    refresh_secrets(env, config)
    level, problem = (logging.DEBUG, None) if debug else _level_of(env, "INFO")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MANAGED, False):
            root.removeHandler(h)
            h.close()
    name = "run.log" if node is None else f"run.{node}.log"
    label = node if label is None else label
    fmt = DEFAULT_FORMAT if label is None else DEFAULT_FORMAT.replace("%(name)s", f"{str(label).replace('%', '%%')} %(name)s")
    formatter = logging.Formatter(fmt)
    if file:
        file_handler = MultiProcessingLogHandler(Path(workdir) / name, maxBytes=max_bytes, backupCount=backup_count)
        file_handler.setFormatter(formatter)
        file_handler.setLevel(level)
        setattr(file_handler, _MANAGED, True)
        root.addHandler(file_handler)
    has_console = any(
        isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)
        for h in root.handlers
    )
    if not has_console:
        root.addHandler(console_handler(level, formatter))
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    if problem:
        logger.warning("%s", problem)
    return logger


CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"


def initialize_console_logger(env: Env | None = None, default_level: str = "WARNING") -> logging.Handler | None:
    """For command-line tools: log to stderr at ``AVA_LOG_LEVEL`` (else ``default_level``), masking secrets.

    Does nothing when handlers of :func:`initialize_logger` are installed already; a later
    :func:`initialize_logger` (``ava run`` starting an instance) replaces this one.

    Returns:
        The handler installed, or None.
    """
    env = env or Env()
    root = logging.getLogger()
    if any(getattr(h, _MANAGED, False) for h in root.handlers):
        return None
    level, problem = _level_of(env, default_level)
    handler = console_handler(level, logging.Formatter(CONSOLE_FORMAT))
    if level > logging.DEBUG:  # the HTTP library's own retries (under the qiniu SDK): ava says the outcome
        handler.addFilter(lambda r: not (r.name == "urllib3.connectionpool" and r.levelno == logging.WARNING
                                         and str(r.msg).startswith("Retrying")))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    if problem:
        logger.warning("%s", problem)
    return handler


def initialize_test_logger() -> logging.Handler | None:
    """The old SDK's logger for unit tests: everything (DEBUG and up) to stderr, no file; secrets
    masked. Like :func:`initialize_console_logger`, it steps aside for :func:`initialize_logger`."""
    return initialize_console_logger(Env({}), default_level="DEBUG")


def _level_of(env: Env, default: str) -> tuple[int, str | None]:
    """``AVA_LOG_LEVEL`` as a level (a name, or a number), else ``default`` and what was wrong."""
    raw = env.log_level
    if raw is None or not raw.strip():
        return logging.getLevelName(default), None
    text = raw.strip()
    if text.isdigit():
        return int(text), None
    level = logging.getLevelName(text.upper())
    if isinstance(level, int):
        return level, None
    if raw in _BAD_LEVELS_SAID:  # the console logger and initialize_logger both read it: said once
        return logging.getLevelName(default), None
    _BAD_LEVELS_SAID.add(raw)
    return logging.getLevelName(default), (f"AVA_LOG_LEVEL={raw!r} is not a log level (DEBUG, INFO, WARNING, ERROR, "
                                           "CRITICAL or a number); ignored")


_BAD_LEVELS_SAID: set[str] = set()


def run_log_handler() -> MultiProcessingLogHandler | None:
    """The file handler :func:`initialize_logger` installed on the root logger, if any."""
    from ava.log.mp_handler import MultiProcessingLogHandler

    for h in logging.getLogger().handlers:
        if getattr(h, _MANAGED, False) and isinstance(h, MultiProcessingLogHandler):
            return h
    return None


def close_logger() -> None:
    """Remove and close the handlers :func:`initialize_logger` installed."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MANAGED, False):
            root.removeHandler(h)
            h.close()
