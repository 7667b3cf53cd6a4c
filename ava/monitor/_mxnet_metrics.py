"""Reading MXNet metric values: window values from global counters, name/value dicts, the lr.

Used by the Module callbacks in ``ava.monitor.mxnet`` (which re-exports these names) and by
``ava.monitor.gluon``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ava.metrics.record import check_value
from ava.monitor._mxnet_import import _mx

_PLAIN = (float, int)


def full_mxnet_metrics() -> list[str]:
    """MXNet's common metric names, as ``Module.fit`` prints them (the old SDK's list, extended)."""
    return ["accuracy", "top_k_accuracy_5", "cross-entropy", "nll-loss", "perplexity", "f1", "mcc", "mae",
            "mse", "rmse", "pearsonr", "pcc", "loss"]


# --- reading metrics --------------------------------------------------------------------------
def _leaves(eval_metric: Any) -> list[Any]:
    """The leaf metrics of a (possibly nested) composite metric."""
    children = getattr(eval_metric, "metrics", None)
    if isinstance(children, list) and hasattr(eval_metric, "get_metric"):
        out: list[Any] = []
        for child in children:
            out.extend(_leaves(child))
        return out
    return [eval_metric]


def _kind(leaf: Any) -> str:
    """How a leaf's value over a window is computed from its global counters."""
    mx = _mx()
    m = mx.metric
    if isinstance(leaf, (m.F1, m.MCC, m.PCC)):
        return "local"  # their global sum is not additive across batches
    if isinstance(leaf, m.Perplexity):
        return "exp"
    if isinstance(leaf, m.PearsonCorrelation):
        return "mean" if getattr(leaf, "average", "macro") == "macro" else "local"
    if getattr(leaf, "_has_global_stats", False) and type(leaf).get is m.EvalMetric.get:
        return "mean"
    return "local"


_KEPT = "_ava_before_reset"


def _keep_before_reset(leaf: Any) -> None:
    """Make ``leaf.reset_local()`` keep the (name, value) the metric had just before the reset:
    a metric with no additive global counters loses its window value to a Speedometer that
    resets it before this callback reads it (NaN for a custom metric). Done once per metric."""
    if getattr(leaf, _KEPT, None) is not None:
        return
    kept: list[Any] = [None]
    original = leaf.reset_local

    def reset_local() -> None:
        try:
            kept[0] = leaf.get() if leaf.num_inst else None
        except Exception:  # noqa: BLE001 - the user's metric: never break its reset
            kept[0] = None
        original()

    try:
        leaf.reset_local = reset_local
        setattr(leaf, _KEPT, kept)
    except AttributeError:  # a metric that takes no attributes: its value after a reset stays as it is
        pass


def _pairs(name: Any, value: Any) -> list[tuple[str, Any]]:
    names = name if isinstance(name, list) else [name]
    values = value if isinstance(value, list) else [value]
    return list(zip(names, values))


