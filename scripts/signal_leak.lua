#!/usr/bin/env lua5.4
-- Stores (or removes) the signal-leak statistics in a diffusion model file: the per-channel
-- means of its training sprites, grouped by their labels, which sampling then starts from
-- (see README, "The signal leak"). train.lua stores them in every model it writes; this is
-- for a model written before, or trained on other data. The weights are kept bit for bit.
-- Run `lua scripts/signal_leak.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")
local parser = argparse("signal_leak.lua",
  "Store the signal-leak statistics of a model's training sprites in its model file (or "
  .. "remove them), so that sampling starts as training saw x_T. The weights are kept.")
parser:argument("model", "The model file (.safetensors, a ContextUnet).")
parser:option("--data", "The sprites the model was trained on (as train.lua --data; default: "
  .. "the bundled ones).")
parser:option("-o --out", "Write here instead of rewriting the model file in place.")
parser:flag("--no-context", "Group every sprite together (a model trained without --context; "
  .. "default: as the file's training summary says, else with the labels).")
parser:flag("--remove", "Remove the statistics instead (sampling then starts from pure noise).")
local a = parser:parse(require("minisd.util").negative_numbers(arg))

run_main("signal_leak.lua", function()
  local minisd = require("minisd")
  local out = a.out or a.model
  assert(require("minisd.util").check_writable(out))
  local model = require("minisd.cli").load_context_unet(a.model)
  local cfg, summary = model.config, model.training_summary or {}
  if a.remove then
    cfg.signal_leak = nil
  else
    local ds, derr = minisd.data.load(a.data, { channels = cfg.in_channels,
      background = cfg.background })
    if not ds then
      error(derr, 0)
    end
    local context = not a.no_context and summary.context ~= false
    if context and #cfg.label_names == #ds.label_names + 1 then -- train.lua --other-label
      minisd.data.add_other_label(ds, cfg.label_names[#cfg.label_names])
    end
    if context and #cfg.label_names ~= #ds.label_names then
      error(string.format("%s has %d labels, the data %d (give --data, or --no-context for a "
        .. "model trained without labels)", a.model, #cfg.label_names, #ds.label_names), 0)
    end
    if ds.images:shape()[3] ~= cfg.height then
      error(string.format("the data's sprites are %dx%d, the model makes %dx%d",
        ds.images:shape()[3], ds.images:shape()[4], cfg.height, cfg.height), 0)
    end
    cfg.signal_leak = minisd.diffusion.signal_leak_stats(ds.images,
      context and ds.labels or nil)
  end
  local ok, werr = model:save(out, { dtype = minisd.models.file_dtype(a.model),
    training = model.training_summary })
  if not ok then
    error(werr, 0)
  end
  if a.remove then
    print(string.format("wrote %s without signal-leak statistics", out))
  else
    local groups, n = 0, 0
    for _, flat in pairs(cfg.signal_leak.groups) do
      groups, n = groups + 1, n + #flat / cfg.in_channels
    end
    print(string.format("wrote %s: the means of %d sprites in %d label sets", out, n, groups))
  end
end)
