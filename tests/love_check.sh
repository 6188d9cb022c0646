#!/bin/sh
# The LÖVE example under real LÖVE 11 on a virtual X display: it asks minisd.worker (a
# love.thread) for two batches of sprites, draws them, checks a screenshot and quits.
# Prints the main thread's frame times while sampling. Usage: sh tests/love_check.sh [BUILD]
set -u
build=${1:-build}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ALSOFT_DRIVERS=null SDL_AUDIODRIVER=dummy MINISD_LOVE_TEST=${MINISD_LOVE_TEST:-2} \
    MINISD_CPATH="$build/luajit/?.so" timeout 300 xvfb-run -a love examples/love >"$out" 2>&1
rc=$?
cat "$out"
if [ "$rc" != 0 ]; then
    echo "love_check: LÖVE exited with status $rc"
    exit 1
fi
grep -q "^love test: ok" "$out" || { echo "love_check: no 'love test: ok' line"; exit 1; }
