"""PyTorch adapter: :class:`TorchMonitor` for hand-written training loops.

::

    mon = train_ins.get_monitor_callback("torch", log_every=10, batch_size=64)
    start_epoch, _ = mon.resume(model, optimizer)          # (0, 0) on a fresh instance
    for epoch in range(start_epoch, epochs):
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            mon.step(loss=loss, optimizer=optimizer)
        mon.epoch_end(model, optimizer, epoch, accuracy=evaluate(model))

- ``step()`` counts a batch. Only every ``log_every`` steps does it record anything: ``loss`` and
  the other keyword values as given (tensors are copied on their device, which queues a copy
  and does not wait, and read with ``.item()`` on the writer thread, so a GPU loop is never
  synchronised by the monitor, and a tensor changed in place later keeps its value), ``lr``
  of each parameter group of the optimizer (``lr``, ``lr_1``, ...; schedulers write there),
  ``speed`` (samples/s over the steps since the previous record, or iter/s without a batch
  size) and ``samples``. Values are those of the step recorded, not averages.
- ``epoch_end()`` records the validation values (``phase="val"``), and every
  ``checkpoint_every`` epochs saves ``{"model", "optimizer", "epoch", "step", ...}`` with
  ``torch.save`` to ``run/<id>/output/checkpoint-NNNN.pt`` (NNNN = the epoch; written to a temp
  file, then renamed) and hands it to the background uploader as snapshot ``epoch-NNNN``.
- ``latest_checkpoint()`` finds the newest checkpoint in ``run/<id>/output/``, else downloads
  the one ``LATEST`` points to in storage; ``resume()`` loads it into the model and optimizer
  and returns ``(epoch + 1, step)``: where to start again.
- Under ``torch.distributed`` only rank 0 saves and uploads; every rank records.
- After SIGTERM/SIGINT (see :mod:`ava.utils.preempt`), the next ``step()`` leaves through the
  instance's preemption path (status ``preempted``, exit code 143/130); an ``epoch_end()`` reached
  first saves its checkpoint (whatever ``checkpoint_every`` says) and then leaves. A run preempted
  mid-epoch resumes from the last checkpoint: its steps start again lower (a rewind).

``step`` numbers: ``step`` is the number of ``step()`` calls so far (the first records step 1),
carried across a resume; ``batch`` is the 0-based index within the epoch. ``epoch`` counts from
0 and follows ``epoch_end()``; a loop that numbers its epochs otherwise (``range(1, n)``) says
so with ``epoch_begin(epoch)``, so that training and validation records of one epoch agree.

Example:
    >>> import tempfile, torch
    >>> from ava.train.base import TrainInstance
    >>> ins = TrainInstance("doc-torch", workspace=tempfile.mkdtemp(), setup_logging=False)
    >>> mon = TorchMonitor(ins, log_every=1, batch_size=8)
    >>> mon.step(loss=torch.tensor(0.5))
    >>> mon.global_step
    1
    >>> ins.done()
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

from ava.errors import AvaError, ObjectNotFoundError, UsageError
from ava.metrics.record import check_epoch
from ava.snapshot import MANIFEST, read_latest
from ava.storage.base import join_url
from ava.storage.registry import get_storage
from ava.utils import preempt
from ava.utils.fileio import new_file_mode

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{4,})\.pt$")


def _positive_int(value: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return value


def dist_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` when ``torch.distributed`` is initialised, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def unwrap(model: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``, so
    checkpoints load either way (no ``module.`` or ``_orig_mod.`` in their keys)."""
    import torch

    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


