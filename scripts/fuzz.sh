#!/bin/sh
# Fuzzes minisd's file readers (npy, PNG, safetensors) with libFuzzer under ASan + UBSan:
# builds build-fuzz/ with clang (-DMINISD_FUZZ=ON) and runs each target for SECONDS
# (default 60) from the seed corpus in tests/fuzz/corpus/<format>/, with a 512 MB memory
# limit (a reader that allocates more on a small file is a bug). New inputs go to a
# temporary corpus; a crash leaves its input as build-fuzz/crash-* and fails the run.
# Usage: sh scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: npy png safetensors)
#   long runs: sh scripts/fuzz.sh 3600 png
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-npy png safetensors}
command -v clang >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang)"; exit 1; }
CC=clang cmake -S . -B build-fuzz -DMINISD_FUZZ=ON -DMINISD_TESTS=OFF -DMINISD_TEST_LUAJIT=OFF \
    -DCMAKE_BUILD_TYPE=Debug >/dev/null
targets_cmake=""
for t in $targets; do targets_cmake="$targets_cmake --target fuzz_$t"; done
# shellcheck disable=SC2086
cmake --build build-fuzz -j2 $targets_cmake >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for t in $targets; do
    mkdir -p "$work/$t"
    cp tests/fuzz/corpus/"$t"/* "$work/$t/"
    echo "== fuzz_$t for ${seconds}s"
    if ! (cd build-fuzz && ./fuzz_"$t" -max_total_time="$seconds" -rss_limit_mb=512 \
        -malloc_limit_mb=512 -max_len=65536 -print_final_stats=1 "$work/$t" \
        >"$work/$t.log" 2>&1); then
        tail -40 "$work/$t.log"
        echo "fuzz.sh: fuzz_$t FAILED (the input is in build-fuzz/crash-* or oom-* / leak-*)"
        status=1
    else
        grep -E "^stat::number_of_executed_units|Done [0-9]+ runs" "$work/$t.log" | tail -1
    fi
done
[ "$status" = 0 ] && echo "fuzz.sh: no failure in $targets"
exit "$status"
