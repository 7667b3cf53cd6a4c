"""Handwritten digits with an MXNet Module MLP, reported to AVA with the guide's two callbacks.

Run it with `python examples/mxnet_digits.py` (`make demo` runs it too). The digits come with
scikit-learn (1,797 8x8 images, no download). Metrics go to run/<id>/logs/metrics.jsonl, one
snapshot per epoch goes to the storage (AVA_STORAGE_URL, by default <workspace>/storage).
"""

import os
import sys

import mxnet as mx
import numpy as np
from sklearn.datasets import load_digits

from ava.train import base as train

EPOCHS = 5
BATCH_SIZE = 32
BATCH_FREQ = 10  # report every 10 batches, like mx.callback.Speedometer(BATCH_SIZE, 10)


def digits():
    """Train and validation iterators: 80% / 20% of the digits, pixels scaled to [0, 1]."""
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("float32")
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(len(x) * 0.8)
    train_iter = mx.io.NDArrayIter(x[:n_train], y[:n_train], BATCH_SIZE, shuffle=True)
    val_iter = mx.io.NDArrayIter(x[n_train:], y[n_train:], BATCH_SIZE)
    return train_iter, val_iter, n_train


def mlp():
    net = mx.sym.Variable("data")
    net = mx.sym.FullyConnected(net, num_hidden=128, name="fc1")
    net = mx.sym.Activation(net, act_type="relu")
    net = mx.sym.FullyConnected(net, num_hidden=10, name="fc2")
    return mx.sym.SoftmaxOutput(net, name="softmax")


def main():
    train_ins = train.TrainInstance()  # also sends Module.fit's log lines to run/<id>/logs/run.log
    train_iter, val_iter, n_train = digits()
    batch_of_epoch = (n_train + BATCH_SIZE - 1) // BATCH_SIZE

    # The guide's two calls: batch metrics, and the per-epoch snapshot next to do_checkpoint.
    snapshot_prefix = os.path.join(train_ins.get_snapshot_base_path(), "digits-mlp")
    batch_end_cb = train_ins.get_monitor_callback("mxnet", batch_size=BATCH_SIZE, batch_freq=BATCH_FREQ)
    epoch_end_cb = [
        mx.callback.do_checkpoint(snapshot_prefix, 1),
        train_ins.get_epoch_end_callback("mxnet", batch_of_epoch=batch_of_epoch, epoch_interval=1, other_files=[]),
    ]

    mx.random.seed(42)
    mod = mx.mod.Module(symbol=mlp(), context=mx.cpu())
    mod.fit(train_iter, eval_data=val_iter, num_epoch=EPOCHS, eval_metric=["acc", "ce"],
            optimizer="sgd", optimizer_params={"learning_rate": 0.1, "momentum": 0.9},
            initializer=mx.init.Xavier(),
            batch_end_callback=batch_end_cb, epoch_end_callback=epoch_end_cb)

    accuracy = dict(mod.score(val_iter, "acc"))["accuracy"]
    train_ins.done()  # waits for the snapshot uploads (at most AVA_DONE_TIMEOUT seconds)

    print(f"MXNet digits MLP: validation accuracy {accuracy:.4f}")
    print(f"  metrics:   {train_ins.metrics_path}")
    print(f"  log:       {os.path.join(train_ins.get_log_base_path(), 'run.log')}")
    print(f"  snapshots: {train_ins.storage_url}/snapshots/")
    return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
