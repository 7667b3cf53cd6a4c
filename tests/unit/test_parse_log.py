"""ava.parse_log: streaming reads, JSON lines, parse_log.py-style CSV, the parse-log command, and
a comparison with BVLC ``tools/extra/parse_log.py`` on the rows it gets right.

CSV expectations were counted on the logs with grep (e.g. 100 ``Train net output`` lines, one per
iteration, and 21 ``Testing net`` lines in 02) and read off the quoted lines; ``Seconds`` values
are differences of two glog times done by hand (02: ``11:58:39.623607 - 11:58:37.838096``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from ava import parse_log
from ava.monitor.caffe import CaffeLogParser
from ava.monitor.mxnet_log import MXNetLogParser
from ava.parse_log import iter_raw_lines, parse_file, write_csv, write_jsonl

TESTDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata"
CAFFE_LOGS = TESTDATA / "caffe_logs"
MXNET_LOGS = TESTDATA / "mxnet_logs"
YEAR = 2000
CONTRACT_KEYS = ["ts", "step", "epoch", "batch", "phase", "name", "value", "rank", "seq"]


def logs(folder: Path) -> list[Path]:
    found = sorted(folder.glob("*.log")) if folder.is_dir() else []
    if not found:
        pytest.skip(f"shared test data not present: {folder}")
    return found


def one_log(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    return path


def comparable(records: list[dict]) -> list[dict]:
    return [{**r, "value": "NaN"} if r.get("value") != r.get("value") else r for r in records]


def by_line(kind: str, path: Path) -> list[dict]:
    parser = CaffeLogParser(year=YEAR) if kind == "caffe" else MXNetLogParser()
    out: list[dict] = []
    for line in path.read_bytes().decode("utf-8", "replace").split("\n"):
        out += parser.parse_line(line)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- reading ----------------------------------------------------------------------------------
def test_lines_split_on_every_line_ending():
    data = b"a\nb\r\nc\rd\n\ne\r\r\nlast"
    assert list(iter_raw_lines(io.BytesIO(data))) == [b"a", b"b", b"c", b"d", b"", b"e", b"", b"last"]
    assert list(iter_raw_lines(io.BytesIO(b""))) == []
    assert list(iter_raw_lines(io.BytesIO(b"x\n"))) == [b"x"]


def test_long_lines_keep_their_head(monkeypatch):
    monkeypatch.setattr(parse_log, "_BLOCK", 7)
    data = b"short\n" + b"L" * 50 + b"\nafter\n" + b"M" * 30
    assert list(iter_raw_lines(io.BytesIO(data), max_line=10)) == [b"short", b"L" * 10, b"after", b"M" * 10]


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(-1 if size is None else size)
        return super().read(size)


def test_reads_in_blocks_never_the_whole_file():
    reader = CountingReader(b"line\n" * 1_000_000)
    assert sum(1 for _ in iter_raw_lines(reader)) == 1_000_000
    assert all(0 < size <= parse_log._BLOCK for size in reader.sizes)


@pytest.mark.parametrize("kind,folder", [("caffe", CAFFE_LOGS), ("mxnet", MXNET_LOGS)])
def test_parse_file_equals_line_by_line_parsing(kind, folder, monkeypatch):
    for path in logs(folder):
        expected = comparable(by_line(kind, path))
        assert comparable(list(parse_file(kind, path, year=YEAR))) == expected, path.name
        monkeypatch.setattr(parse_log, "_BLOCK", 4093)  # blocks end mid-line: carried over
        assert comparable(list(parse_file(kind, path, year=YEAR))) == expected, path.name
        monkeypatch.undo()


def test_crlf_and_cr_logs_parse_like_lf(tmp_path):
    path = one_log(CAFFE_LOGS, "02_bvlc2015_rmsprop_solvercpp.log")
    expected = comparable(list(parse_file("caffe", path, year=YEAR)))
    crlf = tmp_path / "crlf.log"
    crlf.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert comparable(list(parse_file("caffe", crlf, year=YEAR))) == expected
    cr = tmp_path / "cr.log"
    cr.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    assert comparable(list(parse_file("caffe", cr, year=YEAR))) == expected


def test_garbage_file_never_raises(tmp_path):
    path = tmp_path / "garbage.log"
    with open(path, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.write(b"\nI0101 00:00:00.000000 1 solver.cpp:1] Iteration 5, loss = 1\n\n\n")
        fh.write(b"x" * (3 << 20) + b"] Iteration 7, loss = 2\n")
        fh.write(b"\xff\xfe] Test net output #0: a = nan\n")
    for kind in ("caffe", "mxnet"):
        assert isinstance(list(parse_file(kind, path, year=YEAR)), list)
    assert [r["step"] for r in parse_file("caffe", path, year=YEAR) if "value" in r][:1] == [5]


def test_memory_is_flat_in_the_log_length(tmp_path):
    path = one_log(CAFFE_LOGS, "13_ssd2019_detection_eval_full.log")
    data = path.read_bytes()
    # 4.7 MB and 18.6 MB: blocks are 1 MiB, so both are many blocks long (a log of two blocks, one
    # of them short, peaked lower than any long log and made the ratio depend on test order).
    small, large = tmp_path / "x20.log", tmp_path / "x80.log"
    small.write_bytes(data * 20)
    large.write_bytes(data * 80)

    def peak(p: Path, fmt: str) -> int:
        tracemalloc.start()
        if fmt == "csv":
            write_csv(parse_file("caffe", p, year=YEAR), tmp_path / "csv", p.stem)
        else:
            with open(os.devnull, "w") as out:
                write_jsonl(parse_file("caffe", p, year=YEAR), out)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    for fmt in ("jsonl", "csv"):
        assert peak(large, fmt) < 1.5 * peak(small, fmt)


# -- JSON lines -------------------------------------------------------------------------------
def test_jsonl_keys_order_seq_and_non_finite_values():
    records = [
        {"ts": 1.0000004, "step": 1, "epoch": None, "batch": None, "phase": "train", "name": "loss",
         "value": float("nan"), "net": None, "unit": None},
        {"ts": None, "step": 2, "epoch": 0, "batch": 5, "phase": "train", "name": "speed",
         "value": float("inf"), "net": None, "unit": "samples/s"},
        {"ts": 3.5, "step": 3, "event": "snapshot", "path": "x_iter_3.caffemodel", "kind": "model"},
        {"ts": 4.0, "step": 3, "epoch": None, "batch": None, "phase": "test", "name": "acc",
         "value": -float("inf"), "net": 1, "unit": None},
        {"ts": 5.0, "step": None, "epoch": None, "batch": None, "phase": "val", "name": "x\"y",
         "value": 0.25, "net": None, "unit": None},
    ]
    out = io.StringIO()
    assert write_jsonl(iter(records), out) == 5
    lines = out.getvalue().splitlines()

    def strict(text: str) -> object:
        raise AssertionError(f"non-JSON constant {text}")

    objs = [json.loads(line, parse_constant=strict) for line in lines]
    assert list(objs[0]) == CONTRACT_KEYS
    assert objs[0]["value"] == "nan" and objs[0]["ts"] == 1.0 and objs[0]["rank"] is None
    assert list(objs[1]) == [*CONTRACT_KEYS, "unit"] and objs[1]["value"] == "inf"
    assert (objs[1]["epoch"], objs[1]["batch"]) == (0, 5)
    assert list(objs[2]) == ["ts", "step", "event", "path", "kind", "rank", "seq"]
    assert list(objs[3]) == [*CONTRACT_KEYS, "net"] and objs[3]["value"] == "-inf" and objs[3]["net"] == 1
    assert objs[4]["name"] == 'x"y' and objs[4]["step"] is None
    assert [o["seq"] for o in objs] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind,folder", [("caffe", CAFFE_LOGS), ("mxnet", MXNET_LOGS)])
def test_jsonl_of_every_log_is_strict_json(kind, folder):
    for path in logs(folder):
        records = list(parse_file(kind, path, year=YEAR))
        out = io.StringIO()
        write_jsonl(records, out)
        lines = out.getvalue().splitlines()
        assert len(lines) == len(records)
        for seq, (line, record) in enumerate(zip(lines, records)):
            obj = json.loads(line)
            assert obj["seq"] == seq and obj["step"] == record["step"]
            if "event" in record:
                assert obj["event"] == record["event"]
            elif record["value"] != record["value"]:
                assert obj["value"] == "nan"
            else:
                assert obj["value"] == record["value"] and obj["name"] == record["name"]


# -- CSV --------------------------------------------------------------------------------------
def caffe_csv(tmp_path: Path, name: str) -> tuple[list[dict], list[dict], list[str], list[str]]:
    path = one_log(CAFFE_LOGS, name)
    train, test = write_csv(parse_file("caffe", path, year=YEAR), tmp_path, path.stem,
                            skip_names={"smoothed_loss", "speed"})
    assert (train.name, test.name) == (f"{path.stem}.train.csv", f"{path.stem}.test.csv")
    headers = [p.read_text().splitlines()[0].split(",") for p in (train, test)]
    return read_csv(train), read_csv(test), headers[0], headers[1]


# name -> (train rows, test rows, train header, test header); rows from grep counts (module doc)
CSV_SHAPES = {
    "01_bvlc2014_trainnet_testscore.log": (1322, 26, [], ["score#0", "score#1"]),
    "02_bvlc2015_rmsprop_solvercpp.log": (100, 21, ["loss"], ["accuracy", "loss"]),
    "03_jin2015_googlenet_restore_diverge.log": (
        6, 1, ["loss1/loss1", "loss2/loss1", "loss3/loss3"],
        ["loss1/loss1", "loss1/top-1", "loss1/top-5", "loss2/loss1", "loss2/top-1", "loss2/top-5",
         "loss3/loss3", "loss3/top-1", "loss3/top-5"]),
    "06_ducha2016_crash_then_run_killed.log": (61, 1, ["loss"], ["accuracy", "loss"]),
    "09_bvlc2017_cpu_speedfield_short.log": (2, 0, ["loss"], []),
    "10_nvcaffe016_alexnet_fp16_8gpu.log": (286, 6, ["accuracy/top-1", "loss"],
                                            ["accuracy/top-1", "accuracy/top-5", "loss"]),
    "12_ssd2017_multigpu_nan.log": (34, 0, ["mbox_loss"], []),
    "13_ssd2019_detection_eval_full.log": (100, 20, ["mbox_loss"], ["detection_eval"]),
}


@pytest.mark.parametrize("name", sorted(CSV_SHAPES))
def test_csv_rows_and_columns(tmp_path, name):
    train, test, train_header, test_header = caffe_csv(tmp_path, name)
    n_train, n_test, train_cols, test_cols = CSV_SHAPES[name]
    assert (len(train), len(test)) == (n_train, n_test)
    assert train_header == ["NumIters", "Seconds", "LearningRate", *train_cols]
    assert test_header == ["NumIters", "Seconds", "LearningRate", *test_cols]
    for rows in (train, test):
        iters = [int(r["NumIters"]) for r in rows]
        assert iters == sorted(iters) and len(set(iters)) == len(iters)  # one row per iteration


def test_csv_02_values_learning_rate_and_seconds(tmp_path):
    train, test, _, _ = caffe_csv(tmp_path, "02_bvlc2015_rmsprop_solvercpp.log")
    # Solving at 11:58:37.838096 (line 499); "Train net output #0: loss = 2.30193" at 11:58:39.623607
    assert train[0] == {"NumIters": "0", "Seconds": "1.785511", "LearningRate": "0.01", "loss": "2.30193"}
    # line 509: "Iteration 100, lr = 0.00992565", printed after the outputs of iteration 100
    assert train[1]["LearningRate"] == "0.00992565" and train[1]["loss"] == "0.138344"
    assert train[-1]["NumIters"] == "9900" and train[-1]["LearningRate"] == "0.00596843"
    # the test at 0 (line 502, 11:58:39.608211) gets the lr printed for iteration 0 (line 506)
    assert test[0] == {"NumIters": "0", "Seconds": "1.770115", "LearningRate": "0.01",
                       "accuracy": "0.1453", "loss": "2.30211"}
    # the test at 500 (lines 519-521) gets "Iteration 500, lr = 0.00964069" (line 524)
    assert test[1]["LearningRate"] == "0.00964069"
    assert test[-1] == {**test[-1], "NumIters": "10000", "accuracy": "0.9909", "loss": "0.0279827"}


def test_csv_keeps_nan_single_tests_and_cut_rows(tmp_path):
    train, _, _, _ = caffe_csv(tmp_path / "12", "12_ssd2017_multigpu_nan.log")
    assert sum(r["mbox_loss"] == "nan" for r in train) == 17
    assert (train[1]["NumIters"], train[1]["mbox_loss"]) == ("150", "nan")  # line 5364
    _, test, _, _ = caffe_csv(tmp_path / "06", "06_ducha2016_crash_then_run_killed.log")
    assert test == [{"NumIters": "1000", "Seconds": test[0]["Seconds"], "LearningRate": "1.0",
                     "accuracy": "0.001", "loss": "6.91135"}]
    train, test, _, _ = caffe_csv(tmp_path / "10", "10_nvcaffe016_alexnet_fp16_8gpu.log")
    assert train[0]["NumIters"] == "2" and train[0]["LearningRate"] == ""  # no lr printed yet
    assert train[-1] == {**train[-1], "NumIters": "28500", "accuracy/top-1": "0.5", "loss": ""}
    assert test[0]["LearningRate"] == ""  # the test at 0 precedes every lr line


def test_csv_gives_each_test_net_its_own_columns(tmp_path):
    lines = [
        "I0216 11:58:37.838096 17497 solver.cpp:223] Solving LeNet",
        "I0216 11:58:37.838112 17497 solver.cpp:267] Iteration 0, Testing net (#0)",
        "I0216 11:58:39.608211 17497 solver.cpp:318]     Test net output #0: accuracy = 0.1453",
        "I0216 11:58:39.608212 17497 solver.cpp:267] Iteration 0, Testing net (#1)",
        "I0216 11:58:39.608213 17497 solver.cpp:318]     Test net output #0: accuracy = 0.2",
        "I0216 11:58:39.623637 17497 solver.cpp:707] Iteration 0, lr = 0.01",
        "I0216 11:58:52.016326 17497 solver.cpp:267] Iteration 500, Testing net (#0)",
        "I0216 11:58:53.804961 17497 solver.cpp:318]     Test net output #0: accuracy = 0.9745",
        "I0216 11:58:53.804962 17497 solver.cpp:267] Iteration 500, Testing net (#1)",
        "I0216 11:58:53.804963 17497 solver.cpp:318]     Test net output #0: accuracy = 0.97",
        "",
    ]
    log = tmp_path / "two.log"
    log.write_text("\n".join(lines))
    _, test_path = write_csv(parse_file("caffe", log, year=2015), tmp_path, "two")
    assert read_csv(test_path) == [
        {"NumIters": "0", "Seconds": "1.770115", "LearningRate": "0.01", "accuracy": "0.1453", "net1/accuracy": "0.2"},
        {"NumIters": "500", "Seconds": "15.966865", "LearningRate": "0.01", "accuracy": "0.9745", "net1/accuracy": "0.97"},
    ]


def test_csv_of_mxnet_logs(tmp_path):
    path = one_log(MXNET_LOGS, "02_mxnet_fitpy_module_train_summary.log")
    train_path, test_path = write_csv(parse_file("mxnet", path), tmp_path, path.stem)
    train, test = read_csv(train_path), read_csv(test_path)
    # 310 batch rows, 10 epoch rows (Train-accuracy, time cost), 2 lr-change rows at epoch ends
    # 5 and 7, which share the step of those epochs' summary rows
    assert len(train) == 310 + 10
    assert list(train[0]) == ["NumIters", "Seconds", "LearningRate", "speed", "accuracy", "time_cost"]
    assert train[0] == {"NumIters": "20", "Seconds": "", "LearningRate": "", "speed": "142.33",
                        "accuracy": "0.5625", "time_cost": ""}
    assert [r["NumIters"] for r in test] == [str(621 * e) for e in range(1, 11)]
    assert test[0]["accuracy"] == "0.710788"


# -- against BVLC parse_log.py ----------------------------------------------------------------
def bvlc_script() -> Path:
    cache = Path(os.environ.get("AVA_CAFFE_CACHE") or Path.home() / ".cache" / "ava-caffe")
    script = cache / "brocolli-caffe-9.0.2" / "tools" / "extra" / "parse_log.py"
    if not script.is_file():
        pytest.skip(f"BVLC parse_log.py not unpacked at {script}")
    return script


def run_bvlc(tmp_path: Path, log: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Copy parse_log.py (+ extract_seconds.py) to tmp_path, make its print a call, run it."""
    script = bvlc_script()
    for name in ("parse_log.py", "extract_seconds.py"):
        shutil.copy(script.parent / name, tmp_path / name)
    copy = tmp_path / "parse_log.py"
    copy.write_text(copy.read_text().replace("print 'Wrote %s' % output_filename",
                                             "print('Wrote %s' % output_filename)"))
    out = tmp_path / "bvlc"
    out.mkdir()
    res = subprocess.run([sys.executable, str(copy), str(log), str(out)], capture_output=True, text=True, timeout=120)
    return res, out


