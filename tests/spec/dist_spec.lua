-- minisd.dist in one process (built with MPI: a singleton job of one rank; without MPI, or
-- under LuaJIT whose module has none: the single-process implementation), and what
-- data-parallel training builds on: the shares of a batch and of the loss's draws. The jobs
-- of several ranks are in mpi_spec.lua.
local minisd = require("minisd")
local dist = require("minisd.dist")
local H = require("helpers")

describe("minisd.dist in one process", function()
  it("is rank 0 of 1 before init, and refuses collectives until init", function()
    assert.are.equal(dist, minisd.dist)
    assert.are.equal(0, dist.rank())
    assert.are.equal(1, dist.size())
    assert.is_nil(dist.reducer())
    if not dist.initialized() then
      assert.has_error(function() dist.allreduce(minisd.ones({ 2 }), "sum") end,
        "minisd.dist.allreduce: call minisd.dist.init() first")
      assert.has_error(function() dist.barrier() end,
        "minisd.dist.barrier: call minisd.dist.init() first")
    end
  end)

  it("raises on misuse, before any communication", function()
    local t = minisd.ones({ 2 })
    assert.has_error(function() dist.allreduce(t, "max") end,
      "minisd.dist.allreduce: op must be \"sum\" or \"mean\", got max")
    assert.has_error(function() dist.allreduce({ t, 3 }, "sum") end,
      "minisd.dist.allreduce: entry 2 is a number, expected a tensor")
    assert.has_error(function() dist.allreduce({}, "sum") end,
      "minisd.dist.allreduce: expected a tensor or a non-empty list of tensors, got an "
      .. "empty table")
    assert.has_error(function() dist.allreduce(t, "sum", { bucket = 4 }) end,
      "minisd.dist.allreduce: unknown option 'bucket' (allowed: bucket_bytes)")
    assert.has_error(function() dist.broadcast(t, 1) end,
      "minisd.dist.broadcast: root must be a rank in 0..0, got 1")
    assert.has_error(function() dist.broadcast("x", 0) end,
      "minisd.dist.broadcast: expected a tensor or a non-empty list of tensors, got string")
    assert.has_error(function() dist.set_timeout(-1) end,
      "minisd.dist.set_timeout: seconds must be a number in [0, 1e9], got -1")
    assert.has_error(function() dist.init({ timout = 3 }) end,
      "minisd.dist.init: unknown option 'timout' (allowed: timeout)")
  end)

  it("runs the collectives as a job of one rank: nothing changes", function()
    local rank, size = dist.init({ timeout = 30 })
    assert.are.equal(0, rank)
    assert.are.equal(1, size)
    assert.are.equal(rank, select(1, dist.init())) -- again: the same
    local info = dist.info()
    assert.are.equal(30, info.timeout)
    assert.are.equal(dist.available and "running" or "single", info.state)
    local a, b = minisd.tensor({ 1, 2, 3 }), minisd.tensor({ { 4 }, { 5 } })
    assert.is_true(dist.allreduce(a, "sum"))
    assert.is_true(dist.allreduce({ a, b }, "mean", { bucket_bytes = 8 }))
    assert.are.same({ 1, 2, 3 }, a:totable())
    assert.are.same({ { 4 }, { 5 } }, b:totable())
    assert.is_true(dist.broadcast({ a, b }, 0))
    assert.are.same({ 1, 2, 3 }, a:totable())
    assert.are.equal("bytes\0of a file", dist.broadcast_string("bytes\0of a file", 0))
    assert.has_error(function() dist.broadcast_string(nil, 0) end,
      "minisd.dist.broadcast_string: the root's value must be a string, got nil")
    assert.is_true(dist.barrier())
    -- one rank: no reducer, and BatchNorm stays the plain op
    local net = minisd.nn.Sequential(minisd.nn.Conv2d(3, 4, 3), minisd.nn.BatchNorm2d(4))
    assert.are.equal(1, dist.sync_batch_norm(net))
    assert.is_nil(net[2].sync)
    dist.abort(3) -- a job of one: returns
  end)

  it("refuses to start as one of several processes without MPI", function()
    local ok, _, out = H.run("OMPI_COMM_WORLD_SIZE=3 " .. H.lua_bin .. " -e 'local d = require("
      .. "\"minisd.dist\"); if d.available then print(\"mpi\") else print(d.init()) end'")
    assert.is_true(ok, out)
    if not out:find("^mpi") then
      assert.truthy(out:find("nil\tminisd.dist.init: started as one of 3 processes, but this "
        .. "minisd was built without MPI", 1, true), out)
    end
  end)

  it("knows a launcher's environment", function()
    local ok, _, out = H.run("env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u PMI_RANK -u PMI_SIZE "
      .. "-u SLURM_NTASKS " .. H.lua_bin .. " -e 'io.write(tostring(require(\"minisd.dist\")"
      .. ".launched()))'")
    assert.is_true(ok, out)
    assert.are.equal("false", out)
    ok, _, out = H.run("SLURM_NTASKS=4 " .. H.lua_bin .. " -e 'io.write(tostring("
      .. "require(\"minisd.dist\").launched()))'")
    assert.is_true(ok, out)
    assert.are.equal("true", out)
  end)
end)

