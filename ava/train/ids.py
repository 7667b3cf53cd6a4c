"""Training instance ids: the generated form, the check, and launcher ids made usable.

An id names the directory ``run/<id>/``, so it is letters, digits, ``.``, ``_`` and ``-``.

Example:
    >>> check_instance_id(as_instance_id("job 7/a"))
    'job-7-a-eb3b163a'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import secrets
from typing import Any

from ava.errors import InstanceIdError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ID_LENGTH = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_instance_id() -> str:
    """A new id that sorts by creation time: ``20261122T030405123Z-1a2b3c``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def check_instance_id(instance_id: Any) -> str:
    """Return ``instance_id`` if it is safe as a directory name; else a clear error."""
    if not isinstance(instance_id, str):
        raise InstanceIdError(f"training instance id must be a string, got {instance_id!r}")
    if not ID_RE.match(instance_id) or ".." in instance_id:
        raise InstanceIdError(
            f"training instance id {instance_id!r} is not usable as a directory name; use a letter or digit, "
            "then letters, digits, '.', '_' and '-' (no '/' or '..'), at most 128 characters"
        )
    return instance_id


def as_instance_id(raw: str) -> str:
    """``raw`` itself when it is a valid id; else a valid id derived from it.

    The result depends on ``raw`` alone, so every rank that reads the same launcher value gets
    the same id; a hash of ``raw`` keeps two values that clean up alike apart.
    """
    if ID_RE.match(raw) and ".." not in raw:
        return raw
    cleaned = _UNSAFE.sub("-", raw.replace("..", "-")).strip("-._")
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cleaned = cleaned[: MAX_ID_LENGTH - len(digest) - 1].rstrip("-._")
    return check_instance_id(f"{cleaned}-{digest}" if cleaned else f"id-{digest}")
