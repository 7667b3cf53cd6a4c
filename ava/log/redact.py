"""Secrets out of log text: :func:`redact` for strings, :class:`RedactingFilter` for handlers.

What is removed (replaced by ``***``):

- the values of known secrets: ``AVA_SECRET_KEY``, ``AVA_ACCESS_KEY``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SESSION_TOKEN``, the ``key``/``secret`` of the workspace's
  ``config/user``, and whatever was passed to :func:`register_secret` (the storage backends,
  the Fetcher and the platform client register the keys they are given);
- Qiniu tokens (``AK:sign`` and upload tokens ``AK:sign:policy``);
- ``Authorization`` header values (``QBox``, ``Qiniu``, ``AWS4-HMAC-SHA256``, ``Bearer`` ...) and
  ``X-Amz-Security-Token`` headers;
- signed URL query parameters: ``token``, ``e`` before ``token``, ``X-Amz-Signature``,
  ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``Signature``, ``AWSAccessKeyId``;
- the password of a URL's ``user:password@``.

The environment and ``config/user`` are read on first use (and again after
:func:`refresh_secrets`), never at import time. Plain text with no secret costs a few
substring checks: the patterns run only when a keyword they need is present.

Example:
    >>> redact("GET http://h/k?e=1700000000&token=AK:4QLHOWG1mux410QhSQcWYKvpC6M= done")
    'GET http://h/k?e=***&token=*** done'
    >>> register_secret("s3cr3t-value-for-doc")
    >>> redact("key is s3cr3t-value-for-doc")
    'key is ***'
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

MASK = "***"
#: Shorter values are not treated as secrets: masking them would mangle ordinary words.
MIN_SECRET_LENGTH = 6

#: Environment variables whose values are secrets (or key ids) wherever they appear.
SECRET_VARIABLES = ("AVA_SECRET_KEY", "AVA_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_B64 = r"[A-Za-z0-9_\-]"
# An HMAC-SHA1 signature in URL-safe base64 is 27 characters and one "=": Qiniu's AK:sign and
# AK:sign:policy (upload tokens) both carry one. The look-behind lets a match start only where a
# run of such characters starts: without it, a long run (a hex dump) is scanned again from each
# of its characters, which took seconds for 64 KB.
_QINIU_TOKEN = re.compile(rf"(?<!{_B64}){_B64}+:{_B64}{{27}}=(?::{_B64}+={{0,2}})?")
_AUTH_HEADER = re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*b?['"]?)[^'"\r\n]+""")
_AUTH_SCHEME = re.compile(r"\b((?:QBox|Qiniu|AWS)\s+)[A-Za-z0-9_\-]+:[A-Za-z0-9_\-+/=]+"
                          r"|\b(Bearer\s+)[A-Za-z0-9_\-.~+/=]+"
                          r"|\b(AWS4-HMAC-SHA256\s+)Credential=[^'\"\r\n]*")
_PARAMS = re.compile(r"(?i)((?:[?&;,\s]|^)(?:token|x-amz-signature|x-amz-credential|x-amz-security-token"
                     r"|signature|awsaccesskeyid|upload_token|uptoken)\s*=\s*)[^&\s'\"#,;]+")
_HEADER_TOKEN = re.compile(r"""(?i)(x-amz-security-token['"]?\s*:\s*b?['"]?)[^'"\r\n,}]+""")
_DEADLINE = re.compile(r"([?&]e=)\d+(?=&token=)")
_USERINFO = re.compile(r"(://[^/\s:@'\"]*:)[^/\s@'\"]+@")  # the user may be empty: redis://:pw@host
_KEYWORDS = ("token", "signature", "credential", "authorization", "awsaccesskeyid", "bearer", "aws4-hmac")

