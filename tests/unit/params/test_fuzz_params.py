"""Property tests: whatever a params file holds, reading it raises nothing but ParamsError
(ParamsKeyError for a required key that is missing), and every leaf of a JSON object is
reachable by its escaped dotted key."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ava.errors import ParamsError, ParamsKeyError
from ava.params.params import MAX_DEPTH, Params, split_key

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(codec="utf-8"), max_size=300)
keys = st.text(st.characters(codec="utf-8"), max_size=12)
dotted = st.one_of(keys, st.lists(keys, max_size=4).map(".".join))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), keys
)
json_docs = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(keys, kids, max_size=4)), max_leaves=25)
json_objects = st.dictionaries(keys, json_docs, max_size=5)

# Pieces YAML gives meaning to: tags whose constructors call int()/float()/datetime(), anchors and
# aliases, flow collections, merge keys, timestamps that are not dates, document markers.
YAML_TOKENS = [
    "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!binary", "!!str", "!!seq", "!!map",
    "!!set", "!!omap", "!!pairs", "!!python/object:os.system", "!<tag:yaml.org,2002:int>", "&a", "*a",
    "&b", "*b", "<<:", "? ", "- ", ": ", "{", "}", "[", "]", ",", "'", '"', "|", ">", "#", "%YAML 1.1",
    "---", "...", "\n", "  ", "x", "1", "-1", "0x1G", "0o9", "0b2", "1_000", "1e9999", ".inf", ".nan",
    "2001-02-30", "2001-13-01", "2001-12-14t21:59:43.10-05:00", "2001-12-14 25:61:61", "9999-12-31",
    "yes", "~", "=", "!", "!!", "\t", "abc", "1:2:3", "190:20:30", "0.", "._",
]
yaml_texts = st.lists(st.sampled_from(YAML_TOKENS), max_size=25).map(" ".join)


def _read_everything(p: Params, key: str) -> None:
    """get_all and get_value (plain and required) on ``key``: only our errors may come out."""
    try:
        p.get_all()
        p.get_value(key, default=0)
        p.get_value(key, is_required=True)
    except (ParamsError, ParamsKeyError):
        pass


def _params_with(name: str, content: str | bytes) -> tuple[Params, tempfile.TemporaryDirectory]:
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return Params(tmp.name), tmp


@pytest.mark.parametrize("name", ["default.json", "default.yaml"])
@FUZZ
@given(content=st.one_of(text, st.binary(max_size=300), yaml_texts), key=dotted)
@example(content="[" * 100_000, key="a")
@example(content="[" * 600 + "]" * 600, key="a")
@example(content='{"a": ' + "[" * 600 + "]" * 600 + "}", key="a")
@example(content='{"a": ' + "9" * 5000 + "}", key="a")
@example(content="\ufeff{}", key="a")
@example(content=b"\xef\xbb\xbf{}", key="a")
@example(content="a: !!int abc", key="a")
@example(content="a: !!float ''", key="a")
@example(content="a: !!bool maybe", key="a")
@example(content="a: !!timestamp x", key="a")
@example(content="a: 2001-02-30", key="a")
@example(content="a: &x [*x]", key="a")
@example(content="&x {a: *x}", key="a.a.a")
@example(content="a: " + "[" * 600 + "]" * 600, key="a")
@example(content="a: " + "- " * 600 + "x", key="a")
@example(content="? [a]\n: b", key="a")
@example(content="a: !!binary '@@@'", key="a")
@example(content="a: !!python/object:os.system x", key="a")
@example(content="a: " + "9" * 5000, key="a")
@example(content="a: !!int " + "9" * 5000, key="a")
@example(content='{"a": [1]}', key="a." + "9" * 5000)
def test_any_file_content_raises_only_params_errors(name, content, key):
    p, tmp = _params_with(name, content)
    with tmp:
        _read_everything(p, key)


@FUZZ
@given(doc=json_docs, key=dotted, as_yaml=st.booleans())
@example(doc={"\x85": None}, key="", as_yaml=True)
def test_structured_documents_raise_only_params_errors(doc, key, as_yaml):
    if as_yaml:
        text = yaml.safe_dump(doc, allow_unicode=True)
        # What YAML itself reads back: a raw NEL (U+0085) in a key is a line break to YAML.
        doc = yaml.safe_load(text)
        p, tmp = _params_with("default.yaml", text)
    else:
        p, tmp = _params_with("default.json", json.dumps(doc, ensure_ascii=False))
    with tmp:
        if isinstance(doc, dict) or (doc is None and as_yaml):  # JSON null is refused, YAML's is empty
            assert p.get_all() == (doc or {})
        _read_everything(p, key)


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(".", "\\.")


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, str(i)))
    else:
        yield path, node


@FUZZ
@given(doc=json_objects, fmt=st.sampled_from(["default.json", "default.yaml"]))
def test_every_leaf_is_reachable_by_its_escaped_dotted_key(doc, fmt):
    if fmt.endswith("json"):
        content = json.dumps(doc, ensure_ascii=False)
    else:
        # What PyYAML's own loader reads back is the reference: its emitter does not round-trip
        # every character (a lone "\x85" key comes back as " "), which is not ours to test.
        content = yaml.safe_dump(doc, allow_unicode=True)
        doc = yaml.safe_load(content)
    p, tmp = _params_with(fmt, content)
    with tmp:
        assert p.get_all() == doc
        for path, leaf in _leaves(doc):
            if not path:
                continue
            key = ".".join(map(_escape, path))
            assert split_key(key) == list(path)
            got = p.get_value(key, is_required=True)
            if isinstance(leaf, float) and math.isnan(leaf):
                assert math.isnan(got)
            else:
                assert got == leaf and type(got) is type(leaf)
            assert p.get_value(list(split_key(key)), is_required=True) == got


@FUZZ
@given(doc=json_objects, key=dotted)
def test_a_missing_key_gives_the_default_or_a_key_error(doc, key):
    p, tmp = _params_with("default.json", json.dumps(doc))
    with tmp:
        value = p.get_value(key, default=p)
        assume(value is p)
        with pytest.raises(ParamsKeyError) as err:
            p.get_value(key, is_required=True)
        assert isinstance(err.value, KeyError) and "default.json" in str(err.value)


@pytest.mark.parametrize("name", ["default.json", "default.yaml"])
def test_nesting_up_to_the_limit_is_read_and_beyond_it_is_a_params_error(name):
    deep = "{\"a\": " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "}"
    p, tmp = _params_with(name, deep)
    with tmp:
        assert p.get_value("a" + ".0" * (MAX_DEPTH - 1)) == 1
        assert p.get_all() == json.loads(deep)
    p, tmp = _params_with(name, "{\"a\": " + "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH + "}")
    with tmp, pytest.raises(ParamsError, match="levels deep"):
        p.get_all()
