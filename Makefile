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
# llama.cpp for GGUF arms (envs/llama-cpp.txt says why these flags): portable x86-64-v3 kernels,
# the Python bindings' libraries only, built from the source distribution the converter comes
# from (about 5 minutes on 2 cores).
LLAMA_CPP := $(shell sed -n 's/^llama-cpp-python==//p' envs/llama-cpp.txt)
LLAMA_SDIST := $(VENV)/src/llama_cpp_python-$(LLAMA_CPP).tar.gz
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: demo test lint install clean-demo

$(STAMP): envs/requirements.txt envs/constraints.txt envs/torch.txt envs/demo-model.txt \
		envs/llama-cpp.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(VENV)/src -r envs/llama-cpp.txt
	rm -rf $(VENV)/share/llama.cpp $(VENV)/wheels && mkdir -p $(VENV)/share/llama.cpp
	tar -xzf $(LLAMA_SDIST) -C $(VENV)/share/llama.cpp --strip-components=3 \
		$(addprefix llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp/,convert_hf_to_gguf.py conversion gguf-py)
	# llama.cpp compiles (minutes, CPU) while the other packages download and unpack (I/O)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/pip wheel -q --no-deps -w $(VENV)/wheels $(LLAMA_SDIST) \
		> $(VENV)/llama-cpp-build.log 2>&1 & build=$$!; \
	$(BIN)/pip install -q $(TORCH) \
	&& $(BIN)/pip install -q -c envs/torch.txt -c envs/constraints.txt -r envs/requirements.txt \
	&& $(BIN)/pip install -q --no-deps -r envs/demo-model.txt; installed=$$?; \
	wait $$build || { tail -30 $(VENV)/llama-cpp-build.log; exit 1; }; \
	test $$installed = 0
	$(BIN)/pip install -q --no-deps $(VENV)/wheels/llama_cpp_python-$(LLAMA_CPP)-*.whl
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
