"""TensorBoard event files under ``run/<id>/logs/tensorboard/``, written by the writer thread.

Enabled by ``AVA_TENSORBOARD=1`` or ``TrainInstance(tensorboard=True)``; needs the
``[tensorboard]`` extra (tensorboardX). Each metric record becomes a scalar tagged
``<phase>/<name>`` at its step (its ``seq`` when it has no step).

Example:
    >>> import tempfile
    >>> sink = TensorBoardSink(tempfile.mkdtemp())
    >>> sink.write([{"ts": 1.0, "step": 1, "phase": "train", "name": "loss", "value": 0.5}])
    >>> sink.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ava.errors import UsageError
from ava.metrics.sinks.base import Sink

_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class TensorBoardSink(Sink):
    """Write scalars with tensorboardX's ``SummaryWriter``.

    Args:
        logdir: the event file directory (created if missing).
    """

    def __init__(self, logdir: Path | str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UsageError("TensorBoard output needs tensorboardX: pip install 'ava-sdk[tensorboard]'") from None
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=5)

    def write(self, records: list[dict[str, Any]]) -> None:
        add = self._writer.add_scalar
        for r in records:
            if "event" in r:
                continue
            value = r["value"]
            if isinstance(value, str):
                value = _NONFINITE.get(value, float("nan"))
            step = r["step"] if r.get("step") is not None else r.get("seq")
            add(f"{r.get('phase') or 'train'}/{r['name']}", float(value), global_step=step, walltime=r.get("ts"))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
