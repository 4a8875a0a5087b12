#!/bin/sh
# Runs the integration and end-to-end suites (node:test) against already-built binaries.
# Expects build/tollgate, build/mocknode (or $TOLLGATE_BUILD/...) and tests/node_modules.
# Usage: tests/run-node-tests.sh [test files...]   (default: every *.test.mjs)
set -eu
cd "$(dirname "$0")"

build_dir="../${TOLLGATE_BUILD:-build}"
case "${TOLLGATE_BUILD:-}" in /*) build_dir="$TOLLGATE_BUILD" ;; esac
for bin in tollgate mocknode; do
  if [ ! -x "$build_dir/$bin" ]; then
    echo "run-node-tests: $build_dir/$bin is missing; run make first" >&2
    exit 2
  fi
done
if [ ! -d node_modules/openai ]; then
  echo "run-node-tests: tests/node_modules is missing; run npm ci --prefix tests" >&2
  exit 2
fi

if [ "$#" -eq 0 ]; then
  set -- integration/*.test.mjs e2e/*.test.mjs
fi

# Two test files at a time: each one runs a gateway and mocknodes, and the machine
# this targets has 2 cores. The per-test timeout is a backstop against hangs.
exec node --test --test-concurrency="${TEST_CONCURRENCY:-2}" --test-timeout=120000 \
  --test-reporter="${TEST_REPORTER:-spec}" "$@"
