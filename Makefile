# Tollgate build. `make` builds build/tollgate and build/mocknode; see README.md for the rest.
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
OPT     ?= -O2 -g
WARN    := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Werror
CFLAGS  += $(OPT) $(WARN) -I. $(EXTRA_CFLAGS)
LDFLAGS += $(EXTRA_LDFLAGS)
LIBS    := -lmicrohttpd -lcurl -lssh2 -lhiredis -lev -ljansson -lyajl -lyaml -lnettle -lpthread -lm
VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

# The layers, bottom first: a folder includes only folders before it (metrics/ only base/).
LAYERS   := base redis config net metrics trace openai tenancy cache routing gateway
CORE_SRC := $(filter-out gateway/main.c,$(foreach d,$(LAYERS),$(wildcard $(d)/*.c)))
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
# The status page (gateway/status.html, gateway/status.h) is built in as a C array that od
# and sed write (essential packages: nothing to install, in the Dockerfile's build stage
# too), so the page stays plain HTML to edit.
CORE_OBJ += $(BUILD)/obj/gen/status_html.o
MAIN_OBJ := $(BUILD)/obj/gateway/main.o
MOCK_SRC := $(wildcard tools/mocknode/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
# Shared by the unit tests: a throwaway redis-server, bounded event-loop runs (tests/unit/harness.h).
HARNESS_SRC := $(filter-out $(UNIT_SRC),$(wildcard tests/unit/*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

# Debian packages the build, the tests and the benchmark need. Node.js, npm and kubectl
# (kubernetes-client, for the manifests' test) count as present when the commands exist,
# whoever installed them (a machine may have its own). prometheus brings promtool.
# libcurl is the GnuTLS build (one TLS library: libmicrohttpd's); SHA-256 and SHA-1 are
# Nettle's (GnuTLS's own); libssl-dev only for the unit tests, which check against OpenSSL,
# and the openssl command for the certificates of the https backend test.
DEB_PKGS := build-essential pkg-config libmicrohttpd-dev libcurl4-gnutls-dev libssh2-1-dev \
            libhiredis-dev libev-dev libjansson-dev libyajl-dev libyaml-dev nettle-dev \
            libssl-dev openssl libcmocka-dev redis-server nginx wrk curl prometheus clang-format clang
# chromium: the browser the status page's test drives (puppeteer-core).
DEB_PKGS += chromium
# docker-compose (1.29) validates deploy/docker-compose.yml in the deploy test.
DEB_PKGS += docker-compose

.PHONY: all deps run test unit integration bench asan tsan install clean fmt fmt-check

all: $(BUILD)/tollgate $(BUILD)/mocknode

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DTOLLGATE_VERSION='"$(VERSION)"' -MMD -MP -c $< -o $@

$(BUILD)/tollgate: $(CORE_OBJ) $(MAIN_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LIBS)

$(BUILD)/mocknode: $(MOCK_SRC) $(wildcard tools/mocknode/*.h)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(MOCK_SRC) -o $@ $(LDFLAGS) -lmicrohttpd -ljansson -lpthread -lm

$(BUILD)/tests/%: tests/unit/%.c $(CORE_OBJ) $(HARNESS_SRC) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(HARNESS_SRC) $(CORE_OBJ) -o $@ $(LDFLAGS) $(LIBS) -lcmocka -lcrypto

$(BUILD)/gen/status_html.c: gateway/status.html
	@mkdir -p $(dir $@)
	@{ echo '#include "gateway/status.h"'; echo 'const unsigned char status_html[] = {'; \
	  od -An -v -tx1 $< | sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '};'; \
	  echo 'const unsigned int status_html_len = sizeof status_html;'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/status_html.o: $(BUILD)/gen/status_html.c gateway/status.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# Installs only what is missing, so it is quick on a prepared machine.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if [ ! -d tests/node_modules ] || [ tests/package-lock.json -nt tests/node_modules ]; then \
	  npm ci --prefix tests --no-audit --no-fund --loglevel=error; fi

run: deps all
	@tools/demo.sh

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: all
	@TOLLGATE_BUILD=$(BUILD) tests/run-node-tests.sh

test: deps
	@$(MAKE) --no-print-directory fmt-check
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory fuzz-replay

# The whole suite under AddressSanitizer and UndefinedBehaviorSanitizer, in its own build tree.
asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" all unit
	@TOLLGATE_BUILD=build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run-node-tests.sh

# libFuzzer targets for every parser of outside input (tests/fuzz/fuzz_*.c). `make fuzz` builds
# them with clang in build-fuzz/ and runs each for FUZZ_SECONDS on a copy of its corpus; a crash
# fails, its input in build-fuzz/artifacts/. `make fuzz-replay` (in make test) runs every seed
# and regression input once through the same targets, built with the ordinary flags.
FUZZ_SECONDS ?= 60
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
# clang's -Wformat=2 also flags the va_list format of libmicrohttpd's log hook (net/httpd.c).
FUZZ_CFLAGS  := -Wno-format-nonliteral -fsanitize=fuzzer-no-link $(FUZZ_SAN)
.PHONY: fuzz fuzz-replay
fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="$(FUZZ_CFLAGS)" EXTRA_LDFLAGS="-fsanitize=fuzzer $(FUZZ_SAN)" \
	  $(FUZZ_NAMES:%=build-fuzz/fuzz/fuzz_%)
	@tests/fuzz/run.sh fuzz build-fuzz $(FUZZ_SECONDS) $(FUZZ_NAMES)

fuzz-replay: $(FUZZ_NAMES:%=$(BUILD)/fuzz/replay_%)
	@tests/fuzz/run.sh replay $(BUILD) $(FUZZ_NAMES)

# The core as an archive: a target links only what it calls (fuzz_keyrecord brings its own keyauth).
$(BUILD)/libtollgate.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(wildcard tests/fuzz/*.h) $(BUILD)/libtollgate.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libtollgate.a -o $@ $(LDFLAGS) $(LIBS)

$(BUILD)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(wildcard tests/fuzz/*.h) \
                        $(BUILD)/libtollgate.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< tests/fuzz/replay.c $(BUILD)/libtollgate.a -o $@ $(LDFLAGS) $(LIBS)

# The whole suite under ThreadSanitizer, in its own build tree: workers, the health thread
# and the metrics scrape share state through atomics and a mailbox.
TSAN_ENV := TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
tsan: deps
	@$(TSAN_ENV) $(MAKE) --no-print-directory BUILD=build-tsan \
	  OPT="-O1 -g -fno-omit-frame-pointer" EXTRA_CFLAGS="-fsanitize=thread" \
	  EXTRA_LDFLAGS="-fsanitize=thread" all unit
	@$(TSAN_ENV) TOLLGATE_BUILD=build-tsan tests/run-node-tests.sh

# Formatting as .clang-format says, changing nothing: fails on the first difference.
fmt-check:
	@clang-format --dry-run -Werror $$(find $(LAYERS) bench tools tests/unit tests/fuzz -name '*.[ch]')

bench: deps all $(BUILD)/floor
	@bench/run.sh

# The bench's "MHD+curl floor" row: the gateway's engine (net/, linked, not copied) with
# nothing of the gateway in it.
$(BUILD)/floor: $(BUILD)/obj/bench/floor.o $(BUILD)/obj/net/httpd.o $(BUILD)/obj/net/upstream.o \
                $(BUILD)/obj/base/listen.o $(BUILD)/obj/base/log.o
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) -lmicrohttpd -lcurl -lev -lpthread

# The simulated market (tools/market/README.md): each scenario a run of MARKET_SECONDS against
# $(BUILD)/tollgate, figures appended to bench/MARKET.md. A benchmark: never part of make test.
MARKET_SECONDS   ?= 60
MARKET_SCENARIOS ?= calm churn liars
.PHONY: market
market: all
	@MARKET_GATEWAY=$(BUILD)/tollgate MARKET_SECONDS=$(MARKET_SECONDS) node tools/market/market.mjs $(MARKET_SCENARIOS)

# The soak run (tools/soak/README.md): SOAK_SECONDS of mixed traffic with node, Redis and SIGHUP
# faults against $(BUILD)/tollgate; RSS, fds and the usage ledger checked, figures appended to
# bench/SOAK.md. Never part of make test.
SOAK_SECONDS ?= 1800
.PHONY: soak
soak: deps all
	@TOLLGATE_BUILD=$(BUILD) SOAK_SECONDS=$(SOAK_SECONDS) node tools/soak/soak.mjs

install: $(BUILD)/tollgate
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/tollgate
	install -m 0755 $(BUILD)/tollgate $(DESTDIR)$(PREFIX)/bin/tollgate
	install -m 0644 deploy/tollgate.example.yaml $(DESTDIR)$(PREFIX)/share/tollgate/

fmt:
	clang-format -i $$(find $(LAYERS) bench tools tests/unit tests/fuzz -name '*.[ch]')

clean:
	rm -rf build build-asan build-tsan

# The stream benchmark (bench/streams.sh): concurrent token streams through nginx, the floor
# and the gateway, CPU and memory per stream; bench/streamgen.c is its load generator.
$(BUILD)/streamgen: bench/streamgen.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS)
.PHONY: bench-streams
bench-streams: all $(BUILD)/floor $(BUILD)/streamgen
	@BENCH_BUILD=$(BUILD) bench/streams.sh

# Instructions per relayed stream event under callgrind (bench/stream-instr.sh): a figure the
# machine's load does not move, for before/after comparisons of the relay path.
.PHONY: bench-stream-instr
bench-stream-instr: all $(BUILD)/streamgen
	@BENCH_BUILD=$(BUILD) bench/stream-instr.sh
