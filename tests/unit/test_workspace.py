import json
import logging

import pytest

from ava.env import Env
from ava.errors import WorkspaceError
from ava.workspace import LAYOUT_DIRS, Workspace, template_dir


def test_template_has_layout_and_valid_example_params():
    root = template_dir()
    data = json.loads((root / "params" / "default.json").read_text())
    assert isinstance(data, dict) and data
    readme = (root / "README.md").read_text()
    for key in ("solverOps.lr", "layers.0.size", "batch_size", "epochs"):
        assert key in readme


def test_create_makes_layout_and_copies_template(tmp_path):
    ws = Workspace.create(tmp_path / "w")
    for rel in LAYOUT_DIRS:
        assert (ws.root / rel).is_dir()
    assert (ws.params_dir / "default.json").is_file()
    assert not list(ws.root.rglob(".gitkeep"))


def test_init_never_overwrites_existing_files(tmp_path):
    ws = Workspace(tmp_path / "w")
    ws.params_dir.mkdir(parents=True)
    (ws.params_dir / "default.json").write_text('{"mine": 1}')
    written = ws.init()
    assert json.loads((ws.params_dir / "default.json").read_text()) == {"mine": 1}
    assert ws.params_dir / "default.json" not in written


@pytest.mark.parametrize("name", ["default.yaml", "default.yml"])
def test_init_adds_no_template_params_beside_a_users_yaml(tmp_path, name):
    from ava.params.params import Params

    ws = Workspace(tmp_path / "w")
    ws.params_dir.mkdir(parents=True)
    (ws.params_dir / name).write_text("solverOps:\n  lr: 0.5\n")
    ws.init()
    assert sorted(p.name for p in ws.params_dir.iterdir()) == [name]
    assert Params(ws.params_dir).get_value("solverOps.lr") == 0.5


def test_discover_prefers_env(tmp_path):
    ws = Workspace.discover(Env({"AVA_WORKSPACE": str(tmp_path / "x")}))
    assert ws.root == tmp_path / "x"


def test_discover_expands_home_and_takes_blank_as_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "platform").mkdir()
    # The old lookup made a folder literally named "~" (or "  ") under the current directory.
    assert Workspace.discover(Env({"AVA_WORKSPACE": "~/ws"})).root == tmp_path / "ws"
    assert Workspace.discover(Env({"AVA_WORKSPACE": "  "}), default_root=str(tmp_path / "platform")).root == \
        tmp_path / "platform"


def test_a_workspace_variable_naming_a_file_is_said_at_once(tmp_path, capsys, monkeypatch):
    from ava import cli

    (tmp_path / "afile").write_text("x")
    with pytest.raises(WorkspaceError, match=r"AVA_WORKSPACE=.*afile is a file, not a directory"):
        Workspace.discover(Env({"AVA_WORKSPACE": str(tmp_path / "afile")}))
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "afile"))
    code = cli.main(["params", "get", "epochs"])  # it said "key 'epochs' is missing from .../afile/params/..."
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a directory" in err and err.count("\n") == 1


def test_discover_uses_platform_root_when_it_exists(tmp_path):
    (tmp_path / "platform").mkdir()
    ws = Workspace.discover(Env({}), default_root=str(tmp_path / "platform"))
    assert ws.root == tmp_path / "platform"


def test_discover_creates_local_workspace_and_says_so_once(tmp_path, monkeypatch, caplog):
    import ava.workspace as mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mod, "_announced_default", False)
    caplog.set_level(logging.INFO, logger="ava.workspace")
    ws = Workspace.discover(Env({}), default_root=str(tmp_path / "absent"))
    assert ws.root == tmp_path / "workspace"
    assert (ws.params_dir / "default.json").is_file()
    Workspace.discover(Env({}), default_root=str(tmp_path / "absent"))
    created = [r for r in caplog.records if "created a workspace" in r.getMessage()]
    assert len(created) == 1


def test_workspace_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a directory"):
        Workspace(tmp_path / "f").ensure()


def test_uncreatable_workspace_is_a_clear_error():
    with pytest.raises(WorkspaceError, match="cannot create /proc/ava-ws"):
        Workspace("/proc/ava-ws").ensure()
