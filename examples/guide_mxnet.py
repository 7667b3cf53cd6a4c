"""The MXNet snippet of the AVA SDK guide (训练指标监控上报 / MXNet), made runnable.

The guide's lines are kept as they are (including `self.train_ins`); what the guide leaves out
(data, network, batch sizes, the snapshot prefix) is filled in with the handwritten digits of
scikit-learn and a small MLP. Run it with `python examples/guide_mxnet.py`.
"""

import os
import sys

import mxnet as mx
import numpy as np
from sklearn.datasets import load_digits

from ava.monitor import mxnet as mxnet_monitor  # noqa: F401 - the guide imports it
from ava.train import base as train


class GuideTraining:
    """The guide's `main()` reads `self.train_ins`: it was written inside a class like this one."""

    def __init__(self):
        data = load_digits()
        x = (data.data / 16.0).astype("float32")
        y = data.target.astype("float32")
        order = np.random.RandomState(1).permutation(len(x))
        self.x, self.y = x[order], y[order]

    def main(self):
        train_ins = train.TrainInstance()
        self.train_ins = train_ins

        actual_batch_size = 50
        batch_freq = 5
        snapshot_interval_epochs = 1
        n_train = 1500
        batch_of_epoch = n_train // actual_batch_size
        snapshot_prefix = os.path.join(train_ins.get_snapshot_base_path(), "guide")
        train_data = mx.io.NDArrayIter(self.x[:n_train], self.y[:n_train], actual_batch_size, shuffle=True)
        val_data = mx.io.NDArrayIter(self.x[n_train:], self.y[n_train:], actual_batch_size)
        sym = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(mx.sym.Activation(mx.sym.FullyConnected(
            mx.sym.Variable("data"), num_hidden=64), act_type="relu"), num_hidden=10), name="softmax")
        ctx = mx.cpu()

        # --- from the guide -------------------------------------------------------------
        # AVA-SDK mxnet monitor callback 初始化
        batch_end_cb = self.train_ins.get_monitor_callback(
            "mxnet",
            batch_size=actual_batch_size,
            batch_freq=batch_freq)
        epoch_end_cb = [
            # mxnet default epoch callback
            mx.callback.do_checkpoint(
                snapshot_prefix, snapshot_interval_epochs),
            self.train_ins.get_epoch_end_callback(
                "mxnet", batch_of_epoch=batch_of_epoch, epoch_interval=snapshot_interval_epochs, other_files=[])
        ]

        train_config = {
            # ...
            "num_epoch": 4,
            "optimizer": "sgd",
            "optimizer_params": {"learning_rate": 0.1, "momentum": 0.9},
            "initializer": mx.init.Xavier(),
            "epoch_end_callback": epoch_end_cb,
            "batch_end_callback": batch_end_cb,
            # ...
        }

        mod = mx.mod.Module(symbol=sym, context=ctx)
        mod.fit(train_data, eval_data=val_data, **train_config)

        train_ins.done()
        # --- end of the guide's snippet ---------------------------------------------------

        accuracy = dict(mod.score(val_data, "acc"))["accuracy"]
        print(f"guide snippet: validation accuracy {accuracy:.4f}; metrics in {train_ins.metrics_path}, "
              f"snapshots in {train_ins.storage_url}/snapshots/")
        return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(GuideTraining().main())
