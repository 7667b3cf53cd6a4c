"""ava: the runtime side of a training job (workspace, params, training instances, metrics, logs).

``import ava`` is cheap and imports no framework or network library; the parts are imported
where they are used:

    from ava.train import base as train        # train.TrainInstance()
    from ava.params import params              # params.get_value("solverOps.lr")
    from ava.log.logger import initialize_logger, logger
"""

__version__ = "0.1.0"
