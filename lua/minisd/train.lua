--- The training loop behind `train.lua`: the seed's Training and
-- Training_with_context notebooks with checkpoints, exact resume, progress
-- and per-epoch sample grids; data-parallel over the ranks of a minisd.dist job.
-- @module minisd.train

local minisd = require("minisd")
local json = require("minisd.json")
local dist = require("minisd.dist")

local M = {}

M.defaults = {
  data = nil, context = false, epochs = 32, batch_size = 100, lr = 1e-3, n_feat = 64,
  arch = "ContextUnet",
  channels = nil, background = "#ffffff", seed = 0, threads = nil, precision = "fp32",
  out = "runs/sprites",
  sample_every = 1, sample_steps = 25, stop_after = nil, limit = nil, flip = true, ema = 0,
  progress = "auto", quiet = false, sync_bn = false,
  -- the recipe's settings, where neither the options nor M.recipes[args.recipe] give one
  -- (the seed's values: a checkpoint of an older minisd, which kept none of these, resumes
  -- with them)
  lr_schedule = "linear", warmup = 0, loss_weighting = "uniform", snr_gamma = 5,
  context_drop = 0.1, init = nil, other_label = false,
}

--- Named recipes (train.lua --recipe): settings a new run takes unless its options give
-- them. "seed" is the seed's notebooks' recipe; "minisd" (the default) differs from it only
-- where scripts/eval_quality.lua measured an improvement (models/README.md, "Recipe").
M.recipes = {
  seed = { loss_weighting = "uniform" },
  minisd = { loss_weighting = "min-snr" },
}
M.default_recipe = "minisd"

local CHECKPOINT = "checkpoint.safetensors"

-- options that belong to one invocation, not to the run a checkpoint continues
local TRANSIENT = { resume = true, threads = true, progress = true, quiet = true,
  stop_after = true, dist_timeout = true }
-- options a resumed run takes when given again (they change no number of the training):
-- the last epoch, and the sample grids
local RESUME_MAY_CHANGE = { epochs = true, sample_every = true, sample_steps = true }

-- ---- small helpers ------------------------------------------------------

local util = require("minisd.util")
local path_join, file_exists = util.join_path, util.is_file

