-- Times minisd.conv2d alone, forward and forward + backward, on the shapes of the seed's
-- ContextUnet (16x16 maps), in fp32 and bf16: best of R runs, one line per shape.
-- A benchmark, not a test: run it on an idle machine.
-- Usage: LUA_CPATH="build-bench/?.so;;" lua5.4 scripts/bench_conv.lua [THREADS] [N] [R]
--   (defaults: 1 thread, a batch of 32, best of 10)
local minisd = require("minisd")

local threads, N, R = tonumber(arg[1]) or 1, tonumber(arg[2]) or 32, tonumber(arg[3]) or 10
minisd.set_threads(threads)
-- (Cin, Cout): the last conv, the first, a 16x16 layer, the layer after the U-Net's concat
local shapes = { { 64, 3 }, { 3, 64 }, { 64, 64 }, { 128, 64 } }
print(string.format("conv2d 3x3, pad 1, N = %d, 16x16, %d thread(s), best of %d", N, threads, R))
for _, prec in ipairs({ "fp32", "bf16" }) do
  minisd.set_precision(prec)
  for _, s in ipairs(shapes) do
    local x = minisd.randn({ N, s[1], 16, 16 }, minisd.Generator(1)):requires_grad_(true)
    local w = minisd.randn({ s[2], s[1], 3, 3 }, minisd.Generator(2)):requires_grad_(true)
    local b = minisd.randn({ s[2] }, minisd.Generator(3)):requires_grad_(true)
    local dy = minisd.randn({ N, s[2], 16, 16 }, minisd.Generator(4))
    local fwd, bwd = math.huge, math.huge
    for _ = 1, R do
      local t0 = minisd.clock()
      local y = minisd.conv2d(x, w, b, 1, 1)
      local t1 = minisd.clock()
      y:backward(dy)
      local t2 = minisd.clock()
      fwd, bwd = math.min(fwd, t1 - t0), math.min(bwd, t2 - t1)
      x.grad, w.grad, b.grad = nil, nil, nil
    end
    print(string.format("%s %3d -> %3d   forward %8.3f ms   backward %8.3f ms", prec, s[1], s[2],
      fwd * 1000, bwd * 1000))
  end
end
