# Two entry points; each sets up .venv from scratch when needed (exact pins in
# constraints.txt, so torch is the CPU build that lies on disk).
#   make demo   compile a spec from specs/, build it, run it on a sample batch, report
#   make test   run the test suite (what CI runs)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC ?= specs/sgt.arch

.PHONY: demo test clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/archc run $(SPEC) -o out

test: $(BIN)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) out .pytest_cache
