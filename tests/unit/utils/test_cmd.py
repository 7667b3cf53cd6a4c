"""`ava.utils.cmd` against real child processes, and its line splitter against a reference."""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from ava.errors import UsageError
from ava.log.logger import close_logger, initialize_logger
from ava.utils import cmd
from ava.utils._lines import LineSplitter

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def run(args, **kw) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = cmd.runproc(args, log_hook=lines.append, echo=False, **kw)
    return code, lines


def reference_lines(data: bytes, cap: int) -> list[str]:
    """What the splitter must produce for ``data``, however it is chunked."""
    parts = re.split(rb"\r\n|\r|\n", data)
    tail = parts.pop()
    out = []
    for line in parts + ([tail] if tail else []):
        while len(line) > cap:
            cut = next((k for k in (cap, cap - 1, cap - 2, cap - 3) if line[k] & 0xC0 != 0x80), cap)
            out.append(line[:cut].decode("utf-8", "replace"))
            line = line[cut:]
        out.append(line.decode("utf-8", "replace"))
    return out


def random_output(rng: random.Random, size: int) -> bytes:
    atoms = [b"a", b"loss 0.5", b"\n", b"\r", b"\r\n", "é".encode(), "€".encode(), "😀".encode(),
             b"\xff", b"\x80", b"\xe2\x82", b"\x00", b"x" * 50]
    out = bytearray()
    while len(out) < size:
        out += b"y" * rng.randrange(200) if rng.random() < 0.05 else rng.choice(atoms)
    return bytes(out)


# -- the splitter ---------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [16, 37, 1000])
def test_splitter_matches_the_reference_for_any_chunking(cap):
    rng = random.Random(cap)
    for _ in range(200):
        data = random_output(rng, rng.randrange(1, 3000))
        s = LineSplitter(max_line=cap, read_size=rng.choice([1, 7, 64, 4096]))
        got: list[str] = []
        at = 0
        while at < len(data):
            step = rng.randrange(1, 300)
            got += s.feed(data[at : at + step])
            at += step
        got += s.finish()
        assert got == reference_lines(data, cap)


def test_splitter_joins_cr_and_lf_split_across_chunks():
    s = LineSplitter()
    assert s.feed(b"10%\r20%\r") == ["10%", "20%"]
    assert s.feed(b"\nnext\n\r") == ["next", ""]
    assert s.feed(b"\r\n") == [""]
    assert s.finish() == []


def test_splitter_keeps_a_character_cut_between_chunks_whole():
    data = "température 😀\n".encode()
    s = LineSplitter()
    got = []
    for i in range(len(data)):
        got += s.feed(data[i : i + 1])
    assert got == ["température 😀"]


def test_splitter_cuts_long_lines_at_character_boundaries():
    s = LineSplitter(max_line=16)
    got = s.feed(("€" * 20 + "\n").encode())  # 60 bytes; 3 bytes a character
    assert got == ["€" * 5] * 4
    assert s.feed(b"z" * 17) == ["z" * 16]
    assert s.finish() == ["z"]


def test_splitter_rejects_a_tiny_cap():
    with pytest.raises(ValueError):
        LineSplitter(max_line=3)


# -- reading a child ------------------------------------------------------------------------


def test_lines_of_each_stream_arrive_in_order():
    code, lines = run(py("""
        import sys
        for i in range(2000):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
    """))
    assert code == 0
    assert [x for x in lines if x.startswith("out")] == [f"out {i}" for i in range(2000)]
    assert [x for x in lines if x.startswith("err")] == [f"err {i}" for i in range(2000)]


@pytest.mark.timeout(60)
def test_megabytes_on_stderr_only_do_not_deadlock():
    code, lines = run(py("""
        import sys
        line = b"e" * 99 + b"\\n"
        for _ in range(80):
            sys.stderr.buffer.write(line * 1000)  # 8 MB in all, nothing on stdout
        sys.stderr.flush()
        print("done")
    """))
    assert code == 0
    assert lines.count("e" * 99) == 80_000
    assert lines[-1] == "done"


