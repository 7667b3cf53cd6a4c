"""The metric record and its writer: ``MetricsWriter`` (buffer -> thread -> sinks)."""

from ava.metrics.writer import MetricsWriter

__all__ = ["MetricsWriter"]
