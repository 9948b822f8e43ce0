# Natter: two commands matter.
#   make demo   a whole network on loopback, step by step (the main job)
#   make test   everything: format, lints, every test in the workspace, the C header
# Both install the system packages they need (apt-get when root, else they print the line).

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local

# Debian packages the build and the tests need.
SYSTEM_PACKAGES := build-essential pkg-config cmake libopus-dev libasound2-dev postgresql coturn iproute2 nftables iputils-ping tmux

.PHONY: all demo test deps check-deps fmt clippy unit header bench fuzz-check clean

all: test

deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing system packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "Missing system packages. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

demo: deps
	$(CARGO) run --release --quiet -p natter-cli -- demo

test: deps fmt clippy unit
	@echo "make test: all checks passed"

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Throwaway PostgreSQL for the account-store and login-server tests (scripts/pg-test.sh):
# started before the tests, stopped and removed after them, even when they fail.
PG_TEST_DIR ?= /tmp/natter-pg-test-$(shell id -u)
PG_TEST_PORT ?= 55432

unit:
	@set -eo pipefail; \
	trap 'scripts/pg-test.sh stop "$(PG_TEST_DIR)"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	url=$$(scripts/pg-test.sh start "$(PG_TEST_DIR)" "$(PG_TEST_PORT)" | tail -n 1); \
	NATTER_TEST_POSTGRES="$$url" NATTER_REQUIRE_POSTGRES=1 NATTER_REQUIRE_COTURN=1 NATTER_REQUIRE_NETNS=1 NATTER_REQUIRE_TMUX=1 \
	  $(CARGO) test --workspace --locked

# Regenerate include/natter.h from ffi/src (commit the result).
header:
	NATTER_BLESS=1 $(CARGO) test -p natter-ffi --test header --locked

bench: deps
	$(CARGO) bench -p natter-benches

# Build the fuzz targets (needs cargo-fuzz and a nightly-capable toolchain; see README).
fuzz-check:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build

clean:
	$(CARGO) clean
