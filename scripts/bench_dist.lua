-- Data-parallel training steps of the seed's ContextUnet (n_feat 64, 3x16x16, n_cfeat 5,
-- global batch 100) on one rank, or on each rank of an MPI job (mpirun -np N lua ...): each
-- rank runs forward + MSE + backward on its share of the batch, the gradients are summed
-- over the ranks (minisd.dist.allreduce in buckets, as train.lua does) and Adam steps.
-- scripts/bench_dist.sh runs the comparisons of the README.
-- Usage: lua5.4 scripts/bench_dist.lua [STEPS=30] [WARMUP=3] [THREADS] [sync|plain]
--          [BUCKET_MB=4] [TIMEOUT=300]
--   THREADS: per rank (default: minisd.dist's share of the cores); "sync": synchronised
--   BatchNorm; BUCKET_MB 0: one collective per gradient tensor; TIMEOUT 0: MPI's blocking
--   collectives instead of the polled ones (minisd.dist.set_timeout).
-- Prints, from rank 0: the median step and its parts (compute: forward + backward; wait: for
-- the slowest rank, at a barrier; sum: the gradients' allreduce; adam), the global images/s,
-- and one allreduce of a flat buffer of every gradient (5.9 MB) timed alone.

local minisd = require("minisd")
local dist = require("minisd.dist")
local models = require("minisd.models")

local steps = tonumber(arg[1]) or 30
local warmup = tonumber(arg[2]) or 3
local threads = tonumber(arg[3])
local sync = arg[4] == "sync"
local bucket_mb = tonumber(arg[5]) or 4
local timeout = tonumber(arg[6]) or 300

local rank, size = 0, 1
if dist.launched() then
  rank, size = assert(dist.init({ timeout = timeout }))
end
minisd.set_threads(threads or dist.default_threads() or minisd.get_threads())

minisd.manual_seed(0)
local model = models.ContextUnet({ in_channels = 3, n_feat = 64, n_cfeat = 5, height = 16 })
model:train()
if sync then
  dist.sync_batch_norm(model)
end
local opt = minisd.optim.Adam(model:parameters(), { lr = 1e-3 })
local gen = minisd.Generator(1)
local B = 100
local first, n = require("minisd.data.dataset").share_rows(B, rank, size)
local function mine(t)
  return t:narrow(1, first, n):clone()
end
local x = mine(minisd.randn({ B, 3, 16, 16 }, gen))
local noise = mine(minisd.randn({ B, 3, 16, 16 }, gen))
local t = mine(minisd.rand({ B, 1, 1, 1 }, gen))
local c = mine(minisd.rand({ B, 5 }, gen))

local function median(v)
  table.sort(v)
  local k = #v
  return k % 2 == 1 and v[(k + 1) / 2] or (v[k / 2] + v[k / 2 + 1]) / 2
end

local params = model:parameters()
local parts = { step = {}, compute = {}, wait = {}, sum = {}, adam = {} }
for i = 1, warmup + steps do
  local t0 = minisd.clock()
  local loss = minisd.mse_loss(model(x, t, c), noise) * (n / B)
  opt:zero_grad()
  loss:backward()
  local tc = minisd.clock()
  if size > 1 then -- (train.lua has no barrier: there the sum itself waits for the last rank)
    assert(dist.barrier())
  end
  local t1 = minisd.clock()
  if size > 1 then
    local grads = {}
    for k, p in ipairs(params) do
      grads[k] = p.grad
    end
    assert(dist.allreduce(grads, "sum", bucket_mb > 0 and { bucket_bytes = bucket_mb * 2 ^ 20 }
      or { bucket_bytes = 4 }))
  end
  local t2 = minisd.clock()
  opt:step()
  local t3 = minisd.clock()
  if i > warmup then
    parts.step[#parts.step + 1] = t3 - t0
    parts.compute[#parts.compute + 1] = tc - t0
    parts.wait[#parts.wait + 1] = t1 - tc
    parts.sum[#parts.sum + 1] = t2 - t1
    parts.adam[#parts.adam + 1] = t3 - t2
  end
end

-- one allreduce of every gradient as one flat buffer, timed alone (after a barrier)
local numel = 0
for _, p in ipairs(params) do
  numel = numel + p:numel()
end
local flat = minisd.ones({ numel })
local once = {}
for _ = 1, 10 do
  if size > 1 then
    assert(dist.barrier())
  end
  local t0 = minisd.clock()
  if size > 1 then
    assert(dist.allreduce(flat, "sum"))
  end
  once[#once + 1] = minisd.clock() - t0
end

if rank == 0 then
  local step = median(parts.step)
  print(string.format("ranks %d, threads %d each, batch %d (%d per rank)%s, %d steps", size,
    minisd.get_threads(), B, n, sync and ", sync-bn" or "", steps))
  print(string.format("step_ms %.1f  compute_ms %.1f  wait_ms %.1f  sum_ms %.2f  adam_ms %.1f",
    step * 1e3, median(parts.compute) * 1e3, median(parts.wait) * 1e3, median(parts.sum) * 1e3,
    median(parts.adam) * 1e3))
  print(string.format("images_per_s %.1f", B / step))
  print(string.format("allreduce_ms %.2f  (%d floats, %.2f MB, timeout %s)", median(once) * 1e3,
    numel, numel * 4 / 1e6, tostring(dist.info().timeout)))
end
