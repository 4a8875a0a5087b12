#!/bin/sh
# The fuzz targets' two runs (Makefile: make fuzz, make fuzz-replay):
#
#   run.sh fuzz BUILD SECONDS TARGET...   each target under libFuzzer for SECONDS on a copy of
#                                         its corpus in BUILD/corpus/ (new inputs stay there);
#                                         a crash leaves its input in BUILD/artifacts/TARGET/
#   run.sh replay BUILD TARGET...         each target's seed corpus and regression inputs
#                                         once through BUILD/fuzz/replay_TARGET (no libFuzzer)
#
# Either fails when any target failed, after running them all. One fuzzer process at a time.
set -u
mode=$1 build=$2
shift 2
dir=$(dirname "$0")
failed=""

inputs() {
    find "$dir/corpus/$1" "$dir/regressions/$1" -type f 2>/dev/null | sort
}

if [ "$mode" = replay ]; then
    for t in "$@"; do
        # shellcheck disable=SC2046 # file names have no blanks
        "$build/fuzz/replay_$t" $(inputs "$t") </dev/null || failed="$failed $t"
    done
    [ -z "$failed" ] || { echo "fuzz-replay: failed:$failed" >&2; exit 1; }
    exit 0
fi

seconds=$1
shift
summary="$build/fuzz-summary.txt"
printf '%-10s %12s %8s %10s %s\n' target runs seconds exec/s result >"$summary"
for t in "$@"; do
    corpus="$build/corpus/$t" artifacts="$build/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    cp "$dir/corpus/$t"/* "$corpus"/ 2>/dev/null
    dict=""
    [ -f "$dir/$t.dict" ] && dict="-dict=$dir/$t.dict"
    regressions=""
    [ -d "$dir/regressions/$t" ] && regressions="$dir/regressions/$t"
    log="$build/fuzz-$t.log"
    echo "== fuzz_$t for ${seconds}s ($(ls "$corpus" | wc -l) inputs)"
    # shellcheck disable=SC2086 # dict and regressions are one word or none
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -close_fd_mask=1 -print_final_stats=1 -artifact_prefix="$artifacts/" $dict \
        "$corpus" $regressions </dev/null >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ "$rc" = 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc): $(ls "$artifacts" | head -n 3 | tr '\n' ' ')"
        failed="$failed $t"
        grep -m 5 -E 'ERROR|SUMMARY|check failed|runtime error' "$log" >&2
    fi
    printf '%-10s %12s %8s %10s %s\n' "$t" "${runs:-?}" "${took:-?}" "${rate:-?}" "$result" |
        tee -a "$summary"
done
cat "$summary"
[ -z "$failed" ] || { echo "fuzz: failed:$failed (logs in $build/fuzz-*.log)" >&2; exit 1; }
