import json

import pytest

from ava.env import Env, read_config
from ava.errors import ConfigError


def test_done_timeout_default_and_parse():
    assert Env({}).done_timeout == 10.0
    assert Env({"AVA_DONE_TIMEOUT": "2.5"}).done_timeout == 2.5


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf", "1e300", "2592001"])
def test_done_timeout_rejects_bad_values_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="AVA_DONE_TIMEOUT"):
        Env({"AVA_DONE_TIMEOUT": raw}).done_timeout
    with pytest.raises(ConfigError, match="AVA_PREEMPT_TIMEOUT"):
        Env({"AVA_PREEMPT_TIMEOUT": raw}).preempt_timeout


def test_timeouts_up_to_thirty_days_are_taken():
    assert Env({"AVA_DONE_TIMEOUT": "2592000"}).done_timeout == 30 * 86400


def test_job_id_is_third_part_of_job_name():
    assert Env({"JOB_NAME": "ava-train-1234-x"}).job_id == "1234"
    assert Env({"JOB_NAME": "short"}).job_id is None


def test_empty_variable_counts_as_unset():
    assert Env({"AVA_WORKSPACE": ""}).workspace_override is None


def test_hosts_and_keys_fall_back_to_config_files(tmp_path):
    (tmp_path / "worker").write_text(json.dumps({"atnet_status_host": "http://s", "atnet_apiserver_host": "http://a"}))
    (tmp_path / "user.json").write_text(json.dumps({"key": "AK", "secret": "SK", "uid": 1}))
    env = Env({})
    assert env.status_host(tmp_path) == "http://s"
    assert env.api_host(tmp_path) == "http://a"
    assert env.credentials(tmp_path) == ("AK", "SK")
    assert Env({"AVA_STATUS_HOST": "http://env"}).status_host(tmp_path) == "http://env"


def test_config_values_of_the_wrong_type_or_a_directory_are_warned_about_and_not_used(tmp_path, caplog):
    (tmp_path / "worker").write_text(json.dumps({"atnet_apiserver_host": 8080, "atnet_status_host": ["http://x"]}))
    (tmp_path / "user").mkdir()
    env = Env({})
    with caplog.at_level("WARNING", logger="ava.env"):
        assert env.api_host(tmp_path) is None and env.status_host(tmp_path) is None
        assert env.credentials(tmp_path) == (None, None)
    assert "'atnet_apiserver_host' should be text, got int" in caplog.text and str(tmp_path / "worker") in caplog.text
    assert "'atnet_status_host' should be text, got list" in caplog.text
    assert f"{tmp_path / 'user'} is a directory, not a file" in caplog.text


def test_missing_config_reads_as_empty(tmp_path):
    assert read_config(tmp_path, "trainingspec") == {}


def test_malformed_config_names_file_line_and_column(tmp_path):
    (tmp_path / "trainingspec").write_text('{\n  "name": "x",\n  oops\n}')
    with pytest.raises(ConfigError) as info:
        read_config(tmp_path, "trainingspec")
    msg = str(info.value)
    assert str(tmp_path / "trainingspec") in msg and "line 3 column 3" in msg
    assert "\n" not in msg


def test_config_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "user").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a JSON list"):
        read_config(tmp_path, "user")
