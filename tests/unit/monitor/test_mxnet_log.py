"""MXNetLogParser on the real logs of shared/testdata/mxnet_logs and on hand-made lines.

Expected numbers were counted with grep/awk on the logs (``grep -c 'Batch \\['``, ``grep -c
'Validation-accuracy'``...) or read off the quoted line. Steps follow the documented rule, computed
from the highest batch index each epoch logs (awk over ``Epoch[e] Batch [b]``): 01 logs batches
up to 5000 in epochs 0-27 (5001 each, epoch 28 cut at 2700), 02 up to 620 (621 each), 05 up to
1249 (1250 each), 06 up to 499 (500 each, epoch 107 cut at 199).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from ava.monitor.mxnet_log import MXNetLogParser

MXNET_LOGS = Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata" / "mxnet_logs"
VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
       "train", "tvmonitor", "mAP"]


def parse(name: str) -> list[dict]:
    path = MXNET_LOGS / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    p = MXNetLogParser()
    out: list[dict] = []
    for line in path.read_bytes().decode("utf-8", "replace").split("\n"):
        out += p.parse_line(line)
    return out


def metrics(records: list[dict], phase: str, name: str) -> list[dict]:
    return [r for r in records if r.get("phase") == phase and r.get("name") == name]


def one(records: list[dict], phase: str, name: str, step: int) -> dict:
    found = [r for r in metrics(records, phase, name) if r["step"] == step]
    assert len(found) == 1, (phase, name, step, found)
    return found[0]


EXPECTED_COUNTS = {
    # 2854 batch lines: each batch is printed once per metric, with the same speed
    "01_mxnet_feedforward_imagenet_topk.log": (
        {("train", "accuracy"): 1427, ("train", "top_k_accuracy_5"): 1427, ("train", "speed"): 1427,
         ("val", "accuracy"): 28, ("val", "top_k_accuracy_5"): 28, ("train", "time_cost"): 28},
        {"snapshot": 28},
    ),
    # 310 batch lines, 10 epochs, 2 "Update[n]: Change learning rate to X"
    "02_mxnet_fitpy_module_train_summary.log": (
        {("train", "accuracy"): 310 + 10, ("train", "speed"): 310, ("val", "accuracy"): 10,
         ("train", "time_cost"): 10, ("train", "lr"): 2},
        {"snapshot": 10},
    ),
    # 3000 batch lines (accuracy, lr), 120 epochs of "training:", "speed: ... time cost:", "validation:"
    "05_gluoncv_imagenet_resnet50_v1b.log": (
        {("train", "accuracy"): 3000 + 120, ("train", "lr"): 3000, ("train", "speed"): 3000 + 120,
         ("train", "time_cost"): 120, ("val", "err-top1"): 120, ("val", "err-top5"): 120},
        {},
    ),
    # 537 batch lines, 107 "Training cost:" lines, 107 "Validation:" blocks of 21 lines
    "06_gluoncv_ssd_voc_detection.log": (
        {("train", "CrossEntropy"): 537 + 107, ("train", "SmoothL1"): 537 + 107,
         ("train", "accuracy"): 537 + 107, ("train", "speed"): 537, ("train", "time_cost"): 107,
         **{("val", name): 107 for name in VOC}},
        {},
    ),
}


def test_every_log_has_expectations():
    if not MXNET_LOGS.is_dir():
        pytest.skip(f"shared test data not present: {MXNET_LOGS}")
    assert sorted(p.name for p in MXNET_LOGS.glob("*.log")) == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_counts_and_shape(name):
    records = parse(name)
    expected_metrics, expected_events = EXPECTED_COUNTS[name]
    assert dict(Counter((r["phase"], r["name"]) for r in records if "event" not in r)) == expected_metrics
    assert dict(Counter(r["event"] for r in records if "event" in r)) == expected_events
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)  # the derived step never goes back
    for r in records:
        assert r["ts"] is None  # none of these logs has an asctime prefix
        if "event" not in r:
            assert r["net"] is None
            if r["batch"] is not None:
                assert r["epoch"] is not None


def test_01_feedforward_topk():
    r = parse("01_mxnet_feedforward_imagenet_topk.log")
    # lines 7-8: "Epoch[0] Batch [100]\tSpeed: 652.68 samples/sec\tTrain-accuracy=0.002617" (+ top_k line)
    first = metrics(r, "train", "speed")[0]
    assert (first["step"], first["epoch"], first["batch"], first["value"], first["unit"]) == (100, 0, 100, 652.68, "samples/s")
    assert one(r, "train", "accuracy", 100)["value"] == 0.002617
    assert one(r, "train", "top_k_accuracy_5", 100)["value"] == 0.011484
    # lines 108-111: "Epoch[0] Time cost=3298.575", "Saved checkpoint to ...", "Epoch[0] Validation-accuracy=0.193260"
    cost = one(r, "train", "time_cost", 5001)
    assert (cost["value"], cost["unit"], cost["epoch"], cost["batch"]) == (3298.575, "s", 0, None)
    val = one(r, "val", "accuracy", 5001)
    assert (val["value"], val["epoch"], val["batch"]) == (0.19326, 0, None)
    assert one(r, "val", "top_k_accuracy_5", 5001)["value"] == 0.424605
    snap = [e for e in r if "event" in e][0]
    assert (snap["path"], snap["step"], snap["epoch"], snap["kind"]) == (
        "model/resnet-imagenet-18-0-0001.params", 5001, 0, "model")
    # epoch 1 starts after 5001 batches
    assert one(r, "train", "accuracy", 5001 + 100)["epoch"] == 1
    # the last two lines: "Epoch[28] Batch [2700] ... Train-accuracy=0.415898" / "top_k_accuracy_5=0.665664"
    last = metrics(r, "train", "accuracy")[-1]
    assert (last["step"], last["epoch"], last["batch"], last["value"]) == (28 * 5001 + 2700, 28, 2700, 0.415898)
    assert metrics(r, "train", "top_k_accuracy_5")[-1]["value"] == 0.665664
    assert metrics(r, "val", "accuracy")[-1]["step"] == 28 * 5001


def test_02_fit_module_summary_and_lr_changes():
    r = parse("02_mxnet_fitpy_module_train_summary.log")
    first = one(r, "train", "speed", 20)  # line 2
    assert (first["value"], first["epoch"], first["batch"]) == (142.33, 0, 20)
    assert one(r, "train", "accuracy", 20)["value"] == 0.5625
    # "Epoch[0] Train-accuracy=0.671875", "Epoch[0] Time cost=140.990", "Epoch[0] Validation-accuracy=0.710788"
    epoch_acc = one(r, "train", "accuracy", 621)
    assert (epoch_acc["value"], epoch_acc["batch"], epoch_acc["epoch"]) == (0.671875, None, 0)
    assert one(r, "val", "accuracy", 621)["value"] == 0.710788
    assert one(r, "train", "time_cost", 621)["value"] == 140.99
    # "Update[3751]: Change learning rate to 1.00000e-03" after epoch 5, "Update[5001]: ... 1.00000e-04" after 7
    assert [(m["step"], m["value"]) for m in metrics(r, "train", "lr")] == [(6 * 621, 1e-3), (8 * 621, 1e-4)]
    # the last line: "Epoch[9] Validation-accuracy=0.948918"
    assert r[-1]["name"] == "accuracy" and r[-1]["phase"] == "val" and r[-1]["value"] == 0.948918
    assert r[-1]["step"] == 10 * 621
    assert [e["path"] for e in r if "event" in e][-1] == "models/img_cls-0010.params"


def test_05_gluoncv_classification():
    r = parse("05_gluoncv_imagenet_resnet50_v1b.log")
    # line 2: "Epoch[0] Batch [49]\tSpeed: 1934.811369 samples/sec\taccuracy=0.868184\tlr=0.003133"
    assert one(r, "train", "speed", 49)["value"] == 1934.811369
    assert one(r, "train", "accuracy", 49)["value"] == 0.868184
    assert one(r, "train", "lr", 49)["value"] == 0.003133
    # lines 27-29: "[Epoch 0] training: accuracy=0.744984", "[Epoch 0] speed: 4681 samples/sec\ttime cost: 283.533315",
    # "[Epoch 0] validation: err-top1=0.948103 err-top5=0.855469"
    acc = one(r, "train", "accuracy", 1250)
    assert (acc["value"], acc["epoch"], acc["batch"]) == (0.744984, 0, None)
    speed = one(r, "train", "speed", 1250)
    assert (speed["value"], speed["unit"], speed["batch"]) == (4681.0, "samples/s", None)
    assert one(r, "train", "time_cost", 1250)["value"] == 283.533315
    assert one(r, "val", "err-top1", 1250)["value"] == 0.948103
    assert one(r, "val", "err-top5", 1250)["value"] == 0.855469
    # the last line: "[Epoch 119] validation: err-top1=0.223374 err-top5=0.062161"
    assert one(r, "val", "err-top1", 120 * 1250)["value"] == 0.223374
    assert r[-1]["epoch"] == 119 and r[-1]["value"] == 0.062161


def test_06_gluoncv_detection_validation_block():
    r = parse("06_gluoncv_ssd_voc_detection.log")
    # line 3: "[Epoch 0][Batch 99], Speed: 92.447021 samples/sec, CrossEntropy=7.182524, SmoothL1=2.768559, accuracy=0.660349"
    assert one(r, "train", "speed", 99)["value"] == 92.447021
    assert one(r, "train", "CrossEntropy", 99)["value"] == 7.182524
    assert one(r, "train", "SmoothL1", 99)["value"] == 2.768559
    assert one(r, "train", "accuracy", 99)["value"] == 0.660349
    # line 8: "[Epoch 0] Training cost: 198.206915, CrossEntropy=5.215453, SmoothL1=2.205441, accuracy=0.732902"
    assert one(r, "train", "time_cost", 500)["value"] == 198.206915
    assert one(r, "train", "CrossEntropy", 500)["value"] == 5.215453
    # lines 9-30: "[Epoch 0] Validation:" then "aeroplane=0.080252" ... "train=0.079945" ... "mAP=0.114581"
    block = [m for m in r if m.get("phase") == "val" and m["epoch"] == 0]
    assert [m["name"] for m in block] == VOC
    assert {m["step"] for m in block} == {500} and {m["batch"] for m in block} == {None}
    assert block[0]["value"] == 0.080252 and block[-1]["value"] == 0.114581
    assert one(r, "val", "train", 500)["value"] == 0.079945  # a VOC class named "train", phase val
    # the log ends inside epoch 107: "[Epoch 107][Batch 199], ... accuracy=0.852971"
    last = metrics(r, "train", "accuracy")[-1]
    assert (last["step"], last["epoch"], last["batch"], last["value"]) == (107 * 500 + 199, 107, 199, 0.852971)
    assert metrics(r, "val", "mAP")[-1]["value"] == 0.750463


# -- hand-made lines -----------------------------------------------------------------------------
def test_prefixes_ansi_and_timestamps():
    p = MXNetLogParser()
    r = p.parse_line("2017-01-01 12:00:00,123 INFO Epoch[0] Batch [0-100]\tSpeed: 10.00 samples/sec\taccuracy=0.5")
    assert [(m["name"], m["batch"], m["step"]) for m in r] == [("speed", 100, 100), ("accuracy", 100, 100)]
    assert r[0]["ts"] == pytest.approx(1483272000.123)
    r = p.parse_line("2017-01-01 12:00:01,000 - train.py[line:42] - INFO: Epoch[0] Batch [100-200]\t"
                     "Speed: 11.00 samples/sec\tcross-entropy=2.3\ttop_k_accuracy_5=0.25")
    assert [(m["name"], m["value"]) for m in r] == [("speed", 11.0), ("cross-entropy", 2.3), ("top_k_accuracy_5", 0.25)]
    r = p.parse_line("\x1b[32mINFO\x1b[0m:root:Epoch[0] Validation-cross-entropy=\x1b[1m1.5\x1b[0m")
    assert [(m["phase"], m["name"], m["value"], m["batch"], m["step"]) for m in r] == [("val", "cross-entropy", 1.5, None, 201)]
    r = p.parse_line("INFO:root:Epoch[0] Train-accuracy=0.6,Train-top_k_accuracy_5=nan")
    assert [m["name"] for m in r] == ["accuracy", "top_k_accuracy_5"] and r[1]["value"] != r[1]["value"]


def test_validation_block_ends_at_the_first_other_line():
    p = MXNetLogParser()
    p.parse_line("[Epoch 3][Batch 9], Speed: 5.0 samples/sec, accuracy=0.1")
    assert p.parse_line("[Epoch 3] Validation:") == []
    assert [m["name"] for m in p.parse_line("cat=0.5")] == ["cat"]
    assert p.parse_line("") == []  # ends the block
    assert p.parse_line("dog=0.25") == []  # a bare pair outside a block is no metric
    assert p.parse_line("lr=0.1") == []


def test_step_keeps_increasing_when_the_epoch_or_batch_goes_back():
    p = MXNetLogParser()
    steps = []
    for text in ["Epoch[0] Batch [50]\taccuracy=0.1", "Epoch[0] Batch [99]\taccuracy=0.1",
                 "Epoch[1] Batch [50]\taccuracy=0.1",
                 "Epoch[0] Batch [50]\taccuracy=0.1",  # a restarted run appended to the log
                 "Epoch[0] Batch [10]\taccuracy=0.1"]:  # ... and again
        steps.append(p.parse_line(text)[0]["step"])
    assert steps == [50, 99, 150, 100 + 51 + 50, 100 + 51 + 51 + 10]


GARBAGE = ["", " ", "\x00\xff", "Epoch[", "Epoch[]", "Epoch[x] Batch [y]", "[Epoch ] Validation:",
           "Epoch[0] Batch [99999999999999999999999999]", "Epoch[99999999999999999999] Train-x=1",
           "Saved checkpoint to", 'Saved checkpoint to "', "Update[]: Change learning rate to x",
           "Epoch[0] Validation-accuracy=banana", "\x1b[", "\x1b[999999999999m",
           os.urandom(4096).decode("utf-8", "replace"),
           "Epoch[0] Batch [1]\t" + "a=1\t" * (2 << 20),
           "Epoch" * (2 << 20), "x" * (10 << 20), "[Epoch 1] Validation:" + " " * (10 << 20)]


def test_garbage_never_raises():
    p = MXNetLogParser()
    for text in GARBAGE:
        assert isinstance(p.parse_line(text), list)


def test_a_logger_suffix_naming_a_file_and_line_is_not_a_metric():
    p = MXNetLogParser()
    recs = p.parse_line("Epoch[0] Train-accuracy=0.845000 (base_module.py:558)")
    recs += p.parse_line("Epoch[0] Batch [0-2]\tSpeed: 100.0 samples/sec\taccuracy=0.5 [in /src/train.py:42]")
    # "base_module.py" = 558 and "src/train.py" = 42 were recorded as metrics.
    assert sorted({r["name"] for r in recs}) == ["accuracy", "speed"]


# Module.fit(eval_data=..., eval_batch_end_callback=Speedometer(8, 2)), as MXNet 1.9.1 printed it:
# the validation pass prints batch lines of the same epoch after its Train-/Time cost lines.
EVAL_BATCH_LOG = """\
INFO:root:Epoch[0] Batch [0-5]\tSpeed: 24291.92 samples/sec\taccuracy=0.531250
INFO:root:Epoch[0] Train-accuracy=0.493750
INFO:root:Epoch[0] Time cost=0.031
INFO:root:Saved checkpoint to "m-0001.params"
INFO:root:Epoch[0] Batch [0-2]\tSpeed: 23277.44 samples/sec\taccuracy=0.750000
INFO:root:Epoch[0] Batch [2-4]\tSpeed: 26204.16 samples/sec\taccuracy=0.562500
INFO:root:Epoch[0] Validation-accuracy=0.600000
INFO:root:Epoch[1] Batch [0-5]\tSpeed: 34854.51 samples/sec\taccuracy=0.458333
INFO:root:Epoch[1] Train-accuracy=0.500000
INFO:root:Epoch[1] Time cost=0.005
INFO:root:Saved checkpoint to "m-0002.params"
INFO:root:Epoch[1] Batch [0-2]\tSpeed: 26193.94 samples/sec\taccuracy=0.625000
INFO:root:Epoch[1] Batch [2-4]\tSpeed: 22512.20 samples/sec\taccuracy=0.437500
INFO:root:Epoch[1] Validation-accuracy=0.500000
INFO:root:Epoch[2] Batch [0-5]\tSpeed: 30000.00 samples/sec\taccuracy=0.5
"""


def test_eval_batch_lines_are_validation_at_the_step_the_epoch_ended():
    p = MXNetLogParser()
    recs = [r for line in EVAL_BATCH_LOG.splitlines() for r in p.parse_line(line) if "event" not in r]
    got = [(r["phase"], r["name"], r["epoch"], r["batch"], r["step"], r["value"]) for r in recs
           if r["batch"] is not None]
    assert got == [
        ("train", "speed", 0, 5, 5, 24291.92), ("train", "accuracy", 0, 5, 5, 0.53125),
        # were train records at steps 2 and 4, inside the epoch they scored
        ("val", "speed", 0, 2, 6, 23277.44), ("val", "accuracy", 0, 2, 6, 0.75),
        ("val", "speed", 0, 4, 6, 26204.16), ("val", "accuracy", 0, 4, 6, 0.5625),
        ("train", "speed", 1, 5, 11, 34854.51), ("train", "accuracy", 1, 5, 11, 0.458333),
        ("val", "speed", 1, 2, 12, 26193.94), ("val", "accuracy", 1, 2, 12, 0.625),
        ("val", "speed", 1, 4, 12, 22512.2), ("val", "accuracy", 1, 4, 12, 0.4375),
        # the validation batches did not move the training's step count
        ("train", "speed", 2, 5, 17, 30000.0), ("train", "accuracy", 2, 5, 17, 0.5),
    ]
    val = [(r["epoch"], r["step"], r["value"]) for r in recs if r["phase"] == "val" and r["batch"] is None]
    assert val == [(0, 6, 0.6), (1, 12, 0.5)]


def test_a_line_naming_the_epoch_before_its_batches_does_not_make_them_validation():
    p = MXNetLogParser()
    p.parse_line("INFO:root:Epoch[0] Batch [0-5]\tSpeed: 1.0 samples/sec\taccuracy=0.5")
    p.parse_line("INFO:root:Epoch[1] learning rate 0.1")  # a script's own line at an epoch's start
    recs = p.parse_line("INFO:root:Epoch[1] Batch [0-5]\tSpeed: 1.0 samples/sec\taccuracy=0.5")
    assert {r["phase"] for r in recs} == {"train"}
