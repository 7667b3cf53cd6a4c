"""Every environment variable and platform `config/` file `ava` reads, in one place.

Nothing is read at import time. An :class:`Env` wraps a mapping (``os.environ`` unless told
otherwise) and answers questions lazily; the library never writes to ``os.environ``.

Example:
    >>> env = Env({"AVA_WORKSPACE": "/tmp/ws", "AVA_DONE_TIMEOUT": "3"})
    >>> env.done_timeout
    3.0
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ava.errors import ConfigError

log = logging.getLogger(__name__)

# Variable names (CONTRACT.md section 3).
AVA_WORKSPACE = "AVA_WORKSPACE"
AVA_TRAINING_INSTANCE_ID = "AVA_TRAINING_INSTANCE_ID"
JOB_NAME = "JOB_NAME"
AVA_STORAGE_URL = "AVA_STORAGE_URL"
AVA_STATUS_HOST = "AVA_STATUS_HOST"
AVA_API_HOST = "AVA_API_HOST"
AVA_ACCESS_KEY = "AVA_ACCESS_KEY"
AVA_SECRET_KEY = "AVA_SECRET_KEY"
AVA_S3_ENDPOINT = "AVA_S3_ENDPOINT"
AVA_DONE_TIMEOUT = "AVA_DONE_TIMEOUT"
AVA_TENSORBOARD = "AVA_TENSORBOARD"
AVA_LOG_LEVEL = "AVA_LOG_LEVEL"
AVA_PREEMPT_TIMEOUT = "AVA_PREEMPT_TIMEOUT"
AVA_HANDLE_SIGNALS = "AVA_HANDLE_SIGNALS"
AVA_TLS_VERIFY = "AVA_TLS_VERIFY"  # "0" turns off certificate checks (and says so once)
#: Set by ``ava run`` for its command: where the instance it holds takes what the command records.
AVA_RUN_LISTENER = "AVA_RUN_LISTENER"

# Ranks, as each launcher sets them: (global rank, world size, local rank).
RANK = "RANK"  # torchrun (torch.distributed.run)
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"  # torchrun's --rdzv-id; "none" when not given
OMPI_COMM_WORLD_RANK = "OMPI_COMM_WORLD_RANK"  # Open MPI's mpirun (Horovod over MPI too)
OMPI_COMM_WORLD_SIZE = "OMPI_COMM_WORLD_SIZE"
OMPI_COMM_WORLD_LOCAL_RANK = "OMPI_COMM_WORLD_LOCAL_RANK"
PMI_RANK = "PMI_RANK"  # MPICH / Intel MPI (Hydra)
PMI_SIZE = "PMI_SIZE"
MPI_LOCALRANKID = "MPI_LOCALRANKID"
HOROVOD_RANK = "HOROVOD_RANK"  # horovodrun with its Gloo controller
HOROVOD_SIZE = "HOROVOD_SIZE"
HOROVOD_LOCAL_RANK = "HOROVOD_LOCAL_RANK"
SLURM_PROCID = "SLURM_PROCID"  # srun
SLURM_NTASKS = "SLURM_NTASKS"
SLURM_LOCALID = "SLURM_LOCALID"
SLURM_JOB_ID = "SLURM_JOB_ID"
SLURM_STEP_ID = "SLURM_STEP_ID"
DMLC_ROLE = "DMLC_ROLE"  # MXNet's parameter-server launchers (dmlc-tracker)
DMLC_WORKER_ID = "DMLC_WORKER_ID"
DMLC_TASK_ID = "DMLC_TASK_ID"
DMLC_NUM_WORKER = "DMLC_NUM_WORKER"

#: Launchers in order of precedence: (name, rank variable, world-size variable, local-rank variable).
#: The first whose rank variable is set gives all three numbers; a torchrun started by mpirun or
#: srun (one agent per node) is thus numbered by torchrun, not by the outer launcher.
RANK_SOURCES: tuple[tuple[str, str, str, str | None], ...] = (
    ("torchrun", RANK, WORLD_SIZE, LOCAL_RANK),
    ("openmpi", OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK),
    ("pmi", PMI_RANK, PMI_SIZE, MPI_LOCALRANKID),
    ("horovod", HOROVOD_RANK, HOROVOD_SIZE, HOROVOD_LOCAL_RANK),
    ("slurm", SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID),
    ("dmlc", DMLC_WORKER_ID, DMLC_NUM_WORKER, None),  # only with DMLC_ROLE=worker; DMLC_TASK_ID as well
)
#: Every variable a launcher sets that ``ava`` reads for ranks or for the run's shared id.
RANK_VARIABLES = frozenset(
    [name for source in RANK_SOURCES for name in source[1:] if name is not None]
    + [DMLC_ROLE, DMLC_TASK_ID, TORCHELASTIC_RUN_ID, SLURM_JOB_ID, SLURM_STEP_ID]
)

DEFAULT_WORKSPACE = "/workspace"
DEFAULT_DONE_TIMEOUT = 10.0
DEFAULT_PREEMPT_TIMEOUT = 20.0
#: The longest ``AVA_DONE_TIMEOUT``/``AVA_PREEMPT_TIMEOUT`` taken (30 days): a deadline must be a time.
MAX_SECONDS = 30 * 86400.0

# Names of the platform-provided files under <workspace>/config/.
CONFIG_USER = "user"
CONFIG_WORKER = "worker"
CONFIG_TRAININGSPEC = "trainingspec"


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file, turning a syntax error into a one-line :class:`ConfigError`.

    Args:
        path: the file.
        what: a few words saying what the file is, for the message.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


class Env:
    """A lazy view of the environment a training runs in.

    Args:
        environ: the variables to read; ``os.environ`` when omitted. Tests pass a dict.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return a variable, treating an empty value as unset."""
        value = self._environ.get(name)
        return value if value else default

    # --- workspace ---------------------------------------------------------------------
    @property
    def workspace_override(self) -> str | None:
        """The workspace root the environment asks for, if any (``~`` expanded; blank is unset)."""
        value = (self.get(AVA_WORKSPACE) or "").strip()
        return os.path.expanduser(value) if value else None

    @property
    def workspace_config_dir(self) -> Path | None:
        """The workspace's ``config/`` as ``Workspace.discover`` would find it, without creating anything."""
        override = self.workspace_override
        if override:
            return Path(override) / "config"
        for root in (Path(DEFAULT_WORKSPACE), Path.cwd() / "workspace"):
            if root.is_dir():
                return root / "config"
        return None

    @property
    def training_instance_id(self) -> str | None:
        return self.get(AVA_TRAINING_INSTANCE_ID)

    @property
    def job_name(self) -> str | None:
        return self.get(JOB_NAME)

    @property
    def job_id(self) -> str | None:
        """The job id: the third ``-``-separated part of ``JOB_NAME`` (old AVA convention)."""
        parts = (self.job_name or "").split("-")
        return parts[2] if len(parts) >= 3 and parts[2] else None

    # --- services ----------------------------------------------------------------------
    @property
    def storage_url(self) -> str | None:
        return self.get(AVA_STORAGE_URL)

    @property
    def s3_endpoint(self) -> str | None:
        return self.get(AVA_S3_ENDPOINT)

    @property
    def tls_verify(self) -> bool:
        """False only when ``AVA_TLS_VERIFY`` is ``0``/``false``/``no``/``off``: certificates are checked."""
        return (self.get(AVA_TLS_VERIFY) or "").strip().lower() not in {"0", "false", "no", "off"}

    @property
    def ca_bundle(self) -> str | None:
        """A CA bundle for HTTPS clients: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``; None when unset."""
        return self.get("REQUESTS_CA_BUNDLE") or self.get("CURL_CA_BUNDLE")

    @property
    def done_timeout(self) -> float:
        """Seconds ``done()`` may wait for delivery (``AVA_DONE_TIMEOUT``, default 10)."""
        return self._seconds(AVA_DONE_TIMEOUT, DEFAULT_DONE_TIMEOUT)

    @property
    def preempt_timeout(self) -> float:
        """Seconds the preemption path may wait for uploads and delivery (``AVA_PREEMPT_TIMEOUT``, default 20)."""
        return self._seconds(AVA_PREEMPT_TIMEOUT, DEFAULT_PREEMPT_TIMEOUT)

    @property
    def handle_signals(self) -> bool:
        """Whether a TrainInstance turns SIGTERM/SIGINT into a stop request (``AVA_HANDLE_SIGNALS=0`` opts out)."""
        return (self.get(AVA_HANDLE_SIGNALS) or "1").strip().lower() not in {"0", "false", "no", "off"}

    def _seconds(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number of seconds; set it to e.g. {default:g}") from None
        if not 0 <= value <= MAX_SECONDS:  # nan and inf too: a deadline of inf cannot be computed
            raise ConfigError(f"{name}={raw!r} must be a number of seconds from 0 to {MAX_SECONDS:.0f} (30 days)")
        return value

    @property
    def tensorboard(self) -> bool:
        return (self.get(AVA_TENSORBOARD) or "").strip().lower() in {"1", "true", "yes", "on"}

    # --- ranks -----------------------------------------------------------------------------
    def _rank_vars(self) -> tuple[str, str, str, str | None] | None:
        """The launcher that numbered this process: (name, rank var, size var, local var), or None."""
        for source in RANK_SOURCES:
            name, rank_var = source[0], source[1]
            if name == "dmlc":
                if (self.get(DMLC_ROLE) or "").strip().lower() != "worker":
                    continue
                if self.get(DMLC_WORKER_ID) is None and self.get(DMLC_TASK_ID) is not None:
                    return (name, DMLC_TASK_ID, source[2], None)
            if self.get(rank_var) is not None:
                return source
        return None

    def _int_var(self, name: str, minimum: int) -> int | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer; the launcher sets it, so check how it was started") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be {minimum} or more")
        return value

    @property
    def rank_source(self) -> str | None:
        """Which launcher numbered this process (``torchrun``, ``openmpi``, ``pmi``, ``horovod``,
        ``slurm``, ``dmlc``), or None when none did.

        Example:
            >>> Env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}).rank_source
            'openmpi'
        """
        found = self._rank_vars()
        return found[0] if found else None

    @property
    def rank(self) -> int:
        """This process's global rank: from the first launcher in :data:`RANK_SOURCES` that set
        one (``RANK`` for torchrun); 0 when none did.

        Raises:
            ConfigError: the variable is not an integer, is negative, or is not below the world size.
        """
        found = self._rank_vars()
        if found is None:
            return 0
        _, rank_var, size_var, _ = found
        value = self._int_var(rank_var, 0)
        assert value is not None
        size = self._int_var(size_var, 1)
        if size is not None and value >= size:
            raise ConfigError(f"{rank_var}={value} is not below {size_var}={size}; ranks count from 0")
        return value

    @property
    def world_size(self) -> int | None:
        """How many ranks the run has: 1 when no launcher numbered this process; None when one
        gave a rank but no size (a bare ``RANK`` set by hand).

        Example:
            >>> Env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).world_size
            2
        """
        found = self._rank_vars()
        if found is None:
            return 1
        _ = self.rank  # checks the rank against the size
        return self._int_var(found[2], 1)

    @property
    def local_rank(self) -> int | None:
        """This process's rank on its machine: 0 when no launcher numbered it; None when the
        launcher does not say (MXNet's, or an MPI without ``MPI_LOCALRANKID``)."""
        found = self._rank_vars()
        if found is None:
            return 0
        local_var = found[3]
        if local_var is None:
            return None
        value = self._int_var(local_var, 0)
        size = self.world_size
        if value is not None and size is not None and value >= size:
            raise ConfigError(f"{local_var}={value} is not below the world size {size}")
        return value

    @property
    def torchelastic_run_id(self) -> str | None:
        """torchrun's run id (``--rdzv-id``); None when unset or torchrun's default ``"none"``."""
        value = self.get(TORCHELASTIC_RUN_ID)
        return None if value is None or value.strip().lower() == "none" else value

    @property
    def slurm_job_step(self) -> tuple[str, str | None] | None:
        """(``SLURM_JOB_ID``, ``SLURM_STEP_ID`` or None), or None outside a Slurm job."""
        job = self.get(SLURM_JOB_ID)
        return None if job is None else (job, self.get(SLURM_STEP_ID))

    @property
    def run_listener(self) -> str | None:
        """The socket of the ``ava run`` that holds :attr:`training_instance_id` (set for its command)."""
        return self.get(AVA_RUN_LISTENER)

    @property
    def log_level(self) -> str | None:
        return self.get(AVA_LOG_LEVEL)

    def status_host(self, config_dir: Path | None = None) -> str | None:
        """The metric endpoint: ``AVA_STATUS_HOST``, else ``config/worker`` ``atnet_status_host``."""
        return self.get(AVA_STATUS_HOST) or self._config_value(config_dir, CONFIG_WORKER, "atnet_status_host")

    def api_host(self, config_dir: Path | None = None) -> str | None:
        """The platform API: ``AVA_API_HOST``, else ``config/worker`` ``atnet_apiserver_host``."""
        return self.get(AVA_API_HOST) or self._config_value(config_dir, CONFIG_WORKER, "atnet_apiserver_host")

    def credentials(self, config_dir: Path | None = None) -> tuple[str | None, str | None]:
        """(access key, secret key): ``AVA_ACCESS_KEY``/``AVA_SECRET_KEY``, else ``config/user``."""
        ak = self.get(AVA_ACCESS_KEY) or self._config_value(config_dir, CONFIG_USER, "key")
        sk = self.get(AVA_SECRET_KEY) or self._config_value(config_dir, CONFIG_USER, "secret")
        return ak, sk

    def _config_value(self, config_dir: Path | None, name: str, key: str) -> str | None:
        if config_dir is None:
            return None
        value = read_config(config_dir, name).get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            log.warning("platform config file %s: %r should be text, got %s; not used",
                        config_path(config_dir, name), key, type(value).__name__)
            return None
        return value


def config_path(config_dir: Path, name: str) -> Path | None:
    """The file for config ``name`` (``name`` or ``name.json``), or None when absent."""
    for candidate in (config_dir / name, config_dir / f"{name}.json"):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            log.warning("platform config %s is a directory, not a file; not used", candidate)
    return None


def read_config(config_dir: Path, name: str) -> dict[str, Any]:
    """Read a platform config file (``user``, ``worker``, ``trainingspec``, ...).

    Returns ``{}`` when the file is absent. Raises :class:`ConfigError` naming the file when it
    is not a JSON object.

    Example:
        >>> read_config(Path("/nonexistent"), "worker")
        {}
    """
    path = config_path(config_dir, name)
    if path is None:
        return {}
    data = read_json_file(path, "platform config file")
    if not isinstance(data, dict):
        raise ConfigError(
            f"platform config file {path} holds a JSON {type(data).__name__}, expected an object"
        )
    return data
