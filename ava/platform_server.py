"""A reference platform server: what tests, the demo and users without a platform report to.

Run it with ``python -m ava.platform_server --port 0 --db FILE``: it binds 127.0.0.1 (unless
``--host`` says otherwise) and prints the URL it listens on as its first line of standard output.

Endpoints:
    POST /v1/report/trainings/<id>/metric     line protocol; stored in SQLite, duplicates of
                                              (id, rank, seq) dropped
    GET  /v1/trainings/<id>/metrics[?name=N]   the stored points as one JSON list
    POST /v1/trainings/<name>/instances        create an instance ({status, params, startTime, ...})
    GET|PUT|PATCH /v1/trainings/<name>/instances/<id>
    POST /v1/models, GET /v1/models/<name>     register / read a model
    POST /_ava/faults                          {"mode": "500"|"429"|"400"|"close"|"delay"|"hang"|"garbage"|null,
                                               "delay": s, "count": n, "path": prefix, "retry_after": s}

With ``--access-key``/``--secret-key`` (or ``keys=`` in Python), the instance and model
endpoints require Qiniu MAC request signatures (``Authorization: Qiniu ak:sign``).

Example:
    >>> import tempfile
    >>> server = PlatformServer(tempfile.mktemp(suffix=".db"))
    >>> url = server.start_in_thread()
    >>> url.startswith("http://127.0.0.1:")
    True
    >>> server.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

try:
    import tornado.httpserver
    import tornado.ioloop
    import tornado.netutil
    import tornado.web
except ImportError:
    if __name__ == "__main__":  # `python -m ava.platform_server` without the extra: one line, not a traceback
        print("ava.platform_server needs tornado: pip install 'ava-sdk[platform]'", file=sys.stderr)
        sys.exit(2)
    raise

from ava.metrics.record import to_json_number
from ava.platform.lineproto import LineProtocolError, decode_line

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id TEXT NOT NULL, rank INTEGER NOT NULL, seq INTEGER NOT NULL,
    name TEXT NOT NULL, phase TEXT, step INTEGER, epoch INTEGER, batch INTEGER, net INTEGER,
    value TEXT NOT NULL, ts_ns INTEGER, measurement TEXT,
    PRIMARY KEY (id, rank, seq)
);
CREATE TABLE IF NOT EXISTS instances (training TEXT NOT NULL, id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


@dataclass
class Faults:
    """What the server does wrong, for fault tests. ``count`` None means until told otherwise."""

    mode: str | None = None
    delay: float = 0.0
    count: int | None = None
    path: str = "/v1/"
    retry_after: float | None = None
    hits: int = 0

    def take(self, path: str) -> str | None:
        if self.mode is None or not path.startswith(self.path):
            return None
        if self.count is not None:
            if self.count <= 0:
                return None
            self.count -= 1
        self.hits += 1
        return self.mode


# The shape ava's own encoder writes; other lines (escapes, strings, other tag orders) take the
# general decoder. Matching whole lines with one regex is what lets the server keep up. ASCII
# digits only, and at most 19 of them, so every integer fits SQLite's 64 bits (checked below).
_PLAIN = re.compile(
    r"(?P<m>[^, =\\\"]+),job_type=[^, =\\\"]*,id=(?P<id>[^, =\\\"]*)"
    r"(?:,epoch=(?P<epoch>-?[0-9]{1,19}))?(?:,batch=(?P<batch>-?[0-9]{1,19}))?(?:,rank=(?P<rank>-?[0-9]{1,19}))?"
    r",phase=(?P<phase>[a-z]+),name=(?P<name>[^, =\\\"]+)(?:,net=(?P<net>-?[0-9]{1,19}))?"
    r" value=(?P<value>-?[0-9.eE+-]{1,400}i?),seq=(?P<seq>-?[0-9]{1,19})i(?:,step=(?P<step>-?[0-9]{1,19})i)?"
    r" (?P<ts>[0-9]{1,19})"
)


_PLAIN_LINES = re.compile(r"^" + _PLAIN.pattern + r"$", re.M)
_INT64 = 1 << 63


def parse_body(instance_id: str, text: str) -> list[tuple[Any, ...]]:
    """Rows for the points table from a line-protocol body; LineProtocolError names the line."""
    rows = _parse_plain_body(instance_id, text)
    if rows is not None:
        return rows
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        plain = _parse_plain_body(instance_id, line)
        if plain is not None:
            rows.extend(plain)
            continue
        try:
            p = decode_line(line)
            row = (p["id"] or instance_id, _int_of(p, "rank", 0), _int_of(p, "seq"), p["name"], p["phase"],
                   _int_of(p, "step", None), _int_of(p, "epoch", None), _int_of(p, "batch", None),
                   _int_of(p, "net", None), _value_text(p["value"]), _int_of(p, "ts_ns", None), p["measurement"])
        except LineProtocolError as exc:
            raise LineProtocolError(f"line {lineno}: {exc}") from None
        rows.append(row)
    return rows


_REQUIRED = object()


def _int_of(point: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """An integer of a decoded line, checked to fit a SQLite INTEGER (LineProtocolError if not)."""
    value = point.get(key)
    if value is None:
        if default is _REQUIRED:
            raise LineProtocolError(f"no {key} field")
        return default
    if type(value) is not int:
        raise LineProtocolError(f"{key} must be an integer (as 12i), got {value!r}")
    if not -_INT64 <= value < _INT64:
        raise LineProtocolError(f"{key} {value} does not fit in 64 bits")
    return value


def _int64(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise OverflowError(text)
    return value


def _parse_plain_body(instance_id: str, text: str) -> list[tuple[Any, ...]] | None:
    """Rows when every line of ``text`` has ava's own shape (one regex pass); else None."""
    rows = []
    expected = text.count("\n") + (0 if text.endswith("\n") else 1) - text.count("\n\n")
    try:
        for m in _PLAIN_LINES.finditer(text):
            value = m["value"]
            # The stored text is JSON: "1." / ".5" / "01" are numbers to float() and int(), not to JSON.
            if value.endswith("i"):
                value = str(int(value[:-1]))
            else:
                number = float(value)
                if number - number != 0.0:
                    return None  # "1e999": the general path stores it as "inf"
                value = repr(number)
            rank = _int64(m["rank"])
            rows.append((m["id"] or instance_id, rank if rank is not None else 0, _int64(m["seq"]), m["name"],
                         m["phase"], _int64(m["step"]), _int64(m["epoch"]), _int64(m["batch"]), _int64(m["net"]),
                         value, _int64(m["ts"]), m["m"]))
    except (ValueError, OverflowError):
        return None  # the general path says which line is wrong
    return rows if len(rows) == expected and expected > 0 else None


