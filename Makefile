# The course's commands. Each creates .venv from requirements.lock on first use.
#   make course [PROFILE=full|smoke] [LESSONS="00 01"]   plan blocks, student edition, execute the lessons,
#                                                        build the site, record the lessons' running times
#   make test                                            the whole test suite (what CI runs)
#   make test-fast                                       unit tests only, under 2 minutes
#   make test-colab [PYTHON313=...] [LESSONS="02 10"]   every lesson on Colab's own versions
#   make lab                                             JupyterLab on the notebooks
#   make release VERSION=v0.2.0                          badges and setup cells -> tag, commit, tag
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.course-installed
PROFILE ?= full
LESSONS ?=
JOBS ?= 2
# The CPU build of torch 2.13.0 lies in /opt/wheels on the course machines; elsewhere pip finds it on PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: course test test-fast test-colab release lab lint env lock clean browser

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@echo "== creating $(VENV) from requirements.lock (first use: a few minutes) =="
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ is needed; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(FIND_LINKS) -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

course: $(STAMP)
	$(PY) -m course_tools plan
	$(PY) -m course_tools student
	$(PY) -m course_tools course --profile $(PROFILE) $(if $(LESSONS),--lessons $(LESSONS),); status=$$?; \
	  $(PY) -m course_tools plan --update-times build/results && $(PY) -m course_tools student && exit $$status

# Debian's chromium for the site's browser test (tests/test_site_browser.py) and bubblewrap,
# the sandbox of every graded kernel (docs/instructors.md): installed with apt-get when missing
# (sudo when not root). COURSE_SKIP_BROWSER=1 skips chromium and the browser test.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v bwrap >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }
	@if [ "$$COURSE_SKIP_BROWSER" = 1 ]; then echo "COURSE_SKIP_BROWSER=1: no chromium, the browser test is skipped"; \
	else command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; fi

# Unit tests and every lesson (nbval, smoke profile) in parallel; lesson results go to
# build/test-results so that they never mix with a `make course` run's.
test: $(STAMP) browser
	$(PY) -m ruff check course_lib course_tools tests notebooks tools
	$(PY) -m mypy
	rm -rf build/test-results
	COURSE_PROFILE=smoke COURSE_RESULTS_DIR=$(CURDIR)/build/test-results \
	  TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -n $(JOBS) --dist loadgroup --nbval-lax \
	  --durations=15 $(PYTEST_ARGS)

# The inner loop: ruff and the unit tests of both packages, no lesson executed (no nbval, no
# test marked slow).
test-fast: $(STAMP)
	$(PY) -m ruff check course_lib course_tools tests notebooks tools
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow and not network" tests $(PYTEST_ARGS)

# The Colab lane (tools/colab_lane.py): Python 3.13 and colab/versions.txt in build/colab/env
# (built once, ~3 min and ~8 GB), every lesson through its real Colab setup cell, then again
# without TensorFlow (TPU runtimes). PYTHON313 defaults to python3.13 on PATH, else pyenv's.
PYTHON313 ?=
COLAB_VARIANTS ?= gpu tpu
test-colab: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) tools/colab_lane.py $(if $(PYTHON313),--python313 $(PYTHON313),) \
	  --variants $(COLAB_VARIANTS) --jobs $(JOBS) $(if $(LESSONS),--lessons $(LESSONS),)

release: $(STAMP)
	@test -n "$(VERSION)" || { echo "make release VERSION=vX.Y.Z"; exit 2; }
	$(PY) tools/release.py $(VERSION)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

lint: $(STAMP)
	$(PY) -m ruff check course_lib course_tools tests notebooks tools
	$(PY) -m mypy
	$(PY) tools/nbclean.py --check notebooks/*.ipynb

# Re-resolve the lock from pyproject's ranges (needs the package registries).
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install --quiet --upgrade "pip>=24"
	build/lockenv/bin/pip install --quiet $(FIND_LINKS) "torch==2.13.0" -e ".[frameworks,export,tools,site,dev,instructor]"
	{ echo "# Exact versions CI and 'make' install (Python 3.11, CPU builds). Regenerate with: make lock"; \
	  build/lockenv/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

clean:
	rm -rf build