_lock = threading.RLock()
_registered: set[str] = set()
_from_env: tuple[str, ...] | None = None
_secrets: tuple[str, ...] = ()  # longest first, so a secret holding another is masked whole
_loading = False


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears from now on (values under 6 characters are ignored)."""
    global _secrets
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _registered:
            return
        _registered.add(value)
        _secrets = _ordered(_registered | set(_from_env or ()))


def refresh_secrets(env: Any = None, config_dir: str | Path | None = None) -> None:
    """Read the secrets of the environment and ``config/user`` again: now when ``env`` (an
    ``ava.env.Env`` or a mapping) or ``config_dir`` is given, else at the next use."""
    global _from_env, _secrets
    with _lock:
        _from_env = None
        _secrets = _ordered(_registered)
        if env is not None or config_dir is not None:
            _load(env, config_dir)


def known_secrets() -> tuple[str, ...]:
    """Every secret value known now (the environment's read on first use), longest first."""
    if _from_env is None:
        _load()
    return _secrets


def _ordered(values: set[str]) -> tuple[str, ...]:
    return tuple(sorted(values, key=len, reverse=True))


def _load(environ: Any = None, config_dir: str | Path | None = None) -> None:
    global _from_env, _secrets, _loading
    with _lock:
        if _loading:  # an error raised while loading (a bad config/user) is being redacted
            return
        _loading = True
        try:
            found: set[str] = set()
            try:
                from ava.env import CONFIG_USER, Env, read_config

                env = environ if isinstance(environ, Env) else Env(environ)
                found.update(v for v in (env.get(name) for name in SECRET_VARIABLES) if v)
                where = Path(config_dir) if config_dir is not None else env.workspace_config_dir
                if where is not None:
                    user = read_config(where, CONFIG_USER)
                    found.update(str(user[k]) for k in ("key", "secret") if user.get(k))
            except Exception:  # noqa: BLE001 - a bad config/user is reported by whoever reads it
                pass
            values = {v for v in found if len(v) >= MIN_SECRET_LENGTH}
            _from_env = tuple(values)
            _secrets = _ordered(values | _registered)
        finally:
            _loading = False


def redact_values(text: str) -> str:
    """Only the known secret values masked: the cheap pass, for bulk output such as a child's log."""
    for secret in _secrets if _from_env is not None else known_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(text: str) -> str:
    """``text`` with secrets, tokens, ``Authorization`` values and signed URL parameters masked."""
    if not text:
        return text
    text = redact_values(text)
    lower = text.lower()
    if any(k in lower for k in _KEYWORDS) or "Qiniu " in text or "QBox " in text or "AWS " in text:
        text = _AUTH_HEADER.sub(r"\1" + MASK, text)
        text = _AUTH_SCHEME.sub(_scheme_mask, text)
        text = _HEADER_TOKEN.sub(r"\1" + MASK, text)
        text = _DEADLINE.sub(r"\1" + MASK, text)
        text = _PARAMS.sub(r"\1" + MASK, text)
    if ":" in text and "=" in text:
        text = _QINIU_TOKEN.sub(MASK, text)
    if "@" in text and "://" in text:
        text = _USERINFO.sub(r"\1" + MASK + "@", text)
    return text


def _scheme_mask(m: re.Match[str]) -> str:
    return (m.group(1) or m.group(2) or m.group(3)) + MASK


def redact_url(url: str) -> str:
    """A URL for a message: its signed query parameters (and known secrets) masked."""
    return redact(url)


_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in every record it passes (see :func:`redact`).

    The message is formatted first (``msg % args``), then masked; when something was masked, it
    is stored back as ``msg`` with no ``args`` (a record with nothing to mask keeps its ``msg``
    and ``args`` for other handlers). The exception and stack text are masked too, and text
    fields given with ``extra=``. The record
    is changed in place, so every handler after this one sees the masked text; a record is
    checked once.

    Example:
        >>> import logging
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(RedactingFilter())
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_ava_redacted", False):
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the formatter's to report
            return True
        masked = redact(msg)
        if masked != msg:  # left as it is otherwise: other handlers may read msg and args
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in record.__dict__.items():  # fields given with extra=, which a format may show
            if name not in _RECORD_FIELDS and isinstance(value, str):
                masked = redact(value)
                if masked != value:
                    setattr(record, name, masked)
        record._ava_redacted = True
        return True


def has_redacting_filter(handler: Any) -> bool:
    """True when ``handler`` masks secrets (it holds a :class:`RedactingFilter`)."""
    return any(isinstance(f, RedactingFilter) for f in getattr(handler, "filters", ()))


def add_redacting_filter(handler: logging.Handler) -> logging.Handler:
    """Give ``handler`` a :class:`RedactingFilter` unless it has one; returns the handler."""
    if not has_redacting_filter(handler):
        handler.addFilter(RedactingFilter())
    return handler
