# ett_lightning developer commands. `make demo` and `make test` work on a fresh machine: both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pinned pair: torch 2.14.1 with the torchvision built for it (PyPI's newest torchvision may not import beside it).
# GPU users: make install TORCH_SPEC="torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= data/synthetic
SEEDS ?= 1
DEMO_ARGS ?=

.PHONY: install test test-fast demo shards lint bench clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,eval]'
	touch $@

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow and not ddp"

shards: install
	$(BIN)/ett-make-shards $(DEMO_DATA) --num-train 5000 --num-val 500 --image-size 64 --glyph centred

demo: install shards
	$(BIN)/ett demo --data $(DEMO_DATA) --num-seeds $(SEEDS) $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install shards
	$(BIN)/python benchmarks/data_throughput.py --shards "$(DEMO_DATA)/caption/train-*.tar"
	$(BIN)/python benchmarks/throughput.py --config recipes/demo/ett_sft.yaml
	$(BIN)/python benchmarks/memory.py --ranks 8
	$(BIN)/python benchmarks/memory_check.py

clean:
	rm -rf outputs $(DEMO_DATA) .pytest_cache
