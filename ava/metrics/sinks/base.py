"""The interface every metric sink implements.

The writer thread hands each sink the records of one batch, in ``seq`` order. The first sink is
the durable one (``metrics.jsonl``); an error it raises keeps the batch for a retry. Errors of
the other sinks are logged and never stop the durable record.
"""

from __future__ import annotations

from typing import Any


class Sink:
    """A destination for metric records; every hook is a no-op by default.

    Example:
        >>> class Collect(Sink):
        ...     def __init__(self): self.records = []
        ...     def write(self, records): self.records.extend(records)
        >>> s = Collect(); s.write([{"name": "loss", "value": 1.0}]); len(s.records)
        1
    """

    #: False when :meth:`write` ignores its records (a sink that reads the durable file instead):
    #: the writer then builds no record dicts for it.
    wants_records = True

    # The durable (first) sink may also define ``write_calls(entries)``: it then gets the writer's
    # converted calls, one tuple per ``log_metrics`` call, instead of one dict per record
    # (see :func:`ava.metrics.record.records_of` for what they hold).

    def write(self, records: list[dict[str, Any]]) -> None:
        """Take a batch of records (called on the writer thread only)."""

    def flush(self) -> None:
        """Make what was written durable or delivered, as far as this sink can."""

    def close(self) -> None:
        """Release files and connections; safe to call twice."""
