# The two commands a new user runs: `make demo` and `make test`.
# Both install what is missing first (scripts/setup-host.sh), idempotently.
.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup-host.sh

test: setup
	.venv/bin/python -m pytest

demo: setup
	.venv/bin/python scripts/demo.py

bench: setup
	.venv/bin/python scripts/bench.py

clean:
	rm -rf .venv demo-out bench-out
