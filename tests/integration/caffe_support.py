"""Helpers for tests that train with a real CPU ``caffe`` binary.

``caffe_binary()`` finds or builds the tool (``scripts/build-caffe.sh``); ``write_lenet_dataset``
and ``write_lenet_solver`` write a small synthetic image set and a classic LeNet solver for it.

Example:
    >>> bin_ = caffe_binary()                                   # doctest: +SKIP
    >>> data = write_lenet_dataset(tmp_path / "data")           # doctest: +SKIP
    >>> solver = write_lenet_solver(tmp_path, data.dir)         # doctest: +SKIP
    >>> subprocess.run([bin_, "train", "-solver", str(solver)])  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-caffe.sh"
SDIST_NAME = "brocolli-caffe-9.0.2"

ENV_BIN = "AVA_CAFFE_BIN"
ENV_CACHE = "AVA_CAFFE_CACHE"

# tests/conftest.py removes every AVA_* variable before each test, so remember the caller's
# choices from import (collection) time.
_CALLER_ENV = {name: os.environ[name] for name in (ENV_BIN, ENV_CACHE) if os.environ.get(name)}

NUM_CLASSES = 4
CLASS_NAMES = ("horizontal", "vertical", "diagonal", "antidiagonal")
IMAGE_SIZE = 28
NOISE = 0.5

_binary: str | None = None


def _env(name: str) -> str | None:
    return os.environ.get(name) or _CALLER_ENV.get(name)


def cache_dir() -> Path:
    """The build cache ``scripts/build-caffe.sh`` uses."""
    return Path(_env(ENV_CACHE) or Path.home() / ".cache" / "ava-caffe")


def parse_log_script() -> Path:
    """BVLC's ``tools/extra/parse_log.py`` from the unpacked sdist in the cache (after a build)."""
    return cache_dir() / SDIST_NAME / "tools" / "extra" / "parse_log.py"


def caffe_binary() -> str:
    """Return the path of a runnable ``caffe`` tool, building it on first use.

    ``$AVA_CAFFE_BIN`` wins when set. Otherwise ``scripts/build-caffe.sh`` runs (a few minutes
    when the cache is empty, milliseconds after) and its last stdout line is the answer. Skips
    only where the script cannot build (not Linux x86_64, or no dpkg/apt); a failed build
    raises.
    """
    global _binary
    if _binary is not None:
        return _binary
    explicit = _env(ENV_BIN)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise FileNotFoundError(f"${ENV_BIN}={explicit} is not an executable file")
        _binary = explicit
        return _binary
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"scripts/build-caffe.sh builds caffe only on Linux x86_64, not "
                    f"{platform.system()} {platform.machine()}; set ${ENV_BIN} to a caffe binary")
    if shutil.which("dpkg") is None or shutil.which("apt-get") is None:
        pytest.skip(f"scripts/build-caffe.sh needs a Debian-like system (dpkg, apt-get); "
                    f"set ${ENV_BIN} to a caffe binary")
    env = dict(os.environ)
    if _env(ENV_CACHE):
        env[ENV_CACHE] = _env(ENV_CACHE)
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    _binary = lines[-1].strip()
    return _binary


@dataclass(frozen=True)
class LenetDataset:
    """Paths of a dataset written by :func:`write_lenet_dataset`."""

    dir: Path
    train_h5: Path
    test_h5: Path
    train_list: Path
    test_list: Path
    n_train: int
    n_test: int
    num_classes: int = NUM_CLASSES


