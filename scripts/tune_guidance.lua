#!/usr/bin/env lua5.4
-- Finds a model's best classifier-free guidance scale for a sampler with the evaluator
-- (scripts/eval_quality.lua) and records it in the model file, where sample.lua, the
-- evaluator, the worker and the LÖVE example take it from (diffusion.recommended_guidance_for).
-- Run `lua scripts/tune_guidance.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")
local sched_names = require("minisd.sched").names()
local q_defaults = require("minisd.quality").defaults

local parser = argparse("tune_guidance.lua",
  "Measure a model's sprites at several guidance scales (context accuracy and Frechet "
  .. "distance, as scripts/eval_quality.lua, averaged over seeds), pick the best scale for the "
  .. "sampler and, with --write, record it in the model file: sampling with a context then "
  .. "uses it by default. --set records scales without measuring; --clear removes them.")
parser:epilog([[
The pick: among the scales whose mean context accuracy is at least 90% of the classifier's
own held-out accuracy (issue 8's target), those whose mean Frechet distance is within
--tolerance of the lowest, and of these the most accurate; if no scale reaches the accuracy,
the most accurate one. The weights are kept bit for bit (and their dtype).
Examples:
  lua scripts/tune_guidance.lua runs/sprites/model.safetensors --write
  lua scripts/tune_guidance.lua model.safetensors --sampler ddim --scales 3,4,6,8 --seeds 0
  lua scripts/tune_guidance.lua model.safetensors --set ddpm=2 --set ddim=6]])
parser:argument("model", "The model file (.safetensors, a ContextUnet trained with --context).")
parser:option("--sampler", "One of: " .. table.concat(sched_names, ", ") .. ".",
  q_defaults.sampler):choices(sched_names)
parser:option("--steps", "Denoising steps (default: the evaluator's for the sampler).")
  :convert(tonumber)
parser:option("--scales", "Comma-separated guidance scales to measure.", "2,3,4,6")
parser:option("--seeds", "Comma-separated evaluator seeds; each scale's figures are their "
  .. "mean.", "0,1")
parser:option("--n", "Samples per label for the context accuracy.", "100"):convert(tonumber)
parser:option("--tolerance", "Mean Frechet distances within this of the lowest count as equal "
  .. "(the most accurate of those scales wins).", "0.1"):convert(tonumber)
parser:option("--threads", "Threads for the maths (default: all cores).", nil):convert(tonumber)
parser:flag("--write", "Record the best scale in the model file (or in --out).")
parser:option("-o --out", "Write the model here instead of rewriting it in place.")
parser:option("--set", "Record SAMPLER=SCALE without measuring (repeatable).")
  :count("*")
parser:flag("--clear", "Remove every recorded scale (the library's defaults apply again).")
parser:option("--json", "Also write the measurements to this JSON file.")
parser:flag("--quiet", "No progress messages on stderr.")
local a = parser:parse(require("minisd.util").negative_numbers(arg))

local util = require("minisd.util")
util.check_int_arg(parser, "--steps", a.steps, 1, true)
util.check_int_arg(parser, "--n", a.n, 1)
util.check_int_arg(parser, "--threads", a.threads, 1, true)
if not (a.tolerance and a.tolerance >= 0) then
  parser:error("--tolerance must be a number >= 0")
end

-- a comma-separated list of numbers, or a usage error naming the option
local function numbers(name, text, integers)
  local out = {}
  for item in (text .. ","):gmatch("([^,]*),") do
    local v = tonumber(item)
    if not v or v < 0 or (integers and v ~= math.floor(v)) then
      parser:error(string.format("%s: '%s' is not a %s", name, item,
        integers and "non-negative integer" or "non-negative number"))
    end
    out[#out + 1] = v
  end
  return out
end

local set = {}
for _, item in ipairs(a.set or {}) do
  local s, g = item:match("^([%w_]+)=(.+)$")
  if not s or not tonumber(g) then
    parser:error("--set wants SAMPLER=SCALE (e.g. ddpm=2), got '" .. item .. "'")
  end
  set[#set + 1] = { s, tonumber(g) }
end
local measure = #set == 0 and not a.clear
local scales = measure and numbers("--scales", a.scales) or {}
local seeds = measure and numbers("--seeds", a.seeds, true) or {}
if a.json and not measure then
  parser:error("--json goes with measuring, not with --set or --clear")
end
if a.out and measure and not a.write then
  parser:error("-o/--out goes with --write, --set or --clear")
end

run_main("tune_guidance.lua", function()
  local minisd = require("minisd")
  local quality = require("minisd.quality")
  if a.threads then
    minisd.set_threads(a.threads)
  end
  local out = a.out or a.model
  local model = require("minisd.cli").load_context_unet(a.model)
  if measure and not (model.training_summary or {}).context then
    error(a.model .. " was not trained with contexts (train.lua --context): guidance does "
      .. "nothing for it", 0)
  end
  local targets = { a.json } -- checked before the measuring, not after
  if a.write or not measure then
    targets[#targets + 1] = out
  end
  for _, path in ipairs(targets) do
    local ok, werr = util.check_writable(path)
    if not ok then
      error(werr, 0)
    end
  end
  local cfg = model.config
  local guidance = {}
  for k, v in pairs(cfg.guidance or {}) do
    guidance[k] = v
  end

  local results
  if measure then
    local t0 = minisd.clock()
    results = { sampler = a.sampler, seeds = seeds, scales = {} }
    for _, g in ipairs(scales) do
      local row = { guidance = g, accuracy = {}, frechet = {} }
      for _, seed in ipairs(seeds) do
        local res, rerr = quality.evaluate(model, { n = a.n, sampler = a.sampler,
          steps = a.steps, guidance = g, seed = seed })
        if not res then
          error(rerr, 0)
        end
        row.accuracy[#row.accuracy + 1] = res.context_accuracy.overall
        row.frechet[#row.frechet + 1] = res.frechet.samples
        results.classifier_heldout = res.context_accuracy.classifier_heldout
        results.steps, results.real_heldout = res.options.steps, res.frechet.real_heldout
        if not a.quiet then
          io.stderr:write(string.format("[%6.1f s] guidance %g, seed %d: accuracy %.3f, "
            .. "Frechet distance %.2f\n", minisd.clock() - t0, g, seed,
            res.context_accuracy.overall, res.frechet.samples))
        end
      end
      local sa, sf = 0, 0
      for i = 1, #seeds do
        sa, sf = sa + row.accuracy[i], sf + row.frechet[i]
      end
      row.mean_accuracy, row.mean_frechet = sa / #seeds, sf / #seeds
      results.scales[#results.scales + 1] = row
    end
    local floor = 0.9 * (results.classifier_heldout or 0)
    local means = {}
    for i, row in ipairs(results.scales) do
      means[i] = { guidance = row.guidance, accuracy = row.mean_accuracy,
        frechet = row.mean_frechet }
    end
    local picked, reached = quality.pick_guidance(means, floor, a.tolerance)
    results.best, results.accuracy_floor = picked.guidance, floor
    results.tolerance = a.tolerance

    print(string.format("%s, %d steps, seeds %s, %d samples per label (model %s)", a.sampler,
      results.steps, table.concat(seeds, ", "), a.n, a.model))
    print(string.format("%10s  %-24s  %-24s", "guidance", "context accuracy (mean)",
      "Frechet distance (mean)"))
    for _, row in ipairs(results.scales) do
      local acc, fd = {}, {}
      for i = 1, #seeds do
        acc[i], fd[i] = string.format("%.3f", row.accuracy[i]), string.format("%.2f",
          row.frechet[i])
      end
      print(string.format("%10g  %-24s  %-24s%s", row.guidance, table.concat(acc, " ")
        .. string.format(" (%.3f)", row.mean_accuracy), table.concat(fd, " ")
        .. string.format(" (%.2f)", row.mean_frechet), row.guidance == results.best
        and "  <- best" or ""))
    end
    print(string.format("best: guidance %g for %s (%s; accuracy floor %.3f = 90%% of the "
      .. "classifier's held-out %.3f; real held-out sprites' distance %.2f)", results.best,
      a.sampler, reached and string.format("the most accurate of the accurate enough within "
      .. "%g of their lowest distance", a.tolerance)
      or "no scale reached the floor: the most accurate", floor,
      results.classifier_heldout or 0, results.real_heldout or 0))
    if a.json then
      local ok, werr = util.write_file(a.json, require("minisd.json").encode(results,
        { indent = 2 }) .. "\n")
      if not ok then
        error(werr, 0)
      end
      print("wrote " .. a.json)
    end
    if not a.write then
      return
    end
    guidance[a.sampler] = results.best
  elseif a.clear then
    guidance = {}
  end
  for _, p in ipairs(set) do
    guidance[p[1]] = p[2]
  end
  local any = next(guidance) ~= nil
  if any then
    local ok, gerr = minisd.diffusion.check_guidance(guidance)
    if not ok then
      error(gerr, 0)
    end
  end
  cfg.guidance = any and guidance or nil
  local ok, werr = model:save(out, { dtype = minisd.models.file_dtype(a.model),
    training = model.training_summary })
  if not ok then
    error(werr, 0)
  end
  local parts = {}
  for _, s in ipairs(util.sorted_keys(guidance)) do
    parts[#parts + 1] = string.format("%s %g", s, guidance[s])
  end
  print(string.format("wrote %s: guidance %s", out,
    any and table.concat(parts, ", ") or "not recorded (the library's defaults)"))
end)
