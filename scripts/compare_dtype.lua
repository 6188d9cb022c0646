#!/usr/bin/env lua5.4
-- Half-precision model files against float32: saves a model (default: the shipped one) as
-- F16 and as BF16 in a temporary directory, samples the same sprites from each file and
-- from the original, and prints the file sizes and how far the sprites moved.
-- Run `lua scripts/compare_dtype.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")
local parser = argparse("compare_dtype.lua",
  "Save a model as F16 and BF16, sample from each, and compare with float32.")
parser:argument("model", "Model file (default: the shipped sprite model).", nil):args("?")
parser:option("--per-label", "Sprites per label (or in all, for a model without labels).",
  "8"):convert(tonumber)
parser:option("--steps", "DDIM steps.", "25"):convert(tonumber)
parser:option("--guidance", "Classifier-free guidance (context models).", "2"):convert(tonumber)
parser:option("--seed", "Random seed.", "3"):convert(tonumber)
parser:option("--threads", "Threads for the maths (default: all cores).", nil):convert(tonumber)
local a = parser:parse(require("minisd.util").negative_numbers(arg))
local util = require("minisd.util")
util.check_int_arg(parser, "--per-label", a.per_label, 1)
util.check_int_arg(parser, "--steps", a.steps, 1)
util.check_int_arg(parser, "--seed", a.seed, 0)
util.check_int_arg(parser, "--threads", a.threads, 1, true)

run_main("compare_dtype.lua", function()
  local minisd = require("minisd")
  if a.threads then
    minisd.set_threads(a.threads)
  end
  local model = assert(minisd.load_model(a.model))
  local K = #(model.config.label_names or {})
  local opts = { steps = a.steps, seed = a.seed }
  if model.training_summary and model.training_summary.context and K > 0 then
    local rows = {}
    for k = 1, K do
      for _ = 1, a.per_label do
        local r = {}
        for j = 1, K do
          r[j] = j == k and 1 or 0
        end
        rows[#rows + 1] = r
      end
    end
    opts.context, opts.n, opts.guidance = minisd.tensor(rows), #rows, a.guidance
  else
    opts.n = a.per_label
  end
  local function sample(m)
    local o = {}
    for k, v in pairs(opts) do
      o[k] = v
    end
    return minisd.diffusion.sample(m, o)
  end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local ref = sample(model)
  local f32_path = dir .. "/F32.safetensors"
  assert(model:save(f32_path, { training = model.training_summary }))
  local function size(p)
    local f = assert(io.open(p, "rb"))
    local n = f:seek("end")
    f:close()
    return n
  end
  print(string.format("%d sprites, DDIM %d steps, seed %d; differences in [-1, 1]", opts.n,
    a.steps, a.seed))
  print(string.format("%-5s %10s %10s %10s %14s", "dtype", "MiB", "mean", "max",
    "> 1/255 level"))
  print(string.format("%-5s %10.2f %10s %10s %14s", "F32", size(f32_path) / 2 ^ 20, "-", "-",
    "-"))
  for _, dt in ipairs({ "F16", "BF16" }) do
    local p = dir .. "/" .. dt .. ".safetensors"
    assert(model:save(p, { dtype = dt, training = model.training_summary }))
    local x = sample(assert(minisd.load_model(p)))
    local d = (x - ref):abs()
    local moved = 0
    for _, v in ipairs(d:reshape(-1):totable()) do
      if v > 2 / 255 then -- one 8-bit level is 2/255 in [-1, 1]
        moved = moved + 1
      end
    end
    print(string.format("%-5s %10.2f %10.5f %10.4f %13.1f%%", dt, size(p) / 2 ^ 20,
      d:mean():item(), d:max(), 100 * moved / d:numel()))
    os.remove(p)
  end
  os.remove(f32_path)
  os.remove(dir)
end)
