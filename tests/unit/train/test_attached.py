"""ava.train.attached: which TrainInstance() in a command of `ava run` joins ava run's instance."""

import pytest

from ava.env import Env
from ava.metrics.forward import ChildForwarder, ChildListener
from ava.train import base as train
from ava.train.attached import AttachedInstance, holder_of

RUN = {"AVA_RUN_LISTENER": "/tmp/x.sock", "AVA_TRAINING_INSTANCE_ID": "r1"}


@pytest.mark.parametrize("env, ins_id, rank, joins", [
    (RUN, None, None, True),
    (RUN, "r1", None, True),
    (RUN, "other", None, False),  # the script opens an instance of its own
    ({**RUN, "RANK": "1", "WORLD_SIZE": "2"}, None, None, False),  # rank 1 records to its own file
    (RUN, None, 1, False),
    ({"AVA_TRAINING_INSTANCE_ID": "r1"}, None, None, False),  # not under ava run
])
def test_holder_of(env, ins_id, rank, joins):
    assert (holder_of(Env(env), ins_id, rank) is not None) is joins


def test_a_joined_instance_records_through_the_holder_and_says_how_it_ended(tmp_path):
    got: dict = {"metrics": [], "events": [], "snapshots": [], "end": []}
    lis = ChildListener(lambda *a, **k: got["metrics"].append(a), lambda *a, **k: got["events"].append((a, k)),
                        save_snapshot=lambda *a, **k: got["snapshots"].append((a, k)),
                        finish=lambda *a: got["end"].append(a))
    try:
        env = {"AVA_RUN_LISTENER": lis.address, "AVA_TRAINING_INSTANCE_ID": "r1", "AVA_WORKSPACE": str(tmp_path)}
        ins = train.TrainInstance(env=env, setup_logging=False, handle_signals=False)
        assert isinstance(ins, AttachedInstance) and isinstance(ins, train.TrainInstance)
        ins.log_metrics({"loss": 0.5}, step=3)
        ins.log_event("resume", step=3, epoch=1)
        f = tmp_path / "m.bin"
        f.write_bytes(b"x")
        ins.save_snapshot(str(f), "s1", {"epoch": 1}, step=3)
        with pytest.raises(Exception, match="is a directory"):
            ins.save_snapshot([tmp_path], "s2")
        ins.done(err_msg="bad")
        ins.done()  # once
        lis.drain()
    finally:
        lis.close()
    assert got["metrics"] == [({"loss": 0.5}, 3, None, None, "train")]
    assert got["events"] == [(("resume", 3), {"epoch": 1})]
    assert got["snapshots"] == [(([str(f)], "s1", {"epoch": 1}), {"step": 3})]
    assert got["end"] == [("bad", None)]
    assert ins.status == "failed"
    assert not (tmp_path / "run" / "r1" / "status.json").exists()  # ava run writes it, not the script


def test_a_joined_script_whose_ava_run_is_gone_trains_on_and_says_so_once(tmp_path, caplog):
    lis = ChildListener(lambda *a, **k: None, lambda *a, **k: None)
    env = {"AVA_RUN_LISTENER": lis.address, "AVA_TRAINING_INSTANCE_ID": "r1", "AVA_WORKSPACE": str(tmp_path)}
    ins = train.TrainInstance(env=env, setup_logging=False, handle_signals=False)
    ins.log_metrics({"loss": 0.5}, step=1)
    lis.close()  # ava run killed: its socket is gone
    for step in range(2, 5):  # raised MetricsError into the training loop at every call
        ins.log_metrics({"loss": 0.5}, step=step)
    ins.log_event("resume", step=5)
    ins.done()
    said = [r.getMessage() for r in caplog.records if "no longer takes records" in r.getMessage()]
    assert len(said) == 1
    other = train.TrainInstance(env=env, setup_logging=False, handle_signals=False)
    with pytest.raises(Exception, match="phase"):  # the caller's own mistakes are still raised
        other.log_metrics({"x": 1}, phase="bad")
    other.done()


def joined_instance(tmp_path, lis, name="r1"):
    env = {"AVA_RUN_LISTENER": lis.address, "AVA_TRAINING_INSTANCE_ID": name, "AVA_WORKSPACE": str(tmp_path)}
    return train.TrainInstance(env=env, setup_logging=False, handle_signals=False)


