import json

from tests.conftest import run_python

HEAVY = ["torch", "mxnet", "boto3", "qiniu", "tornado", "numpy", "yaml"]


def test_import_ava_and_core_modules_pull_in_nothing_heavy():
    code = (
        "import sys, json\n"
        "import ava, ava.cli, ava.train.base, ava.params.params, ava.log.logger, ava.metrics.writer\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
