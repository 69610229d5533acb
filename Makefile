# parlab: the two commands of the README.
#   make reproduce   set up .venv, generate SynthPA, run every notebook headless (default profile)
#   make test        set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
# torch and torchvision must be a matching pair; these are the builds that
# install on x86-64 and aarch64 Linux here. Override on other platforms, e.g.
#   make TORCH_SPEC="torch torchvision" test
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: venv reproduce test synthpa clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

synthpa: venv
	$(PY) -m parlab.data.synthpa data/synthpa --size default

reproduce: venv synthpa
	$(PY) -m parlab.reproduce --profile $(PROFILE)

test: venv
	$(PY) -m pytest

clean:
	rm -rf runs figures/*.pdf figures/*.png figures/*.csv data/synthpa data/synthpa-smoke
