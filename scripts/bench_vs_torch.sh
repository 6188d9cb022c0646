#!/bin/sh
# minisd vs PyTorch on the seed's ContextUnet, in one run on this machine with
# the same thread count for both:
#   (a) one training step, batch 100 (forward + MSE on noise + backward + Adam),
#       median of --steps steps after --warmup steps;
#   (b) 25 DDIM steps for 32 images (eval, no_grad), median of --sample-runs runs
#       after one warm-up run;
#   (c) peak RSS of each process.
# Ratios are torch time / minisd time: > 1 means minisd is faster.
#
# Usage: scripts/bench_vs_torch.sh [--threads N] [--steps N] [--warmup N]
#          [--sample-runs N] [--build DIR] [--lua lua5.4|luajit] [--no-build]
# A benchmark, never a test: it prints numbers and asserts nothing.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=$(nproc)
STEPS=10
WARMUP=3
SRUNS=3
BUILD="$ROOT/build-bench"
LUA=lua5.4
DO_BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --sample-runs) SRUNS=$2; shift 2 ;;
        --build) BUILD=$2; shift 2 ;;
        --lua) LUA=$2; shift 2 ;;
        --no-build) DO_BUILD=0; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "bench_vs_torch.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$DO_BUILD" = 1 ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMINISD_TESTS=OFF >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" >/dev/null
fi
if [ "$LUA" = luajit ]; then
    CPATH_DIR="$BUILD/luajit"
else
    CPATH_DIR="$BUILD"
fi

# one BLAS / OpenMP thread setting for both processes
export OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

MS_OUT=$(cd "$ROOT" && LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" \
    LUA_CPATH="$CPATH_DIR/?.so;;" "$LUA" scripts/bench_minisd.lua \
    "$THREADS" "$STEPS" "$WARMUP" "$SRUNS")
PT_OUT=$(cd "$ROOT" && /usr/bin/python3 scripts/bench_torch.py "$THREADS" "$STEPS" "$WARMUP" "$SRUNS")

get() { printf '%s\n' "$1" | awk -v k="$2" '$1 == k { print $2 }'; }

MS_TRAIN=$(get "$MS_OUT" train_ms); PT_TRAIN=$(get "$PT_OUT" train_ms)
MS_SAMP=$(get "$MS_OUT" sample_ms); PT_SAMP=$(get "$PT_OUT" sample_ms)
MS_RSS=$(get "$MS_OUT" peak_rss_mb); PT_RSS=$(get "$PT_OUT" peak_rss_mb)
TORCH_VER=$(/usr/bin/python3 -c 'import torch; print(torch.__version__)')

echo "ContextUnet(3, n_feat=64, n_cfeat=5, 16x16); threads=$THREADS; $LUA; torch $TORCH_VER"
echo "$(uname -m), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
printf '%-34s %12s %12s %10s\n' "" "minisd" "pytorch" "torch/msd"
printf '%-34s %12.1f %12.1f %10.2f\n' "train step, batch 100 (ms, median)" \
    "$MS_TRAIN" "$PT_TRAIN" "$(echo "$PT_TRAIN / $MS_TRAIN" | bc -l)"
printf '%-34s %12.1f %12.1f %10.2f\n' "DDIM 25 steps x 32 images (ms)" \
    "$MS_SAMP" "$PT_SAMP" "$(echo "$PT_SAMP / $MS_SAMP" | bc -l)"
printf '%-34s %12.1f %12.1f %10.2f\n' "peak RSS (MiB)" \
    "$MS_RSS" "$PT_RSS" "$(echo "$PT_RSS / $MS_RSS" | bc -l)"
echo "(last loss: minisd $(get "$MS_OUT" train_loss), torch $(get "$PT_OUT" train_loss))"
