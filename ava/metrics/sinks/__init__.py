"""Destinations of metric records: the durable JSON-lines file, and more to come."""

from ava.metrics.sinks.base import Sink
from ava.metrics.sinks.jsonl import JsonlSink

__all__ = ["Sink", "JsonlSink"]
