# Every target sets itself up on a fresh machine: a virtual environment in .venv with the CPU
# build of torch (pinned: an unpinned torch pulls a multi-GB CUDA build) and the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast demo lint bench

install: $(VENV)/.installed

# torch through pip, which takes the CPU wheel these machines keep on disk (uv does not look
# there); the rest through uv: the same versions as pip resolves, in seconds instead of minutes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 "uv>=0.9"
	$(BIN)/python -m uv pip install -q --python $(BIN)/python -e ".[model,cpu,test]"
	touch $@

# Every test: what CI runs. pytest-xdist runs TEST_WORKERS processes (a module stays on one;
# tests/conftest.py); a plain `pytest` runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(PYTEST)

# The edit loop: every test but the integration tier (servers, process fleets, benchmarks).
test-fast: install
	$(PYTEST) -m "not integration"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: install
	$(BIN)/timesclip-darts demo

# Every benchmark figure in benchmarks/README.md. bench_accuracy runs the literature's protocol
# on four ETT datasets: hours on 2 CPU cores; it resumes where an interrupted run stopped.
bench: install
	$(BIN)/python -m benchmarks.bench_accuracy
	$(BIN)/python -m benchmarks.bench_speed
	$(BIN)/python -m benchmarks.bench_soak
