#!/bin/sh
# minisd vs PyTorch on the seed's ContextUnet, side by side in one run on this
# machine. PyTorch runs in its best CPU configuration: torch threads = cores and
# OPENBLAS_NUM_THREADS=1 (its own OpenBLAS pool would otherwise oversubscribe the
# cores and slow PyTorch down); --also-installed adds PyTorch as installed.
#   train   one training step, batch 100 (forward + MSE + backward + Adam),
#           median of --steps steps after --warmup, THREADS threads
#   ddim32  25 DDIM steps x 32 images (eval, no_grad), THREADS threads
#   ddim1   25 DDIM steps x 1 image, 1 thread
#   rss     peak RSS of the training process
#   busy    minisd, 25 DDIM steps x 8 images with one core held by a busy loop:
#           THREADS threads against 1 thread (>= 1.0: more threads never hurt)
#   direct  train and ddim32 again with fp32 convolutions always direct
#           (MINISD_WINOGRAD=0): what Winograd F(2x2, 3x3) gives
#   bf16    train, ddim32 and ddim1 again with minisd.set_precision("bf16") (on the
#           AMX tiles where the CPU has them), against the same PyTorch fp32 times:
#           PyTorch 1.13 cannot run this model in bf16 on a CPU (autocast stops at
#           GroupNorm, model.bfloat16() at the 1x1 -> 4x4 ConvTranspose2d)
# Ratios are PyTorch time / minisd time: > 1 means minisd is faster.
#
# Usage: scripts/bench_vs_torch.sh [--threads N] [--steps N] [--warmup N]
#          [--sample-runs N] [--build DIR] [--lua lua5.4|luajit] [--no-build]
#          [--also-installed] [--no-busy] [--no-bf16] [--no-direct]
# A benchmark, never a test: it prints numbers and asserts nothing. Run it on an
# idle machine (a training run in the background halves what it measures).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=$(nproc)
STEPS=10
WARMUP=3
SRUNS=3
BUILD="$ROOT/build-bench"
LUA=lua5.4
DO_BUILD=1
INSTALLED=0
BUSY=1
BF16=1
DIRECT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --sample-runs) SRUNS=$2; shift 2 ;;
        --build) BUILD=$2; shift 2 ;;
        --lua) LUA=$2; shift 2 ;;
        --no-build) DO_BUILD=0; shift ;;
        --also-installed) INSTALLED=1; shift ;;
        --no-busy) BUSY=0; shift ;;
        --no-bf16) BF16=0; shift ;;
        --no-direct) DIRECT=0; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
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

