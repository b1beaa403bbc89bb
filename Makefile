# Two entry points, both self-contained on a fresh machine:
#   make repro   create .venv, install, run the whole DVC pipeline on the embedded default
#   make test    create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds this project is tested with (served from local disk
# on our machines); installed before the project so nothing resolves an unpinned torch.
TORCH := torch==2.14.1 torchvision==0.29.1

# System packages the metrics need: Java for pycocoevalcap's PTB tokenizer and METEOR 1.5,
# WordNet for the pure-Python METEOR fallback (nltk.download() cannot work offline).
APT_PACKAGES := default-jre-headless wordnet-base wordnet-sense-index

.PHONY: setup system-deps repro test clean-venv

setup: system-deps $(VENV)/.installed

system-deps:
	@if command -v java >/dev/null 2>&1 && [ -f /usr/share/wordnet/index.sense ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	else \
		echo "warning: Java and/or WordNet missing; install: $(APT_PACKAGES)" >&2; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

repro: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro
	$(PY) -m pipeline.evaluation.summary metrics/eval.json

test: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