@pytest.mark.parametrize("name", ["02_bvlc2015_rmsprop_solvercpp.log", "03_jin2015_googlenet_restore_diverge.log",
                                  "06_ducha2016_crash_then_run_killed.log", "10_nvcaffe016_alexnet_fp16_8gpu.log",
                                  "12_ssd2017_multigpu_nan.log", "13_ssd2019_detection_eval_full.log"])
def test_rows_match_bvlc_parse_log_where_it_is_right(tmp_path, name):
    log = one_log(CAFFE_LOGS, name)
    res, bvlc_out = run_bvlc(tmp_path, log)
    assert res.returncode == 0, res.stderr
    ours = caffe_csv(tmp_path / "ours", name)
    compared = 0
    for suffix, our_rows in (("train", ours[0]), ("test", ours[1])):
        bvlc_file = bvlc_out / f"{log.name}.{suffix}"
        if not bvlc_file.exists():
            continue  # it wrote nothing: a lone test row (03, 06) is one of its bugs
        by_iter = {int(r["NumIters"]): r for r in our_rows}
        for row in read_csv(bvlc_file):
            mine = by_iter[int(float(row["NumIters"]))]
            assert float(mine["Seconds"]) == float(row["Seconds"])
            for column, value in row.items():
                if column not in ("NumIters", "Seconds", "LearningRate"):  # its lr lags a row: see module doc
                    assert float(mine[column]) == float(value), (suffix, row["NumIters"], column)
            compared += 1
    assert compared > 0


