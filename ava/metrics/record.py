"""The metric record (CONTRACT.md section 5): checking values on the caller's thread, converting
them on the writer's, and building the JSON object of one line of ``metrics.jsonl``.

The split matters for speed: :func:`check_metrics` runs on the training thread and must stay a
few type checks; :func:`to_json_number` may call ``.item()`` on a tensor (a device sync), so it
runs only on the writer's thread.

Example:
    >>> make_record(1.5, 10, 1, 2, "train", "loss", to_json_number(float("nan")), rank=0, seq=7)["value"]
    'nan'
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Any, Mapping

from ava.errors import MetricsError, UsageError

PHASES = ("train", "val", "test")
_FAST_TYPES = (float, int)


def _reject(name: str, value: Any, why: str) -> MetricsError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MetricsError(f"metric {name!r} has {why} ({shown}); log a number, a numpy scalar or a one-element tensor")


def check_value(name: str, value: Any) -> Any:
    """Check one value on the caller's thread and return what to keep of it.

    A tensor or array is copied here (for torch, ``detach().clone()``: a device copy queued, no
    sync; mxnet's ``copy()`` is queued on its engine too): the value recorded is the one of
    this call, even when the caller then changes the tensor in place (a running sum, a weight)
    before the writer thread reads it, and the buffer does not keep an autograd graph alive.
    Raises :class:`MetricsError` for non-numbers.
    """
    if isinstance(value, (str, bytes, bytearray)) or value is None:
        raise _reject(name, value, f"a {type(value).__name__} value")
    if isinstance(value, (bool, numbers.Real)):
        return value
    if isinstance(value, numbers.Complex):
        raise _reject(name, value, "a complex value")
    numel = getattr(value, "numel", None)
    if callable(numel):  # torch.Tensor
        if numel() != 1:
            raise _reject(name, value, f"a tensor of {numel()} elements")
        detach = getattr(value, "detach", None)
        return detach().clone() if callable(detach) else value
    size = getattr(value, "size", None)
    if isinstance(size, int):  # numpy arrays, mxnet NDArrays
        if size != 1:
            raise _reject(name, value, f"an array of {size} elements")
        copy = getattr(value, "copy", None)
        return copy() if callable(copy) else value
    if hasattr(value, "item") or hasattr(value, "__float__"):
        return value
    raise _reject(name, value, f"a {type(value).__name__} value")


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Validate names and values on the caller's thread; return a private copy of the mapping."""
    if type(metrics) is dict:
        out = metrics.copy()
    elif isinstance(metrics, Mapping):
        out = dict(metrics)
    else:
        raise MetricsError(
            f"log_metrics takes a mapping of name to number, got a {type(metrics).__name__}; "
            "call it as log_metrics({'loss': 0.1}, step=...)"
        )
    for name, value in out.items():
        if type(name) is not str:
            raise MetricsError(f"metric name {name!r} is a {type(name).__name__}; metric names must be strings")
        if type(value) not in _FAST_TYPES:
            out[name] = check_value(name, value)
    return out


def check_units(units: Any) -> dict[str, str]:
    """``units`` (metric name -> unit text, e.g. ``{"speed": "samples/s"}``) as a dict; a clear
    :class:`MetricsError` for anything else (a bytes unit made every later record unwritable)."""
    if not isinstance(units, Mapping):
        raise MetricsError(f"units must be a mapping of metric name to unit text, got {type(units).__name__}")
    for name, unit in units.items():
        if type(name) is not str or type(unit) is not str:
            raise MetricsError(f"units: {name!r}: {unit!r} is not a name and a unit text (both str)")
    return dict(units)


def check_step(step: Any, what: str = "step") -> int | None:
    """Return ``step`` as an int (None stays None); a clear error for anything else."""
    if step is None or type(step) is int:
        return step
    try:
        return operator.index(step)
    except TypeError:
        raise MetricsError(f"{what} must be an integer, got {step!r}") from None


def check_epoch(epoch: Any, what: str = "epoch") -> int:
    """``epoch`` as a non-negative ``int`` (numpy and other integer types taken); else a clear
    error naming ``what`` (an epoch, or another count such as ``begin_step``)."""
    if isinstance(epoch, bool):
        raise UsageError(f"{what} must be a non-negative integer, got {epoch!r}")
    try:
        value = operator.index(epoch)
    except TypeError:
        raise UsageError(f"{what} must be a non-negative integer, got {epoch!r}") from None
    if value < 0:
        raise UsageError(f"{what} must be a non-negative integer, got {value}")
    return value


def plain_details(details: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """An event's details as plain JSON values: paths as text, numpy and tensor scalars as
    numbers, sets as sorted lists, non-finite floats as ``"nan"``/``"inf"``/``"-inf"``.
    Anything else is a :class:`MetricsError` naming the detail (``strict``), or its ``str()``.

    Example:
        >>> import pathlib
        >>> plain_details({"path": pathlib.Path("/x/a.bin"), "loss": float("nan"), "tags": {"b", "a"}})
        {'path': '/x/a.bin', 'loss': 'nan', 'tags': ['a', 'b']}
    """
    def plain(name: str, v: Any) -> Any:
        if v is None or isinstance(v, (str, bool, int)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else nonfinite(v)
        if isinstance(v, os.PathLike):
            return str(os.fspath(v))
        if isinstance(v, Mapping):
            return {str(k): plain(name, x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(name, x) for x in v]
        if isinstance(v, (set, frozenset)):
            return sorted((plain(name, x) for x in v), key=repr)
        item = getattr(v, "item", None)
        if callable(item):
            try:
                return plain(name, item())
            except Exception:  # noqa: BLE001 - not a scalar: said below
                pass
        if not strict:
            return str(v)
        raise MetricsError(f"event detail {name!r} must be a JSON value (text, number, list, mapping, path), "
                           f"got {type(v).__name__}")

    return {str(k): plain(str(k), v) for k, v in details.items()}


def nonfinite(value: float) -> str:
    """The string a non-finite float is kept as: ``"nan"``, ``"inf"`` or ``"-inf"``."""
    if value != value:
        return "nan"
    return "inf" if value > 0 else "-inf"


def to_json_number(value: Any) -> int | float | str:
    """Convert a checked value to a JSON number, or ``"nan"``/``"inf"``/``"-inf"``.

    Runs on the writer thread: tensors are converted here (``asscalar()`` for MXNet,
    ``item()`` for numpy and torch).
    """
    t = type(value)
    if t is float:
        return value if math.isfinite(value) else nonfinite(value)
    if t is int:
        return value
    if t is bool:
        return int(value)
    if hasattr(value, "asscalar"):
        value = value.asscalar()
    elif hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else nonfinite(value)


def to_micros(ts: float) -> float:
    """``ts`` to the microsecond: the float nearest a whole number of microseconds, which
    ``round(ts, 6)`` leaves as it is. A fifth of the cost of ``round(ts, 6)`` (which goes through
    the decimal digits), and within a microsecond of it.

    Example:
        >>> to_micros(1732240000.1234567)
        1732240000.123457
    """
    return round(ts * 1e6) / 1e6


def make_record(
    ts: float,
    step: int | None,
    epoch: int | None,
    batch: int | None,
    phase: str,
    name: str,
    value: int | float | str,
    *,
    rank: int,
    seq: int,
    net: int | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """One metric record, keys in the contract's order."""
    rec: dict[str, Any] = {
        "ts": round(ts, 6),
        "step": step,
        "epoch": epoch,
        "batch": batch,
        "phase": phase,
        "name": name,
        "value": value,
        "rank": rank,
        "seq": seq,
    }
    if net is not None:
        rec["net"] = net
    if unit is not None:
        rec["unit"] = unit
    return rec


#: One ``log_metrics`` call after conversion, as the writer hands it to sinks that take calls:
#: ``(ts, step, epoch, batch, phase, metrics, net, units, seq, rank)``, where ``ts`` is rounded,
#: ``metrics`` maps each name to its converted value, and the k-th metric gets ``seq + k``.
#: An event record stays a dict. :func:`records_of` turns both into records.
CallEntry = tuple  # a plain tuple: building it is the cheapest thing the writer can do


def records_of(entries: list[Any]) -> list[dict[str, Any]]:
    """The records of converted calls (see :data:`CallEntry`), built by :func:`make_record`
    (whose rounding of ``ts`` leaves an already rounded one as it is)."""
    out: list[dict[str, Any]] = []
    append = out.append
    for entry in entries:
        if type(entry) is dict:
            append(entry)
            continue
        ts, step, epoch, batch, phase, metrics, net, units, seq, rank = entry
        for name, value in metrics.items():
            append(make_record(ts, step, epoch, batch, phase, name, value, rank=rank, seq=seq, net=net,
                               unit=units.get(name) if units else None))
            seq += 1
    return out


def is_metric(record: Mapping[str, Any]) -> bool:
    """True for a metric record, False for an event record (one with an ``"event"`` key)."""
    return "event" not in record
