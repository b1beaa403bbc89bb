# Two entry points, both self-contained on a fresh machine:
#   make repro   create .venv, install, run the whole DVC pipeline on the embedded default
#   make test    create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds this project is tested with (served from local disk
# on our machines); installed before the project so nothing resolves an unpinned torch.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup repro test bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

repro: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc metrics show

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
