import logging
import os
import pickle
import subprocess
import sys

import pytest

from ava.log.logger import MultiProcessingLogHandler, close_logger, initialize_logger, logger


def make_logger(name, handler):
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_records_reach_the_file_whole_including_multiline(tmp_path):
    path = tmp_path / "run.log"
    h = MultiProcessingLogHandler(path)
    log = make_logger("t.multi", h)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("failed step %d", 3)
    log.info("after")
    h.flush()
    text = path.read_text()
    assert text.startswith("failed step 3\nTraceback")
    assert text.endswith("ValueError: bad\nvalue\nafter\n")
    h.close()


def test_rotation_keeps_backup_count_files_with_stdlib_names(tmp_path):
    path = tmp_path / "run.log"
    h = MultiProcessingLogHandler(path, maxBytes=1000, backupCount=3)
    log = make_logger("t.rot", h)
    for i in range(400):
        log.info("record %05d %s", i, "x" * 40)
    h.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["run.log", "run.log.1", "run.log.2", "run.log.3"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1000
    last = path.read_text().splitlines()[-1]
    assert last.startswith("record 00399")


def test_append_mode_keeps_earlier_log(tmp_path):
    path = tmp_path / "run.log"
    path.write_text("earlier\n")
    h = MultiProcessingLogHandler(path)
    make_logger("t.append", h).info("later")
    h.close()
    assert path.read_text() == "earlier\nlater\n"


def test_close_is_safe_twice_and_stops_the_thread(tmp_path):
    h = MultiProcessingLogHandler(tmp_path / "run.log")
    listener = h._listener
    h.close()
    h.close()
    assert not listener.is_alive()


def test_pickles_into_a_sender(tmp_path):
    h = MultiProcessingLogHandler(tmp_path / "run.log")
    h.setFormatter(logging.Formatter("S %(message)s"))
    sender = pickle.loads(pickle.dumps(h))
    assert sender._listener is None and not sender.is_owner
    make_logger("t.sender", sender).info("via sender")
    sender.close()
    h.close()
    assert (tmp_path / "run.log").read_text() == "S via sender\n"


def test_initialize_logger_keeps_user_handlers_and_replaces_its_own(tmp_path):
    root = logging.getLogger()
    user = logging.StreamHandler(sys.stdout)
    root.addHandler(user)
    try:
        assert initialize_logger(tmp_path / "a") is logger
        ours = [h for h in root.handlers if getattr(h, "_ava_managed", False)]
        # the user already writes to the console: no second console handler
        assert [type(h).__name__ for h in ours] == ["MultiProcessingLogHandler"]
        initialize_logger(tmp_path / "b", node="worker-1")
        ours = [h for h in root.handlers if getattr(h, "_ava_managed", False)]
        assert len(ours) == 1 and ours[0].baseFilename.endswith("b/run.worker-1.log")
        assert user in root.handlers
        logging.getLogger("some.module").info("hi")
        ours[0].flush()
        assert "worker-1 some.module: hi" in (tmp_path / "b" / "run.worker-1.log").read_text()
    finally:
        close_logger()
        root.removeHandler(user)
    assert not [h for h in root.handlers if getattr(h, "_ava_managed", False)]


def test_log_level_from_environment(tmp_path):
    initialize_logger(tmp_path, env=__import__("ava.env", fromlist=["Env"]).Env({"AVA_LOG_LEVEL": "warning"}))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ava_managed", False)]
    assert {h.level for h in ours} == {logging.WARNING}


@pytest.mark.parametrize("raw, level", [("15", 15), (" debug ", logging.DEBUG), ("", logging.INFO)])
def test_log_level_as_a_name_or_a_number(tmp_path, raw, level):
    from ava.env import Env

    initialize_logger(tmp_path, env=Env({"AVA_LOG_LEVEL": raw}))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ava_managed", False)]
    assert {h.level for h in ours} == {level}


def test_a_log_level_that_is_not_one_is_said_in_the_log(tmp_path):
    from ava.env import Env

    initialize_logger(tmp_path, env=Env({"AVA_LOG_LEVEL": "LOUD"}))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_ava_managed", False)]
    assert {h.level for h in ours} == {logging.INFO}
    for h in ours:
        h.flush()
    text = (tmp_path / "run.log").read_text()
    assert "AVA_LOG_LEVEL='LOUD' is not a log level" in text and "ignored" in text


def test_a_bad_log_level_is_said_once_by_the_cli(tmp_path):
    # It was said twice, once "logging at WARNING" and once "logging at INFO".
    out = subprocess.run([sys.executable, "-m", "ava", "run", "--id", "lvl", "--", "true"], capture_output=True,
                         text=True, env={**os.environ, "AVA_WORKSPACE": str(tmp_path), "AVA_LOG_LEVEL": "bogus"})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("AVA_LOG_LEVEL='bogus' is not a log level") == 1, out.stderr


def test_write_raw_sends_lines_unformatted_as_one_record(tmp_path):
    h = MultiProcessingLogHandler(tmp_path / "run.log")
    h.setFormatter(logging.Formatter("PREFIX %(message)s"))
    log = make_logger("t.raw", h)
    log.info("formatted")
    h.write_raw("child line 1\nchild line 2")
    h.close()
    assert (tmp_path / "run.log").read_text() == "PREFIX formatted\nchild line 1\nchild line 2\n"


def test_run_log_handler_and_file_only_records(tmp_path, capsys):
    from ava.log.logger import run_log_handler

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []  # no user console handler: initialize_logger adds its own
    try:
        initialize_logger(tmp_path)
        h = run_log_handler()
        assert h is not None and h.baseFilename == str(tmp_path / "run.log")
        logging.getLogger("x").info("to both")
        logging.getLogger("x").info("file only", extra={"ava_console": False})
        h.flush()
        err = capsys.readouterr().err
        assert "to both" in err and "file only" not in err
        text = (tmp_path / "run.log").read_text()
        assert "to both" in text and "file only" in text
    finally:
        close_logger()
        root.handlers[:] = saved


def test_a_log_directory_removed_mid_run_is_made_again_and_logging_goes_on(tmp_path):
    from tests.conftest import run_python

    code = """
import logging, shutil, sys
from ava.log.logger import MultiProcessingLogHandler
d = sys.argv[1]
h = MultiProcessingLogHandler(d + "/run.log", maxBytes=100_000, backupCount=3)
log = logging.getLogger("t"); log.addHandler(h); log.setLevel(logging.INFO)
log.info("first"); h.flush()
shutil.rmtree(d)  # a clean-up job, or the user, removes the log directory
for i in range(2000):
    log.info("line %d %s", i, "z" * 1000)
h.flush(); h.close()
print("finished")
"""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    res = run_python(code, str(logdir), timeout=60)  # the old listener died here and every call hung
    assert res.returncode == 0 and res.stdout.strip() == "finished", res.stderr[-2000:]
    assert "cannot rotate log file" in res.stderr and res.stderr.count("cannot rotate") == 1
    assert "line 1999 " in (logdir / "run.log").read_text()


def test_an_accept_that_fails_for_want_of_file_descriptors_does_not_stop_logging(tmp_path):
    from tests.conftest import run_python

    code = """
import faulthandler, io, os, resource, sys, time
from ava.log.logger import initialize_logger, logger
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
initialize_logger(sys.argv[1]); logger.info("start")
said = sys.stderr = io.StringIO()
deadline = time.monotonic() + 10
held = []
try:
    while True:
        held.append(open(os.devnull))  # the process is at its limit of open files for a moment
except OSError:
    pass
pid = os.fork()
if pid == 0:
    for f in held[:4]:
        f.close()
    logger.info("worker says hi")  # connects; the owner's accept() fails with EMFILE
    os._exit(0)
os.waitpid(pid, 0)
while "cannot accept" not in said.getvalue() and time.monotonic() < deadline:
    time.sleep(0.01)  # the listener tries accept() while the files are still held
sys.stderr = sys.__stderr__
sys.stderr.write(said.getvalue())
for f in held:
    f.close()
faulthandler.dump_traceback_later(30, exit=True)  # the old listener thread died: this hung
for i in range(2000):
    logger.info("step %d", i)
print("finished")
"""
    res = run_python(code, str(tmp_path), timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "finished", res.stderr[-2000:]
    assert res.stderr.count("cannot accept a connection now") == 1
    text = (tmp_path / "run.log").read_text()
    assert "worker says hi" in text and "step 1999" in text and "start" in text


@pytest.mark.parametrize("lines", [0, 100, 1000])
def test_the_owners_lines_are_in_the_file_when_it_dies_by_os_exit(tmp_path, lines):
    from tests.conftest import run_python

    code = """
import os, sys
from ava.log.logger import initialize_logger, logger
initialize_logger(sys.argv[1])
for i in range(int(sys.argv[2])):
    logger.info("line %d", i)
logger.error("fatal: giving up")
os._exit(3)  # no atexit, no close(): what a crash or a killed worker leaves
"""
    res = run_python(code, str(tmp_path), str(lines), timeout=60)
    assert res.returncode == 3, res.stderr[-2000:]
    text = (tmp_path / "run.log").read_text()
    assert text.count("INFO") == lines and "fatal: giving up" in text.splitlines()[-1]


def test_a_rotation_that_keeps_failing_is_said_once_and_nothing_is_lost(tmp_path, capsys):
    (tmp_path / "run.log.1" / "in-the-way").mkdir(parents=True)  # the rename fails, even for root
    handler = MultiProcessingLogHandler(tmp_path / "run.log", maxBytes=2000, backupCount=1)
    try:
        for i in range(200):
            handler.write_raw(f"record {i} " + "x" * 90)
    finally:
        handler.close()
    err = capsys.readouterr().err
    assert err.count("cannot rotate log file") == 1, err[:2000]  # was once per record
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == [str(i) for i in range(200)]


def test_a_long_temporary_directory_path_does_not_stop_the_log(tmp_path, monkeypatch):
    import tempfile

    long_tmp = tmp_path / ("t" * 60) / ("u" * 60)  # a container's TMPDIR under a deep work dir
    long_tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    handler = MultiProcessingLogHandler(tmp_path / "run.log")  # was: OSError AF_UNIX path too long
    handler.write_raw("hello")
    handler.close()
    assert (tmp_path / "run.log").read_text() == "hello\n"
    assert not list(long_tmp.iterdir())


def test_a_handler_that_cannot_open_its_file_leaves_no_socket_directory(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "logs").write_text("a file where the log folder should be")
    with pytest.raises(OSError):
        MultiProcessingLogHandler(tmp_path / "logs" / "run.log")
    assert not list((tmp_path / "tmp").iterdir())


def test_the_guides_initialize_test_logger_logs_debug_to_stderr(capsys):
    from ava.log.logger import initialize_test_logger

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        handler = initialize_test_logger()  # the guide lists it; it did not exist
        logging.getLogger("ava.test").debug("a debug line with token=abc123")
        assert handler is not None
        err = capsys.readouterr().err
        assert "a debug line with token=***" in err
    finally:
        close_logger()
        root.handlers[:] = saved
        root.setLevel(level)


def test_a_signal_handler_that_logs_while_the_owner_writes_does_not_deadlock(tmp_path):
    from tests.conftest import run_python

    code = """
import logging, signal, sys
from ava.log import mp_handler
from ava.log.logger import initialize_logger, close_logger

real = mp_handler._RotatingFile.write
state = {"raised": False}

def write(self, records):
    if not state["raised"]:
        state["raised"] = True
        signal.raise_signal(signal.SIGUSR1)  # delivered while this thread holds the write lock
    return real(self, records)

mp_handler._RotatingFile.write = write
signal.signal(signal.SIGUSR1, lambda *a: logging.getLogger("ava.user").warning("got SIGUSR1"))
initialize_logger(sys.argv[1])
logging.getLogger("ava.user").warning("first")
close_logger()
print("finished")
"""
    res = run_python(code, str(tmp_path), timeout=60)  # with a plain Lock the handler waited for itself
    assert res.returncode == 0 and res.stdout.strip() == "finished", res.stderr[-2000:]
    text = (tmp_path / "run.log").read_text()
    assert "got SIGUSR1" in text and "first" in text


def test_the_cli_console_leaves_out_the_http_librarys_own_retry_warnings(capsys):
    # Nine "Retrying (Retry(total=...))" lines from urllib3 (under the qiniu SDK) came before ava's one line.
    from ava.env import Env
    from ava.log.logger import initialize_console_logger

    handler = initialize_console_logger(Env({}))
    try:
        logging.getLogger("urllib3.connectionpool").warning("Retrying (%r) after connection broken by '%s': /", 3, "x")
        logging.getLogger("urllib3.connectionpool").warning("Connection pool is full, discarding connection")
        logging.getLogger("ava.storage.qiniu").warning("upload failed")
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "Retrying" not in err and "Connection pool is full" in err and "upload failed" in err
