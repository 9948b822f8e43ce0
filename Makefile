# Natter: two commands matter.
#   make demo   a whole network on loopback, step by step (the main job)
#   make test   everything: format, lints, every test in the workspace, the C header, the C
#               and C++ programs (built against an installed libnatter, run under valgrind),
#               the C ABI against the last released one (abidiff)
# Both install the system packages they need (apt-get when root, else they print the line).
#
# The C library:
#   make install [PREFIX=/usr/local] [DESTDIR=...]   libnatter.so (stripped, debug info in
#                                                    .debug/) and .a, natter.h, natter.pc,
#                                                    share/natter/valgrind.supp
#   make examples                                    the C and C++ examples, against a staging
#                                                    install (target/natter-prefix)

SHELL := /bin/bash
CARGO ?= cargo
STRIP ?= strip
OBJCOPY ?= objcopy
PREFIX ?= /usr/local

# Debian packages the build and the tests need.
SYSTEM_PACKAGES := build-essential pkg-config cmake libopus-dev libasound2-dev postgresql coturn iproute2 nftables iputils-ping tmux valgrind g++ conntrack abigail-tools

.PHONY: all demo test deps check-deps fmt clippy doc unit abi-check header bench fuzz-check clean lib install install-files uninstall examples

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

test: deps fmt clippy doc unit abi-check
	@echo "make test: all checks passed"

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p natter --all-targets --locked --features async -- -D warnings

# API docs build without warnings (broken or private links included). The library and the
# program share the name `natter`, so they are documented in two runs.
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked --workspace --exclude natter-cli
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked -p natter --features async
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked -p natter-cli

# Throwaway PostgreSQL for the account-store and login-server tests (scripts/pg-test.sh):
# started before the tests, stopped and removed after them, even when they fail.
PG_TEST_DIR ?= /tmp/natter-pg-test-$(shell id -u)
PG_TEST_PORT ?= 55432

unit:
	@set -eo pipefail; \
	trap 'scripts/pg-test.sh stop "$(PG_TEST_DIR)"' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	url=$$(scripts/pg-test.sh start "$(PG_TEST_DIR)" "$(PG_TEST_PORT)" | tail -n 1); \
	NATTER_TEST_POSTGRES="$$url" NATTER_REQUIRE_POSTGRES=1 NATTER_REQUIRE_COTURN=1 NATTER_REQUIRE_NETNS=1 NATTER_REQUIRE_TMUX=1 \
	  NATTER_REQUIRE_VALGRIND=1 $(CARGO) test --workspace --locked
	$(CARGO) test --locked -p natter --features async --test stream
	$(CARGO) run --locked --quiet -p natter --example call
	$(CARGO) run --locked --quiet -p natter --example login

# The C ABI that include/natter.h describes, compared with the last released header
# (ffi/abi/natter-0.2.h) by libabigail's abidiff: additions and the changes reviewed in
# ffi/abi/reviewed.abignore pass, anything else fails (ffi/abi/README.md). The self-test
# shows that real breaks are caught.
abi-check:
	scripts/abi-check.sh
	scripts/abi-check.sh --self-test

# Regenerate include/natter.h from ffi/src (commit the result).
header:
	NATTER_BLESS=1 $(CARGO) test -p natter-ffi --test header --locked -- checked_in_header_is_current

# --- The C library --------------------------------------------------------------------------
# The ABI version and the shared library's SONAME come from ffi/src/lib.rs (NATTER_ABI_*):
# libnatter.so.0.MINOR while the major is 0 (each minor may break the ABI), then
# libnatter.so.MAJOR. The real file is named after the whole ABI version. Cargo builds it as
# libnatter_ffi.so and .a (the Rust crate `natter` is the Rust API); it is installed as
# libnatter.
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PROFILE ?= release
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
LIB_BUILD_DIR ?= $(TARGET_DIR)/$(if $(filter dev debug,$(PROFILE)),debug,$(PROFILE))
abi = $(shell sed -n 's/^pub const NATTER_ABI_$(1): u32 = \([0-9]*\);/\1/p' ffi/src/lib.rs)
ABI_MAJOR := $(call abi,MAJOR)
ABI_MINOR := $(call abi,MINOR)
ABI_PATCH := $(call abi,PATCH)
SONAME := $(if $(filter 0,$(ABI_MAJOR)),libnatter.so.0.$(ABI_MINOR),libnatter.so.$(ABI_MAJOR))
LIB_FILE := libnatter.so.$(ABI_MAJOR).$(ABI_MINOR).$(ABI_PATCH)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# What a program linking libnatter.a statically also needs (rustc --print native-static-libs).
PRIVATE_LIBS := -lopus -lasound -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

