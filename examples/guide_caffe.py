"""The guide's Caffe example, made runnable: only paths changed, plus two slips fixed
(`self.proc` -> `proc`, and a `logger` to log with).

    python examples/guide_caffe.py /path/to/caffe /path/to/solver.prototxt [BATCH_OF_EPOCH]

The caffe log is parsed into metric records, each snapshot Caffe writes is uploaded in the
background (to $AVA_STORAGE_URL, default <workspace>/storage), and the instance is finished.
"""

import sys

from ava.log.logger import logger
from ava.train import base as train
from ava.utils import cmd

CAFFE = sys.argv[1]
SOLVER = sys.argv[2]
BATCH_OF_EPOCH = int(sys.argv[3]) if len(sys.argv) > 3 else 100


def main():
    train_ins = train.TrainInstance()
    fixed_solver = SOLVER
    train_args = [CAFFE, "train", "-solver", fixed_solver]
    # AVA-SDK runs the caffe process
    proc = cmd.startproc(train_args)
    logger.info("Started %s", proc)
    # AVA-SDK reads the caffe process's output, parses it and records the metrics
    cmd.logproc(proc, [
        train_ins.get_monitor_callback("caffe"),    # batch-level metrics
        train_ins.get_epoch_end_callback("caffe",   # snapshot upload
                                         batch_of_epoch=BATCH_OF_EPOCH,
                                         other_files=[])
    ])
    exit_code = proc.wait()
    logger.info("Finished proc with code %s", exit_code)
    train_ins.done(err_msg="" if exit_code == 0 else f"caffe exited with code {exit_code}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
