import math

import pytest

from ava.platform.lineproto import (LineProtocolError, decode_line, encode_json_lines, encode_record, encode_records,
                                   measurement_for)


def rec(**kw):
    base = {"ts": 1732240000.123456, "step": 1200, "epoch": 3, "batch": 45, "phase": "train", "name": "loss",
            "value": 0.2134, "rank": 0, "seq": 17}
    base.update(kw)
    return base


def test_old_ava_measurement_names():
    assert measurement_for("loss", "train") == "ava_metric_training_loss"
    assert measurement_for("lr", "train") == "ava_metric_training_learning_rate"
    assert measurement_for("accuracy", "val") == "ava_metric_training_val_accuracy"
    assert measurement_for("samples", "train") == "ava_metric_training_sample_num"
    assert measurement_for("loss3/top-5", "test") == "ava_metric_training_test_loss3_top_5"


def test_exact_line_for_a_record():
    assert encode_record(rec(), "run-1") == (
        "ava_metric_training_loss,job_type=training,id=run-1,epoch=3,batch=45,rank=0,phase=train,name=loss "
        "value=0.2134,seq=17i,step=1200i 1732240000123456000"
    )


def test_unknown_tags_are_left_out():
    line = encode_record(rec(epoch=None, batch=None), "r")
    assert "epoch=" not in line and "batch=" not in line


@pytest.mark.parametrize("value, wire", [
    (3, "value=3i"), (2**63 - 1, f"value={2**63 - 1}i"), (0.1, "value=0.1"), (1e-300, "value=1e-300"),
    (float("nan"), 'value="nan"'), (float("inf"), 'value="inf"'), (float("-inf"), 'value="-inf"'),
    ("nan", 'value="nan"'), (-0.0, "value=-0.0"),
])
def test_every_numeric_type_is_encoded(value, wire):
    assert f" {wire}," in encode_record(rec(value=value), "r")


@pytest.mark.parametrize("value, wire", [
    (2**63, "value=9.223372036854776e+18"), (-(2**63) - 1, "value=-9.223372036854776e+18"),
    (2**70, "value=1.1805916207174113e+21"), (-(2**63), f"value={-(2**63)}i"),
    (10**400, 'value="1' + "0" * 400 + '"'),
])
def test_integers_beyond_64_bits_are_not_sent_as_integers(value, wire):
    import json

    from ava.metrics.sinks.jsonl import encode_line

    assert f" {wire}," in encode_record(rec(value=value), "r")
    line = encode_line(rec(value=value)).decode().rstrip("\n")
    assert json.loads(line)["value"] == value  # the local record keeps the exact integer
    assert f" {wire}," in encode_json_lines([line], "r").decode()  # delivery's own path


@pytest.mark.parametrize("name", ["loss", "loss3/top-5", "a b,c=d", 'q"uote', "back\\slash", "准确率", "x" * 300])
@pytest.mark.parametrize("value", [0.25, 7, float("nan"), float("-inf"), 1.7976931348623157e308])
def test_round_trip(name, value):
    r = rec(name=name, value=value, phase="val", net=2)
    back = decode_line(encode_record(r, "inst 1,x"))
    assert back["name"] == name and back["phase"] == "val" and back["id"] == "inst 1,x"
    assert (back["epoch"], back["batch"], back["rank"], back["seq"], back["step"], back["net"]) == (3, 45, 0, 17, 1200, 2)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back["value"])
    else:
        assert back["value"] == value and type(back["value"]) is type(value)
    assert back["ts_ns"] == 1732240000123456000


def test_events_are_not_sent():
    body = encode_records([rec(), {"ts": 1.0, "step": 1, "event": "snapshot", "path": "/x", "rank": 0, "seq": 18}], "r")
    assert body.count(b"\n") == 1


@pytest.mark.parametrize("line", ["garbage", "m,a=b", "m value", "m,tag value=1 12 extra", 'm v="open 1', "m other=1 5"])
def test_malformed_lines_raise(line):
    with pytest.raises(LineProtocolError):
        decode_line(line)
