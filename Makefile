# Two entry points: `make demo` (the demo leaderboard) and `make test`.
# Both create or reuse .venv first.
.PHONY: setup demo test lint bench

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/unipbench run suites/demo.yaml

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/benchmarks --benchmark-enable -q
