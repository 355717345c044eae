# The two entry points the README documents: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test files run in parallel, each on one worker (module fixtures such as a simulator stay per file).
PYTEST_ARGS ?= -n 4 --dist loadfile

.PHONY: venv testbed test demo bench clean

$(BIN)/rollout: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/rollout

testbed:
	bash .ci/testbed all

test: venv testbed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv testbed
	bash examples/docker-host/demo.sh

bench: venv testbed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .testbed .pytest_cache
