# The two commands a new user needs (see README):
#   make demo  -- install, start memserve-router + prefill + decode on SmolLM2, replay a few chats
#   make test  -- install, run the default test set (slow tests: make test-slow)
PY := .venv/bin/python

.PHONY: install demo test test-slow lint
install:
	bash scripts/install.sh

demo: install
	$(PY) -m sglang_memserve.demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	.venv/bin/ruff check python router test benchmarks