def test_a_joined_instance_checks_calls_as_a_standalone_one_does(tmp_path, caplog):
    from ava.errors import MetricsError, UsageError

    got = []
    lis = ChildListener(lambda *a, **k: got.append(a), lambda *a, **k: None, save_snapshot=lambda *a, **k: None)
    try:
        ins = joined_instance(tmp_path, lis)
        (tmp_path / "ck.bin").write_bytes(b"x")
        for bad in (None, ["x"], "", "../up"):  # None killed ava run's listener thread: every later record lost
            with pytest.raises(UsageError, match="snapshot name"):
                ins.save_snapshot([tmp_path / "ck.bin"], bad)
        with pytest.raises(UsageError, match="meta must hold JSON"):
            ins.save_snapshot([tmp_path / "ck.bin"], "s1", {"model": object()})
        with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):  # was sent, then dropped by ava run
            ins.log_metrics({"loss": 0.5}, step=1, foo=1)
        with pytest.raises(MetricsError, match="has a str value"):  # was accepted
            ins.log_metrics({"loss": "0.5"}, step=1)
        with pytest.raises(MetricsError, match="units"):
            ins.log_metrics({"acc": 1.0}, step=1, units={"acc": b"%"})
        ins.log_metrics({"loss": 0.25}, step=2)
        ins.done()
        ins.done(err_msg="late failure")  # said, as a standalone instance says it
        lis.drain()
    finally:
        lis.close()
    assert got == [({"loss": 0.25}, 2, None, None, "train")]
    assert any("done(err_msg='late failure') changes nothing" in r.getMessage() for r in caplog.records)


def test_the_listener_survives_a_message_its_handler_fails_on_and_drains_at_once(tmp_path):
    import time

    got = []

    def save(files, name, meta, step=None):
        raise AttributeError("boom")  # any failure of the holder's side

    lis = ChildListener(lambda *a, **k: got.append(a[1]), lambda *a, **k: None, save_snapshot=save)
    try:
        fwd = ChildForwarder(lis.address)
        fwd.save_snapshot(["/x"], "s", {}, None)
        fwd.log_metrics({"loss": 1.0}, step=7)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [7] and lis._thread.is_alive()
        t0 = time.monotonic()
        for _ in range(20):  # each waited 0.5-1.9 s for the lock the listener thread kept retaking
            lis.drain()
        assert time.monotonic() - t0 < 2.0
    finally:
        lis.close()


def test_a_joined_instance_sends_a_call_of_thousands_of_values_in_parts(tmp_path):
    got: dict = {}
    lis = ChildListener(lambda values, *a, **k: got.update(values), lambda *a, **k: None)
    try:
        ins = joined_instance(tmp_path, lis)
        values = {f"class_{i:04d}/average_precision": i / 3000 for i in range(3000)}  # about 110 KB of JSON
        ins.log_metrics(values, step=1, units={"class_0001/average_precision": "AP"})
        ins.done()
        lis.drain()
    finally:
        lis.close()
    assert got == values  # MetricsError: limited to 65536 bytes, and the script failed


def test_the_listener_works_with_more_than_1024_files_open(tmp_path):
    # select() refuses descriptors from 1024 up: the listener thread stopped without a word, and
    # forked children waited 10 s a record and then lost them.
    import os
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this machine allows {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    got = []
    try:
        lis = ChildListener(lambda *a, **k: got.append(a[1]), lambda *a, **k: None)
        try:
            fwd = ChildForwarder(lis.address)
            for step in range(40):  # more than the socket's queue holds: the thread must be reading
                fwd.log_metrics({"loss": 1.0}, step=step)
            deadline = time.monotonic() + 10
            while len(got) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got == list(range(40)) and lis._thread.is_alive()
        finally:
            lis.close()
            lis.close()  # twice: nothing else is closed
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_call_too_big_to_send_sends_nothing(tmp_path):
    from ava.errors import MetricsError

    got = []
    lis = ChildListener(lambda values, *a, **k: got.append(values), lambda *a, **k: None)
    try:
        fwd = ChildForwarder(lis.address)
        with pytest.raises(MetricsError, match="too long"):
            fwd.log_metrics({"a": 1.0, "b" * 70_000: 2.0}, step=1)  # "a" was recorded, then it raised
        lis.drain()
    finally:
        lis.close()
    assert got == []
