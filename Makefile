# Two commands do all the set-up on a fresh machine:
#   make demo   installs kd-compile into .venv and runs the bundled glyphs example end to end
#   make test   installs kd-compile (with test tools) into .venv and runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

examples/glyphs/teacher.pt: | install
	$(BIN)/python examples/glyphs/train_teacher.py

demo: install examples/glyphs/teacher.pt
	$(BIN)/kd-compile examples/glyphs/teacher.pt --target 2080ti --max-params 62K --out runs/demo --force

test: install
	$(BIN)/ruff check kd_compile tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/e2e_glyphs.py

lint: install
	$(BIN)/ruff check kd_compile tests benchmarks examples

clean:
	rm -rf runs .pytest_cache .kd_cache
