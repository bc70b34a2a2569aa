# The two commands a user needs: `make demo` and `make test`.
.PHONY: demo test setup models clean

setup:
	scripts/setup.sh build,dev

test: setup
	.venv/bin/python -m pytest -q

demo: setup
	.venv/bin/edged demo

# Rebuilds everything in firmware_models/ from scratch (about an hour on 2 cores).
models: setup
	.venv/bin/edged model recipe --out firmware_models

clean:
	rm -rf .venv .pytest_cache build *.egg-info
