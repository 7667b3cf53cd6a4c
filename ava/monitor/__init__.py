"""Framework adapters, looked up by name through :data:`FRAMEWORKS` and imported on first use."""

#: framework name -> module providing ``monitor_callback(train_ins, **kw)`` and
#: ``epoch_end_callback(train_ins, **kw)``.
FRAMEWORKS = {
    "mxnet": "ava.monitor.mxnet",
    "gluon": "ava.monitor.gluon",
    "caffe": "ava.monitor.caffe",
    "torch": "ava.monitor.torch",
}
