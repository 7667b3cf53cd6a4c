"""Hyper-parameters from ``<workspace>/params/default.json`` (or ``default.yaml`` / ``default.yml``).

The old import path is kept: ``from ava.params import params``, then ``params.get_value(key)``.

Keys are dotted paths: ``"solverOps.lr"`` walks nested objects and ``"layers.0.size"`` indexes
lists. A key that itself holds a dot is reached by escaping the dot with a backslash
(``"augment.random\\.crop"``) or by passing the parts as a list (``["augment", "random.crop"]``).

The file is read once and cached; the cache is refreshed when the file changes (its mtime,
size or inode). A malformed file raises :class:`~ava.errors.ParamsError` naming the file, line
and column; the old SDK returned ``{}`` there and hid the mistake. Values are never logged above
DEBUG, since they may hold secrets.

Example:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "default.json").write_text(json.dumps({"k1": "v1", "k2": {"k3": "v3"}}))
    >>> p = Params(d)
    >>> p.get_value("k2.k3"), p.get_value("none", default="default_val")
    ('v3', 'default_val')
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from ava.env import Env
from ava.errors import ParamsError, ParamsKeyError

log = logging.getLogger(__name__)

PARAMS_FILES = ("default.json", "default.yaml", "default.yml")

Key = Union[str, Sequence[Union[str, int]]]
_MISSING = object()


def split_key(key: Key) -> list[str | int]:
    """Split a dotted key into its parts; ``\\.`` is a literal dot and ``\\\\`` a backslash.

    Example:
        >>> split_key("a.b\\\\.c.0")
        ['a', 'b.c', '0']
    """
    if not isinstance(key, str):
        return list(key)
    parts: list[str | int] = []
    current: list[str] = []
    chars = iter(key)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt in (".", "\\") else ch + nxt)
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def lookup(data: Any, parts: Sequence[str | int]) -> Any:
    """Walk ``data`` along ``parts``; return the internal ``_MISSING`` marker when absent."""
    node = data
    for part in parts:
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
            elif not isinstance(part, str) and str(part) in node:
                node = node[str(part)]
            else:
                return _MISSING
        elif isinstance(node, list):
            try:
                index = int(part)
            except (TypeError, ValueError):
                return _MISSING
            if not -len(node) <= index < len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"params file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ParamsError(f"cannot read params file {path}: {exc.strerror}") from None
    if not text.strip():
        log.warning("params file %s is empty; reading it as {}", path)
        return {}
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamsError(
                f"params file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    else:
        data = _parse_yaml(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise ParamsError(
            f"params file {path} holds a {kind} at top level; it must be an object of key: value pairs"
        )
    return data


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml  # PyYAML is a core dependency, imported only when a YAML file is read

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ParamsError(f"params file {path} is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from None


class Params:
    """The hyper-parameters in one ``params/`` directory.

    Args:
        params_dir: the directory holding ``default.json`` (or ``default.yaml`` / ``.yml``).
    """

    def __init__(self, params_dir: Path | str) -> None:
        self.params_dir = Path(params_dir)
        self._lock = threading.Lock()
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: dict[str, Any] = {}

    @property
    def path(self) -> Path | None:
        """The params file in use, or None when there is none."""
        found = [self.params_dir / name for name in PARAMS_FILES if (self.params_dir / name).is_file()]
        if len(found) > 1:
            log.warning("several params files in %s; using %s", self.params_dir, found[0].name)
        return found[0] if found else None

    def _load(self, use_cache: bool) -> tuple[dict[str, Any], Path | None]:
        path = self.path
        if path is None:
            return {}, None
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}, None
        key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if use_cache and key == self._cache_key:
                return self._cache, path
            data = _parse(path)
            self._cache, self._cache_key = data, key
            log.debug("loaded params %s (keys: %s)", path, ", ".join(map(str, data)))
            return data, path

    def get_all(self, use_cache: bool = True) -> dict[str, Any]:
        """Return every parameter (a copy); ``{}`` when there is no params file."""
        data, _ = self._load(use_cache)
        return copy.deepcopy(data)

    def get_value(self, key: Key, is_required: bool = False, default: Any = None, use_cache: bool = True) -> Any:
        """Return the value at a dotted ``key``.

        Args:
            key: ``"a.b.0.c"``, with ``\\.`` for a dot inside a name, or a list of parts.
            is_required: raise :class:`ParamsKeyError` (a ``KeyError``) when the key is missing.
            default: returned when the key is missing and not required.
            use_cache: False re-reads the file even if it has not changed.
        """
        data, path = self._load(use_cache)
        value = lookup(data, split_key(key))
        if value is _MISSING:
            if is_required:
                where = path or (self.params_dir / PARAMS_FILES[0])
                raise ParamsKeyError(key if isinstance(key, str) else ".".join(map(str, key)), where)
            return default
        if isinstance(value, (dict, list)):
            return copy.deepcopy(value)
        return value


_default: dict[Path, Params] = {}
_default_lock = threading.Lock()


def default_params(env: Env | None = None) -> Params:
    """The :class:`Params` of the workspace the environment points at."""
    from ava.workspace import Workspace

    root = Workspace.discover(env).root
    with _default_lock:
        if root not in _default:
            _default[root] = Params(root / "params")
        return _default[root]


def get_all(use_cache: bool = True) -> dict[str, Any]:
    """Every parameter of the current workspace (old ``params.get_all()``)."""
    return default_params().get_all(use_cache=use_cache)


def get_value(key: Key, is_required: bool = False, default: Any = None, use_cache: bool = True) -> Any:
    """One parameter of the current workspace by dotted key (old ``params.get_value``)."""
    return default_params().get_value(key, is_required=is_required, default=default, use_cache=use_cache)


__all__ = ["Params", "get_all", "get_value", "split_key", "PARAMS_FILES", "default_params"]