def test_bvlc_parse_log_bugs_we_do_not_have(tmp_path):
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    crash, _ = run_bvlc(tmp_path / "a", one_log(CAFFE_LOGS, "09_bvlc2017_cpu_speedfield_short.log"))
    assert crash.returncode != 0 and "IndexError" in crash.stderr  # the empty last line
    assert len(caffe_csv(tmp_path / "ours09", "09_bvlc2017_cpu_speedfield_short.log")[0]) == 2
    _, out = run_bvlc(tmp_path / "b", one_log(CAFFE_LOGS, "12_ssd2017_multigpu_nan.log"))
    assert len(read_csv(out / "12_ssd2017_multigpu_nan.log.train")) == 17  # 34 iterations: the nan rows are gone
    _, out = run_bvlc(tmp_path / "c", one_log(CAFFE_LOGS, "10_nvcaffe016_alexnet_fp16_8gpu.log"))
    assert len(read_csv(out / "10_nvcaffe016_alexnet_fp16_8gpu.log.train")) == 285  # 286: the cut last row is gone


# -- the command ------------------------------------------------------------------------------
def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ava")
    parse_log.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["parse-log", *argv])


def test_command_jsonl_to_stdout(capsys):
    path = one_log(CAFFE_LOGS, "09_bvlc2017_cpu_speedfield_short.log")
    args = command("caffe", str(path), "--year", "2017")
    assert args.func(args, None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9  # 2 x (speed, smoothed_loss, loss, lr) + the start event
    # line 253 "Solving LeNet", line 255 "Iteration 0 (-1.02432e-37 iter/s, ...), loss = 2.40473"
    assert json.loads(lines[0])["event"] == "start"
    assert [json.loads(line).get("name") for line in lines[1:5]] == ["speed", "smoothed_loss", "loss", "lr"]
    assert json.loads(lines[2])["value"] == 2.40473 and json.loads(lines[2])["seq"] == 2


def test_command_csv_and_jsonl_files(tmp_path, monkeypatch):
    path = one_log(CAFFE_LOGS, "13_ssd2019_detection_eval_full.log")
    out = tmp_path / "out"
    args = command("caffe", str(path), "--format", "csv", "--out", str(out))
    assert args.func(args, None) == 0
    assert len(read_csv(out / f"{path.stem}.test.csv")) == 20
    monkeypatch.chdir(tmp_path)  # csv without --out: the current directory
    args = command("caffe", str(path), "--format", "csv")
    assert args.func(args, None) == 0
    assert (tmp_path / f"{path.stem}.train.csv").is_file()
    args = command("mxnet", str(one_log(MXNET_LOGS, "02_mxnet_fitpy_module_train_summary.log")), "--out", str(out))
    assert args.func(args, None) == 0
    assert len((out / "02_mxnet_fitpy_module_train_summary.jsonl").read_text().splitlines()) == 662


def test_command_missing_file_exits_2_with_one_line(tmp_path, capsys):
    args = command("caffe", str(tmp_path / "nope.log"))
    assert args.func(args, None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.log" in err and "no such file" in err
    args = command("mxnet", str(tmp_path))
    assert args.func(args, None) == 2
    assert "directory" in capsys.readouterr().err


def test_command_on_a_log_without_records_says_so_and_still_writes_its_files(tmp_path, capsys):
    empty, other = tmp_path / "empty.log", tmp_path / "other.log"
    empty.write_bytes(b"")
    other.write_bytes(b"epoch 1 done\n\xff\xfe binary \x00 noise\n" * 100)
    for log, why in ((empty, "an empty file"), (other, "is it a caffe log?")):
        args = command("caffe", str(log), "--format", "csv", "--out", str(tmp_path / "csv"))
        assert args.func(args, None) == 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and log.name in err and "no caffe metrics or events" in err and why in err
        assert (tmp_path / "csv" / f"{log.stem}.train.csv").read_text() == "NumIters,Seconds,LearningRate\n"
    args = command("mxnet", str(other))
    assert args.func(args, None) == 0
    out = capsys.readouterr()
    assert out.out == "" and "is it a mxnet log?" in out.err
    log = tmp_path / "one.log"
    log.write_text("I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = 2.5\n")
    args = command("caffe", str(log), "--year", "2015")
    assert args.func(args, None) == 0
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\n") == 1 and '"seq":0' in out.out  # the first record is kept


def test_command_rejects_unknown_kind_and_format():
    with pytest.raises(SystemExit) as info:
        command("torch", "x.log")
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        command("caffe", "x.log", "--format", "xml")


@pytest.mark.parametrize("year", ["0", "-5", "10000", "twenty"])
def test_command_rejects_a_year_no_log_was_written_in(year, capsys):
    with pytest.raises(SystemExit) as info:
        command("caffe", "x.log", "--year", year)
    assert info.value.code == 2
    assert f"argument --year: '{year}' is not a year" in capsys.readouterr().err


def test_a_glog_line_after_a_run_of_nul_bytes_keeps_its_record():
    # What a crash can leave in a log: the file's tail zero-filled, then the restarted run's lines.
    lines = ["I0216 11:58:42.106645 17497 solver.cpp:189] Iteration 100, loss = 0.13",
             "\0" * 1000 + "I0216 11:58:42.106741 17497 solver.cpp:204]     Train net output #0: loss = 0.12 (* 1 = 0.12 loss)"]
    for parse in ("line", "block"):
        p = CaffeLogParser(year=2016)
        recs = ([r for ln in lines for r in p.parse_line(ln)] if parse == "line"
                else p.parse_block("\n".join(lines) + "\n"))
        assert [(r["name"], r["step"], r["value"]) for r in recs] == [("smoothed_loss", 100, 0.13), ("loss", 100, 0.12)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys, fmt):
    log = tmp_path / "one.log"
    log.write_text("I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = 2.5\n")
    (tmp_path / "afile").write_text("x")
    args = command("caffe", str(log), "--format", fmt, "--out", str(tmp_path / "afile"))
    assert args.func(args, None) == 2  # it was 1, with "[Errno 17] File exists"
    err = capsys.readouterr().err
    assert err.strip() == f"ava: parse-log: --out {tmp_path / 'afile'} is a file, not a directory"


def test_csv_of_an_mxnet_log_with_validation_batch_lines_has_one_test_row_an_epoch(tmp_path):
    from tests.unit.monitor.test_mxnet_log import EVAL_BATCH_LOG

    log = tmp_path / "fit.log"
    log.write_text(EVAL_BATCH_LOG)
    train_path, test_path = write_csv(parse_file("mxnet", log), tmp_path, "fit")
    assert [(r["NumIters"], r["accuracy"]) for r in read_csv(test_path)] == [("6", "0.6"), ("12", "0.5")]
    assert [r["NumIters"] for r in read_csv(train_path)] == ["5", "6", "11", "12", "17"]


@pytest.mark.parametrize("fmt, name", [("csv", "one.train.csv"), ("jsonl", "one.jsonl")])
def test_an_output_that_cannot_be_written_is_named_and_exits_2(tmp_path, capsys, fmt, name):
    log = tmp_path / "one.log"
    log.write_text("I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = 2.5\n")
    (tmp_path / "out" / name).mkdir(parents=True)  # a folder where the output file goes
    args = command("caffe", str(log), "--format", fmt, "--out", str(tmp_path / "out"))
    assert args.func(args, None) == 2  # was 1 with "ava: parse-log: Is a directory"
    assert capsys.readouterr().err.strip() == f"ava: parse-log: {tmp_path / 'out' / name}: Is a directory"
