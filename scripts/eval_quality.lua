#!/usr/bin/env lua5.4
-- Measures the sprites of a diffusion model file: context accuracy, Frechet distance,
-- memorisation and alpha. Run `lua scripts/eval_quality.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")

local parser = argparse("eval_quality.lua",
  "Measure a diffusion model's sprites with the sprite classifier (models/"
  .. "sprite-classifier.safetensors): context accuracy, Frechet distance of the classifier's "
  .. "features to the real sprites (with real and noise reference values), memorisation and "
  .. "alpha. Deterministic for a seed.")
parser:epilog([[
Samples: N per label for the context accuracy; the Frechet distance takes one sample per
held-out real sprite, with its context (the labelled ones shared with the accuracy samples),
so that it compares with the real held-out sprites (and Gaussian noise) measured the same way.
Examples:
  lua scripts/eval_quality.lua runs/sprites/model.safetensors
  lua scripts/eval_quality.lua model.safetensors --n 60 --guidance 3 --json quality.json]])
parser:argument("model", "Model file (.safetensors written by train.lua).")
parser:option("--n", "Samples per label for the context accuracy.", "100"):convert(tonumber)
local sampler_names = require("minisd.sched").names()
local q_defaults = require("minisd.quality").defaults
parser:option("--sampler", "One of: " .. table.concat(sampler_names, ", ") .. ".",
  q_defaults.sampler):choices(sampler_names)
parser:option("--steps", "Denoising steps (default: " .. require("minisd.quality").default_steps(
  q_defaults.sampler) .. " for " .. q_defaults.sampler .. ", 25 for ddim).")
  :convert(tonumber)
parser:option("--variance", "ddpm's variance: fixed_small (the default: the posterior's) or "
  .. "fixed_large (the seed's beta_t).")
  :choices(require("minisd.sched").get("ddpm").VARIANCE_TYPES)
parser:option("--guidance", "Classifier-free guidance scale (0: off; default: the model's own "
  .. "for the sampler when its file records one, else 3 for ddpm and euler_a, 6 for ddim and "
  .. "dpmpp_2m).")
  :convert(tonumber)
parser:option("--seed", "Random seed.", "0"):convert(tonumber)
parser:option("--alpha-threshold", "RGBA models: measure the sprites after sample.lua's "
  .. "--alpha-threshold (alpha at or above this value in [0, 1] opaque, below transparent).")
  :convert(tonumber)
parser:flag("--no-signal-leak", "Sample from pure noise, not from the model's signal-leak "
  .. "statistics (see sample.lua --no-signal-leak).")
parser:option("--classifier", "Classifier file (default: the shipped "
  .. "models/sprite-classifier.safetensors).")
parser:option("--threads", "Threads for the maths (default: all cores).", nil):convert(tonumber)
parser:option("--json", "Also write every number to this JSON file.")
parser:flag("--quiet", "No progress messages on stderr.")

local a = parser:parse(require("minisd.util").negative_numbers(arg))

local check_int = require("minisd.util").check_int_arg
check_int(parser, "--n", a.n, 1)
check_int(parser, "--steps", a.steps, 1, true)
check_int(parser, "--seed", a.seed, 0)
check_int(parser, "--threads", a.threads, 1, true)
if a.variance and not require("minisd.sched").get(a.sampler).VARIANCE_TYPES then
  parser:error("--variance applies to ddpm only, not to " .. a.sampler)
end
if a.alpha_threshold ~= nil and not (a.alpha_threshold >= 0 and a.alpha_threshold <= 1) then
  parser:error("--alpha-threshold must be a number in [0, 1]")
end

run_main("eval_quality.lua", function()
  local minisd = require("minisd")
  local quality = require("minisd.quality")
  if a.threads then
    minisd.set_threads(a.threads)
  end
  if a.json then -- before the minutes of sampling, not after
    local ok, werr = require("minisd.util").check_writable(a.json)
    if not ok then
      error(werr, 0)
    end
  end
  local t0 = minisd.clock()
  local leak = nil -- the model's default: on when its file has the statistics
  if a.no_signal_leak then
    leak = false
  end
  local res, err = quality.evaluate(a.model, {
    n = a.n, sampler = a.sampler, steps = a.steps, variance = a.variance, guidance = a.guidance,
    seed = a.seed, signal_leak = leak,
    classifier = a.classifier, alpha_threshold = a.alpha_threshold,
    on_progress = not a.quiet and function(msg)
      io.stderr:write(string.format("[%6.1f s] %s\n", minisd.clock() - t0, msg))
    end or nil,
  })
  if not res then
    error(err, 0)
  end
  io.write(quality.format(res))
  if a.json then -- atomically: a failed write leaves the old file
    local ok, werr = require("minisd.util").write_file(a.json,
      require("minisd.json").encode(res, { indent = 2 }) .. "\n")
    if not ok then
      error(werr, 0)
    end
    print("wrote " .. a.json)
  end
end)