@pytest.mark.timeout(60)
def test_blocks_larger_than_a_pipe_alternating_between_streams_do_not_deadlock():
    code, lines = run(py("""
        import sys
        for block in range(8):
            tag, f = ("out", sys.stdout) if block % 2 == 0 else ("err", sys.stderr)
            f.write("".join(f"{tag} {i:08d} " + "x" * 1000 + "\\n" for i in range(block * 2000, block * 2000 + 2000)))
            f.flush()  # 2 MB a block: more than a grown pipe holds
    """))
    assert code == 0
    outs = [int(x.split()[1]) for x in lines if x.startswith("out")]
    errs = [int(x.split()[1]) for x in lines if x.startswith("err")]
    assert outs == [i for b in (0, 2, 4, 6) for i in range(b * 2000, b * 2000 + 2000)]
    assert errs == [i for b in (1, 3, 5, 7) for i in range(b * 2000, b * 2000 + 2000)]


def test_carriage_returns_split_progress_bars():
    code, lines = run(["sh", "-c", r"printf 'step 10%%\rstep 20%%\rstep 30%%\r\ndone\n'"])
    assert code == 0
    assert lines == ["step 10%", "step 20%", "step 30%", "done"]


def test_binary_garbage_is_decoded_with_replacement():
    data = random.Random(7).randbytes(2 * MiB)
    code, lines = run(py(f"""
        import random, sys
        sys.stdout.buffer.write(random.Random(7).randbytes({2 * MiB}))
    """))
    assert code == 0
    assert "\ufffd" in "".join(lines)
    assert lines == reference_lines(data, MiB)


def test_a_10mb_line_without_newline_is_split_at_the_cap_and_complete():
    code, lines = run(py("""
        import sys
        sys.stdout.write("y" * 10_000_000)
    """))
    assert code == 0
    assert all(len(x) <= MiB for x in lines)
    assert len(lines[0]) == MiB
    assert len(lines) == 10
    assert "".join(lines) == "y" * 10_000_000


def test_a_final_line_without_newline_is_delivered():
    assert run(["sh", "-c", r"printf 'first\nlast'; printf 'tail' >&2"])[1] in (
        ["first", "last", "tail"], ["first", "tail", "last"], ["tail", "first", "last"])


def test_a_process_left_behind_holding_the_pipes_is_not_waited_for(monkeypatch, caplog, tmp_path):
    # The child exits at once; the background job it started keeps stdout open for 60 s. What
    # was written before the exit and within the grace period arrives; then reading stops.
    monkeypatch.setattr(cmd, "EXIT_GRACE", 1.0)
    pid_file = tmp_path / "bg.pid"
    script = f"echo started; (sleep 0.2; echo late; exec sleep 60) & echo $! > {pid_file}; exit 3"
    t = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="ava.utils.cmd"):
            code, lines = run(["sh", "-c", script])
        assert time.monotonic() - t < 30
        assert code == 3 and lines == ["started", "late"]
        assert "a process it started still holds its output open" in caplog.text
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


# -- hooks ----------------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_line(self, line: str) -> None:
        self.lines.append(line)

    def __call__(self, line: str) -> None:
        self.lines.append(line)


def test_hooks_may_be_bound_methods_callable_objects_partials_lists_and_tuples():
    by_method, by_object, partial_seen = Collector(), Collector(), []
    hooks = [by_method.on_line, None, by_object, functools.partial(lambda acc, line: acc.append(line), partial_seen)]
    assert cmd.runproc(["sh", "-c", "echo a; echo b"], log_hook=hooks, echo=False) == 0
    assert by_method.lines == by_object.lines == partial_seen == ["a", "b"]
    one = Collector()
    assert cmd.runproc(["sh", "-c", "echo c"], log_hook=(one.on_line,), echo=False) == 0
    assert one.lines == ["c"]
    assert cmd.runproc(["sh", "-c", "echo d"], log_hook=None, echo=False) == 0


