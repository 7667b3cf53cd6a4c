# Every target sets up .venv first when it is missing or out of date.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ava-installed

.PHONY: setup test soak demo bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# 8 ranks under load for AVA_SOAK_SECONDS (default 60); prints the figures docs/reliability.md quotes.
soak: $(STAMP)
	$(PY) -m pytest -s -m soak tests/soak $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo_basic.py
	AVA_WORKSPACE=demo-workspace $(PY) examples/mxnet_digits.py
	AVA_WORKSPACE=demo-workspace $(PY) examples/torch_digits.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-workspace build *.egg-info