class WindowReader:
    """Read a metric's values over the batches since the last read, from its global counters.

    Global counters survive ``reset_local()`` (what ``Speedometer(auto_reset=True)`` calls), so
    the values do not depend on the order of callbacks. Metrics whose global part is not a
    plain sum (F1, MCC, PCC, micro Pearson, custom metrics without global stats) give their local
    value; when a callback before this one (Speedometer) has just reset it, the value it had
    just before that reset, which is what Speedometer printed. Values are Python floats.

    Example:
        >>> import mxnet as mx
        >>> acc = mx.metric.Accuracy()
        >>> r = WindowReader()
        >>> acc.update([mx.nd.array([1, 0])], [mx.nd.array([[0, 1], [0, 1]])])
        >>> r.read(acc)
        {'accuracy': 0.5}
        >>> acc.update([mx.nd.array([1])], [mx.nd.array([[0, 1]])])
        >>> r.read(acc)
        {'accuracy': 1.0}
    """

    def __init__(self) -> None:
        self._metric: Any = None
        self._size = -1
        self._composite = False  # the metric has a ``metrics`` list, whose length is checked at each read
        # leaf, kind, record name, [global sum, global count] at the previous read (updated in place)
        self._plan: list[tuple[Any, str, str, list[float]]] = []
        # The plan when it is one metric, not composite, of the "mean" kind (accuracy, cross-entropy,
        # MAE...): read() then skips its checks and loop, which cost more than the reading itself
        # when this runs after every batch.
        self._single: tuple[Any, str, str, list[float]] | None = None

    def _prepare(self, eval_metric: Any) -> None:
        size = len(getattr(eval_metric, "metrics", ()) or ())
        if eval_metric is self._metric and size == self._size:
            return
        self._metric, self._size = eval_metric, size
        self._composite = getattr(eval_metric, "metrics", None) is not None
        taken: set[str] = set()
        self._plan = []
        for leaf in _leaves(eval_metric):
            kind = _kind(leaf)
            if kind == "local":
                _keep_before_reset(leaf)
            self._plan.append((leaf, kind, "" if kind == "local" else _unique(str(leaf.name), taken), [0.0, 0.0]))
        one = len(self._plan) == 1 and not self._composite and self._plan[0][1] == "mean"
        self._single = self._plan[0] if one else None

    def watch(self, eval_metric: Any) -> None:
        """Get ready to read ``eval_metric`` (before a callback can first reset it)."""
        if eval_metric is not self._metric or (self._composite and self._size != len(eval_metric.metrics or ())):
            self._prepare(eval_metric)

    def restart(self) -> None:
        """Forget the previous read (the metric was reset for a new epoch)."""
        for entry in self._plan:
            entry[3][:] = (0.0, 0.0)
            kept = getattr(entry[0], _KEPT, None)
            if kept is not None:
                kept[0] = None

    def read(self, eval_metric: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
        """name -> value over the window since the last read (into ``out`` when given)."""
        if out is None:
            out = {}
        single = self._single
        if single is not None and eval_metric is single[0]:
            # The loop below for its one "mean" entry, written out: this runs after every batch.
            leaf, _, name, prev = single
            g_sum = float(leaf.global_sum_metric)
            g_num = float(leaf.global_num_inst)
            p_sum, p_num = prev
            if g_num < p_num:
                p_sum = p_num = 0.0
            prev[0] = g_sum
            prev[1] = g_num
            out[name] = (g_sum - p_sum) / (g_num - p_num) if g_num != p_num else math.nan
            return out
        if eval_metric is not self._metric or (self._composite and self._size != len(eval_metric.metrics or ())):
            self._prepare(eval_metric)
        for leaf, kind, name, prev in self._plan:
            if kind == "local":
                kept = getattr(leaf, _KEPT, None)
                if leaf.num_inst:
                    pairs = leaf.get()
                elif kept is not None and kept[0] is not None:
                    pairs = kept[0]  # reset by a callback before this one: its value just before
                else:
                    pairs = leaf.get_global()
                if kept is not None:
                    kept[0] = None
                # A metric's get() may hand out an array it later changes in place; the record
                # goes to the writer as it is (TrainInstance.batch_logger), so keep this batch's value.
                _as_dict(((n, v if type(v) in _PLAIN else check_value(str(n), v)) for n, v in _pairs(*pairs)), out)
            else:
                # As Python floats: numpy scalar arithmetic costs several times more.
                g_sum = float(leaf.global_sum_metric)
                g_num = float(leaf.global_num_inst)
                p_sum, p_num = prev
                if g_num < p_num:  # reset since the last read
                    p_sum = p_num = 0.0
                prev[0] = g_sum
                prev[1] = g_num
                n = g_num - p_num
                if n:
                    value = (g_sum - p_sum) / n
                    out[name] = math.exp(value) if kind == "exp" else value
                else:
                    out[name] = math.nan
        return out


def _unique(name: str, taken: Any) -> str:
    """``name``, or ``name_2``, ``name_3``... when taken (two outputs with one metric each)."""
    key, n = name, 1
    while key in taken:
        n += 1
        key = f"{name}_{n}"
    if isinstance(taken, set):
        taken.add(key)
    return key


def _as_dict(pairs: Iterable[tuple[str, Any]], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """name -> value, repeated names made unique (see :func:`_unique`)."""
    out = {} if into is None else into
    for name, value in pairs:
        out[_unique(str(name), out)] = value
    return out


def optimizer_lr(optimizer: Any) -> float | None:
    """The current learning rate of an MXNet optimizer (its scheduler applied), or None."""
    if optimizer is None:
        return None
    try:
        lr = optimizer.learning_rate
    except Exception:  # noqa: BLE001 - an unusual optimizer: report no lr rather than fail
        return None
    return lr if isinstance(lr, (int, float)) else None
