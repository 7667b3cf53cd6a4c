import json
import logging
import os

import pytest

from ava.errors import ParamsError, ParamsKeyError
from ava.params import params
from ava.params.params import Params, split_key


@pytest.fixture
def pdir(tmp_path):
    d = tmp_path / "params"
    d.mkdir()
    return d


def write(pdir, data, name="default.json"):
    (pdir / name).write_text(data if isinstance(data, str) else json.dumps(data))


def test_seed_guide_example_exactly(ws, monkeypatch):
    # The file and the calls of ../shared/seeds/ava-sdk-guide.md, through the old import path.
    (ws.params_dir / "default.json").write_text('{\n    "k1": "v1",\n    "k2": {\n        "k3": "v3"\n    }\n}\n')
    monkeypatch.setenv("AVA_WORKSPACE", str(ws.root))
    assert params.get_value("k1") == "v1"
    assert params.get_value("k2") == {"k3": "v3"}
    assert params.get_value("k2.k3") == "v3"
    assert params.get_value("none", default="default_val") == "default_val"
    assert params.get_all() == {"k1": "v1", "k2": {"k3": "v3"}}


def test_nested_keys_and_list_indices(pdir):
    write(pdir, {"solverOps": {"solverPolicy": {"stepvalue": [30, 60]}}, "layers": [{"size": 256}, {"size": 10}]})
    p = Params(pdir)
    assert p.get_value("solverOps.solverPolicy.stepvalue") == [30, 60]
    assert p.get_value("solverOps.solverPolicy.stepvalue.1") == 60
    assert p.get_value("layers.0.size") == 256
    assert p.get_value("layers.-1.size") == 10
    assert p.get_value("layers.5.size", default="d") == "d"
    assert p.get_value("layers.x", default="d") == "d"
    assert p.get_value("layers.0.size.deeper", default="d") == "d"


def test_keys_containing_dots(pdir):
    write(pdir, {"augment": {"random.crop": True}, "a.b": 1, "a": {"b": 2}})
    p = Params(pdir)
    assert p.get_value(r"augment.random\.crop") is True
    assert p.get_value(["augment", "random.crop"]) is True
    assert p.get_value(r"a\.b") == 1
    assert p.get_value("a.b") == 2


def test_split_key_escapes():
    assert split_key(r"a\.b.c") == ["a.b", "c"]
    assert split_key(r"a\\.b") == ["a\\", "b"]
    assert split_key(["x.y", 0]) == ["x.y", 0]


@pytest.mark.parametrize("key", [5, None, 1.5, {"a": 1}, ["a", 1.5], ["a", None]])
def test_a_key_that_is_neither_a_string_nor_a_list_of_parts_is_a_clear_error(key):
    from ava.errors import UsageError

    with pytest.raises(UsageError, match="a params key is a dotted string or a list of parts"):
        split_key(key)


