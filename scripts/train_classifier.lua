#!/usr/bin/env lua5.4
-- Trains the sprite classifier that scripts/eval_quality.lua measures models with.
-- Run `lua scripts/train_classifier.lua --help` for the options.
local root = ((arg and arg[0] or ""):match("^(.*)/[^/]*$") or ".") .. "/.."
local run_main = assert(loadfile(root .. "/scripts/bootstrap.lua"))(root)

local argparse = require("argparse")

local parser = argparse("train_classifier.lua",
  "Train the sprite classifier of eval_quality.lua on the labelled bundled sprites: the five "
  .. "context labels and \"other\" (the null-context sprites), a stratified held-out split, "
  .. "horizontal flips and random backgrounds as augmentation.")
parser:epilog([[
The file gets the held-out accuracy, the split (seed, fraction, held-out indices) and the
label names in its metadata; eval_quality.lua uses the same split for its reference values.
Example:
  lua scripts/train_classifier.lua --threads 1 --out models/sprite-classifier.safetensors]])
parser:option("--data", "Labelled sprites (default: the bundled data/sprites.png).")
parser:option("--epochs", "Epochs.", "30"):convert(tonumber)
parser:option("--batch-size", "Batch size.", "32"):convert(tonumber)
parser:option("--lr", "AdamW learning rate (cosine decay to 0).", "2e-3"):convert(tonumber)
parser:option("--weight-decay", "AdamW weight decay.", "0.05"):convert(tonumber)
parser:option("--holdout", "Fraction of each class held out.", "0.2"):convert(tonumber)
parser:option("--seed", "Seed of the weights, batches and augmentation.", "0"):convert(tonumber)
parser:option("--split-seed", "Seed of the held-out split.", "0"):convert(tonumber)
parser:option("--limit", "Use only the first N sprites (quick experiments).")
  :convert(tonumber)
parser:option("--threads", "Threads for the maths (default: all cores).", nil):convert(tonumber)
parser:option("--out", "Output file.", "models/sprite-classifier.safetensors")
parser:flag("--quiet", "Print only the summary.")

local a = parser:parse(require("minisd.util").negative_numbers(arg))

local check_int = require("minisd.util").check_int_arg
check_int(parser, "--epochs", a.epochs, 1)
check_int(parser, "--batch-size", a.batch_size, 1)
check_int(parser, "--seed", a.seed, 0)
check_int(parser, "--split-seed", a.split_seed, 0)
check_int(parser, "--limit", a.limit, 2, true)
check_int(parser, "--threads", a.threads, 1, true)
if a.lr == nil or a.lr <= 0 then
  parser:error("--lr must be a positive number")
end
if a.weight_decay == nil or a.weight_decay < 0 then
  parser:error("--weight-decay must be a number >= 0")
end
if a.holdout == nil or a.holdout <= 0 or a.holdout >= 1 then
  parser:error("--holdout must be a fraction in (0, 1)")
end

run_main("train_classifier.lua", function()
  local minisd = require("minisd")
  local classifier = require("minisd.classifier")
  if a.threads then
    minisd.set_threads(a.threads)
  end
  local model, summary = classifier.train({
    data = a.data, epochs = a.epochs, batch_size = a.batch_size, lr = a.lr,
    weight_decay = a.weight_decay, holdout = a.holdout, seed = a.seed, split_seed = a.split_seed,
    limit = a.limit,
    on_epoch = not a.quiet and function(e)
      print(string.format("epoch %d/%d  loss %.4f  %.1f s", e.epoch, e.epochs, e.loss, e.elapsed))
      io.stdout:flush()
    end or nil,
  })
  local dir = a.out:match("^(.*)/[^/]*$")
  if dir then
    os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  end
  local ok, err = model:save(a.out, { training = summary })
  if not ok then
    error(err, 0)
  end
  local names = model.config.class_names
  local function num(v)
    return v and string.format("%.3f", v) or "-"
  end
  print(string.format("held-out accuracy %s over %d sprites; mean over the %d labels %s",
    num(summary.heldout_accuracy), #summary.split.heldout, #model.config.label_names,
    num(summary.heldout_label_accuracy)))
  for _, name in ipairs(names) do
    local acc = summary.heldout_per_class and summary.heldout_per_class[name]
    if acc then
      print(string.format("  %-12s %.3f (%d)", name, acc, summary.heldout_counts[name]))
    end
  end
  print(string.format("%d steps, final loss %.4f, %.0f s; wrote %s", summary.steps,
    summary.final_loss, summary.seconds, a.out))
end)
