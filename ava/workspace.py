"""The workspace: where it is, its layout (CONTRACT.md section 4) and creating it from the template.

Example:
    >>> import tempfile
    >>> ws = Workspace.create(tempfile.mkdtemp() + "/ws")
    >>> sorted(p.name for p in ws.root.iterdir())
    ['README.md', 'data', 'model', 'params', 'run']
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ava.env import Env
from ava.errors import WorkspaceError

log = logging.getLogger(__name__)

#: Directories every workspace has (``config/`` is the platform's and may be absent).
LAYOUT_DIRS = ("params", "data/train", "data/val", "data/test", "model", "run")

_TEMPLATE_SKIP = {".gitkeep"}
#: The hyper-parameter file names, in the order ``ava.params`` looks for them.
PARAMS_FILES = ("default.json", "default.yaml", "default.yml")
_announced_default = False


def template_dir() -> Path:
    """The directory holding ``workspace_template/`` (shipped inside the package)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_workspace_template", here.parent / "workspace_template"):
        if candidate.is_dir():
            return candidate
    raise WorkspaceError(f"the workspace template is missing from {here}; reinstall ava-sdk")


class Workspace:
    """A workspace root and the paths inside it.

    Args:
        root: the workspace directory. Nothing is created until :meth:`ensure` is called.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @classmethod
    def discover(cls, env: Env | None = None, *, default_root: str | None = None) -> "Workspace":
        """Find the workspace the environment points at.

        ``AVA_WORKSPACE`` if set; else ``/workspace`` if it exists; else ``./workspace``, created
        from the template (said once in the log).
        """
        global _announced_default
        env = env or Env()
        override = env.workspace_override
        if override:
            if os.path.exists(override) and not os.path.isdir(override):
                raise WorkspaceError(f"AVA_WORKSPACE={override} is a file, not a directory; point it at the workspace")
            return cls(override)
        platform_root = Path(default_root or "/workspace")
        if platform_root.is_dir():
            return cls(platform_root)
        local = cls(Path.cwd() / "workspace")
        if not local.root.is_dir():
            local.init()
            if not _announced_default:  # a job started in the wrong folder would train on the example params
                log.warning("no AVA_WORKSPACE and no /workspace: created a workspace at %s from the template; "
                            "its params are the template's examples", local.root)
                _announced_default = True
        return local

    @classmethod
    def create(cls, root: Path | str) -> "Workspace":
        """Create (or complete) a workspace at ``root`` from the template and return it."""
        ws = cls(root)
        ws.init()
        return ws

    # --- paths -------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def params_dir(self) -> Path:
        return self.root / "params"

    @property
    def trainset_dir(self) -> Path:
        return self.root / "data" / "train"

    @property
    def valset_dir(self) -> Path:
        return self.root / "data" / "val"

    @property
    def testset_dir(self) -> Path:
        return self.root / "data" / "test"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def runs_dir(self) -> Path:
        return self.root / "run"

    def run_dir(self, instance_id: str) -> Path:
        return self.runs_dir / instance_id

    # --- creation ----------------------------------------------------------------------
    def ensure(self) -> "Workspace":
        """Create the layout's directories if missing; clear error if that is impossible."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(
                f"workspace path {self.root} is a file, not a directory; point AVA_WORKSPACE at a directory"
            )
        for rel in LAYOUT_DIRS:
            self._mkdir(self.root / rel)
        # Data directories may be read-only mounts; only run/ must take our writes.
        if not os.access(self.runs_dir, os.W_OK):
            raise WorkspaceError(
                f"{self.runs_dir} is not writable; make the workspace writable or set AVA_WORKSPACE"
            )
        return self

    def init(self) -> list[Path]:
        """Create the layout and copy the template's files that are not already there.

        Existing files are never overwritten. Returns the files that were written.
        """
        self.ensure()
        written: list[Path] = []
        src_root = template_dir()
        for src in sorted(src_root.rglob("*")):
            rel = src.relative_to(src_root)
            dst = self.root / rel
            if src.is_dir():
                self._mkdir(dst)
            elif src.name not in _TEMPLATE_SKIP and not dst.exists() and not self._has_own_params(dst):
                self._mkdir(dst.parent)
                try:
                    shutil.copyfile(src, dst)
                except OSError as exc:
                    raise WorkspaceError(f"cannot write {dst}: {exc.strerror}; check its permissions") from None
                written.append(dst)
        return written

    def _has_own_params(self, dst: Path) -> bool:
        """Whether ``dst`` is a params file and the workspace already has one of another name
        (the template's default.json beside a user's default.yaml would be read instead of it)."""
        if dst.parent != self.params_dir or dst.name not in PARAMS_FILES:
            return False
        return any((self.params_dir / name).is_file() for name in PARAMS_FILES)

    def _mkdir(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise WorkspaceError(f"{path} exists and is not a directory; move it out of the workspace") from None
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create {path}: {exc.strerror}; make the workspace writable or set AVA_WORKSPACE"
            ) from None