def test_cache_is_refreshed_when_the_file_changes(pdir):
    write(pdir, {"lr": 0.1})
    p = Params(pdir)
    assert p.get_value("lr") == 0.1
    write(pdir, {"lr": 0.25, "more": True})
    st = (pdir / "default.json").stat()
    os.utime(pdir / "default.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert p.get_value("lr") == 0.25


def test_use_cache_false_rereads_even_with_same_stat(pdir):
    write(pdir, {"lr": 0.1})
    p = Params(pdir)
    st = (pdir / "default.json").stat()
    assert p.get_value("lr") == 0.1
    write(pdir, {"lr": 0.2})  # same size
    os.utime(pdir / "default.json", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.get_value("lr") == 0.1
    assert p.get_value("lr", use_cache=False) == 0.2


def test_returned_structures_are_copies(pdir):
    write(pdir, {"a": {"b": [1]}})
    p = Params(pdir)
    p.get_value("a")["b"].append(2)
    p.get_all()["a"]["b"].append(3)
    assert p.get_value("a.b") == [1]


def test_missing_file_reads_as_empty(pdir):
    p = Params(pdir)
    assert p.get_all() == {}
    assert p.get_value("x", default=3) == 3


def test_required_missing_key_names_key_and_file(pdir):
    write(pdir, {"a": 1})
    with pytest.raises(KeyError) as info:
        Params(pdir).get_value("solverOps.lr", is_required=True)
    assert isinstance(info.value, ParamsKeyError)
    assert "'solverOps.lr'" in str(info.value) and str(pdir / "default.json") in str(info.value)


def test_malformed_json_names_file_line_and_column(pdir):
    write(pdir, '{\n  "lr": 0.1,\n  "epochs": ,\n}')
    with pytest.raises(ParamsError) as info:
        Params(pdir).get_all()
    msg = str(info.value)
    assert str(pdir / "default.json") in msg and "line 3 column 13" in msg and "\n" not in msg


def test_a_json_params_file_of_null_is_refused_and_a_yaml_one_of_comments_reads_as_empty(pdir, caplog):
    write(pdir, "null\n")
    with pytest.raises(ParamsError, match=r"default.json holds null at top level"):
        Params(pdir).get_all()
    (pdir / "default.json").unlink()
    write(pdir, "# lr: 0.1\n", name="default.yaml")
    with caplog.at_level(logging.WARNING, logger="ava.params.params"):
        assert Params(pdir).get_all() == {}
    assert "holds no keys" in caplog.text


def test_params_file_that_is_a_list_is_refused(pdir):
    write(pdir, [1, 2, 3])
    with pytest.raises(ParamsError, match="holds a list at top level"):
        Params(pdir).get_value("a")


def test_yaml_params(pdir):
    write(pdir, "solverOps:\n  lr: 0.01\nlayers:\n  - size: 3\n", name="default.yaml")
    p = Params(pdir)
    assert p.get_value("solverOps.lr") == 0.01
    assert p.get_value("layers.0.size") == 3


def test_malformed_yaml_names_file_line_and_column(pdir):
    write(pdir, "a: 1\nb: [1, 2\nc: 3\n", name="default.yml")
    with pytest.raises(ParamsError) as info:
        Params(pdir).get_all()
    msg = str(info.value)
    assert str(pdir / "default.yml") in msg and "line 3 column" in msg


def test_yaml_keys_written_as_numbers_are_reached_by_a_dotted_key(pdir):
    write(pdir, "lr_schedule:\n  30: 0.1\n  60: 0.01\nlayers:\n  - 8\n", name="default.yaml")
    p = Params(pdir)
    assert p.get_value("lr_schedule.30") == 0.1 and p.get_value(["lr_schedule", 60]) == 0.01
    assert p.get_value("layers.0") == 8 and p.get_value("lr_schedule.90", default="none") == "none"


def test_json_wins_over_yaml_and_that_is_said_once(pdir, caplog):
    write(pdir, {"a": "json"})
    write(pdir, "a: yaml\n", name="default.yaml")
    p = Params(pdir)
    with caplog.at_level(logging.WARNING, logger="ava.params.params"):
        assert [p.get_value("a") for _ in range(5)] == ["json"] * 5
    said = [r.getMessage() for r in caplog.records if "several params files" in r.getMessage()]
    assert len(said) == 1 and "default.json, default.yaml" in said[0]  # was once per get_value


def test_a_params_folder_that_cannot_be_searched_is_a_params_error(pdir, monkeypatch):
    from pathlib import Path

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", refuse)  # what a 0700 workspace of another user gives
    with pytest.raises(ParamsError, match=r"cannot look for params file .*default\.json: Permission denied"):
        Params(pdir).get_value("a")


def test_binary_garbage_is_a_params_error(pdir):
    (pdir / "default.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ParamsError, match="not UTF-8"):
        Params(pdir).get_all()


def test_values_are_never_logged(pdir, caplog):
    write(pdir, {"secret_key": "S3CR3T-VALUE", "nested": {"token": "T0KEN"}})
    caplog.set_level(logging.DEBUG)
    p = Params(pdir)
    p.get_all()
    p.get_value("nested.token")
    p.get_value("missing", default=None)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "S3CR3T-VALUE" not in text and "T0KEN" not in text


def test_a_key_repeated_in_one_object_is_warned_about(pdir, caplog):
    (pdir / "default.json").write_text('{"lr": 0.1, "epochs": 3, "lr": 0.5}')
    with caplog.at_level("WARNING", logger="ava.params.params"):
        assert Params(pdir).get_value("lr") == 0.5
    assert "key 'lr' appears twice" in caplog.text and "default.json" in caplog.text


@pytest.mark.parametrize("make, said", [
    (lambda p: p.mkdir(), "is a directory, not a file"),
    (lambda p: p.symlink_to(p.parent / "gone.json"), "which does not exist"),
])
def test_a_params_path_that_is_not_a_file_is_a_clear_error_not_a_missing_key(pdir, make, said):
    from ava.errors import ParamsError

    make(pdir / "default.json")
    with pytest.raises(ParamsError, match=said):
        Params(pdir).get_value("lr")
