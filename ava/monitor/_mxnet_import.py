"""Importing mxnet: the ``np.bool`` shim mxnet 1.9.1 needs under numpy >= 1.24.

Nothing here imports mxnet or numpy at module level; :func:`_mx` does, on first use, after
the shim. ``ava.monitor.mxnet`` re-exports both names.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any


# --- importing mxnet -------------------------------------------------------------------------
def ensure_np_bool(np_module: Any) -> bool:
    """Give ``np_module`` a ``bool`` attribute when it has none (numpy >= 1.24); True if added."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            getattr(np_module, "bool")
            return False
        except AttributeError:
            np_module.bool = bool
            return True


def _mx() -> Any:
    """``mxnet``, imported with the ``np.bool`` shim and its import-time warnings silenced."""
    mx = sys.modules.get("mxnet")
    if mx is not None and hasattr(mx, "metric"):
        return mx
    import numpy

    ensure_np_bool(numpy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import mxnet
    return mxnet