describe("the shares of a batch", function()
  local images = minisd.rand({ 11, 3, 4, 4 }, minisd.Generator(1))
  local labels = minisd.rand({ 11, 5 }, minisd.Generator(2))
  local ds = minisd.data.from_tensors(images, labels)

  local function all_batches(share)
    local out = {}
    for x, c, b, first in ds:batches(4, { generator = minisd.Generator(3), flip = true,
      share = share }) do
      out[#out + 1] = { x = x, c = c, b = b, first = first }
    end
    return out
  end

  it("are the rows of the batch one process gets, in order, with the same flips", function()
    local whole = all_batches(nil)
    assert.are.equal(3, #whole)
    for ranks = 2, 3 do
      local parts = {}
      for r = 0, ranks - 1 do
        parts[r] = all_batches({ rank = r, size = ranks })
      end
      for k, w in ipairs(whole) do
        local xs, cs, rows = {}, {}, 0
        for r = 0, ranks - 1 do
          local p = parts[r][k]
          assert.are.equal(w.b, p.b)
          assert.are.equal(rows + 1, p.first)
          rows = rows + p.x:shape()[1]
          xs[#xs + 1], cs[#cs + 1] = p.x, p.c
        end
        assert.are.equal(w.b, rows)
        assert.are.same(w.x:totable(), minisd.cat(xs, 1):totable())
        assert.are.same(w.c:totable(), minisd.cat(cs, 1):totable())
      end
    end
    -- the last batch of 3 over 2 ranks: rows 1 and 2..3
    local last = all_batches({ rank = 1, size = 2 })[3]
    assert.are.same({ 2, 2 }, { last.first, last.x:shape()[1] })
  end)

  it("refuses a share that gets no rows, and a bad share", function()
    assert.has_error(function() all_batches({ rank = 0, size = 4 }) end,
      "Dataset:batches: a batch of 3 cannot be shared by 4 ranks (rank 0 gets none)")
    assert.has_error(function() ds:batches(4, { share = { rank = 2, size = 2 } }) end,
      "Dataset:batches: share must be {rank = r, size = n} with integers 0 <= r < n")
  end)

  it("draw the loss's timesteps, noise and context drops of their own rows", function()
    local diffusion = require("minisd.diffusion")
    local sched = require("minisd.sched").get("ddpm").new({})
    local x0 = minisd.rand({ 6, 3, 4, 4 }, minisd.Generator(4)) * 2 - 1
    local c = minisd.ones({ 6, 5 })
    local seen = {}
    local function model(xt, tin, ctx) -- no statistics over the batch: rows are independent
      seen[#seen + 1] = ctx
      return xt * 0.5 + tin
    end
    local whole, wdraw = diffusion.loss(model, x0, c, { scheduler = sched,
      generator = minisd.Generator(5), context_drop = 0.5 })
    local sum = 0
    for _, part in ipairs({ { 1, 2 }, { 3, 4 } }) do -- rows 1..2 and 3..6
      local first, n = part[1], part[2]
      local l, d = diffusion.loss(model, x0:narrow(1, first, n), c:narrow(1, first, n),
        { scheduler = sched, generator = minisd.Generator(5), context_drop = 0.5,
          share = { first = first, total = 6 } })
      assert.are.same(wdraw.t:narrow(1, first, n):totable(), d.t:totable())
      assert.are.same(wdraw.noise:narrow(1, first, n):totable(), d.noise:totable())
      assert.are.same(seen[1]:narrow(1, first, n):totable(), seen[#seen]:totable())
      sum = sum + l:item() * n / 6
    end
    H.assert_close(sum, whole:item(), 1e-5, 0, "the parts' weighted sum")
    assert.has_error(function()
      diffusion.loss(model, x0, c, { scheduler = sched, share = { first = 2, total = 6 } })
    end, "diffusion.loss: share must be {first = k, total = b} with the 6 rows of x0 inside 1..b")
  end)
end)
