#!/bin/sh
# minisd setup for Debian/Ubuntu: installs the packages minisd needs, makes
# `lua` run Lua 5.4 (Debian's luarocks would otherwise leave it on 5.1), and
# builds build/minisd/core.so (+ build/luajit/minisd/core.so for LuaJIT/LÖVE).
# Usage: sh scripts/setup.sh [--no-install] [extra cmake args...]
set -eu

# libopenmpi-dev + openmpi-bin: minisd.dist, data-parallel training over MPI (optional: the
# build leaves it out when MPI is missing)
PACKAGES="cmake make gcc pkg-config lua5.4 liblua5.4-dev luajit libluajit-5.1-dev \
libpng-dev libopenblas-dev lua-busted lua-argparse lua-check luarocks \
libopenmpi-dev openmpi-bin"

install=1
if [ "${1:-}" = "--no-install" ]; then
    install=0
    shift
fi

if [ "$install" = 1 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q $PACKAGES
    # /usr/bin/lua is an alternative that luarocks' dependencies point at 5.1
    if [ -x /usr/bin/lua5.4 ] && command -v update-alternatives >/dev/null 2>&1; then
        $SUDO update-alternatives --set lua-interpreter /usr/bin/lua5.4 >/dev/null 2>&1 || true
    fi
fi

cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
echo "minisd built: build/minisd/core.so"
