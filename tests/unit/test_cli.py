import json
import subprocess
import sys

import pytest

from ava.cli import main


def test_init_then_params_get(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "ws"))
    assert main(["init"]) == 0
    assert "wrote params/default.json" in capsys.readouterr().out
    assert main(["params", "get", "solverOps.lr"]) == 0
    assert json.loads(capsys.readouterr().out) == 0.01
    assert main(["params", "get", "layers.0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "fc1", "size": 256}
    assert main(["params", "get", r"augment.random\.crop"]) == 0
    assert capsys.readouterr().out.strip() == "true"


def test_params_get_from_a_workspace_that_does_not_exist_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "typo"))
    assert main(["params", "get", "solverOps.lr"]) == 2
    assert "default.json, which does not exist (is AVA_WORKSPACE right?)" in capsys.readouterr().err


def test_init_of_a_file_names_the_argument(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["init", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err.strip() == f"ava: ava init {tmp_path / 'f'}: {tmp_path / 'f'} is a file, not a directory; give a directory"


def test_init_into_a_directory_argument_twice(tmp_path, capsys):
    assert main(["init", str(tmp_path / "w")]) == 0
    assert main(["init", str(tmp_path / "w")]) == 0
    assert "nothing overwritten" in capsys.readouterr().out


def test_init_without_a_folder_completes_the_platforms_workspace(tmp_path, monkeypatch, capsys):
    import ava.cli as cli_mod

    platform = tmp_path / "platform-ws"
    platform.mkdir()
    monkeypatch.delenv("AVA_WORKSPACE", raising=False)
    monkeypatch.setattr(cli_mod, "DEFAULT_WORKSPACE", str(platform))
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    # It made ./workspace, while everything else reads /workspace when it exists.
    assert (platform / "params" / "default.json").is_file() and not (tmp_path / "workspace").exists()
    assert f"workspace ready at {platform}" in capsys.readouterr().out


def test_missing_key_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "ws"))
    main(["init"])
    capsys.readouterr()
    assert main(["params", "get", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "--default" in err
    assert main(["params", "get", "nope", "--default", "[1, 2]"]) == 0
    assert json.loads(capsys.readouterr().out) == [1, 2]
    assert main(["params", "get", "nope", "--default", "plain"]) == 0
    assert capsys.readouterr().out.strip() == '"plain"'


def test_malformed_params_exit_2_naming_the_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "ws" / "params").mkdir(parents=True)
    (tmp_path / "ws" / "params" / "default.json").write_text("{oops")
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path / "ws"))
    assert main(["params", "get", "a"]) == 2
    err = capsys.readouterr().err
    assert "default.json is not valid JSON" in err and "line 1 column 2" in err


def test_console_script_and_module_entry(tmp_path):
    env_ws = str(tmp_path / "ws")
    for cmd in ([sys.executable, "-m", "ava"], [str(__import__("pathlib").Path(sys.executable).parent / "ava")]):
        out = subprocess.run([*cmd, "init", env_ws], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, "-m", "ava", "params"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_a_command_imports_only_its_own_module_and_help_lists_every_command(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("I0216 11:58:39.623576 17497 solver.cpp:189] Iteration 0, loss = 2.5\n")
    probe = ("import sys; from ava.cli import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in ('ava.run_cmd', 'ava.runs', 'ava.transfer_cli', 'ava.parse_log') "
             "if m in sys.modules), file=sys.stderr); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe, "parse-log", "caffe", str(log), "--year", "2015"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"name":"smoothed_loss","value":2.5' in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "['ava.parse_log']"
    helped = subprocess.run([sys.executable, "-m", "ava", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for command in ("init", "params", "run", "parse-log", "runs", "upload", "fetch"):
        assert command in helped.stdout
    unknown = subprocess.run([sys.executable, "-m", "ava", "nosuch"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr


def test_params_get_prints_strict_json_for_any_value_a_params_file_can_hold(tmp_path, monkeypatch, capsys):
    (tmp_path / "params").mkdir(parents=True)
    (tmp_path / "params" / "default.yaml").write_text(
        "when: 2024-01-02\nstamp: 2024-01-02T03:04:05Z\nblob: !!binary aGVsbG8=\ntags: !!set {b: null, a: null}\n"
        "bad: .nan\nneg: -.inf\nnested: {x: [1, .inf]}\n")
    monkeypatch.setenv("AVA_WORKSPACE", str(tmp_path))
    want = {"when": "2024-01-02", "stamp": "2024-01-02T03:04:05+00:00", "blob": "aGVsbG8=", "tags": ["a", "b"],
            "bad": "nan", "neg": "-inf", "nested": {"x": [1, "inf"]}}
    for key, value in want.items():
        assert main(["params", "get", key]) == 0
        out = capsys.readouterr().out
        assert json.loads(out) == value, key  # strict JSON: no NaN/Infinity literals
        assert "NaN" not in out and "Infinity" not in out
    (tmp_path / "params" / "default.yaml").unlink()
    (tmp_path / "params" / "default.json").write_text('{"s": "\\ud800x"}')  # a lone surrogate
    assert main(["params", "get", "s"]) == 0
    assert capsys.readouterr().out.strip() == '"\\ud800x"'
