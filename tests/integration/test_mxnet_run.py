"""Real MXNet training under `ava run --parser mxnet`: metrics from its log, each checkpoint
uploaded while the training goes on, named and stepped as the log says."""

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
    net = mx.sym.Variable("data")
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(net, num_hidden=2), name="softmax")

    def wait_for_first(epoch, *_):
        if epoch == 1:  # the end of the second epoch: the first checkpoint must be up by now
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(storage, "epoch-0001", "MANIFEST.json")):
                if time.monotonic() > deadline:
                    sys.exit("epoch-0001 was not uploaded during the run")
                time.sleep(0.05)

    mod = mx.mod.Module(net, context=mx.cpu())
    mod.fit(it, num_epoch=3, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
            batch_end_callback=mx.callback.Speedometer(32, 4),
            epoch_end_callback=[mx.callback.do_checkpoint(prefix, 1), wait_for_first])
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
    events = [r for r in records if r.get("event") == "snapshot" and "path" in r]  # as the log announced them
    assert [e["path"] for e in events] == [str(out_dir / f"mlp-{n:04d}.params") for n in (1, 2, 3)]
    for n, event in zip((1, 2, 3), events):
        manifest = json.loads((stored / f"epoch-{n:04d}" / "MANIFEST.json").read_text())
        assert manifest["meta"]["step"] == event["step"]
        for name in ("mlp-symbol.json", f"mlp-{n:04d}.params"):
            assert (stored / f"epoch-{n:04d}" / name).read_bytes() == (out_dir / name).read_bytes()
    assert [e["step"] for e in events] == sorted({e["step"] for e in events}) and events[0]["step"] > 0
    assert (stored / "LATEST").read_text() == "epoch-0003"
    assert any(r.get("name") == "accuracy" and r.get("phase") == "train" for r in records)
