#!/bin/sh
# The scaling of data-parallel training on this machine (README, "Training on several
# machines"): training steps of the seed's ContextUnet (global batch 100, fp32) on 1 rank x 1
# thread, 2 ranks x 1 thread (without and with synchronised BatchNorm), 1 rank x 2 threads,
# and the gradients' allreduce (5.9 MB) in buckets, per tensor and with MPI's blocking calls.
# Usage: sh scripts/bench_dist.sh [STEPS=30] [BUILD=build]   (LUA=lua5.4 by default)
set -eu
cd "$(dirname "$0")/.."
steps=${1:-30}
build=${2:-build}
LUA=${LUA:-lua5.4}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$build/?.so;;"
# mpirun binds each of 2 ranks to a core; as root it wants --allow-run-as-root
MPIRUN="mpirun --oversubscribe"
if [ "$(id -u)" = 0 ]; then MPIRUN="$MPIRUN --allow-run-as-root"; fi

echo "== 1 rank x 1 thread"
$LUA scripts/bench_dist.lua "$steps" 3 1
echo "== 2 ranks x 1 thread"
$MPIRUN -np 2 $LUA scripts/bench_dist.lua "$steps" 3 1
echo "== 2 ranks x 1 thread, synchronised BatchNorm"
$MPIRUN -np 2 $LUA scripts/bench_dist.lua "$steps" 3 1 sync
echo "== 1 rank x 2 threads"
$LUA scripts/bench_dist.lua "$steps" 3 2
echo "== 2 ranks x 1 thread, one collective per gradient tensor (5 steps)"
$MPIRUN -np 2 $LUA scripts/bench_dist.lua 5 1 1 plain 0
echo "== 2 ranks x 1 thread, MPI's blocking collectives, no timeout (5 steps)"
$MPIRUN -np 2 $LUA scripts/bench_dist.lua 5 1 1 plain 4 0