def _value_text(value: Any) -> str:
    """A value as JSON text (SQLite would turn NaN into NULL, so values are stored as text)."""
    if type(value) is float and value - value == 0.0:
        return repr(value)
    if type(value) is int or type(value) is bool:
        return str(int(value))
    if type(value) is float or value in ("nan", "inf", "-inf"):
        return json.dumps(to_json_number(float(value)))
    raise LineProtocolError(f"value must be a number, got {value!r}")


class Store:
    """The server's SQLite database (used from the IOLoop thread only)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    def add_points(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert rows from :func:`parse_body`; returns how many were new."""
        with self.lock:
            before = self.db.total_changes
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO points VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.db.execute("COMMIT")
            return self.db.total_changes - before

    def points(self, instance_id: str, name: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT name, step, epoch, batch, phase, rank, seq, value, net FROM points WHERE id = ?"
        args: list[Any] = [instance_id]
        if name:
            sql += " AND name = ?"
            args.append(name)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY rank, seq", args).fetchall()
        keys = ("name", "step", "epoch", "batch", "phase", "rank", "seq", "value", "net")
        out = []
        for row in rows:
            point = dict(zip(keys, row))
            point["value"] = json.loads(point["value"])
            if point["net"] is None:
                del point["net"]
            out.append(point)
        return out

    def put_doc(self, table: str, key: str, doc: dict[str, Any], training: str | None = None) -> None:
        with self.lock:
            if table == "instances":
                self.db.execute("INSERT OR REPLACE INTO instances VALUES (?,?,?)", (training, key, json.dumps(doc)))
            else:
                self.db.execute("INSERT OR REPLACE INTO models VALUES (?,?)", (key, json.dumps(doc)))

    def get_doc(self, table: str, key: str) -> dict[str, Any] | None:
        col = "id" if table == "instances" else "name"
        with self.lock:
            row = self.db.execute(f"SELECT doc FROM {table} WHERE {col} = ?", (key,)).fetchone()  # noqa: S608
        return json.loads(row[0]) if row else None


class _Base(tornado.web.RequestHandler):
    server: "PlatformServer"

    def initialize(self, server: "PlatformServer") -> None:
        self.server = server

    async def prepare(self) -> None:
        mode = self.server.faults.take(self.request.path)
        if mode is None:
            return
        if mode in ("delay", "hang"):
            await asyncio.sleep(self.server.faults.delay if mode == "delay" else 3600)
            return
        if mode == "close":
            self.request.connection.stream.close()  # type: ignore[union-attr]
            raise tornado.web.Finish()
        if mode == "garbage":
            stream = self.request.connection.stream  # type: ignore[union-attr]
            await stream.write(b"\x00\xffthis is not HTTP\r\n\r\n")
            stream.close()
            raise tornado.web.Finish()
        status = int(mode) if mode.isdigit() else 500
        self.set_status(status)
        if self.server.faults.retry_after is not None:
            self.set_header("Retry-After", str(self.server.faults.retry_after))
        self.finish({"error": f"injected fault {mode}"})

    def json_body(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="body is not JSON") from None
        if not isinstance(doc, dict):
            raise tornado.web.HTTPError(400, reason="body must be a JSON object")
        return doc

    def check_signature(self) -> None:
        keys = self.server.keys
        if keys is None:
            return
        from qiniu.auth import QiniuMacAuth

        auth = QiniuMacAuth(*keys)
        headers = {k: v for k, v in self.request.headers.get_all()}
        ok = auth.verify_callback(
            self.request.headers.get("Authorization", ""),
            self.request.full_url(),
            self.request.body.decode("utf-8", "replace"),
            content_type=self.request.headers.get("Content-Type"),
            method=self.request.method,
            headers=headers,
        )
        if not ok:
            raise tornado.web.HTTPError(401, reason="bad or missing Qiniu signature")


class MetricHandler(_Base):
    def post(self, instance_id: str) -> None:
        try:
            rows = parse_body(instance_id, self.request.body.decode("utf-8", "replace"))
        except (LineProtocolError, ValueError) as exc:
            raise tornado.web.HTTPError(400, reason=str(exc)[:200]) from None
        stored = self.server.store.add_points(rows)
        self.server.received += len(rows)
        self.finish({"received": len(rows), "stored": stored})


class MetricsReadHandler(_Base):
    def get(self, instance_id: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.server.store.points(instance_id, self.get_query_argument("name", None))))


