#!/bin/sh
# Main-thread frame times of the LÖVE example (examples/love) while minisd.worker samples
# in its love.thread: on an idle machine, then with one core kept busy by another process
# (a stand-in for a second job or a game's other work). Needs love, xvfb-run (apt-get
# install love xvfb xauth) and build/luajit/minisd/core.so. Run on an otherwise idle machine.
# Usage: sh scripts/bench_love.sh [BATCHES] [BUILD]     (default 6 batches of 8 sprites)
set -eu
batches=${1:-6}
build=${2:-build}
cd "$(dirname "$0")/.."
run() {
    ALSOFT_DRIVERS=null SDL_AUDIODRIVER=dummy MINISD_LOVE_TEST=$batches \
        MINISD_CPATH="$build/luajit/?.so" timeout 600 xvfb-run -a love examples/love 2>&1 |
        grep -E "^frames while sampling|^love test"
}
echo "idle machine:"
run
echo "one core busy (a shell loop):"
sh -c 'while :; do :; done' &
busy=$!
trap 'kill $busy 2>/dev/null || true' EXIT
run
kill $busy
