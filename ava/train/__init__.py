"""Training instances: ``from ava.train import base as train``, then ``train.TrainInstance()``."""