class TorchMonitor:
    """Metrics, checkpoints and resume for a hand-written PyTorch loop (see the module doc).

    Args:
        train_ins: the :class:`~ava.train.base.TrainInstance` to record into.
        log_every: record every this many steps.
        batch_size: samples per step, unless given to ``step``; None records speed in iter/s.
        optimizer: the optimizer whose lr is recorded, unless given to ``step``.
        checkpoint_every: ``epoch_end`` saves every this many epochs (0: never).
        rank: this process's rank; None asks ``torch.distributed`` (else the instance's rank).

    Example:
        >>> import tempfile, torch
        >>> from ava.train.base import TrainInstance
        >>> ins = TrainInstance("doc-torch-2", workspace=tempfile.mkdtemp(), setup_logging=False)
        >>> model = torch.nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mon = TorchMonitor(ins, log_every=1)
        >>> mon.resume(model, opt)
        (0, 0)
        >>> path = mon.epoch_end(model, opt, 0, loss=0.25)
        >>> path.name, mon.latest_checkpoint() == path
        ('checkpoint-0000.pt', True)
        >>> ins.done()
    """

    def __init__(self, train_ins: Any, log_every: int = 10, batch_size: int | None = None, optimizer: Any = None,
                 checkpoint_every: int = 1, *, rank: int | None = None) -> None:
        self._ins = train_ins
        self.log_every = _positive_int(log_every, "log_every")
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        self.optimizer = optimizer
        self.checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every", allow_zero=True)
        if rank is None:
            dr = dist_rank()
            rank = dr[0] if dr else int(getattr(train_ins, "rank", 0) or 0)
        self.rank = rank
        self.is_main = rank == 0
        ins_rank = getattr(train_ins, "rank", 0)
        if ins_rank != rank:
            log.warning("rank %d records into a TrainInstance of rank %s: its records carry rank %s", rank,
                        ins_rank, ins_rank)
        self.output_dir = Path(train_ins.get_snapshot_base_path())
        self.global_step = 0
        self.epoch = 0
        self.samples = 0
        self._epoch_start = 0  # global_step when the epoch began
        self._tic: float | None = None  # the window since the last record: its start time,
        self._w_step = 0  # step and sample count
        self._w_samples = 0
        self._stop = preempt.STOP
        train_ins.should_stop()  # a stop request now waits for the next step() or epoch_end()

    @property
    def batch(self) -> int:
        """Steps taken in the current epoch."""
        return self.global_step - self._epoch_start

    # --- every batch ---------------------------------------------------------------------------
    def step(self, loss: Any = None, batch_size: int | None = None, optimizer: Any = None, **metrics: Any) -> None:
        """Count one batch; every ``log_every`` steps, record ``loss``, ``metrics``, ``lr``, ``speed``, ``samples``."""
        # The hot path: two counters and a test; everything else happens on recorded steps only.
        if self._stop.requested:  # the previous batch is done: leave (a rewind to the last checkpoint)
            self._ins.exit_preempted()
        n = batch_size if batch_size is not None else self.batch_size
        if n:
            self.samples += n
        self.global_step = step = self.global_step + 1
        if step % self.log_every and self._tic is not None:
            return
        self._record(step, loss, optimizer, metrics)

    def _record(self, step: int, loss: Any, optimizer: Any, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self._tic is None:  # a window starts its clock at its first step, which it does not time
            self._tic, self._w_step, self._w_samples = now, step, self.samples
            if step % self.log_every:
                return
        values: dict[str, Any] = {}
        if loss is not None:
            values["loss"] = loss
        if metrics:
            values.update(metrics)
        opt = optimizer if optimizer is not None else self.optimizer
        if opt is not None:
            for i, group in enumerate(opt.param_groups):
                values["lr" if i == 0 else f"lr_{i}"] = group["lr"]
        units = None
        steps, samples, elapsed = step - self._w_step, self.samples - self._w_samples, now - self._tic
        if steps and elapsed > 0:
            if samples:
                values["speed"] = samples / elapsed
                units = _SAMPLES
            else:
                values["speed"] = steps / elapsed
                units = _ITERS
        if self.samples:
            values["samples"] = self.samples
        self._tic, self._w_step, self._w_samples = now, step, self.samples
        self._ins.log_metrics(values, step, self.epoch, step - self._epoch_start - 1, units=units)

    # --- every epoch ---------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        return self.output_dir / f"{CHECKPOINT_PREFIX}{epoch:04d}.pt"

    def epoch_begin(self, epoch: int) -> None:
        """The steps from now on belong to ``epoch`` (a loop that counts epochs from 1, or resumes
        with its own count); without it, epochs count from 0 and follow ``epoch_end()``."""
        epoch = check_epoch(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._epoch_start = self.global_step

    def epoch_end(self, model: Any, optimizer: Any, epoch: int, *, scheduler: Any = None,
                  **val_metrics: Any) -> Path | None:
        """Record ``val_metrics`` (``phase="val"``); save and upload a checkpoint (rank 0).

        Args:
            model: the model (a DDP/DataParallel wrapper is unwrapped).
            optimizer: its optimizer (None saves the model only).
            epoch: the epoch that just ended; ``resume`` returns ``epoch + 1``.
            scheduler: an lr scheduler whose state is saved too.
            **val_metrics: validation values (numbers or one-element tensors).

        Returns:
            The checkpoint written, or None (not a checkpoint epoch, or not rank 0).
        """
        epoch = check_epoch(epoch)
        if val_metrics:
            self._ins.log_metrics(val_metrics, step=self.global_step, epoch=epoch, phase="val")
        path = None
        stopping = self._stop.requested
        if self.is_main and self.checkpoint_every and ((epoch + 1) % self.checkpoint_every == 0 or stopping):
            path = self._save(model, optimizer, scheduler, epoch)
        self.epoch = epoch + 1
        self._epoch_start = self.global_step
        self._tic = None
        if stopping:
            self._ins.exit_preempted()
        return path

    def _save(self, model: Any, optimizer: Any, scheduler: Any, epoch: int) -> Path:
        import torch

        state: dict[str, Any] = {"model": unwrap(model).state_dict(), "epoch": epoch, "step": self.global_step,
                                 "samples": self.samples}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        path = self.checkpoint_path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, new_file_mode(path))
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._ins.save_snapshot([path], f"epoch-{epoch:04d}", step=self.global_step,
                                meta={"framework": "torch", "epoch": epoch, "step": self.global_step,
                                      "file": path.name})
        return path

    # --- resume ---------------------------------------------------------------------------------
    def local_checkpoints(self) -> list[Path]:
        """Checkpoints in the run's output directory, newest epoch first."""
        found = []
        try:
            for p in self.output_dir.iterdir():
                m = _CHECKPOINT_RE.match(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        except OSError:
            return []
        return [p for _, p in sorted(found, reverse=True)]

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint: in ``run/<id>/output/``, else the one ``LATEST`` names in storage
        (downloaded into ``run/<id>/output/``); None when there is none."""
        local = self.local_checkpoints()
        if local:
            return local[0]
        return self._download_latest()

    def _download_latest(self) -> Path | None:
        return self._download(self._latest_name())

    def _latest_name(self) -> str | None:
        """The snapshot ``LATEST`` names in storage; None when there is none (or it cannot be read)."""
        base = join_url(self._ins.storage_url, "snapshots")
        try:
            return read_latest(base)
        except ObjectNotFoundError:
            return None
        except (AvaError, OSError) as exc:
            log.warning("could not read LATEST in %s: %s", base, exc)
            return None

    def _download(self, name: str | None) -> Path | None:
        """The checkpoint of snapshot ``name``, downloaded into ``run/<id>/output/``; None if none."""
        if name is None:
            return None
        base = join_url(self._ins.storage_url, "snapshots")
        try:
            store = get_storage(base)
            manifest = json.loads(store.get_text(join_url(base, name, MANIFEST)))
            files = [f["name"] for f in manifest.get("files", []) if _CHECKPOINT_RE.match(str(f.get("name")))]
            if not files:
                log.warning("snapshot %s in %s holds no checkpoint-NNNN.pt; nothing to resume from", name, base)
                return None
            target = self.output_dir / files[0]
            store.download(join_url(base, name, files[0]), target)
            log.info("downloaded checkpoint %s of snapshot %s from %s", files[0], name, base)
            return target
        except ObjectNotFoundError:
            return None
        except (AvaError, OSError, ValueError) as exc:
            log.warning("could not look for a checkpoint in %s: %s", base, exc)
            return None

    def _candidates(self) -> Iterator[Path]:
        """Local checkpoints newest first, with the one in storage in its place by epoch: when
        the newest local one cannot be loaded (a power cut during its write), storage's copy of
        a newer epoch than the next local one is tried before it. Storage is asked only then,
        and ``LATEST`` read once."""
        remote: str | None = None
        asked = tried = False
        for i, path in enumerate(self.local_checkpoints()):
            if i > 0 and not asked:
                asked = True
                remote = self._latest_name()
            if not tried and _snapshot_epoch(remote) > _epoch_of(path):
                tried = True
                downloaded = self._download(remote)
                if downloaded is not None:
                    yield downloaded
            yield path
        if not tried:
            downloaded = self._download(remote if asked else self._latest_name())
            if downloaded is not None:
                yield downloaded

    def resume(self, model: Any, optimizer: Any = None, *, scheduler: Any = None,
               map_location: Any = "cpu") -> tuple[int, int]:
        """Load the newest checkpoint into ``model`` (and ``optimizer``, ``scheduler``).

        Returns:
            ``(start_epoch, step)``: the epoch after the one saved and the step count then;
            ``(0, 0)`` when there is no checkpoint. The monitor continues counting from there.
        """
        import torch

        state = path = None
        for path in self._candidates():
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - an unreadable file: try the one before it
                log.warning("checkpoint %s cannot be loaded (%s); trying an older one", path, exc)
                state = None
                continue
            missing = _not_a_checkpoint(state)
            if missing is None:
                break
            log.warning("%s is not a checkpoint of TorchMonitor.epoch_end (%s); trying an older one", path, missing)
            state = None
        if state is None or path is None:
            try:
                earlier = self._ins.resume_info(download=False)
            except Exception:  # noqa: BLE001 - only for the warning below
                earlier = None
            if earlier is not None and earlier.resumed and earlier.epoch is not None:
                log.warning("instance %s recorded up to epoch %s before, but no checkpoint was found in %s or in "
                            "storage (LATEST missing or damaged?); training starts again at epoch 0",
                            self._ins.training_ins_id, earlier.epoch, self.output_dir)
            return 0, 0
        # Both checked before either is loaded: a mismatch must not leave the model half replaced.
        misfit = _misfit(unwrap(model).state_dict(), state["model"], "model")
        if misfit is None and optimizer is not None and "optimizer" in state:
            misfit = _optimizer_misfit(optimizer.state_dict(), state["optimizer"])
        if misfit is not None:
            raise UsageError(f"checkpoint {path} does not fit the {misfit}; nothing was loaded")
        try:
            unwrap(model).load_state_dict(state["model"])
            if optimizer is not None and "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and "scheduler" in state:
                scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UsageError(f"checkpoint {path} does not fit what was given to resume(): "
                             f"{' '.join(str(exc).split())[:300]}") from None
        epoch, step = int(state["epoch"]), int(state["step"])
        self.epoch, self.global_step, self._epoch_start = epoch + 1, step, step
        self.samples = int(state.get("samples", 0))
        self._tic = None
        self._ins.log_event("resume", step=step, path=str(path), epoch=epoch)
        log.info("resumed from %s: epoch %d done, step %d", path, epoch, step)
        return epoch + 1, step


def _misfit(own: Any, saved: Any, what: str) -> str | None:
    """How the saved state dict differs from ``own`` (keys, shapes) for a message; None if it fits."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    resized = [k for k in own if k in saved and getattr(own[k], "shape", None) is not None
               and tuple(own[k].shape) != tuple(getattr(saved[k], "shape", ()))]
    parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("other shape", resized)) if keys]
    return f"{what} given to resume(): {'; '.join(parts)}" if parts else None


