import math
import threading
from decimal import Decimal

import numpy as np
import pytest

from ava.errors import MetricsError
from ava.metrics.record import check_metrics, check_step, make_record, to_json_number


@pytest.mark.parametrize("value, expected", [
    (1.5, 1.5), (3, 3), (True, 1), (2**70, 2**70),
    (float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"),
    (np.float32(0.5), 0.5), (np.float64(-2.25), -2.25), (np.int64(7), 7), (np.bool_(True), 1),
    (np.float16("nan"), "nan"), (np.array([0.75]), 0.75), (Decimal("1.25"), 1.25),
])
def test_to_json_number(value, expected):
    out = to_json_number(value)
    assert out == expected and type(out) is type(expected)


def test_torch_tensors_convert_and_detach():
    torch = pytest.importorskip("torch")
    w = torch.tensor(2.0, requires_grad=True)
    loss = w * 3
    kept = check_metrics({"loss": loss})["loss"]
    assert not kept.requires_grad
    assert to_json_number(kept) == 6.0
    assert to_json_number(torch.tensor([float("nan")])) == "nan"
    assert to_json_number(torch.tensor(5, dtype=torch.int32)) == 5


def test_mxnet_ndarray_converts():
    mx = pytest.importorskip("mxnet")
    assert to_json_number(mx.nd.array([0.125])) == 0.125


@pytest.mark.parametrize("value, why", [
    ("0.5", "a str value"), (None, "a NoneType value"), (b"1", "a bytes value"),
    (1j, "a complex value"), (np.array([1.0, 2.0]), "an array of 2 elements"),
    ([1.0], "a list value"), ({"a": 1}, "a dict value"),
])
def test_values_that_are_not_numbers_are_refused_naming_the_metric(value, why):
    with pytest.raises(MetricsError) as info:
        check_metrics({"loss": value})
    assert "metric 'loss'" in str(info.value) and why in str(info.value)


def test_multi_element_tensor_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(MetricsError, match="a tensor of 3 elements"):
        check_metrics({"acc": torch.zeros(3)})


def test_metric_names_must_be_strings():
    with pytest.raises(MetricsError, match="metric name 3 is a int"):
        check_metrics({3: 1.0})


def test_metrics_must_be_a_mapping():
    with pytest.raises(MetricsError, match="takes a mapping"):
        check_metrics([("loss", 1.0)])


def test_check_metrics_copies():
    src = {"loss": 1.0}
    out = check_metrics(src)
    src["loss"] = 2.0
    assert out == {"loss": 1.0}


def test_check_step():
    assert check_step(np.int64(4)) == 4
    assert check_step(None) is None
    with pytest.raises(MetricsError, match="step must be an integer"):
        check_step(1.5)


def test_make_record_contract_keys():
    rec = make_record(1.0, 10, 2, 3, "val", "accuracy", 0.9, rank=0, seq=4, net=1, unit="samples/s")
    assert list(rec) == ["ts", "step", "epoch", "batch", "phase", "name", "value", "rank", "seq", "net", "unit"]
    assert "net" not in make_record(1.0, 1, None, None, "train", "loss", 1.0, rank=0, seq=0)