class InstancesHandler(_Base):
    def post(self, training: str) -> None:
        self.check_signature()
        doc = self.json_body()
        instance_id = doc.get("id") or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        doc["id"] = instance_id
        self.server.store.put_doc("instances", instance_id, doc, training)
        self.set_status(201)
        self.finish(doc)


class InstanceHandler(_Base):
    def get(self, training: str, instance_id: str) -> None:
        self.check_signature()
        doc = self.server.store.get_doc("instances", instance_id)
        if doc is None:
            raise tornado.web.HTTPError(404, reason=f"no instance {instance_id}")
        self.finish(doc)

    def put(self, training: str, instance_id: str) -> None:
        self.check_signature()
        doc = self.json_body()
        old = self.server.store.get_doc("instances", instance_id) or {}
        if self.request.method == "PATCH":
            old.update(doc)
            doc = old
        doc["id"] = instance_id
        self.server.store.put_doc("instances", instance_id, doc, training)
        self.finish(doc)

    patch = put


class ModelsHandler(_Base):
    def post(self) -> None:
        self.check_signature()
        doc = self.json_body()
        if not doc.get("name"):
            raise tornado.web.HTTPError(400, reason="a model needs a name")
        self.server.store.put_doc("models", doc["name"], doc)
        self.set_status(201)
        self.finish(doc)


