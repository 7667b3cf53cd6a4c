"""`ava run`: a command inside a training instance, status from its exit code."""

import json
import subprocess
import textwrap
import sys

import pytest

from ava.metrics.sinks.jsonl import iter_records


def ava_run(ws, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ava", "run", *args], capture_output=True, text=True, errors="replace",
                          timeout=timeout, env={**__import__("os").environ, "AVA_WORKSPACE": str(ws.root)})


def status(ws, run_id):
    return json.loads((ws.root / "run" / run_id / "status.json").read_text())


def test_regex_metrics_and_exit_code(ws):
    script = 'for i in 1 2 3; do echo "step $i acc=0.$i"; echo "loss $i" >&2; done'
    out = ava_run(ws, "--id", "rx", "--metric", r"acc=step (?P<step>\d+) acc=([0-9.]+)", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "step 3 acc=0.3" in out.stdout and "loss 3" in out.stderr
    recs = list(iter_records(ws.root / "run" / "rx" / "logs" / "metrics.jsonl"))
    assert [(r["name"], r["step"], r["value"]) for r in recs] == [("acc", 1, 0.1), ("acc", 2, 0.2), ("acc", 3, 0.3)]
    assert status(ws, "rx")["status"] == "done" and status(ws, "rx")["exit_code"] == 0
    run_log = (ws.root / "run" / "rx" / "logs" / "run.log").read_text()
    assert "step 2 acc=0.2" in run_log and "loss 2" in run_log


def test_regex_metrics_without_a_step_group_are_counted_and_can_be_plotted(ws, tmp_path):
    pytest.importorskip("matplotlib")
    out = ava_run(ws, "--id", "rxn", "--metric", r"loss=loss=([\d.]+)", "--", "sh", "-c", "echo loss=1.0; echo loss=0.5")
    assert out.returncode == 0, out.stderr
    recs = list(iter_records(ws.root / "run" / "rxn" / "logs" / "metrics.jsonl"))
    assert [(r["step"], r["value"]) for r in recs if r.get("name") == "loss"] == [(0, 1.0), (1, 0.5)]  # steps were null
    shown = subprocess.run([sys.executable, "-m", "ava", "runs", "show", "rxn", "--plot", str(tmp_path / "p.png")],
                           capture_output=True, text=True, env={**__import__("os").environ, "AVA_WORKSPACE": str(ws.root)})
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_failure_sets_failed_with_the_last_error_lines_and_passes_the_code(ws):
    out = ava_run(ws, "--id", "bad", "--", sh := "sh", "-c", "echo working; echo 'Error: CUDA out of memory' >&2; exit 7")
    assert out.returncode == 7
    doc = status(ws, "bad")
    assert doc["status"] == "failed" and doc["exit_code"] == 7
    assert doc["err_msg"].startswith("sh exited with code 7") and "CUDA out of memory" in doc["err_msg"]


def test_missing_command_is_127_and_failed(ws):
    out = ava_run(ws, "--id", "nocmd", "--", "no-such-command-here")
    assert out.returncode == 127
    assert "command not found: no-such-command-here" in out.stderr
    doc = status(ws, "nocmd")
    assert doc["status"] == "failed"
    # the reason in the status too, not only "exited with code 127"
    assert doc["err_msg"] == "no-such-command-here exited with code 127: command not found: no-such-command-here"


def test_killed_child_reports_the_signal(ws):
    out = ava_run(ws, "--id", "killed", "--", "sh", "-c", "kill -9 $$")
    assert out.returncode == 137
    assert "killed by signal 9 (SIGKILL)" in status(ws, "killed")["err_msg"]


def test_an_exit_code_above_128_is_an_exit_not_a_signal(ws):
    out = ava_run(ws, "--id", "x255", "--", "sh", "-c", "echo 'Error: boom' >&2; exit 255")
    assert out.returncode == 255
    doc = status(ws, "x255")
    assert doc["err_msg"].startswith("sh exited with code 255: ") and "signal" not in doc["err_msg"]
    assert doc["exit_code"] == 255 and doc["status"] == "failed"


@pytest.mark.parametrize("args, message", [
    ([], "nothing to run"),
    (["--metric", "noequals", "--", "true"], "noequals"),
    (["--metric", "x=([", "--", "true"], "x=(["),
    (["--id", "../x", "--", "true"], "'../x' is not usable as a directory name"),
    (["--id", "a/b", "--", "true"], "'a/b' is not usable as a directory name"),
])
def test_bad_usage_exits_2_with_one_line(ws, args, message):
    out = ava_run(ws, *args)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("folder", ["status.json", "logs/run.log"])
def test_a_folder_where_a_run_file_should_be_is_one_line_naming_it(ws, folder):
    (ws.root / "run" / "odd" / folder).mkdir(parents=True)  # was a traceback, exit 1
    out = ava_run(ws, "--id", "odd", "--", "true")
    assert out.returncode == 2
    assert out.stderr.strip() == f"ava: {ws.root / 'run' / 'odd' / folder}: Is a directory"


def test_binary_garbage_and_a_huge_line_do_not_break_it(ws):
    code = "import os,sys; sys.stdout.buffer.write(os.urandom(200000) + b'\\n' + b'x' * (10 << 20)); print('acc=0.5')"
    out = ava_run(ws, "--id", "garbage", "--metric", "acc=acc=([0-9.]+)", "--", sys.executable, "-c", code)
    assert out.returncode == 0
    assert [r["value"] for r in iter_records(ws.root / "run" / "garbage" / "logs" / "metrics.jsonl")] == [0.5]


def test_records_of_one_line_are_grouped_without_losing_any():
    from ava.monitor.hooks import LogMetricsHook

    calls = []

    class Ins:
        def log_metrics(self, metrics, step=None, epoch=None, batch=None, phase="train", **kw):
            calls.append((dict(metrics), step, phase, kw.get("units")))

        def log_event(self, event, step=None, **details):
            calls.append((event, step))

    class Parser:
        def parse_line(self, line):
            return [
                {"step": 1, "phase": "train", "name": "loss", "value": 1.0},
                {"step": 1, "phase": "train", "name": "speed", "value": 2.0, "unit": "iter/s"},
                {"step": 1, "phase": "train", "name": "loss", "value": 3.0},
                {"step": 1, "event": "snapshot", "path": "/x"},
                {"step": 2, "phase": "test", "name": "acc", "value": 0.5},
            ]

    LogMetricsHook(Ins(), Parser())("line")
    assert calls == [({"loss": 1.0, "speed": 2.0}, 1, "train", {"speed": "iter/s"}), ({"loss": 3.0}, 1, "train", None),
                     ("snapshot", 1), ({"acc": 0.5}, 2, "test", None)]


def test_a_snapshot_file_that_is_a_directory_is_a_usage_error_before_anything_runs(ws, tmp_path):
    folder = tmp_path / "deploy"
    folder.mkdir()
    out = ava_run(ws, "--id", "sfdir", "--parser", "caffe", "--snapshot-file", str(folder), "--", "echo", "hi")
    # It was accepted; the first snapshot then raised inside the parser hook, which was disabled:
    # the rest of the log's metrics were lost and the run still said "done".
    assert out.returncode == 2 and "is a directory" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (ws.root / "run" / "sfdir").exists()


def test_a_snapshot_that_cannot_be_taken_fails_alone_and_the_log_goes_on(ws, tmp_path):
    from ava.monitor.caffe import CaffeLogParser
    from ava.monitor.hooks import LogMetricsHook, SnapshotHook
    from ava.train import base as train

    ins = train.TrainInstance("snapfail", workspace=ws.root, setup_logging=False)
    snapshots = SnapshotHook(ins)
    hook = LogMetricsHook(ins, CaffeLogParser(year=2016), snapshots=snapshots)
    weird = tmp_path / "lenet_iter_100.caffemodel"
    weird.mkdir()  # something made a folder where Caffe's snapshot file should be
    lines = ["I0124 12:20:27.016808 11911 solver.cpp:228] Iteration 100, loss = 0.5",
             f"I0124 12:20:27.100000 11911 solver.cpp:454] Snapshotting to binary proto file {weird}",
             "I0124 12:20:28.016808 11911 solver.cpp:228] Iteration 200, loss = 0.25"]
    for line in lines:
        hook(line)
    snapshots.flush()
    ins.done()
    recs = list(iter_records(ins.metrics_path))
    assert [r["value"] for r in recs if r.get("name") == "smoothed_loss"] == [0.5, 0.25]
    assert any(r.get("event") == "snapshot_failed" for r in recs)


def test_the_caffe_epoch_end_callback_takes_one_other_file_alone_and_refuses_two_of_one_name(ws, tmp_path):
    from ava.errors import UsageError
    from ava.train import base as train

    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text("name: 'lenet'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deploy.prototxt").write_text("name: 'other'\n")
    ins = train.TrainInstance("caffe-other", workspace=ws.root, setup_logging=False)
    with pytest.raises(UsageError, match="two files with the same name"):  # every snapshot failed later
        ins.get_epoch_end_callback("caffe", batch_of_epoch=100, other_files=[deploy, tmp_path / "sub" / "deploy.prototxt"])
    hook = ins.get_epoch_end_callback("caffe", batch_of_epoch=100, other_files=str(deploy))  # was split into characters
    model, state = tmp_path / "lenet_iter_100.caffemodel", tmp_path / "lenet_iter_100.solverstate"
    model.write_bytes(b"m")
    state.write_bytes(b"s")
    hook(f"I0124 12:20:27.100000 11911 solver.cpp:454] Snapshotting to binary proto file {model}")
    hook(f"I0124 12:20:27.200000 11911 sgd_solver.cpp:273] Snapshotting solver state to binary proto file {state}")
    ins.done()
    stored = ws.root / "storage" / "caffe-other" / "snapshots" / "iter-00000100"
    assert sorted(p.name for p in stored.iterdir() if p.name != "MANIFEST.json") == [
        "deploy.prototxt", "lenet_iter_100.caffemodel", "lenet_iter_100.solverstate"]


def test_a_command_that_ignores_sigterm_is_killed_after_the_preemption_timeout(ws):
    import os
    import signal

    from tests.unit.utils.test_cmd import signalled

    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('ready', flush=True); time.sleep(600)")
    # it waited for the child for ever (until the platform's SIGKILL)
    run = signalled([sys.executable, "-m", "ava", "run", "--id", "ign", "--", sys.executable, "-c", child],
                    signal.SIGTERM, timeout=60,
                    env={**os.environ, "AVA_WORKSPACE": str(ws.root), "AVA_PREEMPT_TIMEOUT": "1"})
    err = run.err.decode(errors="replace")
    assert run.code == 143, err[-2000:]
    assert "did not stop within 1 s of SIGTERM" in err and "killing it" in err
    assert status(ws, "ign")["status"] == "preempted"


def test_a_missing_snapshot_file_is_a_usage_error(ws, tmp_path):
    out = ava_run(ws, "--id", "sfmiss", "--parser", "mxnet", "--snapshot-file", str(tmp_path / "labels.txt"),
                  "--", "echo", "hi")
    # It was accepted, and every snapshot then waited for it: none confirmed, done() used its budget.
    assert out.returncode == 2 and "labels.txt: no such file" in out.stderr, out.stderr


def test_the_error_text_of_a_failed_run_is_its_error_not_lines_that_start_with_e(ws):
    script = ("for i in 0 1 2; do echo \"Epoch[$i] Train-accuracy=0.$i\"; done; "
              "echo 'out of disk space writing /data/model-0003.params, aborting' >&2; exit 1")
    out = ava_run(ws, "--id", "errtxt", "--", "sh", "-c", script)
    assert out.returncode == 1
    err_msg = status(ws, "errtxt")["err_msg"]
    # "Epoch[...]" lines were taken for glog's E lines and filled err_msg, without the error.
    assert err_msg.endswith("out of disk space writing /data/model-0003.params, aborting"), err_msg


def test_the_caffe_hooks_take_bytes_lines_as_a_read_loop_of_the_old_sdk_gives_them(ws, tmp_path):
    from ava.train import base as train

    ins = train.TrainInstance("caffe-bytes", workspace=ws.root, setup_logging=False)
    monitor = ins.get_monitor_callback("caffe")
    snapshots = ins.get_epoch_end_callback("caffe", batch_of_epoch=100)
    model, state = tmp_path / "lenet_iter_100.caffemodel", tmp_path / "lenet_iter_100.solverstate"
    model.write_bytes(b"m")
    state.write_bytes(b"s")
    for line in [b"I0124 12:20:27.016808 11911 solver.cpp:228] Iteration 100, loss = 0.5\n",
                 f"I0124 12:20:27.100000 11911 solver.cpp:454] Snapshotting to binary proto file {model}\n".encode(),
                 f"I0124 12:20:27.2 11911 sgd_solver.cpp:273] Snapshotting solver state to binary proto file {state}\n"
                 .encode()]:
        monitor(line)  # TypeError: cannot use a string pattern on a bytes-like object
        snapshots(line)
    ins.done()
    recs = list(iter_records(ins.metrics_path))
    assert [(r["step"], r["value"]) for r in recs if r.get("name") == "smoothed_loss"] == [(100, 0.5)]
    assert (ws.root / "storage" / "caffe-bytes" / "snapshots" / "iter-00000100" / "lenet_iter_100.solverstate").is_file()


# A guide-style script (it opens its own TrainInstance) run by `ava run`: it joins ava run's instance.
JOINING = """
import os, sys, time
from ava.train import base as train
ins = train.TrainInstance()
print("child", type(ins).__name__, ins.get_training_ins_id(), flush=True)
for step in range(3):
    ins.log_metrics({"loss": 1.0 / (step + 1)}, step=step, epoch=0, batch=step)
path = os.path.join(ins.get_snapshot_base_path(), "model.bin")
with open(path, "wb") as fh:
    fh.write(b"weights")
ins.save_snapshot([path], "epoch-0001", {"epoch": 0}, step=3)
mode = sys.argv[1]
if mode == "raise":
    raise RuntimeError("loss diverged")
if mode == "wait":
    print("ready", flush=True)
    while not ins.should_stop():
        time.sleep(0.02)
    ins.log_metrics({"loss": 0.1}, step=4)
    ins.exit_preempted()
ins.done(err_msg="" if mode == "ok" else mode)
"""


@pytest.mark.parametrize("how", ["--id", "env"])
def test_a_script_that_opens_its_own_instance_joins_the_one_ava_run_holds(ws, tmp_path, how):
    # Before: with --id the script opened a second instance under a new id (its metrics and
    # snapshots elsewhere); with the platform's AVA_TRAINING_INSTANCE_ID it died on the lock.
    script = tmp_path / "train.py"
    script.write_text(JOINING)
    args = ["--id", "joined"] if how == "--id" else []
    extra = {} if how == "--id" else {"AVA_TRAINING_INSTANCE_ID": "joined"}
    out = subprocess.run([sys.executable, "-m", "ava", "run", *args, "--", sys.executable, str(script), "ok"],
                         capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "AVA_WORKSPACE": str(ws.root), **extra})
    assert out.returncode == 0, out.stderr
    assert "child AttachedInstance joined" in out.stdout
    assert sorted(p.name for p in (ws.root / "run").iterdir()) == ["joined"]
    recs = list(iter_records(ws.root / "run" / "joined" / "logs" / "metrics.jsonl"))
    assert [(r["step"], r["value"]) for r in recs if r.get("name") == "loss"] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert [r["snapshot"] for r in recs if r.get("event") == "snapshot"] == ["epoch-0001"]
    stored = ws.root / "storage" / "joined" / "snapshots"
    assert (stored / "epoch-0001" / "model.bin").read_bytes() == b"weights"
    assert (stored / "LATEST").read_text() == "epoch-0001"
    assert status(ws, "joined")["status"] == "done"
    run_log = (ws.root / "run" / "joined" / "logs" / "run.log").read_text()
    assert run_log.count("training instance joined joined") == 1  # the script's log line, once (no second writer)