def _optimizer_misfit(own: dict[str, Any], saved: Any) -> str | None:
    """How the saved optimizer state's parameter groups differ from ``own``'s; None if they fit."""
    mine = [len(g["params"]) for g in own.get("param_groups", [])]
    theirs = [len(g.get("params", ())) for g in saved.get("param_groups", [])] if isinstance(saved, dict) else []
    if mine == theirs:
        return None
    return (f"optimizer given to resume(): its parameter groups hold {mine} parameters, "
            f"the checkpoint's {theirs}")


def _snapshot_epoch(name: str | None) -> int:
    """NNNN of a snapshot named ``epoch-NNNN``; -1 for any other name (or none)."""
    m = re.fullmatch(r"epoch-(\d+)", name or "")
    return int(m.group(1)) if m else -1


def _epoch_of(path: Path) -> int:
    m = _CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else -1


def _not_a_checkpoint(state: Any) -> str | None:
    """What a loaded file lacks to be one of :meth:`TorchMonitor.epoch_end`'s checkpoints; None if nothing."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    if not isinstance(state.get("model"), dict):
        return "no 'model' state dict in it"
    for key in ("epoch", "step"):
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), int):
            return f"no integer {key!r} in it"
    return None


_SAMPLES = {"speed": "samples/s"}
_ITERS = {"speed": "iter/s"}

_monitors: "weakref.WeakKeyDictionary[Any, TorchMonitor]" = weakref.WeakKeyDictionary()


def monitor_callback(train_ins: Any, log_every: int | None = None, **kwargs: Any) -> TorchMonitor:
    """``get_monitor_callback("torch", log_every=..., batch_size=...)``: a new :class:`TorchMonitor`.

    ``batch_freq`` (the MXNet name) is accepted for ``log_every``. The monitor becomes the
    instance's current one, whose ``epoch_end`` :func:`epoch_end_callback` returns.
    """
    freq = kwargs.pop("batch_freq", None)
    if log_every is None:
        log_every = freq if freq is not None else 10
    mon = TorchMonitor(train_ins, log_every, **kwargs)
    _monitors[train_ins] = mon
    return mon


def epoch_end_callback(train_ins: Any, **kwargs: Any) -> Any:
    """``get_epoch_end_callback("torch")``: the ``epoch_end(model, optimizer, epoch, **val_metrics)``
    method of the instance's current monitor (one made with ``kwargs`` when there is none, else
    ``kwargs`` are applied to it), so batch and epoch calls share one step count."""
    kwargs.pop("batch_of_epoch", None)  # MXNet-style arguments of the guide: the monitor counts itself
    interval = kwargs.pop("epoch_interval", None)
    if kwargs.pop("other_files", None):
        raise UsageError('get_epoch_end_callback("torch") does not take other_files; upload them with '
                         "train_ins.save_snapshot(files, name)")
    mon = _monitors.get(train_ins)
    if mon is None:
        mon = monitor_callback(train_ins, **kwargs)
    elif kwargs:  # settings for the monitor the batch calls already use, not a second one
        _configure(mon, kwargs)
    if interval is not None:
        mon.checkpoint_every = _positive_int(interval, "epoch_interval")
    return mon.epoch_end


def _configure(mon: TorchMonitor, kwargs: dict[str, Any]) -> None:
    """Apply ``get_epoch_end_callback("torch", ...)``'s settings to the instance's current monitor."""
    freq = kwargs.pop("batch_freq", None)
    if freq is not None and "log_every" not in kwargs:
        kwargs["log_every"] = freq
    unknown = set(kwargs) - {"log_every", "batch_size", "optimizer", "checkpoint_every", "rank"}
    if unknown:
        raise UsageError(f'get_epoch_end_callback("torch") got unknown arguments {sorted(unknown)}; it takes '
                         "log_every, batch_size, optimizer, checkpoint_every and epoch_interval")
    if "rank" in kwargs and kwargs["rank"] != mon.rank:
        raise UsageError(f"the instance's monitor records as rank {mon.rank}, not {kwargs['rank']}; "
                         'give rank= to get_monitor_callback("torch") before any epoch-end callback')
    if kwargs.get("log_every") is not None:  # None: as it is (monitor_callback's default)
        mon.log_every = _positive_int(kwargs["log_every"], "log_every")
    if "batch_size" in kwargs:
        mon.batch_size = None if kwargs["batch_size"] is None else _positive_int(kwargs["batch_size"], "batch_size")
    if "optimizer" in kwargs:
        mon.optimizer = kwargs["optimizer"]
    if "checkpoint_every" in kwargs:
        mon.checkpoint_every = _positive_int(kwargs["checkpoint_every"], "checkpoint_every", allow_zero=True)
