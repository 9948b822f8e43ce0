# Natter: two commands matter.
#   make demo   a whole network on loopback, step by step (the main job)
#   make test   everything: format, lints, every test in the workspace, the C header
# Both install the system packages they need (apt-get when root, else they print the line).

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local

# Debian packages the build and the tests need.
SYSTEM_PACKAGES := build-essential pkg-config cmake libopus-dev libasound2-dev

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

unit:
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