@pytest.mark.parametrize("mode, code, err", [
    ("raise", 1, "RuntimeError: loss diverged"),  # the script's own error text, not only the tail
    ("nan loss at step 3", 0, "nan loss at step 3"),  # done(err_msg=...) and exit 0: still failed
])
def test_a_joined_script_that_fails_fails_the_run_with_its_error(ws, tmp_path, mode, code, err):
    script = tmp_path / "train.py"
    script.write_text(JOINING)
    out = ava_run(ws, "--id", "jfail", "--", sys.executable, str(script), mode)
    assert out.returncode == code, out.stderr
    doc = status(ws, "jfail")
    assert doc["status"] == "failed" and err in doc["err_msg"], doc


def test_a_joined_script_stopped_by_sigterm_leaves_the_run_preempted(ws, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(JOINING)
    from tests.unit.utils.test_cmd import signalled

    run = signalled([sys.executable, "-m", "ava", "run", "--id", "jstop", "--", sys.executable, str(script), "wait"],
                    __import__("signal").SIGTERM, timeout=60,
                    env={**__import__("os").environ, "AVA_WORKSPACE": str(ws.root)})
    assert run.code == 143, run.err
    assert status(ws, "jstop")["status"] == "preempted"
    recs = list(iter_records(ws.root / "run" / "jstop" / "logs" / "metrics.jsonl"))
    assert [r["step"] for r in recs if r.get("name") == "loss"] == [0, 1, 2, 4]  # the step after the stop too


def test_snapshot_paths_the_command_prints_relative_to_its_own_directory_are_found(ws, tmp_path):
    # Caffe prints the snapshot_prefix as given: relative to where it runs. They were looked
    # for relative to ava run's directory, never found, and the run still ended done.
    work = tmp_path / "job"
    work.mkdir()
    script = (f"cd {work} && mkdir -p snaps && printf m > snaps/lenet_iter_50.caffemodel && "
              "printf s > snaps/lenet_iter_50.solverstate && "
              "echo 'I0124 12:20:27.100000 1 solver.cpp:454] Snapshotting to binary proto file "
              "snaps/lenet_iter_50.caffemodel' && "
              "echo 'I0124 12:20:27.200000 1 sgd_solver.cpp:273] Snapshotting solver state to binary proto file "
              "snaps/lenet_iter_50.solverstate' && sleep 1")
    out = ava_run(ws, "--parser", "caffe", "--id", "relsnap", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "do not exist" not in out.stderr, out.stderr
    stored = ws.root / "storage" / "relsnap" / "snapshots" / "iter-00000050"
    assert (stored / "lenet_iter_50.caffemodel").read_bytes() == b"m"
    assert (stored / "lenet_iter_50.solverstate").read_bytes() == b"s"


def test_counted_regex_steps_go_on_when_the_instance_runs_again(ws):
    for _ in range(2):  # steps were 0, 1, 2 and again 0, 1, 2 within one instance
        out = ava_run(ws, "--id", "cnt", "--metric", r"loss=loss: ([0-9.]+)", "--", "sh", "-c",
                      "for i in 1 2 3; do echo loss: 0.$i; done")
        assert out.returncode == 0, out.stderr
    recs = list(iter_records(ws.root / "run" / "cnt" / "logs" / "metrics.jsonl"))
    assert [r["step"] for r in recs if r.get("name") == "loss"] == [0, 1, 2, 3, 4, 5]


def test_sighup_to_ava_run_stops_the_command_and_the_run_is_preempted(ws):
    # The terminal or ssh session closing: ava run died of it, the command ran on unwatched and
    # the status stayed "running".
    from tests.unit.utils.test_cmd import signalled

    run = signalled([sys.executable, "-m", "ava", "run", "--id", "hup", "--", "sh", "-c",
                     "trap 'echo got HUP; exit 0' HUP; echo ready; while :; do sleep 0.05; done"],
                    __import__("signal").SIGHUP, timeout=60,
                    env={**__import__("os").environ, "AVA_WORKSPACE": str(ws.root)})
    assert b"got HUP" in run.out and run.code == 129, run.err
    doc = status(ws, "hup")
    assert doc["status"] == "preempted" and doc["exit_code"] == 129 and "SIGHUP" in doc["err_msg"]


def test_snapshot_paths_of_a_command_started_elsewhere_that_exits_at_once_are_found(ws, tmp_path):
    # runproc(..., cwd=...) and a command that prints its snapshot and exits before /proc is read
    from ava.monitor.caffe import CaffeLogParser
    from ava.monitor.hooks import SnapshotHook
    from ava.train import base as train
    from ava.utils import cmd

    work = tmp_path / "job"
    (work / "snaps").mkdir(parents=True)
    (work / "snaps" / "m_iter_5.caffemodel").write_bytes(b"m")
    (work / "snaps" / "m_iter_5.solverstate").write_bytes(b"s")
    ins = train.TrainInstance("cwdsnap", workspace=ws.root, setup_logging=False)
    hook = SnapshotHook(ins, CaffeLogParser(year=2016))
    code = cmd.runproc(["sh", "-c", "echo 'I0124 12:20:27.1 1 solver.cpp:454] Snapshotting to binary proto file "
                        "snaps/m_iter_5.caffemodel'; echo 'I0124 12:20:27.2 1 sgd_solver.cpp:273] Snapshotting solver "
                        "state to binary proto file snaps/m_iter_5.solverstate'"], hook, cwd=work, echo=False)
    assert code == 0
    ins.done()
    stored = ws.root / "storage" / "cwdsnap" / "snapshots" / "iter-00000005"
    assert (stored / "m_iter_5.solverstate").read_bytes() == b"s"


def test_a_joined_script_under_a_log_parser_is_recorded_once(ws, tmp_path):
    # --parser mxnet also read the script's own log lines: every epoch value twice (the parser's
    # at step 0) and every snapshot uploaded twice.
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import logging, os
        from ava.train import base as train
        logging.basicConfig(level=logging.INFO)
        ins = train.TrainInstance()
        for epoch in range(2):
            logging.info("Epoch[%d] Train-accuracy=%f", epoch, 0.5 + epoch / 10)
            ins.log_metrics({"accuracy": 0.5 + epoch / 10}, step=10 * (epoch + 1), epoch=epoch)
        ins.done()
    """))
    out = ava_run(ws, "--parser", "mxnet", "--id", "once", "--", sys.executable, str(script))
    assert out.returncode == 0, out.stderr
    recs = list(iter_records(ws.root / "run" / "once" / "logs" / "metrics.jsonl"))
    assert [(r["step"], r["value"]) for r in recs if r.get("name") == "accuracy"] == [(10, 0.5), (20, 0.6)]
    assert "what it records is taken" in out.stderr


def test_a_joined_script_that_exits_3_without_done_has_no_log_lines_of_ava_as_its_error(ws, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nfrom ava.train import base as train\nins = train.TrainInstance()\n"
                      "print('epoch 1: data file corrupt')\nsys.exit(3)\n")
    out = ava_run(ws, "--id", "ex3", "--", sys.executable, str(script))
    assert out.returncode == 3
    doc = status(ws, "ex3")
    # was the script's last log lines: "... marking it done", "training instance ex3 done ..."
    assert doc["status"] == "failed" and doc["err_msg"].endswith("exited with code 3: epoch 1: data file corrupt"), doc