-- An error every rank meets at the same point with the same numbers (an option, the
-- checkpoint rank 0 sent, the batch's loss): reported once, and the job ends without an
-- abort (minisd.dist.collective_error); in one process, a plain error.
local fail = dist.collective_error

local function mkdir_p(dir)
  if not util.mkdir_p(dir) then
    error("cannot create the output directory " .. dir, 0)
  end
end

local function isatty()
  local ok = os.execute("test -t 1")
  return ok == true or ok == 0
end

local function fmt_time(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then
    return string.format("%dh%02dm", math.floor(s / 3600), math.floor(s % 3600 / 60))
  end
  return string.format("%d:%02d", math.floor(s / 60), s % 60)
end

-- Tensors and plain values of a nested table, split for a safetensors file:
-- tensors go into `tensors` under prefix paths, the rest into a JSON-able tree.
local function flatten(value, prefix, tensors)
  if minisd.is_tensor(value) then
    tensors[prefix] = value
    return { ["$tensor"] = prefix }
  elseif type(value) == "table" then
    local out = {}
    for k, v in pairs(value) do
      out[k] = flatten(v, prefix .. "/" .. tostring(k), tensors)
    end
    return out
  end
  return value
end

local function unflatten(value, tensors)
  if type(value) == "table" then
    if value["$tensor"] then
      local t = tensors[value["$tensor"]]
      if not t then
        error("checkpoint is missing tensor " .. value["$tensor"], 0)
      end
      return t
    end
    local out = {}
    for k, v in pairs(value) do
      out[k] = unflatten(v, tensors)
    end
    return out
  end
  return value
end

-- Cuts the loss log back to its header and first `steps` rows: after a crash
-- it may hold steps that came after the checkpoint, which resume redoes.
-- The shortened log is written to a temporary file and renamed over the old.
local function keep_log_lines(path, steps)
  local f = io.open(path, "r")
  if not f then
    return
  end
  local lines = {}
  for line in f:lines() do
    if #lines > steps then
      break
    end
    lines[#lines + 1] = line
  end
  f:close()
  local tmp = path .. ".tmp"
  local out = assert(io.open(tmp, "w"))
  out:write(table.concat(lines, "\n"), "\n")
  out:close()
  assert(os.rename(tmp, path))
end

-- ---- checkpoints --------------------------------------------------------

--- Writes the checkpoint (model, optimizer, RNG, progress) atomically.
local function save_checkpoint(dir, state)
  local tensors = {}
  for name, t in pairs(state.model:state_dict()) do
    tensors["model." .. name] = t
  end
  for name, t in pairs(state.ema or {}) do
    tensors["ema." .. name] = t
  end
  local optim_tree = flatten(state.optimizer:state_dict(), "optim", tensors)
  -- the model's integer buffers (its own and the EMA copy's) keep their dtype
  local dtypes = {}
  for name, dt in pairs(state.model:state_dtypes()) do
    dtypes["model." .. name] = dt
    if state.ema and state.ema[name] then
      dtypes["ema." .. name] = dt
    end
  end
  local args = {}
  for k, v in pairs(state.args) do
    if not TRANSIENT[k] and k ~= "epochs_given" and k ~= "given" then
      args[k] = v
    end
  end
  local meta = {
    ["minisd.checkpoint"] = json.encode({
      epoch = state.epoch, step = state.step, global_step = state.global_step,
      generator = state.generator:get_state(), optim = optim_tree, args = args,
      config = state.model.config, ranks = dist.size(),
    }),
  }
  assert(minisd.save_safetensors(path_join(dir, CHECKPOINT), tensors, meta, { dtypes = dtypes }))
end

-- The checkpoint from its bytes (nil: read the file at path).
local function parse_checkpoint(path, bytes)
  local tensors, meta
  if bytes then
    tensors, meta = minisd.load_safetensors_string(bytes, path)
  else
    tensors, meta = minisd.load_safetensors(path)
  end
  if not tensors then
    return nil, meta
  end
  local raw = meta and meta["minisd.checkpoint"]
  if not raw then
    return nil, path .. " is not a minisd training checkpoint (no minisd.checkpoint metadata)"
  end
  local okj, info, jerr = pcall(json.decode, raw)
  if not okj or type(info) ~= "table" then
    return nil, string.format("%s: its minisd.checkpoint metadata is not a JSON object (%s); "
      .. "the checkpoint is damaged", path, tostring(not okj and info or jerr or type(info)))
  end
  for _, field in ipairs({ "epoch", "step", "global_step", "generator", "optim", "args",
    "config" }) do
    if info[field] == nil then
      return nil, string.format("%s: its minisd.checkpoint metadata lacks '%s'; the checkpoint "
        .. "is damaged", path, field)
    end
  end
  local model_sd, ema = {}, {}
  for name, t in pairs(tensors) do
    local k = name:match("^model%.(.*)$")
    if k then
      model_sd[k] = t
    end
    k = name:match("^ema%.(.*)$")
    if k then
      ema[k] = t
    end
  end
  info.model_state = model_sd
  info.ema_state = next(ema) and ema or nil
  local oku, optim = pcall(unflatten, info.optim, tensors)
  if not oku then
    return nil, string.format("%s: %s; the checkpoint is damaged", path, tostring(optim))
  end
  info.optim = optim
  info.path = path
  return info
end

--- The checkpoint a run saved in dir (nil and a message if there is none or it is
-- damaged). In a job of several ranks, rank 0 reads the file and sends its bytes to the
-- others, which need no access to dir.
local function load_checkpoint(dir)
  local path = path_join(dir, CHECKPOINT)
  local bytes, err
  if dist.rank() == 0 then
    if not file_exists(path) then
      err = "no checkpoint at " .. path
    elseif dist.size() > 1 then
      bytes, err = util.read_file(path)
    end
  end
  if dist.size() > 1 then -- "B" and the bytes, or "E" and rank 0's error
    local mine = dist.rank() == 0 and (err and ("E" .. err) or ("B" .. bytes)) or nil
    local msg, derr = dist.broadcast_string(mine, 0)
    if not msg then
      error(derr, 0)
    end
    if msg:sub(1, 1) == "E" then
      return nil, msg:sub(2)
    end
    bytes = msg:sub(2)
  elseif err then
    return nil, err
  end
  return parse_checkpoint(path, bytes)
end

M.load_checkpoint = load_checkpoint

-- ---- progress -----------------------------------------------------------

local Progress = {}
Progress.__index = Progress

local function new_progress(mode, total_steps, quiet)
  local bar = mode == "bar" or (mode == "auto" and not quiet and isatty())
  return setmetatable({ bar = bar, total = total_steps, quiet = quiet, last_plain = -math.huge },
    Progress)
end

function Progress:update(info)
  if self.quiet then
    return
  end
  local done = info.global_step
  local rate = info.images / math.max(info.elapsed, 1e-9)
  local eta = (self.total - done) * (info.elapsed / math.max(info.steps_timed, 1))
  if self.bar then
    local width = 24
    local filled = math.floor(width * done / self.total + 0.5)
    io.write(string.format("\r[%s%s] epoch %d/%d step %d/%d loss %.4f %6.1f img/s ETA %s ",
      string.rep("#", filled), string.rep(".", width - filled), info.epoch, info.epochs,
      info.step, info.steps, info.loss, rate, fmt_time(eta)))
    io.flush()
  elseif info.step == info.steps or info.elapsed - self.last_plain >= 10 then
    self.last_plain = info.elapsed
    io.write(string.format("epoch %d/%d step %d/%d loss %.4f %.1f img/s ETA %s\n", info.epoch,
      info.epochs, info.step, info.steps, info.loss, rate, fmt_time(eta)))
    io.flush()
  end
end

function Progress:finish_line()
  if self.bar and not self.quiet then
    io.write("\n")
  end
end

-- ---- the loop -------------------------------------------------------------

local function contexts_for_grid(names)
  local rows = {}
  for i = 1, #names do
    local r = {}
    for j = 1, #names do
      r[j] = (i == j) and 1 or 0
    end
    rows[#rows + 1] = r
    rows[#rows + 1] = r
  end
  return minisd.tensor(rows)
end

-- ---- EMA of the weights -------------------------------------------------

--- A new EMA of the model's parameters (copies of them, by name), or the one
-- a checkpoint kept.
local function new_ema(model, saved)
  local ema = {}
  for name, p in pairs(model:named_parameters()) do
    ema[name] = saved and assert(saved[name], "checkpoint has no EMA of " .. name)
      or p:clone()
  end
  return ema
end

--- ema = d ema + (1 - d) p after optimizer step `step`, with the warm-up
-- d = min(decay, (1 + step) / (10 + step)) so that the first steps do not
-- keep the random initial weights for long.
local function update_ema(ema, model, decay, step)
  local d = math.min(decay, (1 + step) / (10 + step))
  minisd.no_grad(function()
    for name, p in pairs(model:named_parameters()) do
      ema[name]:copy_(ema[name] * d + p * (1 - d))
    end
  end)
end

--- Runs fn with the EMA weights in the model's parameters (when ema is
-- given), then puts the trained weights back.
local function with_ema(model, ema, fn)
  if not ema then
    return fn()
  end
  local params, saved = model:named_parameters(), {}
  minisd.no_grad(function()
    for name, p in pairs(params) do
      saved[name] = p:clone()
      p:copy_(ema[name])
    end
  end)
  local ok, res = pcall(fn)
  minisd.no_grad(function()
    for name, p in pairs(params) do
      p:copy_(saved[name])
    end
  end)
  if not ok then
    error(res, 0)
  end
  return res
end

local function sample_grid(model, args, epoch, path)
  local n, ctx = 16, nil
  if args.context then
    ctx = contexts_for_grid(model.config.label_names)
    n = ctx:shape()[1]
  end
  local x = require("minisd.diffusion").sample(model, {
    n = n, context = ctx, sampler = "ddim", steps = args.sample_steps, seed = args.seed + epoch,
  })
  assert(require("minisd.image").save_grid(path, x, { nrow = args.context and 2 or 4, scale = 4 }))
  model:train()
end

-- ---- data parallel --------------------------------------------------------

-- Rank 1.. keep no log: writes go nowhere.
local NO_LOG = { write = function() end, flush = function() end, close = function() end }

--- Checks that `ranks` can share every batch: equal shares of the full batches, at least
-- one sprite each in the last.
local function check_shares(n, batch_size, ranks)
  if batch_size % ranks ~= 0 then
    fail(string.format("--batch-size %d is not a multiple of the %d ranks: each rank takes an "
      .. "equal share of every batch (give a multiple of %d)", batch_size, ranks, ranks))
  end
  local last = n % batch_size
  if last > 0 and last < ranks then
    fail(string.format("the last batch of each epoch has %d sprites (%d %% %d), fewer than "
      .. "the %d ranks: change --batch-size or --limit", last, n, batch_size, ranks))
  end
end

--- The sum over the ranks of a loss part, and whether any rank asked to stop (one
-- collective of two values).
local function sum_over_ranks(value, stop)
  local t = minisd.tensor({ value, stop and 1 or 0 })
  local ok, err = dist.allreduce(t, "sum")
  if not ok then
    error(err, 0)
  end
  local v = t:totable()
  return v[1], v[2] > 0
end

--- Sums every parameter's gradient over the ranks, in buckets.
local function sum_gradients(model)
  local grads = {}
  for _, p in ipairs(model:parameters()) do
    grads[#grads + 1] = p.grad
  end
  local ok, err = dist.allreduce(grads, "sum", { bucket_bytes = M.bucket_bytes })
  if not ok then
    error(err, 0)
  end
end

--- Bytes per bucket of the gradients' sum (one collective per bucket).
M.bucket_bytes = 4 * 1024 * 1024

--- The model of args.init (a model file) to start from, checked against the dataset and
-- the options given with it; its config gets the dataset's label names.
local function init_model(args, ds)
  local models = require("minisd.models")
  local model, err = models.load_model(args.init)
  if not model then
    fail("--init: " .. err)
  end
  local arch = models.get(model.arch)
  if arch.kind ~= "diffusion" then
    fail(string.format("--init %s: a %s (%s), not a diffusion model", args.init, arch.kind,
      arch.name))
  end
  local given, cfg = args.given or {}, model.config
  if given.arch and args.arch ~= arch.name then
    fail(string.format("--init %s is a %s; --arch %s does not match (leave it out)", args.init,
      arch.name, args.arch))
  end
  if given.n_feat and cfg.n_feat and args.n_feat ~= cfg.n_feat then
    fail(string.format("--init %s has n_feat %d; --n-feat %d does not match (leave it out)",
      args.init, cfg.n_feat, args.n_feat))
  end
  local want = arch.config_for(ds, { n_feat = cfg.n_feat, background = args.background,
    context = args.context })
  -- data with more labels than the model, the model's first (--other-label): widened, the
  -- new labels' weights zero
  local k_old, k_new = cfg.n_cfeat, want.n_cfeat
  if k_old and k_new and k_new > k_old and arch.widen_context then
    local same = true
    for i = 1, k_old do
      same = same and (cfg.label_names or {})[i] == want.label_names[i]
    end
    if same then
      local state = arch.widen_context(model:state_dict(), k_new)
      local wider = {}
      for key, v in pairs(cfg) do
        wider[key] = v
      end
      wider.n_cfeat, wider.label_names = k_new, want.label_names
      model = arch.new(wider)
      model:load_state_dict(state)
      cfg = model.config
    end
  end
  for _, k in ipairs({ "in_channels", "height", "n_cfeat" }) do
    if cfg[k] ~= nil and want[k] ~= cfg[k] then
      fail(string.format("--init %s: the model has %s %s, the data %s (%s)", args.init, k,
        tostring(cfg[k]), tostring(want[k]), k == "n_cfeat" and "label columns"
        or k == "in_channels" and "try --channels" or "sprite size"))
    end
  end
  cfg.label_names = want.label_names
  cfg.signal_leak = want.signal_leak -- this data's, which the training from here leaks
  cfg.guidance = nil -- the scales measured on the weights it starts from, not on the new ones
  if want.background then
    cfg.background = want.background
  end
  args.arch, args.n_feat = arch.name, cfg.n_feat
  return model
end

--- Runs training. `args` has the fields of M.defaults (see train.lua --help).
-- With args.resume = DIR, continues the run saved in DIR exactly.
-- @return a summary table {epochs=, steps=, final_loss=, model_path=, interrupted=}
function M.run(args)
  local rank, ranks = dist.rank(), dist.size()
  local lead = rank == 0 -- rank 0 alone writes files and prints
  local resume
  if args.resume then
    local info, err = load_checkpoint(args.resume)
    if not info then
      fail(err)
    end
    resume = info
    -- the options given on this command line (train.lua's `given`; epochs_given is the
    -- older form): per-invocation ones and RESUME_MAY_CHANGE ones are taken, any other
    -- would change the run's numbers and is refused rather than ignored
    local given = args.given or { epochs = args.epochs_given or nil }
    for k in pairs(given) do
      if not TRANSIENT[k] and not RESUME_MAY_CHANGE[k] then
        local old = info.args[k == "no_flip" and "flip" or k]
        fail(string.format("--%s cannot change when resuming (the run has %s); resume without "
          .. "it, or start a new run with --out", k:gsub("_", "-"),
          old == nil and "no such setting" or tostring(old)))
      end
    end
    local keep = { resume = args.resume, threads = args.threads, progress = args.progress,
      quiet = args.quiet, stop_after = args.stop_after }
    local changed = {}
    for k in pairs(RESUME_MAY_CHANGE) do
      if given[k] then
        changed[k] = args[k]
      end
    end
    args = info.args
    for k in pairs(TRANSIENT) do
      args[k] = keep[k]
    end
    for k, v in pairs(changed) do
      args[k] = v
    end
    args.out = args.resume
  end
  if not resume then -- a resumed run has its own recipe; an older one's is the seed's
    args.recipe = args.recipe or M.default_recipe
    local recipe = M.recipes[args.recipe]
    if not recipe then
      fail(string.format("unknown recipe '%s' (known: %s)", tostring(args.recipe),
        table.concat(util.sorted_keys(M.recipes), ", ")))
    end
    for k, v in pairs(recipe) do
      if args[k] == nil then
        args[k] = v
      end
    end
  end
  args.recipe = args.recipe or "seed"
  for k, v in pairs(M.defaults) do
    if args[k] == nil then
      args[k] = v
    end
  end
  if args.threads then
    minisd.set_threads(args.threads)
  elseif ranks > 1 then -- the cores of this machine, shared by its ranks
    minisd.set_threads(dist.default_threads())
  end
  minisd.set_precision(args.precision)
  if args.precision == "bf16" and not select(2, minisd.get_precision()) and lead
      and not args.quiet then
    io.stderr:write("note: this CPU has neither AMX nor AVX512-BF16: bf16 runs on the fp32 "
      .. "kernels with rounded inputs, slower than --precision fp32\n")
  end

  local data_opts = { channels = args.channels, background = args.background }
  local ds, derr = minisd.data.load(args.data, data_opts)
  if not ds then
    error(derr, 0)
  end
  if args.other_label then -- a label of their own for the rows with none (--other-label)
    if not args.context then
      fail("--other-label needs --context (it adds a context label)")
    end
    minisd.data.add_other_label(ds)
  end
  if args.limit and args.limit < ds.n then -- the first `limit` sprites
    ds.images = ds.images:narrow(1, 1, args.limit)
    ds.labels = ds.labels:narrow(1, 1, args.limit)
    ds.n = args.limit
  end
  if args.context and args.context_drop == 0 and lead and not args.quiet then
    -- the null context is learned only from rows that have no label: without any, guidance
    -- has nothing to push from
    local unlabelled = false
    for _, row in ipairs(ds.labels:totable()) do
      local sum = 0
      for _, v in ipairs(row) do
        sum = sum + math.abs(v)
      end
      unlabelled = unlabelled or sum == 0
    end
    if not unlabelled then
      io.stderr:write("warning: --context-drop 0 and no sprite without a label: the null "
        .. "context is never trained, so classifier-free guidance will not work (give "
        .. "--context-drop above 0)\n")
    end
  end
  if lead then
    mkdir_p(args.out)
    -- temporary files of a write that a kill interrupted (the file they were for is intact)
    util.remove_stale_temps(args.out)
  end

  local gen = minisd.Generator(args.seed)
  local model
  if resume then
    local okm, built = pcall(require("minisd.models").from_config, resume.config,
      resume.args.arch)
    local okl, lerr = false, nil
    if okm then
      okl, lerr = pcall(built.load_state_dict, built, resume.model_state)
    end
    if not (okm and okl) then
      fail(string.format("%s: the model in it does not load (%s); the checkpoint is damaged",
        resume.path, tostring(not okm and built or lerr):gsub("^[^\n:]*%.lua:%d+: ", "")))
    end
    model = built
  elseif args.init then
    model = init_model(args, ds)
  else
    minisd.manual_seed(args.seed) -- the initial weights come from the default generator
    -- the architecture from the registry (train.lua --arch): a diffusion model, called
    -- as model(x_t, t / T, c)
    local models = require("minisd.models")
    local arch = models.get(args.arch or "ContextUnet")
    if arch.kind ~= "diffusion" then
      fail(string.format("--arch %s is a %s, not a diffusion model (those: %s)", arch.name,
        arch.kind, table.concat(models.names("diffusion"), ", ")))
    end
    model = arch.new(arch.config_for(ds, args))
  end
  model:train()
  if ranks > 1 then
    check_shares(ds.n, args.batch_size, ranks)
    -- every rank starts from rank 0's weights and buffers
    local sd = model:state_dict()
    local tensors = {}
    for _, name in ipairs(util.sorted_keys(sd)) do
      tensors[#tensors + 1] = sd[name]
    end
    local okb, berr = dist.broadcast(tensors, 0)
    if not okb then
      error(berr, 0)
    end
  end
  if args.sync_bn then
    dist.sync_batch_norm(model)
  end
  local opt = minisd.optim.Adam(model:parameters(), { lr = args.lr })
  if resume then
    opt:load_state_dict(resume.optim)
    gen:set_state(resume.generator)
  end
  local diffusion = require("minisd.diffusion")
  local sched = require("minisd.sched").get("ddpm").new(diffusion.schedule_of(model))
  -- checked before the first step: a bad value would otherwise fail after the first epoch,
  -- and on every resume of the run
  if args.sample_every > 0 and args.sample_steps > sched.num_train_timesteps then
    fail(string.format("--sample-steps must be at most %d (the model's diffusion steps), got %d",
      sched.num_train_timesteps, args.sample_steps))
  end

  local steps_per_epoch = math.ceil(ds.n / args.batch_size)
  local total = steps_per_epoch * args.epochs
  local progress = new_progress(args.progress, total, args.quiet or not lead)
  local start_epoch, start_step = 1, 0
  local global_step = 0
  if resume then
    start_epoch, start_step = resume.epoch, resume.step
    global_step = resume.global_step
    if start_step >= steps_per_epoch then
      start_epoch, start_step = start_epoch + 1, 0
    end
  end
  local log_path = path_join(args.out, "losses.tsv")
  if resume and lead then
    keep_log_lines(log_path, global_step)
  end
  local log = lead and assert(io.open(log_path, resume and "a" or "w")) or NO_LOG
  if not resume then
    log:write("epoch\tstep\tloss\tlr\n")
  end

  -- the EMA serves the sample grids and the files, which rank 0 writes
  local ema = args.ema > 0 and lead and new_ema(model, resume and resume.ema_state) or nil
  local state = { model = model, optimizer = opt, generator = gen, args = args, ema = ema }
  local last_loss, interrupted = nil, false

  -- the learning rate of the step after `done` optimizer steps, in epoch `epoch`
  local function lr_at(epoch, done)
    local lr = args.lr
    if args.lr_schedule == "linear" then -- the seed's: one value per epoch
      lr = lr * (1 - (epoch - 1) / args.epochs)
    elseif args.lr_schedule == "cosine" then
      lr = lr * 0.5 * (1 + math.cos(math.pi * math.min(done, total) / total))
    elseif args.lr_schedule ~= "constant" then
      fail("unknown lr_schedule " .. tostring(args.lr_schedule))
    end
    if done < args.warmup then
      lr = lr * (done + 1) / args.warmup
    end
    return lr
  end

  local function epoch_loop(epoch)
    -- batches of an epoch come from a generator seeded by (seed, epoch), so a
    -- resumed run rebuilds the same order and skips the steps already done
    local data_gen = minisd.Generator(args.seed * 100003 + epoch)
    local step = 0
    local images_seen, t_start = 0, minisd.clock()
    -- with several ranks, each takes its share of every batch of that one order, and
    -- the noise of its rows from the one generator (see diffusion.loss)
    local batches = ds:batches(args.batch_size, { shuffle = true, generator = data_gen,
      flip = args.flip, share = ranks > 1 and { rank = rank, size = ranks } or nil })
    for x, c, b, first in batches do
      step = step + 1
      -- (PUC Lua 5.1 has no goto: the steps already done are skipped by this if)
      if not (epoch == start_epoch and step <= start_step) then
        local loss = diffusion.loss(model, x, args.context and c or nil, { scheduler = sched,
          generator = gen, context_drop = args.context_drop, weighting = args.loss_weighting,
          snr_gamma = args.snr_gamma, share = ranks > 1 and { first = first, total = b } or nil })
        local rows = x:shape()[1]
        if rows ~= b then -- this rank's part of the batch's mean: the parts add up to it
          loss = loss * (rows / b)
        end
        local value = loss:item()
        local stop = false
        if ranks > 1 then -- the batch's loss, and whether any rank was interrupted
          value, stop = sum_over_ranks(value, minisd.interrupt_requested())
        end
        if value ~= value or math.abs(value) == math.huge then
          -- diverged: no step on a non-finite loss, and the last checkpoint (the end of the
          -- previous epoch) stays as it was
          local ckpt = path_join(args.out, CHECKPOINT)
          fail(string.format("training diverged: the loss is %s at epoch %d, step %d; no "
            .. "model written%s (try a lower --lr, or check the data for NaN)",
            value ~= value and "NaN" or (value > 0 and "+inf" or "-inf"), epoch, step,
            file_exists(ckpt) and ("; the last checkpoint is kept: " .. ckpt) or ""))
        end
        opt.lr = lr_at(epoch, global_step)
        opt:zero_grad()
        loss:backward()
        if ranks > 1 then -- the batch's gradients: the sum of the parts'
          sum_gradients(model)
        end
        opt:step()
        last_loss = value
        global_step = global_step + 1
        if ema then
          update_ema(ema, model, args.ema, global_step)
        end
        images_seen = images_seen + b
        log:write(string.format("%d\t%d\t%.9g\t%.9g\n", epoch, step, last_loss, opt.lr))
        local wall = minisd.clock() - t_start
        progress:update({ epoch = epoch, epochs = args.epochs, step = step,
          steps = steps_per_epoch, loss = last_loss, global_step = global_step,
          images = images_seen, elapsed = math.max(wall, 1e-3), steps_timed = step })
        state.epoch, state.step, state.global_step = epoch, step, global_step
        if stop or (ranks == 1 and minisd.interrupt_requested())
          or (args.stop_after and global_step >= args.stop_after) then
          interrupted = true
          progress:finish_line()
          return
        end
      end
    end
    state.epoch, state.step = epoch, steps_per_epoch
  end

  -- Ctrl-C only sets a flag: the current step finishes, then a consistent
  -- checkpoint is written (a second Ctrl-C stops at once). With several ranks, SIGTERM too
  -- (mpirun turns Ctrl-C into SIGTERM to every rank), and the ranks agree on the step.
  minisd.trap_interrupt(true, ranks > 1)
  local ok, err = pcall(function()
    for epoch = start_epoch, args.epochs do
      epoch_loop(epoch)
      log:flush()
      -- the epoch's grid before its checkpoint: a kill between the two redoes the epoch on
      -- --resume, grid included (the grid has its own seed: the run's numbers do not change)
      if not interrupted then
        progress:finish_line()
        if lead and args.sample_every > 0
          and (epoch % args.sample_every == 0 or epoch == args.epochs) then
          with_ema(model, ema, function()
            sample_grid(model, args, epoch,
              path_join(args.out, string.format("samples_epoch%03d.png", epoch)))
          end)
        end
      end
      if lead then
        save_checkpoint(args.out, state)
      end
      if interrupted and ranks > 1 then -- the others wait for the checkpoint before exiting
        local okb, berr = dist.barrier()
        if not okb then
          error(berr, 0)
        end
      end
      if interrupted then
        return
      end
    end
  end)
  minisd.trap_interrupt(false)
  if not ok then
    log:close()
    error(err, 0)
  end
  log:close()
  local summary = {
    epochs = args.epochs, steps = global_step, final_loss = last_loss, interrupted = interrupted,
    checkpoint = path_join(args.out, CHECKPOINT),
  }
  if not interrupted and lead then
    summary.model_path = path_join(args.out, "model.safetensors")
    with_ema(model, ema, function()
      assert(model:save(summary.model_path, { training = {
        epochs = args.epochs, steps = global_step, batch_size = args.batch_size, lr = args.lr,
        final_loss = last_loss, seed = args.seed, context = args.context and true or false,
        dataset = args.data or "bundled", images = ds.n, ema = args.ema,
        recipe = args.recipe, lr_schedule = args.lr_schedule, warmup = args.warmup,
        loss_weighting = args.loss_weighting,
        snr_gamma = args.snr_gamma, context_drop = args.context_drop, init = args.init,
        other_label = args.other_label,
        precision = args.precision, ranks = ranks, sync_bn = args.sync_bn and true or false,
      } }))
    end)
  end
  if not interrupted and ranks > 1 then -- every rank returns once the model is written
    local okb, berr = dist.barrier()
    if not okb then
      error(berr, 0)
    end
  end
  return summary
end

return M
