-- minisd side of scripts/bench_vs_torch.sh, on the seed's ContextUnet (n_feat 64,
-- 3x16x16, n_cfeat 5): training steps (batch 100: forward + MSE on noise + backward +
-- Adam) and 25-step DDIM sampling (eval, no_grad).
-- Usage: lua5.4 scripts/bench_minisd.lua THREADS TRAIN_STEPS WARMUP SAMPLE_RUNS [SAMPLE_N]
--          [PRECISION]
--   TRAIN_STEPS 0 skips training; SAMPLE_RUNS 0 skips sampling; SAMPLE_N defaults to 32;
--   PRECISION is fp32 (the default) or bf16 (minisd.set_precision).
-- Prints "key value" lines: train_ms, train_loss, sample_ms, sample_absmean, peak_rss_mb.

local minisd = require("minisd")
local models = require("minisd.models")
local diffusion = require("minisd.diffusion")

local threads = tonumber(arg[1]) or 1
local n_steps = tonumber(arg[2]) or 10
local warmup = tonumber(arg[3]) or 2
local n_sample = tonumber(arg[4]) or 3
local sample_n = tonumber(arg[5]) or 32
local precision = arg[6] or "fp32"

minisd.set_threads(threads)
minisd.set_precision(precision)
minisd.manual_seed(0)
local model = models.ContextUnet({ in_channels = 3, n_feat = 64, n_cfeat = 5, height = 16 })
local opt = minisd.optim.Adam(model:parameters(), { lr = 1e-3 })
local gen = minisd.Generator(1)

local function median(t)
  table.sort(t)
  local n = #t
  if n % 2 == 1 then
    return t[(n + 1) / 2]
  end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

if n_steps > 0 then
  local B = 100
  local x = minisd.randn({ B, 3, 16, 16 }, gen)
  local noise = minisd.randn({ B, 3, 16, 16 }, gen)
  local t = minisd.rand({ B, 1, 1, 1 }, gen)
  local c = minisd.rand({ B, 5 }, gen)
  model:train()
  local times = {}
  local loss
  for i = 1, warmup + n_steps do
    local t0 = minisd.clock()
    local pred = model(x, t, c)
    loss = minisd.mse_loss(pred, noise)
    opt:zero_grad()
    loss:backward()
    opt:step()
    local dt = minisd.clock() - t0
    if i > warmup then
      times[#times + 1] = dt
    end
  end
  io.write(string.format("train_ms %.3f\n", median(times) * 1000))
  io.write(string.format("train_loss %.6f\n", loss:item()))
end

if n_sample > 0 then
  local stimes = {}
  local out
  for i = 1, 1 + n_sample do
    local t0 = minisd.clock()
    out = diffusion.sample(model, { n = sample_n, sampler = "ddim", steps = 25, seed = 7 })
    local dt = minisd.clock() - t0
    if i > 1 then
      stimes[#stimes + 1] = dt
    end
  end
  io.write(string.format("sample_ms %.3f\n", median(stimes) * 1000))
  io.write(string.format("sample_absmean %.6f\n", out:abs():mean():item()))
end

local f = io.open("/proc/self/status", "r")
if f then
  for line in f:lines() do
    local kb = line:match("^VmHWM:%s*(%d+)")
    if kb then
      io.write(string.format("peak_rss_mb %.1f\n", tonumber(kb) / 1024))
    end
  end
  f:close()
end
