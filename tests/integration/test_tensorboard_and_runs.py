"""TensorBoard event files, and `ava runs list|show --plot` on a real run."""

import struct

import pytest

from ava.cli import main
from ava.train import base as train

pytestmark = pytest.mark.integration


def read_scalars(logdir):
    """(tag, step, value) from tensorboardX event files, reading the TFRecord framing directly."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_tensorboard_sink_writes_scalars(ws, monkeypatch):
    monkeypatch.setenv("AVA_TENSORBOARD", "1")
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    ins = train.TrainInstance("tb", setup_logging=False)
    for i in range(5):
        ins.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    ins.log_metrics({"accuracy": 0.75}, step=4, phase="val")
    ins.done()
    scalars = read_scalars(ws.root / "run" / "tb" / "logs" / "tensorboard")
    assert [(t, s) for t, s, _ in scalars if t == "train/loss"] == [(f"train/loss", i) for i in range(5)]
    assert ("val/accuracy", 4, 0.75) in scalars


def test_tensorboard_tags_of_odd_names_are_legal_distinct_and_said_once(ws, monkeypatch, caplog):
    monkeypatch.setenv("AVA_TENSORBOARD", "1")
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    caplog.set_level("INFO")
    ins = train.TrainInstance("tbnames", setup_logging=False)
    for i in range(50):
        ins.log_metrics({"val acc": 0.5, "val_acc": 0.25, "=": 1.0, ",": 2.0}, step=i)
    ins.done()
    tags = {t for t, _, _ in read_scalars(ws.root / "run" / "tbnames" / "logs" / "tensorboard")}
    # tensorboardX alone merged these into train/val_acc and train/_, with a log line per record.
    assert tags == {"train/val_acc", "train/val_acc_2", "train/_", "train/__2"}
    said = [r.getMessage() for r in caplog.records]
    assert not any("is illegal" in m for m in said)
    assert sum("shown in TensorBoard as" in m for m in said) == 4  # each renamed name, once


def test_runs_show_gives_every_ranks_values_and_a_node_with_other_ranks_only(ws, monkeypatch, capsys):
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    for rank in (0, 1):
        ins = train.TrainInstance("two", workspace=ws.root, setup_logging=False, env={"RANK": str(rank), "WORLD_SIZE": "2"})
        ins.log_metrics({"loss": 1.0 + rank}, step=5)
        ins.done()
    assert main(["runs", "show", "two"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["RANK", "PHASE", "METRIC", "STEP", "LAST", "VALUE"]
    assert [line.split() for line in out[2:]] == [["0", "train", "loss", "5", "1"], ["1", "train", "loss", "5", "2"]]
    (ws.root / "run" / "two" / "logs" / "metrics.jsonl").unlink()  # a node that ran rank 1 alone
    assert main(["runs", "show", "two"]) == 0
    out = capsys.readouterr().out.splitlines()  # it showed an empty table
    assert [line.split() for line in out[2:]] == [["1", "train", "loss", "5", "2"]]


def test_runs_show_and_plot_keep_two_caffe_test_nets_apart(ws, monkeypatch, capsys, tmp_path):
    # One row "test accuracy 100 0.91" hid net 0, and the plot zig-zagged between the nets.
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    ins = train.TrainInstance("nets", setup_logging=False)
    for step, a0, a1 in ((0, 0.25, 0.29), (100, 0.93, 0.91)):
        ins.log_metrics({"accuracy": a0}, step=step, phase="test", net=0)
        ins.log_metrics({"accuracy": a1}, step=step, phase="test", net=1)
    ins.done()
    png = tmp_path / "nets.png"
    assert main(["runs", "show", "nets", "--plot", str(png)]) == 0
    shown = capsys.readouterr().out
    assert "test   accuracy       100   0.93" in shown and "test   net1/accuracy  100   0.91" in shown, shown
    assert "plotted 2 metrics" in shown


def test_runs_list_shows_a_run_killed_without_a_word_as_crashed(ws, monkeypatch, capsys):
    # It showed "running" with a duration growing for ever, until the id was opened again.
    import subprocess
    import sys

    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    code = (f"import os; from ava.train import base as train; "
            f"ins = train.TrainInstance('killed', workspace={str(ws.root)!r}, setup_logging=False); "
            f"ins.log_metrics({{'loss': 1.0}}, step=1); ins.flush_metrics(); os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    live = train.TrainInstance("alive", setup_logging=False)  # this process: still running
    try:
        assert main(["runs", "list"]) == 0
        rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
        assert rows["killed"][1] == "crashed" and rows["killed"][3] == "-"
        assert rows["alive"][1] == "running"
    finally:
        live.done()


def test_runs_list_show_and_plot(ws, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    ins = train.TrainInstance("curves", setup_logging=False)
    for i in range(50):
        ins.log_metrics({"loss": 2.0 / (i + 1), "lr": 0.1}, step=i, epoch=i // 10, batch=i % 10)
        if i % 10 == 9:
            ins.log_metrics({"loss": 1.5 / (i + 1), "accuracy": 0.5 + i / 100}, step=i, epoch=i // 10, phase="val")
    ins.log_metrics({"loss": float("nan")}, step=50, phase="test")
    ins.done()
    failed = train.TrainInstance("broken", setup_logging=False)
    failed.done(err_msg="boom")

    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "STATUS", "START", "DURATION", "LAST", "STEP", "LAST", "LOSS"]
    row = next(line.split() for line in out if line.startswith("curves"))
    assert row[1] == "done" and row[4] == "50" and row[5] == "0.04"
    assert next(line.split() for line in out if line.startswith("broken"))[1] == "failed"

    png = tmp_path / "out.png"
    assert main(["runs", "show", "curves", "--plot", str(png)]) == 0
    shown = capsys.readouterr().out
    assert "val    accuracy  49    0.99" in shown and "test   loss      50    nan" in shown
    assert "plotted 3 metrics" in shown
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    assert main(["runs", "show", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_runs_on_damaged_files_and_bad_arguments(ws, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    ins = train.TrainInstance("good", setup_logging=False)
    for i in range(5):
        ins.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    ins.done()
    metrics = ws.root / "run" / "good" / "logs" / "metrics.jsonl"
    with open(metrics, "a") as fh:  # what a damaged file can hold, between good records
        fh.write('[1, 2, 3]\n{"no": "name"}\nnot json at all\n{"name": "loss", "value": "abc", "step": 9}\n')
        fh.write('{"ts": 1.0, "step": 7, "epoch": null, "batch": null, "phase": "train", "name": "loss", '
                 '"value": 0.05, "rank": 0, "seq": 99}\n')
    for name, status in (("list", "[1, 2]"), ("text", '"done"'), ("torn", '{"status": "do')):
        (ws.root / "run" / name).mkdir(parents=True)
        (ws.root / "run" / name / "status.json").write_text(status)
    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    for name in ("list", "text", "torn"):
        assert next(line.split() for line in out if line.startswith(name))[1] == "unknown"
    assert next(line.split() for line in out if line.startswith("good"))[4] == "7"

    png = tmp_path / "curves"  # no suffix: written as curves.png, and said so
    assert main(["runs", "show", "good", "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert f"plotted 1 metrics to {png}.png" in captured.out and (tmp_path / "curves.png").stat().st_size > 1000
    assert "train  loss    7     0.05" in captured.out  # the last good record, past the damaged lines
    # show skips the three lines that are not records; the plot also the value that is not a number
    assert "skipped 3 line(s)" in captured.err and "skipped 4 line(s)" in captured.err
    assert captured.err.count("\n") == 2

    for args, said in ((["show", "..", ], "not usable as a directory name"),
                       (["show", "good", "--plot", str(tmp_path)], "is a directory"),
                       (["show", "good", "--plot", str(tmp_path / "no" / "x.png")], "does not exist"),
                       (["show", "good", "--plot", str(tmp_path / "x.xyz")], "cannot write .xyz files")):
        assert main(["runs", *args]) == 2, args
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (args, err)
    (ws.root / "run" / "empty").mkdir()
    assert main(["runs", "show", "empty", "--plot", str(tmp_path / "e.png")]) == 2
    assert "has no metrics to plot" in capsys.readouterr().err


def test_plot_and_the_reference_server_without_their_extras_say_what_to_install(ws, monkeypatch, capsys):
    import subprocess
    import sys

    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    train.TrainInstance("noplot", setup_logging=False).done()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without [plot]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["runs", "show", "noplot", "--plot", str(ws.root / "a.png")]) == 2  # was a traceback, exit 1
    assert "pip install 'ava-sdk[plot]'" in capsys.readouterr().err
    code = ("import sys, runpy; sys.modules['tornado'] = None; "
            "runpy.run_module('ava.platform_server', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == "ava.platform_server needs tornado: pip install 'ava-sdk[platform]'"
