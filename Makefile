# The two commands of the README's quick start, and what they stand on.
# Everything installs from uv.lock (`uv sync --frozen`): the same versions on every machine,
# compiled to bytecode at install (else every process, each step and each `tunepipe` command,
# compiles the ~1,800 modules it imports from source: 5-6 s a process here).

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
CONFIG ?= data/penguins/pipeline.yaml
# `uv run` must never re-resolve: what runs is what uv.lock pins.
export UV_FROZEN := 1

.PHONY: install browser demo test e2e faults clean

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode

## Install, then run the whole pipeline on the bundled penguins data.
demo: install
	$(UV) run tunepipe run --config $(CONFIG)

## Headless Chromium and its driver (Debian's packages), which the tuning report's test opens it in.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }

## Install, then run the test suite: unit, component, compile and CLI tests.
test: install browser
	$(UV) run pytest

## Install, then run whole pipelines end to end with kfp.local (several minutes).
e2e: install
	$(UV) run pytest -m e2e

## Install, then inject faults into whole runs: SIGKILL at seeded moments, a full disk, the
## tracking server lost (tests/faults/, about 15 minutes).
faults: install
	$(UV) run pytest -m faults tests/faults

clean:
	rm -rf tunepipe-out .pytest_cache
