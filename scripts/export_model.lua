#!/usr/bin/env lua5.4
-- Writes a model file from a training run's checkpoint, with the trained weights or their
-- exponential moving average (a run trained with --ema keeps both; its model.safetensors
-- holds the average). Run `lua scripts/export_model.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")
local parser = argparse("export_model.lua",
  "Write a model file from a train.lua checkpoint: the trained weights or their EMA.")
parser:argument("run", "The run's folder (train.lua --out), holding checkpoint.safetensors.")
parser:argument("out", "The model file to write (.safetensors).")
parser:option("--weights", "Which weights: trained, or ema (the run must have --ema).",
  "trained"):choices({ "trained", "ema" })
parser:option("--dtype", "How the weights are stored: F32, F16 or BF16.", "F32")
  :choices({ "F32", "F16", "BF16" })
local a = parser:parse(require("minisd.util").negative_numbers(arg))
if not a.out:match("%.safetensors$") then
  parser:error("the output must be a .safetensors file, got " .. a.out)
end

run_main("export_model.lua", function()
  local minisd = require("minisd")
  local util = require("minisd.util")
  assert(util.check_writable(a.out))
  local info, err = require("minisd.train").load_checkpoint(a.run)
  if not info then
    error(err, 0)
  end
  if a.weights == "ema" and not info.ema_state then
    error(a.run .. ": the run kept no EMA of its weights (train with --ema DECAY)", 0)
  end
  local model = require("minisd.models").from_config(info.config, info.args.arch)
  model:load_state_dict(info.model_state)
  if a.weights == "ema" then
    -- the average covers the parameters; the BatchNorm statistics are the run's, as in the
    -- model.safetensors that train.lua writes
    model:load_state_dict(info.ema_state, false)
  end
  local args = info.args
  local ok, werr = model:save(a.out, { dtype = a.dtype, training = {
    epochs = info.epoch, steps = info.global_step, batch_size = args.batch_size, lr = args.lr,
    seed = args.seed, context = args.context and true or false, dataset = args.data or "bundled",
    ema = args.ema, precision = args.precision, weights = a.weights,
  } })
  if not ok then
    error(werr, 0)
  end
  print(string.format("wrote %s: the %s weights of %s after %d steps (epoch %d)", a.out,
    a.weights, a.run, info.global_step, info.epoch))
  local _ = minisd
end)
