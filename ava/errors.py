"""The error family of `ava`.

Every error the library raises on purpose derives from :class:`AvaError`, and where a built-in
exception means the same thing, from that too, so ``except KeyError`` keeps working for code
written against the old SDK. Messages are one line: what was wrong, where (file, key, line) and
what to do about it.

Example:
    >>> from ava.errors import ParamsKeyError
    >>> try:
    ...     raise ParamsKeyError("lr", "/workspace/params/default.json")
    ... except KeyError as exc:
    ...     print(exc)
    required key 'lr' is missing from /workspace/params/default.json; add it or call get_value without is_required=True
"""

from __future__ import annotations


class AvaError(Exception):
    """Root of every error `ava` raises on purpose."""

    def __str__(self) -> str:
        # KeyError's __str__ quotes its argument; our messages are already sentences.
        return str(self.args[0]) if self.args else ""


class ConfigError(AvaError, ValueError):
    """A platform `config/` file or an environment variable holds something unusable."""


class WorkspaceError(AvaError, OSError):
    """The workspace cannot be found, created or written."""


class ParamsError(AvaError, ValueError):
    """The params file is malformed (the message names the file, line and column)."""


class ParamsKeyError(AvaError, KeyError):
    """A required params key is missing.

    Args:
        key: the dotted key that was asked for.
        path: the params file that was searched.
    """

    def __init__(self, key: str, path: object) -> None:
        super().__init__(
            f"required key {key!r} is missing from {path}; add it or call get_value "
            "without is_required=True"
        )
        self.key = key
        self.path = path


class InstanceError(AvaError, ValueError):
    """A training instance id or its state on disk is unusable."""


class MetricsError(AvaError, ValueError):
    """A metric name or value cannot be recorded, or the metric writer has failed."""


class UsageError(AvaError, ValueError):
    """A caller used the API wrongly (unknown framework, missing argument...)."""


class PlatformError(AvaError, RuntimeError):
    """The platform API refused a request or could not be reached within the time allowed."""


class StorageError(AvaError, OSError):
    """A storage backend failed (the message names the URL and what to do)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object (or file) at that storage URL."""
