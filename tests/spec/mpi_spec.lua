-- Jobs of several ranks under mpirun (Open MPI; skipped when minisd was built without MPI
-- or mpirun is missing): the collectives and synchronised BatchNorm (mpi_ranks.lua), then
-- train.lua data-parallel: 2 ranks with --sync-bn against 1 rank with the same global batch,
-- resume with another number of ranks, Ctrl-C on one rank and on mpirun, a killed rank, a
-- hung rank, and batches the ranks cannot share. Tiny settings: about 30 s in all.
local minisd = require("minisd")
local H = require("helpers")

local has_mpi = require("minisd.core").dist ~= nil and H.run("command -v mpirun")

-- as root, mpirun wants --allow-run-as-root; on 2 cores, 3 ranks want --oversubscribe
local MPIRUN = "timeout 120 mpirun --oversubscribe"
  .. (select(3, H.run("id -u")):match("^0%s") and " --allow-run-as-root" or "")
-- A sanitizer build's specs run with the ASan runtime preloaded: it goes to the ranks
-- (which load the instrumented module), not to mpirun or the tools (pgrep hangs under it)
local PRELOAD = os.getenv("LD_PRELOAD")
local NO_PRELOAD = PRELOAD and "env -u LD_PRELOAD " or ""
if PRELOAD then
  MPIRUN = NO_PRELOAD .. MPIRUN .. " -x LD_PRELOAD=" .. PRELOAD
  for _, var in ipairs({ "ASAN_OPTIONS", "UBSAN_OPTIONS" }) do
    if os.getenv(var) then
      MPIRUN = MPIRUN .. " -x " .. var
    end
  end
end

local function mpirun(n, args)
  return H.run(string.format("%s -np %d %s %s", MPIRUN, n, H.lua_bin, args))
end

local read_losses = H.read_losses

