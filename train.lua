#!/usr/bin/env lua5.4
-- Trains the sprite diffusion model (the seed's ContextUnet) with or without context.
-- Run `lua train.lua --help` for the options.
local root = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
-- from a checkout: scripts/bootstrap.lua finds the source and its build; installed by
-- LuaRocks (minisd-train, minisd-sample), minisd is on the default paths
local boot = loadfile(root .. "/scripts/bootstrap.lua")
local run_main = boot and boot(root) or require("minisd.cli").run_main

local argparse = require("argparse")

local parser = argparse("train.lua",
  "Train the minisd sprite diffusion model (DDPM objective, the seed's ContextUnet).")
parser:epilog([[
Examples:
  lua train.lua                         # bundled sprites, unconditional, 32 epochs
  lua train.lua --context --epochs 50   # with the five context labels
  lua train.lua --resume runs/sprites   # continue an interrupted run exactly
  mpirun -np 4 lua train.lua --sync-bn  # data-parallel over 4 processes (MPI)
Ctrl-C saves a checkpoint in the output directory before exiting.]])
parser:option("--data", "Dataset: a sprite sheet (.png + _labels.tsv), the seed's .npy pair, "
  .. "or a folder of PNGs (default: the bundled data/sprites.png).")
parser:flag("--context", "Train with the context labels (Training_with_context).")
parser:option("--epochs", "Number of epochs.", "32"):convert(tonumber)
parser:option("--batch-size", "Batch size.", "100"):convert(tonumber)
parser:option("--lr", "Peak learning rate (see --lr-schedule).", "1e-3")
  :convert(tonumber)
parser:option("--lr-schedule", "How the learning rate moves: linear (the seed's: from --lr to 0 "
  .. "over the epochs, epoch by epoch), cosine (half a cosine from --lr to 0 over the run's "
  .. "steps) or constant.", "linear"):choices({ "linear", "cosine", "constant" })
parser:option("--warmup", "Raise the learning rate linearly from 0 over the first N optimizer "
  .. "steps.", "0"):convert(tonumber)
parser:option("--recipe", "minisd (the seed's recipe with Min-SNR loss weighting, which "
  .. "trains faster at first and is on a par after 15200 steps; see models/README.md) or "
  .. "seed (the seed's notebooks exactly). Options given with it win.", "minisd")
  :choices({ "minisd", "seed" })
parser:option("--loss-weighting", "uniform (the seed's plain MSE of the noise) or min-snr "
  .. "(each sample weighted by min(SNR, gamma) / SNR, Min-SNR weighting); default: the "
  .. "recipe's.")
  :choices({ "uniform", "min-snr" })
parser:option("--snr-gamma", "gamma of --loss-weighting min-snr.", "5"):convert(tonumber)
parser:flag("--other-label", "With --context: give the sprites that have no label a label of "
  .. "their own, 'other', so that they can be asked for and guided like the others (the "
  .. "all-zero context stays the null one).")
parser:option("--context-drop", "With --context: the fraction of rows trained with the null "
  .. "context, which classifier-free guidance needs.", "0.1"):convert(tonumber)
parser:option("--arch", "Model architecture: a diffusion model of the registry "
  .. "(minisd.models.register).", "ContextUnet")
  :choices(require("minisd.models").names("diffusion"))
parser:option("--n-feat", "Width of the U-Net (n_feat).", "64"):convert(tonumber)
parser:option("--init", "Start from the weights of this model file (e.g. "
  .. "models/sprites-context.safetensors) instead of random ones: fine-tuning. Its "
  .. "architecture and width are used; the data must have its channels, size and number of "
  .. "labels.")
parser:option("--channels", "3 (RGB over --background) or 4 (RGBA); default: the data's own.")
  :convert(tonumber)
parser:option("--background", "Background colour for 3-channel training of RGBA data.", "#ffffff")
parser:option("--seed", "Random seed.", "0"):convert(tonumber)
parser:option("--threads", "Threads for the maths (default: all cores).", nil):convert(tonumber)
parser:option("--precision", "Convolution precision: fp32, or bf16 (bfloat16 products, fp32 "
  .. "sums; fast on CPUs with AMX). Kept by --resume.", nil):choices({ "fp32", "bf16" })
parser:option("--out", "Output directory (checkpoint, sample grids, model).", "runs/sprites")
parser:option("--resume", "Continue the run saved in this directory (exactly; --epochs, "
  .. "--sample-every, --sample-steps, --threads, --progress, --quiet, --stop-after and "
  .. "--dist-timeout may be given again, other options are the run's; any number of MPI "
  .. "ranks).")
parser:option("--sample-every", "Write a sample grid every N epochs (0: never).", "1")
  :convert(tonumber)
parser:option("--sample-steps", "DDIM steps for the sample grids.", "25"):convert(tonumber)
parser:option("--limit", "Use only the first N sprites (quick experiments).")
  :convert(tonumber)
parser:option("--stop-after", "Stop after N optimizer steps, saving a checkpoint as Ctrl-C does.")
  :convert(tonumber)
parser:flag("--no-flip", "Do not augment with horizontal flips.")
parser:option("--ema", "Keep an exponential moving average of the weights with this decay "
  .. "(e.g. 0.999); model.safetensors then holds the averaged weights (0: off).", "0")
  :convert(tonumber)
parser:option("--progress", "Progress display: auto, bar or plain.", "auto")
  :choices({ "auto", "bar", "plain" })
parser:flag("--quiet", "Print only the summary.")
parser:flag("--sync-bn", "Under MPI (mpirun, srun): BatchNorm statistics of the whole batch "
  .. "over every rank, so that N ranks compute what one process does (kept by --resume).")
parser:option("--dist-timeout", "Under MPI: seconds a rank waits for the others before it "
  .. "stops the job (0: for ever).", "300"):convert(tonumber)

local a = parser:parse(require("minisd.util").negative_numbers(arg))

-- limits that fit sprites: a typo must not ask for gigabytes or years
local check_int = require("minisd.util").check_int_arg
check_int(parser, "--epochs", a.epochs, 1, true, 1000000)
check_int(parser, "--batch-size", a.batch_size, 1, true, 4096)
check_int(parser, "--n-feat", a.n_feat, 8, true, 1024)
check_int(parser, "--threads", a.threads, 1, true, 256)
check_int(parser, "--sample-every", a.sample_every, 0, true, 1000000)
check_int(parser, "--sample-steps", a.sample_steps, 1, true, 10000)
check_int(parser, "--limit", a.limit, 1, true)
check_int(parser, "--stop-after", a.stop_after, 1, true)
check_int(parser, "--seed", a.seed, 0, true)
check_int(parser, "--warmup", a.warmup, 0, true, 100000000)
if a.snr_gamma == nil or not (a.snr_gamma > 0 and a.snr_gamma <= 1e6) then
  parser:error("--snr-gamma must be a positive number (at most 1e6), got " .. tostring(a.snr_gamma))
end
if a.context_drop == nil or not (a.context_drop >= 0 and a.context_drop <= 1) then
  parser:error("--context-drop must be a number in [0, 1], got " .. tostring(a.context_drop))
end
if a.ema == nil or a.ema < 0 or a.ema >= 1 then
  parser:error("--ema must be a number in [0, 1), got " .. tostring(a.ema))
end
if a.dist_timeout == nil or not (a.dist_timeout >= 0 and a.dist_timeout <= 1e9) then
  parser:error("--dist-timeout must be a number of seconds in [0, 1e9]")
end
if a.lr == nil or a.lr <= 0 then
  parser:error("--lr must be a positive number")
end
if a.channels ~= nil and a.channels ~= 3 and a.channels ~= 4 then
  parser:error("--channels must be 3 or 4, got " .. tostring(a.channels))
end
if a.n_feat and a.n_feat % 8 ~= 0 then
  parser:error("--n-feat must be a multiple of 8 (GroupNorm uses 8 groups), got " .. a.n_feat)
end

-- the options given on the command line: a resumed run takes some of them (see --resume)
local given = {}
for i = 1, #arg do
  local name = arg[i]:match("^%-%-([%w][%w-]*)")
  if name then
    given[(name:gsub("-", "_"))] = true
  end
end

run_main("train.lua", function()
  -- data-parallel when started by mpirun, mpiexec or srun (README: "Training on several
  -- machines")
  local dist = require("minisd.dist")
  local lead = true
  if dist.launched() then
    local rank, err = dist.init({ timeout = a.dist_timeout })
    if not rank then
      error(err, 0)
    end
    lead = rank == 0
  end
  local res = require("minisd.train").run({
    data = a.data, context = a.context, epochs = a.epochs, given = given, arch = a.arch,
    batch_size = a.batch_size, lr = a.lr, recipe = a.recipe, lr_schedule = a.lr_schedule,
    warmup = a.warmup,
    loss_weighting = a.loss_weighting, snr_gamma = a.snr_gamma, context_drop = a.context_drop,
    other_label = a.other_label or nil,
    n_feat = a.n_feat, init = a.init, channels = a.channels,
    background = a.background, seed = a.seed, threads = a.threads, precision = a.precision,
    out = a.out,
    resume = a.resume, sample_every = a.sample_every, sample_steps = a.sample_steps,
    limit = a.limit, stop_after = a.stop_after, flip = not a.no_flip, ema = a.ema,
    progress = a.progress,
    quiet = a.quiet, sync_bn = a.sync_bn,
  })
  if not lead then -- rank 0 reports
    os.exit(res.interrupted and not a.stop_after and 130 or 0)
  end
  if res.interrupted then
    print(string.format("stopped after %d steps; checkpoint saved: %s (continue with --resume %s)",
      res.steps, res.checkpoint, a.resume or a.out))
    os.exit(a.stop_after and 0 or 130)
  end
  if res.final_loss == nil then -- a finished run resumed: no step to take
    print(string.format("nothing to do: the run has finished its %d epochs (%d steps); give "
      .. "--epochs N to train further; model: %s", res.epochs, res.steps, res.model_path))
    return
  end
  print(string.format("done: %d epochs, %d steps, final loss %.4f; model: %s", res.epochs,
    res.steps, res.final_loss, res.model_path))
end)
