"""The error family of `ava`.

Every error the library raises on purpose derives from :class:`AvaError`, and where a built-in
exception means the same thing, from that too, so ``except KeyError`` keeps working for code
written against the old SDK. Messages are one line: what was wrong, where (file, key, line) and
what to do about it. A message never carries a secret: keys, tokens and signed URL parameters
are masked when the error is made (:func:`ava.log.redact.redact`), so ``str``, ``repr``,
tracebacks and ``status.json`` all get the masked text.

Example:
    >>> from ava.errors import ParamsKeyError
    >>> try:
    ...     raise ParamsKeyError("lr", "/workspace/params/default.json")
    ... except KeyError as exc:
    ...     print(exc)
    required key 'lr' is missing from /workspace/params/default.json; add it or call get_value without is_required=True
"""

from __future__ import annotations

from typing import Any


def redact_message(text: str) -> str:
    """``text`` with secrets masked: what every :class:`AvaError` does to its message.

    Example:
        >>> redact_message("cannot fetch http://h/k?e=1&token=AK:4QLHOWG1mux410QhSQcWYKvpC6M=")
        'cannot fetch http://h/k?e=***&token=***'
    """
    from ava.log.redact import redact  # the log layer sits above this module: import on use

    return redact(text)


def redact_url(url: str) -> str:
    """A URL fit for a message: signed query parameters and known secrets masked."""
    return redact_message(url)


class AvaError(Exception):
    """Root of every error `ava` raises on purpose."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (redact_message(args[0]), *args[1:])
        super().__init__(*args)

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


class InstanceIdError(InstanceError, UsageError):
    """A training instance id that cannot be a directory name (bad input: the CLI exits 2)."""


class PlatformError(AvaError, RuntimeError):
    """The platform API refused a request or could not be reached within the time allowed."""


class StorageError(AvaError, OSError):
    """A storage backend failed (the message names the URL and what to do)."""


class StorageURLError(StorageError, UsageError):
    """A storage URL of the wrong shape (no bucket, no key, a relative path): bad input."""


class CredentialsError(StorageError, ConfigError):
    """A storage backend has no credentials to use: a setting to make, not a failure to retry."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object (or file) at that storage URL."""