def test_the_guide_sequence_startproc_logproc_wait():
    first, second = Collector(), Collector()
    proc = cmd.startproc(["sh", "-c", "echo I0101 Iteration 10, loss = 0.5; exit 2"])
    cmd.logproc(proc, [first.on_line, second], echo=False)
    assert proc.wait() == 2
    assert first.lines == second.lines == ["I0101 Iteration 10, loss = 0.5"]


def test_a_raising_hook_is_logged_once_and_disabled_while_the_others_go_on(caplog):
    calls, good = [], Collector()

    def bad(line: str) -> None:
        calls.append(line)
        raise RuntimeError("parser bug")

    caplog.set_level(logging.ERROR, logger="ava.utils.cmd")
    code = cmd.runproc(["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; exit 3"],
                       log_hook=[bad, good], echo=False)
    assert code == 3
    assert calls == ["line 1"]
    assert good.lines == [f"line {i}" for i in range(1, 6)]
    records = [r for r in caplog.records if r.name == "ava.utils.cmd" and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "disabled" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError


def test_a_hook_after_a_raising_one_still_gets_the_failing_line():
    seen = Collector()
    hooks = [lambda line: 1 / 0 if line == "b" else None, seen]
    assert cmd.runproc(["sh", "-c", "echo a; echo b; echo c"], log_hook=hooks, echo=False) == 0
    assert seen.lines == ["a", "b", "c"]


def test_a_hook_that_is_not_callable_fails_before_the_command_starts(tmp_path):
    marker = tmp_path / "started"
    with pytest.raises(UsageError):
        cmd.runproc(["touch", str(marker)], log_hook=[print, 42])
    assert not marker.exists()


class Stop(BaseException):
    pass


def test_a_base_exception_from_a_hook_stops_the_child_group():
    pids = []

    def hook(line: str) -> None:
        pids.append(int(line))
        raise Stop

    with pytest.raises(Stop):
        cmd.runproc(["sh", "-c", "echo $$; exec sleep 30"], log_hook=hook, echo=False)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


# -- exit codes -----------------------------------------------------------------------------


def test_a_missing_command_returns_127_with_one_clear_line(caplog):
    caplog.set_level(logging.ERROR, logger="ava.utils.cmd")
    assert cmd.runproc(["no-such-command-ava-test", "x"]) == 127
    assert [r.getMessage() for r in caplog.records] == ["command not found: no-such-command-ava-test"]


def test_startproc_of_a_missing_command_returns_a_finished_stand_in():
    proc = cmd.startproc(["no-such-command-ava-test"])
    assert isinstance(proc, cmd.NotStarted)
    cmd.logproc(proc, print)
    assert proc.poll() == 127 and proc.wait() == 127 and proc.pid is None
    proc.kill()
    proc.terminate()
    with proc:
        assert proc.communicate() == (b"", None)  # one stream, as the old SDK had
    assert "no-such-command-ava-test" in repr(proc)


def test_a_file_that_is_not_executable_returns_126(tmp_path, caplog):
    script = tmp_path / "train.sh"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    assert cmd.runproc([str(script)]) == 126
    assert cmd.runproc([str(tmp_path)]) == 126  # a directory
    assert caplog.records[0].getMessage() == f"command not executable: {script} (Permission denied)"


def test_a_missing_cwd_is_the_callers_error_and_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        cmd.runproc(["true"], cwd=tmp_path / "nowhere")


def test_a_child_killed_by_sigkill_returns_137(caplog):
    assert cmd.runproc(["sh", "-c", "kill -9 $$"], echo=False) == 137
    assert any("SIGKILL" in r.getMessage() for r in caplog.records)


def test_startproc_merges_stderr_into_stdout_in_a_new_process_group():
    proc = cmd.startproc(py("import os, sys; print(os.getpgid(0), flush=True); print('e', file=sys.stderr)"))
    out, err = proc.communicate()
    assert proc.stderr is None and err is None
    assert out.split() == [str(proc.pid).encode(), b"e"]
    apart = cmd.startproc(["sh", "-c", "echo o; echo e >&2"], stderr=subprocess.PIPE)
    assert apart.communicate() == (b"o\n", b"e\n")


@pytest.mark.timeout(60)
def test_the_old_sdks_own_read_loop_sees_what_the_child_writes_to_stderr():
    # Caffe logs through glog, to stderr; the old SDK read proc.stdout line by line. With two
    # pipes that loop saw nothing and the child blocked on its full stderr pipe: a deadlock.
    proc = cmd.startproc(py("""
        import sys
        for i in range(50000):
            sys.stderr.write("I0216 11:58:39.623576 1 solver.cpp:189] Iteration %d, loss = 2.3\\n" % i)
    """))
    lines = sum(1 for _ in iter(proc.stdout.readline, b""))
    assert (lines, proc.wait()) == (50000, 0)


# -- signals --------------------------------------------------------------------------------

WRAPPER = """
import sys
from ava.utils import cmd
sys.exit(cmd.runproc(["sh", "-c", sys.argv[1]]))
"""


def wait_for_output(proc: subprocess.Popen, text: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} from the wrapper; got {seen!r}"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"the wrapper closed its stdout; got {seen!r}"
                seen += chunk
    return seen


class Signalled(NamedTuple):
    out: bytes  # all it wrote to stdout, before the signal and after
    err: bytes
    code: int
    took: float  # seconds from the signal to its exit


def signalled(args: list[str], sig: int, *, to_group: bool = False, timeout: float = 30, **popen) -> Signalled:
    """Start ``args``, wait until it prints ``ready``, send ``sig`` (to its process group with
    ``to_group``) and wait for it to exit; it is killed if the test fails before that."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    try:
        seen = wait_for_output(proc, b"ready\n")
        t0 = time.monotonic()
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
        return Signalled(seen + out, err, proc.returncode, time.monotonic() - t0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "sig, script, expected, said",
    [
        (signal.SIGTERM, "trap 'echo child got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done", 7,
         b"child got TERM"),
        (signal.SIGTERM, "echo ready; exec sleep 30", 143, b""),
        (signal.SIGINT, "trap 'echo child got INT; exit 5' INT; echo ready; while :; do sleep 0.05; done", 5,
         b"child got INT"),
        (signal.SIGINT, "echo ready; exec sleep 30", 130, b""),
        # a closed terminal: the child, in a session of its own, never got it
        (signal.SIGHUP, "trap 'echo child got HUP; exit 6' HUP; echo ready; while :; do sleep 0.05; done", 6,
         b"child got HUP"),
    ],
)
def test_signals_to_the_wrapper_are_forwarded_to_the_child_group(sig, script, expected, said):
    run = signalled([sys.executable, "-c", WRAPPER, script], sig)
    assert said in run.out
    assert run.code == expected, run.err  # the wrapper exited on its own, with the child's code


# The guide's Caffe sequence, in a script of its own: a TrainInstance, startproc, logproc, wait, done.
GUIDE = """
import os, sys
from ava.train import base as train
from ava.utils import cmd
ins = train.TrainInstance("guide-sig", setup_logging=False)
proc = cmd.startproc(["sh", "-c", sys.argv[1]])
print("child", proc.pid, flush=True)
cmd.logproc(proc, [ins.get_monitor_callback("caffe")])
proc.wait()
print("after wait", flush=True)
ins.done()
"""


@pytest.mark.parametrize("to_group", [False, True])
def test_a_stop_during_the_guides_logproc_reaches_the_child_and_waits_for_it(tmp_path, to_group):
    # The child is in a session of its own: a SIGTERM to the training script (or to its group)
    # never reached it. The script left as preempted and the child trained on, unwatched.
    # Now it gets the stop as the signal the Caffe hook names (SIGINT).
    # The Caffe hooks name SIGINT as Caffe's stop signal (it snapshots and stops; SIGTERM kills it).
    script = ("trap 'echo child got TERM; exit 9' TERM; trap 'echo child got INT; sleep 0.3; echo child done; exit 0' INT; "
              "echo ready; while :; do sleep 0.05; done")
    run = signalled([sys.executable, "-c", GUIDE, script], signal.SIGTERM, to_group=to_group,
                    env={**os.environ, "AVA_WORKSPACE": str(tmp_path)}, start_new_session=True)
    child = int(re.search(rb"child (\d+)", run.out).group(1))
    assert b"child got INT" in run.out and b"child done" in run.out, run.err
    assert b"after wait" not in run.out  # nobody checks should_stop(): it leaves once the child has
    assert run.code == 143, run.err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    status = __import__("json").loads((tmp_path / "run" / "guide-sig" / "status.json").read_text())
    assert status["status"] == "preempted"


def test_ctrl_c_during_logproc_without_an_instance_stops_the_child_then_raises_keyboard_interrupt():
    code = textwrap.dedent("""
        import sys
        from ava.utils import cmd
        proc = cmd.startproc(["sh", "-c", "trap 'echo child got INT; exit 3' INT; echo ready; while :; do sleep 0.05; done"])
        try:
            cmd.logproc(proc)
        except KeyboardInterrupt:
            from ava.utils import preempt
            print("interrupted, child exit", proc.wait(), "stop request", preempt.STOP.requested, flush=True)
    """)
    run = signalled([sys.executable, "-c", code], signal.SIGINT)
    # and no stop request left behind for a TrainInstance opened later (it ended as preempted)
    assert b"child got INT" in run.out and b"interrupted, child exit 3 stop request False" in run.out, run.err


def test_a_signal_the_script_ignores_nohup_stays_ignored_during_logproc_and_for_the_child():
    # SIGHUP forwarding replaced nohup's SIG_IGN: the child was killed and the run preempted.
    code = textwrap.dedent("""
        import signal, sys
        from ava.utils import cmd
        print(cmd.runproc(["sh", "-c", "echo ready; sleep 1; echo finished"]), flush=True)
    """)
    run = signalled([sys.executable, "-c", code], signal.SIGHUP,
                    preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert b"finished" in run.out and run.out.strip().endswith(b"0") and run.code == 0, run


def test_a_loop_that_checks_should_stop_after_a_forwarded_stop_still_leaves_within_the_timeout(tmp_path):
    # No watchdog was started for a stop passed on by logproc: a loop that did not reach its
    # next check slept on, and the process exited 0 fifteen seconds later.
    code = textwrap.dedent("""
        import time
        from ava.train import base as train
        from ava.utils import cmd
        ins = train.TrainInstance("wd", setup_logging=False)
        ins.should_stop()  # the loop checks at its step ends
        proc = cmd.startproc(["sh", "-c", "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"])
        cmd.logproc(proc)
        print("logproc returned", flush=True)
        time.sleep(15)  # a long step
        print("slept through", flush=True)
    """)
    run = signalled([sys.executable, "-c", code], signal.SIGTERM,
                    env={**os.environ, "AVA_WORKSPACE": str(tmp_path), "AVA_PREEMPT_TIMEOUT": "2"})
    assert b"logproc returned" in run.out and b"slept through" not in run.out, run
    assert run.code == 143 and run.took < 10, run
    status = __import__("json").loads((tmp_path / "run" / "wd" / "status.json").read_text())
    assert status["status"] == "preempted"


def test_a_stop_between_startproc_and_logproc_still_reaches_the_child(tmp_path):
    marker = tmp_path / "child-got-term"
    code = textwrap.dedent(f"""
        import time
        from ava.train import base as train
        from ava.utils import cmd
        ins = train.TrainInstance("between", setup_logging=False)
        proc = cmd.startproc(["sh", "-c", "trap 'touch {marker}; exit 0' TERM; echo up; while :; do sleep 0.05; done"])
        proc.stdout.readline()
        print("ready", flush=True)
        time.sleep(30)  # not reading yet: the child is in a group of its own
    """)
    run = signalled([sys.executable, "-c", code], signal.SIGTERM, env={**os.environ, "AVA_WORKSPACE": str(tmp_path)})
    assert run.code == 143
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()  # it ran on, in a session of its own, after the script had left


def test_previous_signal_handlers_are_restored():
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        before_int = signal.getsignal(signal.SIGINT)
        assert cmd.runproc(["true"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, old)


def test_runproc_works_off_the_main_thread_without_touching_handlers():
    before = signal.getsignal(signal.SIGTERM)
    result = []
    t = threading.Thread(target=lambda: result.append(run(["sh", "-c", "echo x; exit 4"])))
    t.start()
    t.join(30)
    assert result == [(4, ["x"])]
    assert signal.getsignal(signal.SIGTERM) is before


# -- console and run.log --------------------------------------------------------------------


def test_output_is_echoed_raw_to_the_matching_console_stream(capfd):
    assert cmd.runproc(["sh", "-c", "echo to-out; echo to-err >&2; printf 'no newline'"]) == 0
    out, err = capfd.readouterr()
    assert out == "to-out\nno newline"
    assert err == "to-err\n"


def test_prefix_stream_marks_each_console_line(capfd):
    lines = []
    assert cmd.runproc(["sh", "-c", "echo a; echo b >&2; printf c"], log_hook=lines.append, prefix_stream=True) == 0
    out, err = capfd.readouterr()
    assert out == "[stdout] a\n[stdout] c\n"
    assert err == "[stderr] b\n"
    assert sorted(lines) == ["a", "b", "c"]


def test_no_echo_leaves_the_console_alone(capfd):
    assert run(["sh", "-c", "echo quiet; echo quiet >&2"]) == (0, ["quiet", "quiet"])
    assert capfd.readouterr() == ("", "")


def test_output_reaches_run_log_when_the_logger_is_set_up(tmp_path):
    logs = tmp_path / "logs"
    try:
        initialize_logger(logs)
        code = cmd.runproc(["sh", "-c", "echo from-stdout; echo from-stderr >&2; printf 'p1\\rp2\\r'; printf last"],
                           echo=False)
        many = cmd.runproc(py("print('\\n'.join(f'step {i} ' + 'x' * 90 for i in range(30000)))"), echo=False)
        prefixed = cmd.runproc(["sh", "-c", "echo tagged >&2"], echo=False, prefix_stream=True)
    finally:
        close_logger()
    assert code == many == prefixed == 0
    lines = (logs / "run.log").read_text().splitlines()
    for expected in ("from-stdout", "from-stderr", "p1", "p2", "last", "[stderr] tagged"):
        assert expected in lines
    assert [x for x in lines if x.startswith("step ")] == [f"step {i} " + "x" * 90 for i in range(30000)]


class BrokenConsole:
    """A console whose reader went away."""

    class buffer:  # noqa: N801 - mimics sys.stdout.buffer
        @staticmethod
        def write(data):
            raise BrokenPipeError(32, "Broken pipe")

        @staticmethod
        def flush():
            pass

    def flush(self):
        pass


def test_a_broken_console_stops_the_echo_but_not_the_hooks(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stdout", BrokenConsole())
    lines = []
    assert cmd.runproc(["sh", "-c", "for i in 1 2 3; do echo $i; done; exit 6"], log_hook=lines.append) == 6
    assert lines == ["1", "2", "3"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "echo" in r.getMessage()]
    assert len(warnings) == 1


def test_nothing_is_written_to_a_file_without_the_logger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(["sh", "-c", "echo hello"]) == (0, ["hello"])
    assert list(Path(tmp_path).iterdir()) == []


def test_child_cwd_is_text_when_the_command_was_started_in_a_bytes_directory(tmp_path):
    seen = []
    proc = cmd.startproc(["sh", "-c", "echo x"], cwd=os.fsencode(tmp_path))
    proc.wait()  # gone before its output is read: /proc cannot tell, where it started does
    cmd.logproc(proc, lambda line: seen.append(cmd.child_cwd()), echo=False)
    assert seen == [str(tmp_path)]  # was b'/...': the snapshot hook then failed
