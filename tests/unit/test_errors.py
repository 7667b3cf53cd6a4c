from ava.errors import AvaError, ParamsKeyError


def test_params_key_error_is_a_key_error_with_a_sentence():
    err = ParamsKeyError("solverOps.lr", "/ws/params/default.json")
    assert isinstance(err, KeyError) and isinstance(err, AvaError)
    assert str(err).startswith("required key 'solverOps.lr' is missing from /ws/params/default.json")
    assert err.key == "solverOps.lr"
