# lockwrap developer entry points. `make test` is what CI runs (see .ci/run).
# Each mk/*.mk adds its own targets and appends to TEST_TARGETS.
SHELL := /bin/bash
CARGO ?= cargo
TEST_TARGETS :=

-include mk/*.mk

.PHONY: build test test-rust consul demo fmt lint check-layers check-imports
TEST_TARGETS += check-layers check-imports
build:
	$(CARGO) build --release

# Provision a real Consul (PATH, .tools/bin, or Debian bullseye) for the integration tests.
consul:
	@scripts/ensure-consul.sh >/dev/null

# The examples first: `cargo test --all-targets` builds them only as (empty) test harnesses, and the
# integration tests run the real example binaries (tests/integration/install_library.rs).
test-rust: consul
	$(CARGO) build --examples
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(CARGO) test --no-fail-fast --all-targets -- --test-threads=4

test: test-rust $(TEST_TARGETS)

lint: check-layers check-imports
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The module graph as src/lib.rs draws it: no import circles, no import from a layer above.
check-layers:
	$(PYTHON) scripts/check-layers.py

# The Python tooling's imports go one way: bench, chaos and tests import kit, never each other.
check-imports:
	$(PYTHON) scripts/check-imports.py

fmt:
	$(CARGO) fmt --all

demo: consul build
	PATH="$(CURDIR)/.tools/bin:$$PATH" scripts/demo.sh