lib:
	$(CARGO) build --locked -p natter-ffi --profile $(if $(filter debug,$(PROFILE)),dev,$(PROFILE))

# Build, then install the header, both libraries and natter.pc under $(DESTDIR)$(PREFIX).
install: lib install-files

# Install what `make lib` built (tests call this with LIB_BUILD_DIR set to their own build).
install-files:
	install -d "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(LIBDIR)/pkgconfig"
	install -m 644 include/natter.h "$(DESTDIR)$(INCLUDEDIR)/natter.h"
	install -m 755 "$(LIB_BUILD_DIR)/libnatter_ffi.so" "$(DESTDIR)$(LIBDIR)/$(LIB_FILE)"
	# Debug information split out, as distributions do: the library is stripped, and gdb and
	# valgrind find its symbols in .debug/ through the debug link.
	install -d "$(DESTDIR)$(LIBDIR)/.debug"
	$(OBJCOPY) --only-keep-debug "$(DESTDIR)$(LIBDIR)/$(LIB_FILE)" "$(DESTDIR)$(LIBDIR)/.debug/$(LIB_FILE).debug"
	chmod 644 "$(DESTDIR)$(LIBDIR)/.debug/$(LIB_FILE).debug"
	$(STRIP) --strip-debug --strip-unneeded "$(DESTDIR)$(LIBDIR)/$(LIB_FILE)"
	cd "$(DESTDIR)$(LIBDIR)" && $(OBJCOPY) --add-gnu-debuglink=".debug/$(LIB_FILE).debug" "$(LIB_FILE)"
	ln -sf "$(LIB_FILE)" "$(DESTDIR)$(LIBDIR)/$(SONAME)"
	ln -sf "$(SONAME)" "$(DESTDIR)$(LIBDIR)/libnatter.so"
	install -m 644 "$(LIB_BUILD_DIR)/libnatter_ffi.a" "$(DESTDIR)$(LIBDIR)/libnatter.a"
	$(STRIP) --strip-debug "$(DESTDIR)$(LIBDIR)/libnatter.a"
	install -d "$(DESTDIR)$(PREFIX)/share/natter"
	install -m 644 ffi/tests/valgrind.supp "$(DESTDIR)$(PREFIX)/share/natter/valgrind.supp"
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e 's|@PRIVATE_LIBS@|$(PRIVATE_LIBS)|' \
	    ffi/natter.pc.in > "$(DESTDIR)$(LIBDIR)/pkgconfig/natter.pc"
	@echo "installed libnatter $(VERSION) (ABI $(ABI_MAJOR).$(ABI_MINOR).$(ABI_PATCH), $(SONAME)) under $(DESTDIR)$(PREFIX)"

uninstall:
	rm -f "$(DESTDIR)$(INCLUDEDIR)/natter.h" "$(DESTDIR)$(LIBDIR)/pkgconfig/natter.pc" \
	    "$(DESTDIR)$(LIBDIR)/libnatter.a" "$(DESTDIR)$(LIBDIR)/libnatter.so" \
	    "$(DESTDIR)$(LIBDIR)/$(SONAME)" "$(DESTDIR)$(LIBDIR)/$(LIB_FILE)" \
	    "$(DESTDIR)$(LIBDIR)/.debug/$(LIB_FILE).debug" "$(DESTDIR)$(PREFIX)/share/natter/valgrind.supp"
	-rmdir "$(DESTDIR)$(LIBDIR)/.debug" "$(DESTDIR)$(PREFIX)/share/natter" 2>/dev/null

# The C and C++ examples, built with pkg-config against a staging install.
EXAMPLES_PREFIX ?= $(abspath $(TARGET_DIR))/natter-prefix
examples: deps
	$(MAKE) install PREFIX="$(EXAMPLES_PREFIX)"
	PKG_CONFIG_PATH="$(EXAMPLES_PREFIX)/lib/pkgconfig" $(MAKE) -C examples OUT="$(EXAMPLES_PREFIX)/bin"
	@echo "examples in $(EXAMPLES_PREFIX)/bin (run them with LD_LIBRARY_PATH=$(EXAMPLES_PREFIX)/lib)"

bench: deps
	$(CARGO) bench -p natter-benches

# Build the fuzz targets (needs cargo-fuzz and a nightly-capable toolchain; see README).
fuzz-check:
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build

clean:
	$(CARGO) clean
