#!/usr/bin/env lua5.4
-- bf16 against fp32 on the same run: trains the same number of steps from the same seed in
-- each precision (train.lua's loop, --context on the bundled sprites), prints the two loss
-- curves side by side (means over windows of steps) and their relative difference, then
-- samples one batch from the fp32-trained model in each precision and prints the largest
-- difference. Run `lua scripts/compare_precision.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")
local parser = argparse("compare_precision.lua",
  "Train and sample in fp32 and in bf16 from one seed and compare the results.")
parser:option("--steps", "Optimizer steps per run.", "200"):convert(tonumber)
parser:option("--window", "Steps per row of the loss table.", "20"):convert(tonumber)
parser:option("--threads", "Threads for the maths (default: all cores).", nil)
  :convert(tonumber)
parser:option("--seed", "Random seed of both runs.", "0"):convert(tonumber)
parser:option("--out", "Directory for the two runs.", "runs/precision")
parser:option("--count", "Sprites in the sampled batch.", "32"):convert(tonumber)
parser:flag("--reuse", "Do not train: compare the runs already in --out.")
local a = parser:parse(require("minisd.util").negative_numbers(arg))
for _, k in ipairs({ "steps", "window", "count" }) do
  if not a[k] or a[k] < 1 or a[k] ~= math.floor(a[k]) then
    parser:error("--" .. k .. " must be a positive integer")
  end
end

local function read_losses(path)
  local f = assert(io.open(path, "r"))
  local losses = {}
  f:read("l") -- header: epoch, step in the epoch, loss, lr; one row per step, in order
  for line in f:lines() do
    losses[#losses + 1] = tonumber(line:match("^%d+\t%d+\t([^\t]+)\t"))
  end
  f:close()
  return losses
end

run_main("compare_precision.lua", function()
  local minisd = require("minisd")
  local train = require("minisd.train")
  local isa, best = minisd.get_isa()
  print(string.format("kernel level %s (best %s); bf16 products on: %s", isa, best,
    select(2, minisd.get_precision()) or "the fp32 kernels (rounded inputs)"))
  local runs, times = {}, {}
  for _, p in ipairs({ "fp32", "bf16" }) do
    local out = a.out .. "/" .. p
    local t0 = os.clock()
    if not a.reuse then
      -- the seed's recipe: the README's figures were measured with it
      train.run({ context = true, epochs = 1000, seed = a.seed, threads = a.threads,
        precision = p, out = out, stop_after = a.steps, sample_every = 0, quiet = true,
        recipe = "seed" })
    end
    times[p] = os.clock() - t0
    runs[p] = read_losses(out .. "/losses.tsv")
    if #runs[p] < a.steps then
      error(string.format("%s/losses.tsv has %d steps, not %d", out, #runs[p], a.steps), 0)
    end
  end
  if not a.reuse then
    print(string.format("\n%d steps each; CPU time fp32 %.0f s, bf16 %.0f s", a.steps,
      times.fp32, times.bf16))
  end
  print(string.format("%-13s %10s %10s %9s", "steps", "fp32 loss", "bf16 loss", "bf16/fp32"))
  for s0 = 1, a.steps, a.window do
    local s1 = math.min(a.steps, s0 + a.window - 1)
    local m32, m16 = 0, 0
    for s = s0, s1 do
      m32, m16 = m32 + runs.fp32[s], m16 + runs.bf16[s]
    end
    m32, m16 = m32 / (s1 - s0 + 1), m16 / (s1 - s0 + 1)
    print(string.format("%5d-%-7d %10.5f %10.5f %9.4f", s0, s1, m32, m16, m16 / m32))
  end

  -- one batch from the fp32-trained weights, in each precision
  local info = assert(train.load_checkpoint(a.out .. "/fp32"))
  local model = require("minisd.models").from_config(info.config)
  model:load_state_dict(info.model_state)
  model:eval()
  local K = model.config.n_cfeat
  local rows = {} -- each label in turn, one-hot
  for i = 1, a.count do
    rows[i] = {}
    for k = 1, K do
      rows[i][k] = ((i - 1) % K + 1 == k) and 1 or 0
    end
  end
  local ctx = minisd.tensor(rows)
  local out = {}
  for _, p in ipairs({ "fp32", "bf16" }) do
    minisd.set_precision(p)
    out[p] = minisd.no_grad(function()
      return require("minisd.diffusion").sample(model, { n = a.count, seed = a.seed,
        context = ctx, steps = 25 })
    end)
  end
  minisd.set_precision("fp32")
  local d = (out.fp32 - out.bf16):abs()
  print(string.format("\nDDIM 25 steps x %d sprites from the fp32 weights: bf16 vs fp32 "
    .. "max |difference| %.4f, mean %.5f (pixel values in [-1, 1]: %.2f and %.3f of 255 levels)",
    a.count, d:max(), d:mean():item(), d:max() * 127.5, d:mean():item() * 127.5))
end)
