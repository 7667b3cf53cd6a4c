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
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from ava.env import Env
from ava.errors import ParamsError, ParamsKeyError, UsageError
from ava.workspace import PARAMS_FILES

log = logging.getLogger(__name__)


Key = Union[str, Sequence[Union[str, int]]]
_MISSING = object()


def split_key(key: Key) -> list[str | int]:
    """Split a dotted key into its parts; ``\\.`` is a literal dot and ``\\\\`` a backslash.

    Example:
        >>> split_key("a.b\\\\.c.0")
        ['a', 'b.c', '0']
    """
    if not isinstance(key, str):
        if isinstance(key, (list, tuple)) and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in key):
            return list(key)
        raise UsageError(f"a params key is a dotted string or a list of parts (strings, list indexes), "
                          f"got {key!r}")
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
            elif isinstance(part, str) and (index := _index(part)) is not None and index in node:
                node = node[index]  # a YAML key written as a number (lr_schedule: {30: 0.1})
            else:
                return _MISSING
        elif isinstance(node, list):
            index = _index(part)
            if index is None:
                return _MISSING
            if not -len(node) <= index < len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def _index(part: str | int) -> int | None:
    """A list index from a key part: an int, or ASCII digits with an optional ``-`` (not
    ``int()``'s wider syntax: ``"1_0"``, ``" 1"`` or ``"\u0661"`` name no index)."""
    if type(part) is int:
        return part
    if not isinstance(part, str):
        return None
    digits = part[1:] if part[:1] == "-" else part
    if not (0 < len(digits) <= 18 and digits.isascii() and digits.isdigit()):
        return None
    return int(part)


def _parse(path: Path) -> dict[str, Any]:
    try:
        # utf-8-sig: a byte-order mark (as some Windows editors write) is not part of the document
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"params file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ParamsError(f"cannot read params file {path}: {exc.strerror}") from None
    if not text.strip():
        log.warning("params file %s is empty; reading it as {}", path)
        return {}
    if path.suffix == ".json":
        data = _parse_json(path, text)
    else:
        data = _parse_yaml(path, text)
    if data is None:
        if path.suffix == ".json":  # the text "null": nearly always a file written from a None by mistake
            raise ParamsError(f"params file {path} holds null at top level; it must be an object of key: value pairs")
        log.warning("params file %s holds no keys (only comments, or null); reading it as {}", path)
        return {}
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise ParamsError(
            f"params file {path} holds a {kind} at top level; it must be an object of key: value pairs"
        )
    _check_shape(path, data)
    return data


def _parse_json(path: Path, text: str) -> Any:
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:  # JSON keeps the last one silently; a repeated key is nearly always a slip
                log.warning("params file %s: key %r appears twice in one object; the last value is used", path, key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise ParamsError(
            f"params file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ParamsError(f"params file {path} nests lists or objects too deeply to read") from None
    except ValueError as exc:  # an integer of more digits than int() accepts
        raise ParamsError(f"params file {path} is not usable JSON: {exc}") from None


#: YAML nesting beyond which the C parser (which recurses without a limit and crashes the
#: process, not raises, at some ten thousand levels) is not trusted with a file.
_C_YAML_DEPTH = 1000


def _yaml_depth_bound(text: str) -> int:
    """An upper bound on the nesting depth of a YAML text, cheap to compute.

    Flow collections nest at most once per ``[``/``{``; block collections nest once per
    indicator on a line (``- - x``, ``? - x``) or once per extra column of indentation.
    """
    bound = 0
    for line in text.splitlines():
        body = line.lstrip(" ")
        bound = max(bound, 2 * (len(line) - len(body) + body.count("-") + body.count("?") + body.count(":") + 1))
    return bound + text.count("[") + text.count("{")


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml  # PyYAML is a core dependency, imported only when a YAML file is read

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    if loader is not yaml.SafeLoader and _yaml_depth_bound(text) > _C_YAML_DEPTH:
        loader = yaml.SafeLoader  # the Python parser turns deep nesting into RecursionError
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ParamsError(f"params file {path} is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ParamsError(f"params file {path} nests lists or mappings too deeply to read") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors call int(), float(), datetime() on what a tag or the resolver
        # picked: "!!int abc", "!!float ''", "2001-02-30" escape as these.
        raise ParamsError(
            f"params file {path} is not valid YAML: a value cannot be converted ({type(exc).__name__}: {exc})"
        ) from None


#: How deeply lists and objects may nest in a params file. Copies of values (``get_all``,
#: ``get_value``) recurse once per level, so a deeper file would fail on reading, not loading.
MAX_DEPTH = 100
_ON_PATH = -1


def _check_shape(path: Path, data: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and YAML aliases that contain themselves.

    Iterative, with a memo per container, so shared YAML aliases are walked once.
    """
    height: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, leaving = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if leaving:
            h = 1 + max((height[id(c)] for c in children if isinstance(c, (dict, list, tuple))), default=0)
            if h > MAX_DEPTH:
                raise ParamsError(
                    f"params file {path} nests lists or objects more than {MAX_DEPTH} levels deep; flatten it"
                )
            height[id(node)] = h
            continue
        seen = height.get(id(node))
        if seen == _ON_PATH:
            raise ParamsError(f"params file {path} holds a value that contains itself (a YAML alias inside its own anchor)")
        if seen is not None:
            continue
        height[id(node)] = _ON_PATH
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list, tuple)))


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
        self._warned_several: tuple[Path, ...] = ()

    @property
    def path(self) -> Path | None:
        """The params file in use, or None when there is none."""
        found = []
        for name in PARAMS_FILES:  # one look at each name: this runs at every get_value
            candidate = self.params_dir / name
            try:
                if candidate.is_file():
                    found.append(candidate)
                elif candidate.is_dir():
                    raise ParamsError(f"params file {candidate} is a directory, not a file")
                elif candidate.is_symlink() and not candidate.exists():
                    raise ParamsError(f"params file {candidate} is a symlink to {os.readlink(candidate)!r}, "
                                      "which does not exist")
            except PermissionError as exc:  # the folder cannot be searched
                raise ParamsError(f"cannot look for params file {candidate}: {exc.strerror}") from None
        if len(found) > 1 and tuple(found) != self._warned_several:
            self._warned_several = tuple(found)  # said once, not at every get_value
            log.warning("several params files in %s (%s); using %s", self.params_dir,
                        ", ".join(f.name for f in found), found[0].name)
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