ms() { # THREADS STEPS WARMUP SAMPLE_RUNS SAMPLE_N [PRECISION]
    (cd "$ROOT" && LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" \
        LUA_CPATH="$CPATH_DIR/?.so;;" "$LUA" scripts/bench_minisd.lua "$@")
}
pt() { # same arguments; PyTorch at its best
    (cd "$ROOT" && OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS="$1" MKL_NUM_THREADS=1 \
        /usr/bin/python3 scripts/bench_torch.py "$@")
}
get() { printf '%s\n' "$1" | awk -v k="$2" '$1 == k { print $2 }'; }
row() { # label minisd torch
    printf '%-40s %10.1f %10.1f %9.2f\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"
}

MS_MAIN=$(ms "$THREADS" "$STEPS" "$WARMUP" "$SRUNS" 32)
PT_MAIN=$(pt "$THREADS" "$STEPS" "$WARMUP" "$SRUNS" 32)
MS_ONE=$(ms 1 0 0 "$SRUNS" 1)
PT_ONE=$(pt 1 0 0 "$SRUNS" 1)
if [ "$DIRECT" = 1 ]; then
    MS_DIR=$(export MINISD_WINOGRAD=0; ms "$THREADS" "$STEPS" "$WARMUP" "$SRUNS" 32)
fi
if [ "$BF16" = 1 ]; then
    MS_BF=$(ms "$THREADS" "$STEPS" "$WARMUP" "$SRUNS" 32 bf16)
    MS_BF_ONE=$(ms 1 0 0 "$SRUNS" 1 bf16)
fi
TORCH_VER=$(/usr/bin/python3 -c 'import torch; print(torch.__version__)')

echo "ContextUnet(3, n_feat=64, n_cfeat=5, 16x16); threads=$THREADS; $LUA; torch $TORCH_VER (OPENBLAS_NUM_THREADS=1)"
echo "$(uname -m), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"
printf '%-40s %10s %10s %9s\n' "" "minisd" "pytorch" "torch/msd"
row "train step, batch 100 (ms, median)" "$(get "$MS_MAIN" train_ms)" "$(get "$PT_MAIN" train_ms)"
row "DDIM 25 steps x 32 images (ms)" "$(get "$MS_MAIN" sample_ms)" "$(get "$PT_MAIN" sample_ms)"
row "DDIM 25 steps x 1 image, 1 thread (ms)" "$(get "$MS_ONE" sample_ms)" "$(get "$PT_ONE" sample_ms)"
row "peak RSS while training (MiB)" "$(get "$MS_MAIN" peak_rss_mb)" "$(get "$PT_MAIN" peak_rss_mb)"
echo "(last training loss: minisd $(get "$MS_MAIN" train_loss), torch $(get "$PT_MAIN" train_loss))"
if [ "$DIRECT" = 1 ]; then
    echo "minisd fp32 without Winograd (MINISD_WINOGRAD=0) against PyTorch fp32 (best):"
    row "direct train step, batch 100 (ms, median)" "$(get "$MS_DIR" train_ms)" "$(get "$PT_MAIN" train_ms)"
    row "direct DDIM 25 steps x 32 images (ms)" "$(get "$MS_DIR" sample_ms)" "$(get "$PT_MAIN" sample_ms)"
fi
if [ "$BF16" = 1 ]; then
    echo "minisd in bf16 ($(cd "$ROOT" && LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;" \
        LUA_CPATH="$CPATH_DIR/?.so;;" "$LUA" -e 'local m = require("minisd")
        local hw = select(2, m.get_precision())
        print(hw == "amx" and "AMX tiles" or hw and "vdpbf16ps, Winograd" or "fp32 kernels on rounded inputs")')) against PyTorch fp32 (best):"
    row "bf16 train step, batch 100 (ms, median)" "$(get "$MS_BF" train_ms)" "$(get "$PT_MAIN" train_ms)"
    row "bf16 DDIM 25 steps x 32 images (ms)" "$(get "$MS_BF" sample_ms)" "$(get "$PT_MAIN" sample_ms)"
    row "bf16 DDIM 25 x 1 image, 1 thread (ms)" "$(get "$MS_BF_ONE" sample_ms)" "$(get "$PT_ONE" sample_ms)"
    row "bf16 peak RSS while training (MiB)" "$(get "$MS_BF" peak_rss_mb)" "$(get "$PT_MAIN" peak_rss_mb)"
fi

if [ "$INSTALLED" = 1 ]; then
    PT_INST=$(cd "$ROOT" && /usr/bin/python3 scripts/bench_torch.py "$THREADS" "$STEPS" "$WARMUP" "$SRUNS" 32)
    echo "PyTorch as installed (its OpenBLAS pool unpinned): train $(get "$PT_INST" train_ms) ms," \
        "DDIM x 32 $(get "$PT_INST" sample_ms) ms"
fi

if [ "$BUSY" = 1 ]; then
    sh -c 'while :; do :; done' &
    SPIN=$!
    trap 'kill $SPIN 2>/dev/null || true' EXIT INT TERM
    B_ONE=$(ms 1 0 0 "$SRUNS" 8)
    B_ALL=$(ms "$THREADS" 0 0 "$SRUNS" 8)
    kill $SPIN 2>/dev/null || true
    printf '%-40s %10s %10s %9s\n' "one core busy, DDIM 25 x 8 (ms)" "1 thread" "$THREADS threads" "1/$THREADS"
    printf '%-40s %10.1f %10.1f %9.2f\n' "" "$(get "$B_ONE" sample_ms)" "$(get "$B_ALL" sample_ms)" \
        "$(echo "$(get "$B_ONE" sample_ms) / $(get "$B_ALL" sample_ms)" | bc -l)"
fi
