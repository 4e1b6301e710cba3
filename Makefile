# Every install step lives here: `make test` and `make train` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test train bench clean

install: $(STAMP)

# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build.
# The Waymo protos package pins tensorflow and an old numpy: it goes in with --no-deps and needs
# only protobuf.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7
	# The official LPIPS package (the twin tests/chopgrad_core/test_twins.py compares against): with
	# its dependencies it would pull another torch and torchvision, which the tests do not need.
	$(BIN)/pip install -q --no-deps lpips==0.1.4
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

train: $(STAMP)
	$(BIN)/python -m drivegen.train

bench: $(STAMP)
	$(BIN)/python benchmarks/chopgrad_memory.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
