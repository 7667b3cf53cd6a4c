"""The ``ava`` command line (CONTRACT.md section 6).

Exit codes: 0 success; 2 bad usage or bad input, with a one-line reason on stderr; 1 other
failures. Log records go to stderr at ``AVA_LOG_LEVEL`` (default WARNING) through a handler that
masks secrets, as do the error lines printed here.

Example:
    $ ava init ./workspace
    $ ava params get solverOps.lr
    0.01
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ava import __version__
from ava.env import DEFAULT_WORKSPACE, Env
from ava.errors import AvaError, ConfigError, ParamsError, ParamsKeyError, UsageError, WorkspaceError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _cmd_init(args: argparse.Namespace, env: Env) -> int:
    from ava.workspace import Workspace

    # As everything else finds it: AVA_WORKSPACE, else the platform's /workspace, else ./workspace.
    platform_root = DEFAULT_WORKSPACE if Path(DEFAULT_WORKSPACE).is_dir() else None
    root = args.dir or env.workspace_override or platform_root or "workspace"
    if args.dir and Path(args.dir).exists() and not Path(args.dir).is_dir():
        raise UsageError(f"ava init {args.dir}: {args.dir} is a file, not a directory; give a directory")
    ws = Workspace(root)
    written = ws.init()
    kept = "" if written else " (every template file was already there; nothing overwritten)"
    print(f"workspace ready at {ws.root}{kept}")
    for path in written:
        print(f"  wrote {path.relative_to(ws.root)}")
    return EXIT_OK


def _parse_default(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _cmd_params_get(args: argparse.Namespace, env: Env) -> int:
    from ava.params.params import default_params

    p = default_params(env)
    if args.default is not None:
        value = p.get_value(args.key, default=_parse_default(args.default))
    else:
        try:
            value = p.get_value(args.key, is_required=True)
        except ParamsKeyError as exc:
            where = f"{exc.path}" if exc.path is None or Path(exc.path).exists() else \
                f"{exc.path}, which does not exist (is AVA_WORKSPACE right?)"
            raise UsageError(f"key {args.key!r} is missing from {where}; pass --default V to print V instead") from None
    print(_as_json(value))
    return EXIT_OK


def _as_json(value: object) -> str:
    """``value`` as strict JSON: YAML's dates as ISO text, sets as lists, binary as base64,
    non-finite numbers as "nan"/"inf"/"-inf" (as in metric records); escaped where the
    console cannot show a character."""
    import base64
    import datetime
    import math

    def plain(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if v != v else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set, frozenset)):
            items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
            return [plain(x) for x in items]
        if isinstance(v, (datetime.date, datetime.time)):
            return v.isoformat()
        if isinstance(v, (bytes, bytearray)):
            return base64.b64encode(bytes(v)).decode("ascii")
        return v

    text = json.dumps(plain(value), ensure_ascii=False, allow_nan=False, default=str)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except UnicodeEncodeError:  # a lone surrogate, or a console that is not UTF-8
        text = json.dumps(plain(value), ensure_ascii=True, allow_nan=False, default=str)
    return text


# The module that registers each command beyond init and params: ``main`` imports only the one
# a command line names (a command starts in less time), ``build_parser()`` all of them.
_COMMAND_MODULES = {"run": "run_cmd", "parse-log": "parse_log", "runs": "runs", "upload": "transfer_cli",
                    "fetch": "transfer_cli"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ava`` argument parser: every command, or only ``command`` (when known) and the
    built-in ones."""
    parser = argparse.ArgumentParser(prog="ava", description="The runtime side of a training job.")
    parser.add_argument("--version", action="version", version=f"ava {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_init = sub.add_parser("init", help="create a workspace from the template")
    p_init.add_argument("dir", nargs="?", help="where (default: $AVA_WORKSPACE, else /workspace if it exists, else ./workspace)")
    p_init.set_defaults(func=_cmd_init)

    p_params = sub.add_parser("params", help="read hyper-parameters")
    params_sub = p_params.add_subparsers(dest="params_command", metavar="ACTION")
    params_sub.required = True
    p_get = params_sub.add_parser("get", help="print the JSON value of a dotted key")
    p_get.add_argument("key", help="dotted key, e.g. solverOps.lr (escape a literal dot as \\.)")
    p_get.add_argument("--default", help="printed when the key is missing (parsed as JSON if it is JSON)")
    p_get.set_defaults(func=_cmd_params_get)

    import importlib

    names = ["run_cmd", "parse_log", "runs", "transfer_cli"]
    if command in _COMMAND_MODULES:
        names = [_COMMAND_MODULES[command]]
    for name in names:
        importlib.import_module(f"ava.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``ava`` the console script exits with it)."""
    from ava.log.logger import initialize_console_logger
    from ava.log.redact import redact

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    env = Env()
    initialize_console_logger(env)
    try:
        return int(args.func(args, env))
    except (ParamsError, ParamsKeyError, ConfigError, UsageError, WorkspaceError) as exc:
        print(f"ava: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except AvaError as exc:
        print(f"ava: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # A file of the workspace that cannot be used as it is (a folder where status.json or
        # run.log should be, no permission): one line naming it, as for any bad input.
        from ava.utils.fileio import os_reason

        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ava: {redact(where + os_reason(exc))}", file=sys.stderr)
        bad_input = isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError))
        return EXIT_USAGE if bad_input else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
