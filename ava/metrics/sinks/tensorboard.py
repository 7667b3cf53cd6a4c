"""TensorBoard event files under ``run/<id>/logs/tensorboard/``, written by the writer thread.

Enabled by ``AVA_TENSORBOARD=1`` or ``TrainInstance(tensorboard=True)``; needs the
``[tensorboard]`` extra (tensorboardX). Each metric record becomes a scalar tagged
``<phase>/<name>`` at its step (its ``seq`` when it has no step). A name with characters a tag
cannot hold (a space, ``,``, ``=``, ``#`` ...) has them written ``_``, said once per name; two
names that would come out the same are kept apart (``_2``, ``_3`` ...).

Example:
    >>> import tempfile
    >>> sink = TensorBoardSink(tempfile.mkdtemp())
    >>> sink.write([{"ts": 1.0, "step": 1, "phase": "train", "name": "loss", "value": 0.5}])
    >>> sink.close()
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ava.errors import UsageError
from ava.metrics.sinks.base import Sink

log = logging.getLogger(__name__)

_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
_NOT_IN_TAGS = re.compile(r"[^-/\w.]")  # what tensorboardX replaces (with a log line per record)


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
        self._tags: dict[tuple[str, str], str] = {}
        self._taken: set[str] = set()

    def _tag(self, phase: str, name: str) -> str:
        """The tag of ``phase``/``name``: made once, legal for TensorBoard, one per name."""
        tag = self._tags.get((phase, name))
        if tag is not None:
            return tag
        wanted = f"{phase}/{name}"
        tag = _NOT_IN_TAGS.sub("_", wanted).lstrip("/") or "_"
        base, n = tag, 1
        while tag in self._taken:
            n += 1
            tag = f"{base}_{n}"
        if tag != wanted:
            log.info("metric %r (%s) is shown in TensorBoard as %r", name, phase, tag)
        self._taken.add(tag)
        self._tags[(phase, name)] = tag
        return tag

    def write(self, records: list[dict[str, Any]]) -> None:
        add = self._writer.add_scalar
        for r in records:
            if "event" in r:
                continue
            value = r["value"]
            if isinstance(value, str):
                value = _NONFINITE.get(value, float("nan"))
            step = r["step"] if r.get("step") is not None else r.get("seq")
            add(self._tag(r.get("phase") or "train", str(r["name"])), float(value), global_step=step,
                walltime=r.get("ts"))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
