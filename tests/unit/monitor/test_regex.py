"""RegexParser (``--metric NAME=REGEX``) and the shared number syntax."""

from __future__ import annotations

import math

import pytest

from ava.errors import UsageError
from ava.monitor.regex import RegexParser, parse_number, to_float


def test_first_group_is_the_value_and_step_group_sets_the_step():
    p = RegexParser.from_specs([r"loss=step (?P<step>\d+) loss (\S+)"])
    [r] = p.parse_line("step 7 loss 0.25")
    assert (r["name"], r["step"], r["value"], r["phase"], r["ts"]) == ("loss", 7, 0.25, "train", None)
    assert (r["epoch"], r["batch"], r["net"], r["unit"]) == (None, None, None, None)
    assert p.parse_line("nothing here") == []


def test_value_group_before_the_step_group_and_the_step_carries_over():
    p = RegexParser.from_specs([r"acc=acc=(\S+) at (?P<step>\d+)", r"val_ap=val_AP: ([-.\de]+)"])
    assert [(r["name"], r["step"], r["value"]) for r in p.parse_line("acc=0.5 at 30")] == [("acc", 30, 0.5)]
    # a line with no step of its own takes the last one captured
    assert [(r["name"], r["step"]) for r in p.parse_line("val_AP: 0.75")] == [("val_ap", 30)]
    # two specs on one line: the step captured on it applies to both
    got = p.parse_line("acc=0.6 at 40 val_AP: 0.8")
    assert [(r["name"], r["step"], r["value"]) for r in got] == [("acc", 40, 0.6), ("val_ap", 40, 0.8)]


def test_nan_kept_and_non_numbers_skipped():
    p = RegexParser.from_specs([r"loss=loss (\S+)"])
    assert math.isnan(p.parse_line("loss nan")[0]["value"])
    assert p.parse_line("loss -inf")[0]["value"] == -math.inf
    assert p.parse_line("loss banana") == []
    assert p.parse_line("loss 0.5.1") == []


@pytest.mark.parametrize("spec", ["loss", "=loss (\\S+)", "loss=", "my loss=(\\S+)", "loss=(", "loss=[",
                                  "loss=no group", "loss=(?P<step>\\d+)"])
def test_bad_specs_name_the_spec(spec):
    with pytest.raises(UsageError) as info:
        RegexParser.from_specs(["ok=ok (\\S+)", spec])
    message = str(info.value)
    assert repr(spec) in message and "\n" not in message


def test_usage_error_is_a_value_error():
    with pytest.raises(ValueError):
        RegexParser.from_specs(["x=("])


def test_numbers():
    assert to_float("-nan") != to_float("-nan")
    assert to_float("1.#INF") == math.inf and to_float("-1.#INF") == -math.inf
    assert math.isnan(to_float("-nan(ind)")) and math.isnan(to_float("1.#QNAN"))
    assert parse_number(" 2.5e-3 ") == 0.0025
    assert parse_number("info") is None and parse_number("1_0") is None and parse_number("") is None


def test_garbage_never_raises():
    p = RegexParser.from_specs([r"loss=loss[:=] *(\S+)", r"it=it (?P<step>\S+) (\S+)"])
    for text in ["", "\x00", "loss=", "it 99999999999999999999999999999 1", "it 1e400 1", "it nan 1",
                 "loss:" + "9" * (10 << 20)]:
        assert isinstance(p.parse_line(text), list)
    assert p.parse_line("it 1e400 1")[0]["step"] == 0  # not a step: the last one taken (none yet: 0)


def test_without_a_step_group_the_step_counts_the_lines_that_held_a_metric():
    # The step was null (CONTRACT.md section 5 wants one; `ava runs show --plot` found nothing to plot).
    p = RegexParser.from_specs([r"loss=loss=(\S+)", r"acc=acc=(\S+)"])
    steps = [(r["name"], r["step"]) for line in ["loss=1.0 acc=0.1", "nothing here", "loss=0.5", "acc=0.3"]
             for r in p.parse_line(line)]
    assert steps == [("loss", 0), ("acc", 0), ("loss", 1), ("acc", 2)]


def test_with_a_step_group_the_records_before_the_first_step_are_at_step_0():
    p = RegexParser.from_specs([r"loss=it (?P<step>\d+) loss (\S+)", r"lr=lr (\S+)"])
    assert [(r["name"], r["step"]) for r in p.parse_line("lr 0.1")] == [("lr", 0)]
    assert [(r["name"], r["step"]) for r in p.parse_line("it 5 loss 2")] == [("loss", 5)]
    assert [(r["name"], r["step"]) for r in p.parse_line("lr 0.01")] == [("lr", 5)]


def test_a_value_captured_with_trailing_punctuation_is_read_and_a_non_number_is_said_once(caplog):
    # The usage hint's own (\S+) took "0.1," and every line was dropped without a word.
    p = RegexParser.from_specs([r"loss=loss: (\S+)", r"acc=acc: (\S+)"])
    got = [(r["name"], r["value"]) for r in p.parse_line("epoch 1, loss: 0.1, acc: 0.9")]
    assert got == [("loss", 0.1), ("acc", 0.9)]
    assert p.parse_line("loss: -nan(ind),")[0]["value"] != p.parse_line("loss: -nan(ind),")[0]["value"]  # nan kept
    assert p.parse_line("loss: high") == [] and p.parse_line("loss: low") == []
    said = [r.getMessage() for r in caplog.records if "not a number" in r.getMessage()]
    assert len(said) == 1 and "'high'" in said[0]