class ModelHandler(_Base):
    def get(self, name: str) -> None:
        self.check_signature()
        doc = self.server.store.get_doc("models", name)
        if doc is None:
            raise tornado.web.HTTPError(404, reason=f"no model {name}")
        self.finish(doc)


class FaultsHandler(tornado.web.RequestHandler):
    def initialize(self, server: "PlatformServer") -> None:
        self.server = server

    def post(self) -> None:
        doc = json.loads(self.request.body or b"{}")
        f = self.server.faults
        f.mode, f.delay, f.count = doc.get("mode"), float(doc.get("delay", 0.0)), doc.get("count")
        f.path, f.retry_after = doc.get("path", "/v1/"), doc.get("retry_after")
        self.finish({"mode": f.mode, "hits": f.hits})


class PlatformServer:
    """The reference platform server, runnable in a thread (tests) or as a process (CLI).

    Args:
        db_path: the SQLite file (created if missing).
        host: the address to bind; 127.0.0.1 by default.
        port: 0 lets the OS pick.
        keys: (access key, secret key) to require MAC signatures on the API endpoints.
    """

    def __init__(self, db_path: str, host: str = "127.0.0.1", port: int = 0,
                 keys: tuple[str, str] | None = None) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port
        self.keys = keys
        self.faults = Faults()
        self.received = 0
        self.store = Store(db_path)
        self.url = ""
        self._loop: tornado.ioloop.IOLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: tornado.httpserver.HTTPServer | None = None

    def app(self) -> tornado.web.Application:
        kw = {"server": self}
        return tornado.web.Application([
            (r"/v1/report/trainings/([^/]+)/metric", MetricHandler, kw),
            (r"/v1/trainings/([^/]+)/metrics", MetricsReadHandler, kw),
            (r"/v1/trainings/([^/]+)/instances", InstancesHandler, kw),
            (r"/v1/trainings/([^/]+)/instances/([^/]+)", InstanceHandler, kw),
            (r"/v1/models", ModelsHandler, kw),
            (r"/v1/models/([^/]+)", ModelHandler, kw),
            (r"/_ava/faults", FaultsHandler, kw),
        ])

    def _listen(self) -> None:
        sockets = tornado.netutil.bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self._http = tornado.httpserver.HTTPServer(self.app(), max_body_size=256 << 20)
        self._http.add_sockets(sockets)
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"  # IPv6 in brackets

    def start_in_thread(self) -> str:
        """Serve on a daemon thread; returns the URL once it is listening."""
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            self._loop = tornado.ioloop.IOLoop.current()
            self._listen()
            ready.set()
            self._loop.start()

        self._thread = threading.Thread(target=run, name="ava-platform-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def shutdown() -> None:
            if self._http is not None:
                self._http.stop()
            loop.stop()

        loop.add_callback(shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None
        self.store.db.close()

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted (the CLI)."""
        asyncio.set_event_loop(asyncio.new_event_loop())
        self._loop = tornado.ioloop.IOLoop.current()
        self._listen()
        print(self.url, flush=True)
        try:
            self._loop.start()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ava.platform_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", required=True, help="SQLite file for points, instances and models")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    parser.add_argument("--fault", help="start with this fault mode (see /_ava/faults)")
    parser.add_argument("--fault-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    keys = (args.access_key, args.secret_key) if args.access_key and args.secret_key else None
    server = PlatformServer(args.db, host=args.host, port=args.port, keys=keys)
    server.faults.mode, server.faults.delay = args.fault, args.fault_delay
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
