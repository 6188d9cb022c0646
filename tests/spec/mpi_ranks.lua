-- The program each rank of mpi_spec.lua's collective tests runs (mpirun -np N lua
-- mpi_ranks.lua [timeout]): minisd.dist's collectives and synchronised BatchNorm against
-- values every rank computes alone. Prints "rank R of N: ok" at the end; any failure raises
-- (and the job ends with a non-zero status). With "timeout", rank 1 joins the first
-- collective late, and rank 0's waits at most 1 s.
local minisd = require("minisd")
local dist = require("minisd.dist")

local rank, size = assert(dist.init())

local function check(cond, ...)
  if not cond then
    error(string.format("rank %d: ", rank) .. string.format(...), 2)
  end
end

local function close(a, b, tol, what)
  local d = (a - b):abs():max()
  check(d <= tol, "%s: largest difference %g > %g", what, d, tol)
end

if arg[1] == "timeout" then
  dist.set_timeout(1)
  if rank == 1 then
    os.execute("sleep 3")
  end
  local ok, err = dist.allreduce(minisd.ones({ 4 }), "sum")
  if rank == 0 then
    check(not ok, "allreduce answered although rank 1 sleeps")
    print("rank 0 failed as it should: " .. err)
    local ok2, err2 = dist.barrier()
    check(not ok2 and err2:find("broken", 1, true), "a broken job went on: %s", tostring(err2))
    dist.abort(3)
  end
  os.execute("sleep 10") -- rank 0 ends the job
  error("rank 1: the job was not aborted")
end

-- allreduce: one tensor, then a list in buckets of 64 bytes (16 floats): two tensors of 6
-- share a bucket, a tensor of 20 is reduced alone
local t = minisd.full({ 2, 3 }, rank + 1)
assert(dist.allreduce(t, "sum"))
check(t:totable()[2][3] == size * (size + 1) / 2, "sum: %s", tostring(t))
local list = { minisd.full({ 6 }, rank), minisd.full({ 20 }, 2 * rank), minisd.full({ 6 }, 1) }
assert(dist.allreduce(list, "mean", { bucket_bytes = 64 }))
check(list[1]:totable()[6] == (size - 1) / 2, "mean 1: %s", tostring(list[1]))
check(list[2]:totable()[20] == size - 1, "mean 2: %s", tostring(list[2]))
check(list[3]:totable()[1] == 1, "mean 3: %s", tostring(list[3]))

-- broadcast from the last rank, of tensors and of a string
local b = { minisd.full({ 3 }, rank), minisd.full({ 2, 2 }, -rank) }
assert(dist.broadcast(b, size - 1))
check(b[1]:totable()[3] == size - 1 and b[2]:totable()[2][2] == 1 - size, "broadcast")
local s = assert(dist.broadcast_string(rank == size - 1 and ("from " .. rank .. "\0!") or nil,
  size - 1))
check(s == "from " .. (size - 1) .. "\0!", "broadcast_string: %q", s)
assert(dist.barrier())
check(not pcall(dist.broadcast, b, size), "a root out of range was accepted")

-- synchronised BatchNorm: rank r holds its share of a batch of 7 that every rank also has
-- whole; outputs, input gradients and running stats are the whole batch's, the weight
-- gradients add up to the whole batch's, and the reducer is called in backward
local nn = minisd.nn
local x = minisd.randn({ 7, 4, 5, 5 }, minisd.Generator(1)) * 2 + 1
local dy = minisd.randn({ 7, 4, 5, 5 }, minisd.Generator(2))
local first, n = require("minisd.data.dataset").share_rows(7, rank, size)
for _, gelu in ipairs({ false, true }) do
  local whole, mine = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
  for _, m in ipairs({ whole, mine }) do
    m.weight:copy_(minisd.tensor({ 0.5, 1, 1.5, 2 }))
    m.bias:copy_(minisd.tensor({ 0.1, -0.2, 0.3, 0 }))
  end
  check(dist.sync_batch_norm(mine) == 1 and (mine.sync ~= nil) == (size > 1), "reducer")
  local xw, xm = x:clone(), x:narrow(1, first, n):clone()
  xw.requires_grad, xm.requires_grad = true, true
  local yw, ym = whole:forward(xw, gelu), mine:forward(xm, gelu)
  minisd.sum(yw * dy):backward()
  minisd.sum(ym * dy:narrow(1, first, n)):backward()
  local what = gelu and "with GELU: " or ""
  close(ym, yw:narrow(1, first, n), 1e-5, what .. "output")
  close(xm.grad, xw.grad:narrow(1, first, n), 1e-5, what .. "input gradient")
  close(mine.running_mean, whole.running_mean, 1e-6, what .. "running_mean")
  close(mine.running_var, whole.running_var, 1e-6, what .. "running_var")
  local g = { mine.weight.grad, mine.bias.grad }
  assert(dist.allreduce(g, "sum"))
  close(g[1], whole.weight.grad, 1e-4, what .. "weight gradient")
  close(g[2], whole.bias.grad, 1e-4, what .. "bias gradient")
end

print(string.format("rank %d of %d: ok", rank, size))