def _bar_images(labels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One noisy bar per image, oriented by class: -, |, \\ or /, at a random offset and width."""
    n = len(labels)
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    offsets = rng.uniform(-8, 8, size=n)
    widths = rng.uniform(1.5, 3.5, size=n)
    for i, label in enumerate(labels):
        c = (size - 1) / 2 + offsets[i]
        if label == 0:
            dist = np.abs(yy - c)
        elif label == 1:
            dist = np.abs(xx - c)
        elif label == 2:
            dist = np.abs((yy - xx) - offsets[i]) / math.sqrt(2)
        else:
            dist = np.abs((yy + xx - (size - 1)) - offsets[i]) / math.sqrt(2)
        images[i, 0] = (dist <= widths[i] / 2).astype(np.float32)
    images *= rng.uniform(0.5, 1.0, size=(n, 1, 1, 1)).astype(np.float32)
    images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0)


def _write_split(path: Path, n: int, rng: np.random.Generator, noise: float) -> None:
    import h5py

    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    data = _bar_images(labels, rng, noise)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=labels.astype(np.float32))


def write_lenet_dataset(dir: str | os.PathLike, n_train: int = 2000, n_test: int = 400,
                        seed: int = 0, noise: float = NOISE) -> LenetDataset:
    """Write a 1x28x28 four-class bar image set as HDF5 plus Caffe's HDF5Data list files.

    Each image holds one bar (horizontal, vertical, diagonal or anti-diagonal) at a random
    offset, width and brightness, plus Gaussian noise of std ``noise``, clipped to [0, 1]. With
    the default noise LeNet goes from 0.2 to about 0.98 test accuracy in 200 iterations. ``train.txt`` and ``test.txt``
    each list one absolute ``.h5`` path holding datasets ``data`` (N,1,28,28) and ``label`` (N,).
    """
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_h5, test_h5 = root / "train.h5", root / "test.h5"
    _write_split(train_h5, n_train, rng, noise)
    _write_split(test_h5, n_test, rng, noise)
    train_list, test_list = root / "train.txt", root / "test.txt"
    train_list.write_text(f"{train_h5.resolve()}\n")
    test_list.write_text(f"{test_h5.resolve()}\n")
    return LenetDataset(root, train_h5, test_h5, train_list, test_list, n_train, n_test)


_NET = """\
name: "LeNet"
layer {{
  name: "data"
  type: "HDF5Data"
  top: "data"
  top: "label"
  include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{train_list}" batch_size: {batch_size} shuffle: true }}
}}
layer {{
  name: "data"
  type: "HDF5Data"
  top: "data"
  top: "label"
  include {{ phase: TEST }}
  hdf5_data_param {{ source: "{test_list}" batch_size: {test_batch_size} }}
}}
layer {{
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {{ lr_mult: 1 }}
  param {{ lr_mult: 2 }}
  convolution_param {{
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }}
  }}
}}
layer {{
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }}
}}
layer {{
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  param {{ lr_mult: 1 }}
  param {{ lr_mult: 2 }}
  convolution_param {{
    num_output: 50
    kernel_size: 5
    stride: 1
    weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }}
  }}
}}
layer {{
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }}
}}
layer {{
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool2"
  top: "ip1"
  param {{ lr_mult: 1 }}
  param {{ lr_mult: 2 }}
  inner_product_param {{
    num_output: {ip1_outputs}
    weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }}
  }}
}}
layer {{
  name: "relu1"
  type: "ReLU"
  bottom: "ip1"
  top: "ip1"
}}
layer {{
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  param {{ lr_mult: 1 }}
  param {{ lr_mult: 2 }}
  inner_product_param {{
    num_output: {num_classes}
    weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }}
  }}
}}
layer {{
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include {{ phase: TEST }}
}}
layer {{
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
}}
"""

_SOLVER = """\
# The classic LeNet solver (examples/mnist/lenet_solver.prototxt), CPU only.
net: "{net}"
test_iter: {test_iter}
test_interval: {test_interval}
base_lr: {base_lr}
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: {display}
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{snapshot_prefix}"
solver_mode: CPU
random_seed: {random_seed}
"""


def _count_test_samples(test_list: Path) -> int:
    import h5py

    total = 0
    for line in test_list.read_text().split():
        with h5py.File(line, "r") as f:
            total += int(f["label"].shape[0])
    return total


def write_lenet_solver(dir: str | os.PathLike, data_dir: str | os.PathLike, *, max_iter: int = 300,
                       test_interval: int = 100, snapshot: int = 100,
                       snapshot_prefix: str | os.PathLike | None = None, display: int = 20,
                       test_iter: int | None = None, batch_size: int = 64,
                       test_batch_size: int = 100, base_lr: float = 0.01,
                       num_classes: int = NUM_CLASSES, ip1_outputs: int = 500,
                       random_seed: int = 1) -> Path:
    """Write ``lenet_train_test.prototxt`` and ``lenet_solver.prototxt`` into ``dir``.

    ``data_dir`` holds ``train.txt``/``test.txt`` from :func:`write_lenet_dataset`.
    ``snapshot_prefix`` defaults to ``dir/snapshots/lenet`` (its parent is created: Caffe does
    not). ``test_iter`` defaults to enough test batches to cover the test set once.
    Returns the solver path.
    """
    root = Path(dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    train_list, test_list = data / "train.txt", data / "test.txt"
    if snapshot_prefix is None:
        snapshot_prefix = root / "snapshots" / "lenet"
    prefix = Path(snapshot_prefix).resolve()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if test_iter is None:
        test_iter = max(1, math.ceil(_count_test_samples(test_list) / test_batch_size))
    net = root / "lenet_train_test.prototxt"
    net.write_text(_NET.format(train_list=train_list, test_list=test_list, batch_size=batch_size,
                               test_batch_size=test_batch_size, num_classes=num_classes,
                               ip1_outputs=ip1_outputs))
    solver = root / "lenet_solver.prototxt"
    solver.write_text(_SOLVER.format(net=net, test_iter=test_iter, test_interval=test_interval,
                                     base_lr=base_lr, display=display, max_iter=max_iter,
                                     snapshot=snapshot, snapshot_prefix=prefix,
                                     random_seed=random_seed))
    return solver


_ITER_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_NET_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = (\S+)")


def iteration_losses(log: str) -> list[tuple[int, float]]:
    """``(iteration, loss)`` for each ``Iteration N, loss = X`` line of a caffe log."""
    return [(int(m.group(1)), float(m.group(2))) for m in _ITER_LOSS.finditer(log)]


def net_outputs(log: str, name: str, phase: str = "Test") -> list[float]:
    """Values of every ``<phase> net output #k: <name> = X`` line, in log order."""
    return [float(m.group(4)) for m in _NET_OUTPUT.finditer(log)
            if m.group(1) == phase and m.group(3) == name]