-- The same steps, and the losses equal to float rounding (the sums run in another order).
local function same_losses(a, b)
  local ra, rb = read_losses(a), read_losses(b)
  assert.are.equal(#ra, #rb)
  for i, r in ipairs(ra) do
    assert.are.same({ r.epoch, r.step }, { rb[i].epoch, rb[i].step })
    H.assert_close(rb[i].loss, r.loss, 1e-5, 0, "loss of step " .. i)
  end
  return #ra
end

-- Conv biases followed by a normalisation (BatchNorm; out.0's GroupNorm has one channel per
-- group at n_feat 8) have a gradient of 0 in exact arithmetic; in floats it is rounding
-- noise, which Adam scales up to steps of about lr whatever its size, so those biases (and
-- the running means, which follow them) wander differently in any two orders of the sums.
local NULL_GRADIENT = { "%.conv[12]%.0%.bias$", "running_mean$", "^out%.0%.bias$" }

local function same_weights(a, b)
  local ta, tb = minisd.load_safetensors(a), minisd.load_safetensors(b)
  local n = 0
  for name, t in pairs(ta) do
    local skip = false
    for _, pat in ipairs(NULL_GRADIENT) do
      skip = skip or name:find(pat) ~= nil
    end
    if not skip then
      n = n + 1
      H.assert_close(tb[name], t, 1e-4, 1e-5, name)
    end
  end
  assert.is_true(n > 50, "compared " .. n .. " tensors")
end

local TINY = "train.lua --limit 20 --batch-size 8 --n-feat 8 --sample-every 0 --progress plain "
  .. "--context --epochs 2 --threads 1"

local describe_mpi = has_mpi and describe or pending

describe_mpi("minisd.dist under mpirun", function()
  it("sums, averages and broadcasts; synchronised BatchNorm is the whole batch's", function()
    for n = 1, 3 do
      local ok, _, out = mpirun(n, "tests/spec/mpi_ranks.lua")
      assert.is_true(ok, out)
      for r = 0, n - 1 do
        assert.truthy(out:find(string.format("rank %d of %d: ok", r, n), 1, true), out)
      end
    end
  end)

  it("returns a collective's timeout as an error; the broken job ends", function()
    local ok, code, out = mpirun(2, "tests/spec/mpi_ranks.lua timeout")
    assert.is_false(ok)
    assert.are_not.equal(124, code) -- not the test's own timeout
    assert.truthy(out:find("rank 0 failed as it should: minisd.dist: allreduce of 4 floats: no "
      .. "answer from the other ranks within 1 s (2 ranks)", 1, true), out)
  end)
end)

describe_mpi("train.lua under mpirun", function()
  local tmp = H.tmpdir()

  it("trains 2 ranks with --sync-bn as 1 rank with the same global batch", function()
    local one, two, plain = tmp .. "/one", tmp .. "/two", tmp .. "/plain"
    local ok, _, out = H.run(H.lua_bin .. " " .. TINY .. " --sync-bn --out " .. one)
    assert.is_true(ok, out)
    ok, _, out = mpirun(2, TINY .. " --sync-bn --out " .. two)
    assert.is_true(ok, out)
    -- rank 0 alone prints and writes
    local _, done = out:gsub("done: 2 epochs, 6 steps", "")
    assert.are.equal(1, done, out)
    assert.are.equal(6, same_losses(one .. "/losses.tsv", two .. "/losses.tsv"))
    same_weights(one .. "/model.safetensors", two .. "/model.safetensors")
    local model = assert(minisd.load_model(two .. "/model.safetensors"))
    assert.are.equal(2, model.training_summary.ranks)
    assert.is_true(model.training_summary.sync_bn)
    -- without --sync-bn each rank normalises with its own share's statistics
    ok, _, out = mpirun(2, TINY .. " --out " .. plain)
    assert.is_true(ok, out)
    local ra, rb = read_losses(one .. "/losses.tsv"), read_losses(plain .. "/losses.tsv")
    assert.is_true(math.abs(ra[1].loss - rb[1].loss) > 1e-5 * ra[1].loss,
      "the same loss without --sync-bn")
  end)

  it("resumes a 2-rank checkpoint on 1 rank, and a 1-rank checkpoint on 2", function()
    local ref, a, b = tmp .. "/ref", tmp .. "/a", tmp .. "/b"
    assert.is_true((H.run(H.lua_bin .. " " .. TINY .. " --sync-bn --out " .. ref)))
    local ok, _, out = mpirun(2, TINY .. " --sync-bn --stop-after 4 --out " .. a)
    assert.is_true(ok, out)
    assert.truthy(out:find("stopped after 4 steps; checkpoint saved", 1, true), out)
    local info = assert(require("minisd.train").load_checkpoint(a))
    assert.are.same({ 4, 2, true }, { info.global_step, info.ranks, info.args.sync_bn })
    ok, _, out = H.run(H.lua_bin .. " train.lua --resume " .. a .. " --quiet")
    assert.is_true(ok, out)
    same_losses(ref .. "/losses.tsv", a .. "/losses.tsv")
    same_weights(ref .. "/model.safetensors", a .. "/model.safetensors")
    ok, _, out = H.run(H.lua_bin .. " " .. TINY .. " --sync-bn --stop-after 2 --out " .. b)
    assert.is_true(ok, out)
    ok, _, out = mpirun(2, "train.lua --resume " .. b .. " --quiet")
    assert.is_true(ok, out)
    same_losses(ref .. "/losses.tsv", b .. "/losses.tsv")
    same_weights(ref .. "/model.safetensors", b .. "/model.safetensors")
  end)

  -- a run long enough to be interrupted: 50 steps an epoch
  local LONG = "train.lua --limit 400 --batch-size 8 --n-feat 8 --epochs 50 --sample-every 0 "
    .. "--progress plain --sync-bn --threads 1"

  -- Starts LONG on 2 ranks in dir (mpirun's options `mpi`, train.lua's `more`), waits for 3
  -- logged steps, runs `signal` (a shell command given $ranks, the ranks' pids, and $job,
  -- that of the `timeout` running mpirun) and returns the output and mpirun's exit status.
  local function interrupt(dir, signal, mpi, more)
    os.execute("mkdir -p " .. dir)
    local cmd = string.format([[%s -np 2 %s %s %s %s --out %s > %s/log 2>&1 & job=$!
      for i in $(seq 1 300); do
        [ -f %s/losses.tsv ] && [ "$(wc -l < %s/losses.tsv)" -ge 4 ] && break; sleep 0.1
      done
      ranks=$(%spgrep -f "^%s train.lua.*--out %s")
      %s
      wait $job; echo "code=$?"]], MPIRUN, mpi or "", H.lua_bin, LONG, more or "", dir, dir,
      dir, dir, NO_PRELOAD, H.lua_bin, dir, signal)
    local _, _, out = H.run(cmd)
    return out .. H.read_file(dir .. "/log"), tonumber(out:match("code=(%d+)"))
  end

  it("stops every rank at the same step with one checkpoint on Ctrl-C of one rank", function()
    local dir = tmp .. "/int"
    local out, code = interrupt(dir, "kill -INT $(echo $ranks | cut -d' ' -f2)")
    assert.are.equal(130, code, out)
    local _, n = out:gsub("stopped after %d+ steps; checkpoint saved", "")
    assert.are.equal(1, n, out)
    local info = assert(require("minisd.train").load_checkpoint(dir))
    assert.is_true(info.global_step >= 3)
    assert.are.equal(info.global_step, #read_losses(dir .. "/losses.tsv"))
  end)

  it("saves a checkpoint on Ctrl-C of mpirun (its SIGTERM to every rank)", function()
    -- mpirun sends SIGTERM odls_base_sigkill_timeout seconds after Ctrl-C, and SIGKILL as long
    -- after that
    local dir = tmp .. "/int_mpirun"
    -- (to mpirun itself: $job is `timeout`, which would follow the signal with SIGCONT)
    local out = interrupt(dir, "kill -INT $(" .. NO_PRELOAD .. "pgrep -P $job)",
      "--mca odls_base_sigkill_timeout 3")
    local _, n = out:gsub("stopped after %d+ steps; checkpoint saved", "")
    assert.are.equal(1, n, out)
    local info = assert(require("minisd.train").load_checkpoint(dir))
    assert.are.equal(info.global_step, #read_losses(dir .. "/losses.tsv"))
  end)

  it("ends the job with an error when a rank is killed, or hangs (--dist-timeout)", function()
    local out, code = interrupt(tmp .. "/killed", "kill -KILL $(echo $ranks | cut -d' ' -f2)")
    assert.is_true(code ~= 0 and code ~= 124, out) -- mpirun ends it; 124: the test's timeout
    assert.truthy(out:find("exited on signal 9", 1, true), out)
    -- a stopped rank never answers: the other's collective times out and aborts the job
    out, code = interrupt(tmp .. "/hung", "kill -STOP $(echo $ranks | cut -d' ' -f2)", nil,
      "--dist-timeout 3")
    assert.is_true(code ~= 0 and code ~= 124, out)
    assert.truthy(out:find("no answer from the other ranks within 3 s (2 ranks): a rank died "
      .. "or hangs", 1, true), out)
  end)

  it("refuses batches the ranks cannot share, naming the numbers", function()
    local ok, _, out = mpirun(2, TINY:gsub("batch%-size 8", "batch-size 7") .. " --out "
      .. tmp .. "/odd")
    assert.is_false(ok)
    -- every rank finds it: rank 0 reports it, once, and the job ends without an abort
    local _, n = out:gsub("train.lua: error: %-%-batch%-size 7 is not a multiple of the 2 ranks",
      "")
    assert.are.equal(1, n, out)
    assert.falsy(out:find("MPI_ABORT", 1, true), out)
    ok, _, out = mpirun(3, TINY:gsub("limit 20", "limit 19"):gsub("batch%-size 8",
      "batch-size 6") .. " --out " .. tmp .. "/last")
    assert.is_false(ok)
    assert.truthy(out:find("the last batch of each epoch has 1 sprites (19 % 6), fewer than the 3 "
      .. "ranks", 1, true), out)
  end)
end)
