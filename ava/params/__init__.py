"""Hyper-parameters: ``from ava.params import params``, then ``params.get_value("a.b")``."""

from ava.params import params  # noqa: F401  (the old import path)
