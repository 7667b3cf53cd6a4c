"""Real MXNet training under `ava run --parser mxnet`: metrics from its log, each checkpoint
uploaded while the training goes on, named and stepped as the log says; the validation pass's
batch lines are validation records, and the checkpoints of a second prefix in the same epoch
go up in the same snapshot."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mxnet")

# Three epochs of a small Module.fit that logs as scripts do (logging at INFO) and checkpoints
# every epoch with do_checkpoint. Before its third epoch it waits until the first checkpoint is
# in storage: the upload must happen while the training runs, not when it ends.
SCRIPT = textwrap.dedent('''
    import logging, os, sys, time
    import numpy as np
    np.bool = bool
    import mxnet as mx
    logging.basicConfig(level=logging.INFO)
    storage = sys.argv[1]
    prefix = os.path.join(sys.argv[2], "mlp")
    rng = np.random.RandomState(0)
    x = rng.rand(256, 8).astype("float32")
    y = (x.sum(axis=1) > 4).astype("float32")
    it = mx.io.NDArrayIter(x, y, 32)
    val = mx.io.NDArrayIter(x[:96], y[:96], 16)
    net = mx.sym.Variable("data")
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(net, num_hidden=2), name="softmax")

    def wait_for_first(epoch, *_):
        if epoch == 1:  # the end of the second epoch: the first checkpoint must be up by now
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(storage, "epoch-0001", "MANIFEST.json")):
                if time.monotonic() > deadline:
                    sys.exit("epoch-0001 was not uploaded during the run")
                time.sleep(0.05)

    def ema_checkpoint(epoch, symbol, arg, aux):  # a second prefix, with its optimizer states
        mod.save_checkpoint(os.path.join(sys.argv[2], "ema"), epoch + 1, save_optimizer_states=True)

    mod = mx.mod.Module(net, context=mx.cpu())
    mod.fit(it, eval_data=val, num_epoch=3, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
            batch_end_callback=mx.callback.Speedometer(32, 4),
            eval_batch_end_callback=mx.callback.Speedometer(16, 2),
            epoch_end_callback=[mx.callback.do_checkpoint(prefix, 1), ema_checkpoint, wait_for_first])
''')


def test_ava_run_parser_mxnet_uploads_each_checkpoint_during_the_run(tmp_path):
    ws, out_dir = tmp_path / "ws", tmp_path / "ckpt"
    out_dir.mkdir()
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    stored = ws / "storage" / "mx" / "snapshots"
    res = subprocess.run([sys.executable, "-m", "ava", "run", "--parser", "mxnet", "--id", "mx", "--",
                          sys.executable, str(script), str(stored), str(out_dir)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "AVA_WORKSPACE": str(ws)})
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (ws / "run" / "mx" / "logs" / "metrics.jsonl").read_text().splitlines()]
    log_events = [r for r in records if r.get("event") == "snapshot" and "path" in r]  # as the log announced them
    events = [e for e in log_events if "mlp-" in e["path"]]
    assert [e["path"] for e in events] == [str(out_dir / f"mlp-{n:04d}.params") for n in (1, 2, 3)]
    assert [e["path"] for e in log_events if "ema-" in e["path"]] == [
        str(out_dir / f"ema-{n:04d}.{ext}") for n in (1, 2, 3) for ext in ("params", "states")]
    for n, event in zip((1, 2, 3), events):
        manifest = json.loads((stored / f"epoch-{n:04d}" / "MANIFEST.json").read_text())
        assert manifest["meta"]["step"] == event["step"]
        # one snapshot an epoch, holding both prefixes' files (before: a second epoch-NNNN whose
        # manifest named only the ema files)
        names = ("mlp-symbol.json", f"mlp-{n:04d}.params", "ema-symbol.json", f"ema-{n:04d}.params",
                 f"ema-{n:04d}.states")
        assert sorted(f["name"] for f in manifest["files"]) == sorted(names)
        for name in names:
            assert (stored / f"epoch-{n:04d}" / name).read_bytes() == (out_dir / name).read_bytes()
    assert [e["step"] for e in events] == sorted({e["step"] for e in events}) and events[0]["step"] > 0
    assert (stored / "LATEST").read_text() == "epoch-0003"
    submitted = [r["snapshot"] for r in records if r.get("event") == "snapshot" and "snapshot" in r]
    assert submitted == ["epoch-0001", "epoch-0002", "epoch-0003"]
    train = [r for r in records if r.get("name") == "accuracy" and r.get("phase") == "train" and r["batch"] is not None]
    assert [(r["epoch"], r["batch"]) for r in train] == [(e, 4) for e in range(3)]  # Speedometer(32, 4), 8 batches
    # Speedometer(16, 2) over 6 validation batches: batches 2 and 4 of each epoch's pass, at the
    # step the epoch ended; they were training records inside the epoch before
    val = [r for r in records if r.get("name") == "accuracy" and r.get("phase") == "val" and r["batch"] is not None]
    assert [(r["epoch"], r["batch"]) for r in val] == [(e, b) for e in range(3) for b in (2, 4)]
    ends = {r["epoch"]: r["step"] for r in records if r.get("name") == "time_cost"}
    assert all(r["step"] == ends[r["epoch"]] for r in val)
