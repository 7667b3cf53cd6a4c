"""The platform's side of a training instance: create or find it at start, update it at the end.

Every failure degrades to a warning and a local-only instance: a training never stops or hangs
because the API server is down. Without an API host there is no link at all.

Example:
    >>> from ava.env import Env
    >>> PlatformLink.from_env(Env({}), None) is None
    True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ava.env import CONFIG_TRAININGSPEC, Env, read_config
from ava.errors import AvaError
from ava.train.ids import as_instance_id

log = logging.getLogger(__name__)


class PlatformLink:
    """One training's API calls, each bounded and never raising.

    Args:
        client: a :class:`ava.platform.client.PlatformClient`.
        training: the training (job) name in the API paths.
    """

    def __init__(self, client: Any, training: str) -> None:
        self.client = client
        self.training = training
        self.spec: dict[str, Any] = {}
        self.remote_id: str | None = None

    @classmethod
    def from_env(cls, env: Env, config_dir: Path | None) -> "PlatformLink | None":
        try:
            host = env.api_host(config_dir)
            if not host:
                return None
            from ava.platform.client import PlatformClient

            ak, sk = env.credentials(config_dir)
            training = ""
            if config_dir is not None:
                name = read_config(config_dir, CONFIG_TRAININGSPEC).get("name")
                if name is not None and not isinstance(name, str):
                    log.warning("platform config file %s: 'name' should be text, got %s; not used",
                                config_dir / CONFIG_TRAININGSPEC, type(name).__name__)
                    name = None
                training = name or ""
            training = training or env.job_name or "default"
            return cls(PlatformClient(host, ak, sk, deadline=min(15.0, max(1.0, env.done_timeout))), training)
        except AvaError as exc:
            log.warning("platform API not used: %s; this instance is local-only", exc)
            return None

    def open(self, instance_id: str | None, spec: dict[str, Any]) -> str | None:
        """Create the instance (or find the one with ``instance_id``); its id, or None on failure."""
        self.spec = dict(spec)
        try:
            if instance_id is not None:
                found = self.client.get_instance(self.training, instance_id)
                if found is not None:
                    # A resumed run: the attempt before's end (its error, its stop time) is not this one's.
                    earlier = {k: v for k, v in found.items() if k not in ("errMsg", "stopTime")}
                    self.spec = {**earlier, "errMsg": "", "stopTime": None, **spec}
                    self.client.update_instance(self.training, instance_id, self.spec)
                    return instance_id
                self.spec["id"] = instance_id
            created = self.client.create_instance(self.training, self.spec)
            self.spec = created
            remote = str(created["id"])
            local = as_instance_id(remote)
            if local != remote:
                log.warning("platform API: instance id %.80r cannot be a directory name; it is %s here", remote, local)
            self.remote_id = remote
            return local
        except AvaError as exc:
            log.warning("platform API: cannot open the training instance (%s); continuing as a local instance", exc)
            return None

    def finish(self, instance_id: str, status: str, err_msg: str, start_time: str, stop_time: str, *,
               deadline: float | None = None) -> None:
        remote = self.remote_id or instance_id  # the platform's own id, when it gave one that is not a name here
        spec = dict(self.spec, id=remote, status=status, errMsg=err_msg, startTime=start_time, stopTime=stop_time)
        try:
            self.client.update_instance(self.training, remote, spec, deadline=deadline)
        except AvaError as exc:
            log.warning("platform API: cannot report the end of instance %s (%s); status.json has it", instance_id, exc)
