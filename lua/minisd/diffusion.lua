--- Diffusion training loss and the sampling pipeline (one-shot and step-wise).
--
-- Timesteps follow the seed: t runs from 1 to T, alphas_cumprod[0] = 1, and
-- the network is fed t / T with shape (B, 1, 1, 1).
-- @module minisd.diffusion

local minisd = require("minisd")
local sched = require("minisd.sched")

local M = {}

local check_options = require("minisd.util").check_options

--- The schedule options stored with a model (its config), with the seed's defaults.
-- @param model a model with an optional `config.schedule` table
-- @return table {num_train_timesteps=, beta_start=, beta_end=, beta_schedule=}
function M.schedule_of(model)
  local s = model and model.config and model.config.schedule or {}
  return {
    num_train_timesteps = s.num_train_timesteps or 500,
    beta_start = s.beta_start or 1e-4,
    beta_end = s.beta_end or 0.02,
    beta_schedule = s.beta_schedule or "linear",
  }
end

--- A (B, 1, 1, 1) tensor holding t / T for each sample.
-- @param t tensor (B) of integer timesteps, or a number with `n`
-- @param T number of training timesteps
-- @param n batch size when t is a number
function M.time_input(t, T, n)
  if type(t) == "number" then
    return minisd.full({ n, 1, 1, 1 }, t / T)
  end
  return (t / T):reshape(-1, 1, 1, 1)
end

--- The training loss of the seed: random t in 1..T, Gaussian noise, the noised
-- image x_t, and the MSE between the predicted and the true noise. Context rows
-- are dropped (set to zero) with probability `context_drop` so that the model
-- also learns the unconditional prediction used by classifier-free guidance.
-- With `weighting = "min-snr"`, each sample's squared error is weighted by
-- min(SNR(t), gamma) / SNR(t), SNR(t) = abar_t / (1 - abar_t) (Hang et al. 2023, "Efficient
-- Diffusion Training via Min-SNR Weighting Strategy", the form for a noise-predicting
-- model): the nearly clean timesteps, whose noise is hardest to tell and least useful to
-- sampling, count less; `snr_gamma` is gamma (default 5). "uniform" (the default) is the
-- seed's plain MSE.
-- With `share = {first = k, total = b}`, x0 (and c) are rows k .. k + B - 1 of a batch of
-- b (a data-parallel rank's share): t, the noise and the context drops are drawn for all b
-- rows, in the same order as for one process, and this share's rows are used, so that the
-- draws of each sample do not depend on how the batch is shared. The loss is still the
-- mean over the share's rows.
-- @param model a ContextUnet (called as model(x_t, t/T, c))
-- @param x0 tensor (B, C, H, W) in [-1, 1]
-- @param c tensor (B, K) of context rows, or nil for unconditional training
-- @param opts {scheduler=, generator=, context_drop=0.1, weighting="uniform", snr_gamma=5,
--   share=}
-- @return loss (0-dim tensor), and a table {t=, noise=} of what was drawn (the share's rows)
function M.loss(model, x0, c, opts)
  opts = opts or {}
  check_options("diffusion.loss", opts, { scheduler = true, generator = true, context_drop = true,
    weighting = true, snr_gamma = true, share = true })
  local weighting = opts.weighting or "uniform"
  if weighting ~= "uniform" and weighting ~= "min-snr" then
    error("diffusion.loss: weighting must be \"uniform\" or \"min-snr\", got "
      .. tostring(weighting), 2)
  end
  local gamma = opts.snr_gamma or 5
  if type(gamma) ~= "number" or gamma ~= gamma or gamma <= 0 or gamma == math.huge then
    error("diffusion.loss: snr_gamma must be a positive number, got " .. tostring(gamma), 2)
  end
  local drop = opts.context_drop or 0.1
  if type(drop) ~= "number" or not (drop >= 0 and drop <= 1) then
    error("diffusion.loss: context_drop must be a number in [0, 1], got " .. tostring(drop), 2)
  end
  local s = opts.scheduler or sched.get("ddpm").new(M.schedule_of(model))
  local gen = opts.generator
  local T = s.num_train_timesteps
  local shape = x0:shape()
  local B = shape[1]
  local first, total = 1, B
  if opts.share ~= nil then
    local sh = opts.share
    first, total = type(sh) == "table" and sh.first, type(sh) == "table" and sh.total
    if type(first) ~= "number" or type(total) ~= "number" or first ~= math.floor(first)
      or total ~= math.floor(total) or first < 1 or first + B - 1 > total then
      error(string.format("diffusion.loss: share must be {first = k, total = b} with the %d "
        .. "rows of x0 inside 1..b", B), 2)
    end
  end
  local function rows(x) -- this share's rows of a draw for the whole batch
    return total == B and x or x:narrow(1, first, B)
  end
  local t = rows(minisd.randint({ total }, 1, T, gen))
  shape[1] = total
  local noise = rows(minisd.randn(shape, gen))
  local x_t = s:add_noise(x0, noise, t)
  if c ~= nil then
    local p = drop
    local u = minisd.rand({ total }, gen):totable()
    local keep = {}
    for i = 1, B do
      keep[i] = u[first - 1 + i] < p and 0 or 1
    end
    c = c * minisd.tensor(keep):reshape(B, 1)
  end
  local pred = model(x_t, M.time_input(t, T), c)
  if weighting == "uniform" then
    return minisd.mse_loss(pred, noise), { t = t, noise = noise }
  end
  local w, ts = {}, t:totable()
  for i = 1, B do
    local ab = s.alphas_cumprod[ts[i]]
    local snr = ab / (1 - ab)
    w[i] = math.min(snr, gamma) / snr
  end
  local d = pred - noise
  local loss = (d * d * minisd.tensor(w):reshape(B, 1, 1, 1)):mean()
  return loss, { t = t, noise = noise, weights = w }
end

-- The guidance scale the command line, the evaluator and the examples use with a context
-- for a model whose file records none of its own (config.guidance; the library's own default
-- stays 0, off), for the recommended sampler: measured on the previous shipped context model
-- (the seed's recipe with 10% null-context rows) with scripts/eval_quality.lua (DDPM 50
-- steps, the posterior's variance, the signal leak, seeds 0 to 3), guidance 3 gave the lowest
-- Frechet distance
-- (6.2-7.7, against 6.8-8.6 at 4, 7.0-10.5 at 6 and 7.9-8.4 at 2) at a context accuracy of
-- 0.85-0.87 (0.89-0.92 at 4 and 6, 0.72-0.75 at 2); without the leak, 6 was best
-- (models/README.md).
M.recommended_guidance = 3

-- ... and per sampler (recommended_guidance_for): the stochastic ones are best at 3, the
-- deterministic ones at 6 (seed 0, with the leak: DDIM 25 10.98 at 3 and 8.67 at 6,
-- DPM-Solver++(2M) 12 10.96 and 9.18, Euler ancestral 25 8.53 and 9.85).
M.guidance_by_sampler = { ddpm = 3, euler_a = 3, ddim = 6, dpmpp_2m = 6 }

--- The guidance scale to use with a context for a sampler (nil: the recommended sampler): the
-- model's own when its file records one for that sampler (`config.guidance`, what
-- scripts/tune_guidance.lua measures and writes), else the table above.
-- @param sampler a sampler name, or nil
-- @param model optional: a ContextUnet (or its config table)
function M.recommended_guidance_for(sampler, model)
  sampler = sampler or M.recommended_sampler
  local cfg = type(model) == "table" and (model.config or model) or nil
  local own = type(cfg) == "table" and type(cfg.guidance) == "table" and cfg.guidance[sampler]
  if type(own) == "number" then
    return own
  end
  return M.guidance_by_sampler[sampler] or M.recommended_guidance
end

--- Checks a model config's guidance table ({sampler = scale}, what model files may carry): nil
-- and a message naming the problem when it is not one.
function M.check_guidance(guidance)
  if type(guidance) ~= "table" then
    return nil, "guidance must be a table {sampler = scale}, got " .. type(guidance)
  end
  local known = {}
  for _, name in ipairs(require("minisd.sched").names()) do
    known[name] = true
  end
  for name, g in pairs(guidance) do
    if not known[name] then
      return nil, string.format("guidance: %s is not a sampler (one of: %s)", tostring(name),
        table.concat(require("minisd.sched").names(), ", "))
    end
    if type(g) ~= "number" or not (g >= 0 and g <= 100) then
      return nil, string.format("guidance: the scale for %s must be a number in [0, 100], got %s",
        name, tostring(g))
    end
  end
  return true
end

-- The sampler and steps sample.lua and the evaluator use by default: measured on the previous
-- shipped model (scripts/eval_quality.lua, guidance 6, seed 0), DDPM's stochastic steps at 50
-- gave a context accuracy of 0.916 and a Frechet distance of 12.7 where DDIM at 25 gave 0.862 and
-- 35.7, for twice the time (models/README.md). The library's own default stays DDIM.
M.recommended_sampler = "ddpm"
M.recommended_steps = 50
-- and its variance (the samplers that take one: ddpm): the posterior's ("fixed_small", what
-- DDIM with eta 1 gives) in place of the seed's beta_t, measured on the shipped model over
-- seeds 0 and 1: context accuracy 0.930 / 0.904 against 0.916 / 0.892, Frechet distance 11.9
-- / 14.7 against 12.7 / 16.2, and a tenth of the half-transparent pixels (alpha 0.008 / 0.006
-- against 0.061 / 0.057) (models/README.md).
M.recommended_variance = "fixed_small"

--- The variance sample.lua and the evaluator give `sampler` when none is asked for:
-- recommended_variance for a sampler that takes one, else nil.
function M.default_variance(sampler)
  return sched.get(sampler).VARIANCE_TYPES and M.recommended_variance or nil
end

-- ---- the signal leak --------------------------------------------------------------
-- The schedule leaves a little of the sprite in x_T (sqrt(abar_T) = 0.08 for the seed's 500
-- linear steps), and the network learns to read it: its per-channel means (how much of the
-- tile is opaque, its overall colour) steer what it makes. Pure noise carries none, and the
-- seed's model then makes twice the data's share of full opaque tiles. With the training
-- sprites' per-channel means stored with the model (`config.signal_leak`), each sample
-- starts from x_T = sqrt(abar_T) m + sqrt(1 - abar_T) noise, m (broadcast over the pixels)
-- the means of a random training sprite whose labels match its context row: the leak the
-- model saw in training (Everaert et al. 2024, "Exploiting the Signal-Leak Bias in Diffusion
-- Models", with the empirical means in place of their fitted low-frequency model).

--- At most this many sprites' means are kept per label set (evenly spaced over the data).
M.SIGNAL_LEAK_MAX = 4096

-- The label set of a context row: its labels at or above 0.5, as "1+5", or "none".
local function leak_key(row)
  local on = {}
  for j, v in ipairs(row) do
    if v >= 0.5 then
      on[#on + 1] = tostring(j)
    end
  end
  return #on > 0 and table.concat(on, "+") or "none"
end

local function key_labels(key)
  local set = {}
  for j in key:gmatch("%d+") do
    set[tonumber(j)] = true
  end
  return set
end

--- The signal-leak statistics of a set of sprites, for `config.signal_leak`: each sprite's
-- per-channel means, grouped by its label set (every sprite in "none" without labels),
-- rounded to 1e-3.
-- @param images tensor (N, C, H, H) in [-1, 1]
-- @param labels optional tensor (N, K) of label rows (nil: an unconditional model)
-- @return {channels = C, groups = {[label set] = {m1_1, ..., m1_C, m2_1, ...}}}
function M.signal_leak_stats(images, labels)
  if not minisd.is_tensor(images) or images:dim() ~= 4 then
    error("diffusion.signal_leak_stats: images must be a tensor (N, C, H, W)", 2)
  end
  local shape = images:shape()
  local N, C, H, W = shape[1], shape[2], shape[3], shape[4]
  if H ~= W then
    error(string.format("diffusion.signal_leak_stats: square sprites expected, got %dx%d", H, W),
      2)
  end
  if labels ~= nil and (not minisd.is_tensor(labels) or labels:dim() ~= 2
      or labels:shape()[1] ~= N) then
    error(string.format("diffusion.signal_leak_stats: labels must be a tensor (%d, K)", N), 2)
  end
  local means = minisd.no_grad(function()
    return minisd.avg_pool2d(images, H, H):reshape(N, C):totable()
  end)
  local rows = labels and labels:totable()
  local members, order = {}, {}
  for i = 1, N do
    local key = rows and leak_key(rows[i]) or "none"
    if not members[key] then
      members[key] = {}
      order[#order + 1] = key
    end
    table.insert(members[key], i)
  end
  local groups = {}
  for _, key in ipairs(order) do
    local list, flat = members[key], {}
    local keep = math.min(#list, M.SIGNAL_LEAK_MAX)
    for k = 0, keep - 1 do
      local m = means[list[math.floor(k * #list / keep) + 1]]
      for c = 1, C do
        flat[#flat + 1] = math.floor(m[c] * 1000 + 0.5) / 1000
      end
    end
    groups[key] = flat
  end
  return { channels = C, groups = groups }
end

--- Checks a model config's signal_leak table (what model files carry): nil and a message
-- naming the problem when it is not one for `channels` channels.
function M.check_signal_leak(leak, channels)
  if type(leak) ~= "table" or type(leak.groups) ~= "table" then
    return nil, "signal_leak must be a table {channels =, groups =}"
  end
  if leak.channels ~= channels then
    return nil, string.format("signal_leak has %s channels, the model %d",
      tostring(leak.channels), channels)
  end
  local any = false
  for key, flat in pairs(leak.groups) do
    if type(key) ~= "string" or not (key == "none" or key:match("^%d+[+%d]*$")) then
      return nil, "signal_leak: group " .. tostring(key) .. " is not a label set ('1+5' or "
        .. "'none')"
    end
    if type(flat) ~= "table" or #flat == 0 or #flat % channels ~= 0 then
      return nil, string.format("signal_leak: group %s must hold a multiple of %d numbers, "
        .. "got %s", key, channels, type(flat) == "table" and #flat or type(flat))
    end
    for _, v in ipairs(flat) do
      if type(v) ~= "number" or not (v >= -1 and v <= 1) then
        return nil, string.format("signal_leak: group %s holds %s, not a mean in [-1, 1]", key,
          tostring(v))
      end
    end
    any = true
  end
  if not any then
    return nil, "signal_leak has no groups"
  end
  return true
end

-- The groups a context row draws its means from: its own label set; else every set holding
-- all its labels; else every set holding one of them; else all.
local function leak_groups(leak, key)
  if leak.groups[key] then
    return { key }
  end
  local want = key_labels(key)
  local all, some, every = {}, {}, {}
  for _, k in ipairs(require("minisd.util").sorted_keys(leak.groups)) do
    local have, n_all, n_some = key_labels(k), true, false
    for j in pairs(want) do
      n_all = n_all and have[j] or false
      n_some = n_some or have[j] or false
    end
    every[#every + 1] = k
    if key ~= "none" and n_all then
      all[#all + 1] = k
    end
    if key ~= "none" and n_some then
      some[#some + 1] = k
    end
  end
  return #all > 0 and all or #some > 0 and some or every
end

-- The means (a list of C numbers per sprite) that uniform draws u pick for context rows
-- (nil: every sprite in "none").
local function leak_means(leak, rows, u, n, C)
  local out = {}
  for i = 1, n do
    local keys = leak_groups(leak, rows and leak_key(rows[i]) or "none")
    local total = 0
    for _, k in ipairs(keys) do
      total = total + #leak.groups[k] / C
    end
    local j = math.min(total - 1, math.floor(u[i] * total))
    for _, k in ipairs(keys) do
      local count = #leak.groups[k] / C
      if j < count then
        local m = {}
        for c = 1, C do
          m[c] = leak.groups[k][j * C + c]
        end
        out[i] = m
        break
      end
      j = j - count
    end
  end
  return out
end

-- x (n, C, H, W) noised onto the means (a list of n lists of C numbers) at the first timestep.
local function add_leak(s, x, means)
  local shape = x:shape()
  local n, C, hgt, wid = shape[1], shape[2], shape[3], shape[4]
  local flat = {}
  for i = 1, n do
    for c = 1, C do
      flat[#flat + 1] = means[i][c]
    end
  end
  local x0 = minisd.tensor(flat):reshape(n, C, 1, 1) * minisd.ones({ 1, 1, hgt, wid })
  return s:add_noise(x0, x, minisd.full({ n }, s.timesteps[1]))
end

-- Whether to start with the leak: the option (nil: when the model has the statistics)
-- checked, for a message from `who`.
local function leak_wanted(who, leak, cfg)
  if leak ~= nil and type(leak) ~= "boolean" then
    error(who .. ": signal_leak must be true or false, got " .. type(leak), 4)
  end
  if leak and not cfg.signal_leak then
    error(who .. ": signal_leak: the model carries no signal-leak statistics (a model file "
      .. "from train.lua of this version has them; see scripts/signal_leak.lua)", 4)
  end
  return leak ~= false and cfg.signal_leak ~= nil
end

-- One uniform draw per sprite, after its noise: from its own generator, or n from gen.
local function leak_draws(gen, gens, n)
  if gens then
    local u = {}
    for i, g in ipairs(gens) do
      u[i] = minisd.rand({ 1 }, g):item()
    end
    return u
  end
  return minisd.rand({ n }, gen):totable()
end

local Job = {}
Job.__index = Job

local sample_options = {
  n = true, context = true, sampler = true, steps = true, eta = true, variance = true,
  guidance = true,
  seed = true, seeds = true, generator = true, on_step = true, channels = true, size = true,
  noise = true, init = true, strength = true, mask = true, jumps = true, negative = true,
  signal_leak = true, _leak_means = true, -- (the last: start_interpolation's, internal)
}

-- The per-sprite generators of opts.seeds (a list of n integers), or nil.
local function sprite_generators(opts, n)
  local seeds = opts.seeds
  if seeds == nil then
    return nil
  end
  if type(seeds) ~= "table" or #seeds < 1 then
    error("diffusion.sample: seeds must be a list of integers, one per sprite, got "
      .. type(seeds), 4)
  end
  if opts.seed ~= nil or opts.generator ~= nil or opts.noise ~= nil then
    error("diffusion.sample: seeds (one per sprite) cannot be combined with seed, generator "
      .. "or noise", 4)
  end
  if n ~= #seeds then
    error(string.format("diffusion.sample: %d seeds for n = %d sprites", #seeds, n), 4)
  end
  local gens = {}
  for i, s in ipairs(seeds) do
    if type(s) ~= "number" or s ~= math.floor(s) or s < 0 or s >= 2 ^ 53 then
      error(string.format("diffusion.sample: seeds[%d] must be an integer in [0, 2^53), got %s",
        i, tostring(s)), 4)
    end
    gens[i] = minisd.Generator(s)
  end
  return gens
end

-- One (1, ...) draw per generator, stacked: (#gens, ...).
local function randn_rows(gens, shape)
  local one = { 1 }
  for d = 2, #shape do
    one[d] = shape[d]
  end
  local rows = {}
  for i, g in ipairs(gens) do
    rows[i] = minisd.randn(one, g)
  end
  return #rows == 1 and rows[1] or minisd.cat(rows, 1)
end

-- Context rows (n, K) from an expression, a table, a (K) or (rows, K) tensor; nil stays nil.
local function context_rows(what, ctx, n, cfg)
  local K = cfg.n_cfeat or 5
  if type(ctx) == "string" or (type(ctx) == "table" and not minisd.is_tensor(ctx)) then
    ctx = require("minisd.context").encode(ctx, cfg.label_names)
  end
  if ctx == nil then
    return nil
  end
  if not minisd.is_tensor(ctx) then
    error(string.format("diffusion.sample: %s must be an expression, a table or a tensor, got %s",
      what, type(ctx)), 4)
  end
  local shape = ctx:shape()
  if #shape == 1 then
    ctx = ctx:reshape(1, shape[1])
    shape = ctx:shape()
  end
  if #shape ~= 2 or shape[2] ~= K then
    error(string.format("diffusion.sample: %s has %d features, the model expects %d", what,
      shape[#shape], K), 4)
  end
  if shape[1] == 1 and n > 1 then
    ctx = minisd.ones({ n, 1 }) * ctx
  elseif shape[1] ~= n then
    error(string.format("diffusion.sample: %d %s rows for n = %d samples", shape[1], what, n), 4)
  end
  return ctx
end

-- Sprites (rows, C, H, W) or one (C, H, W), for init or mask: as (n, ., H, W).
local function batch_of(what, x, n, C, hgt, channels_ok)
  if not minisd.is_tensor(x) then
    error(string.format("diffusion.sample: %s must be a tensor (N, C, H, W) or (C, H, W), got %s",
      what, type(x)), 4)
  end
  local shape = x:shape()
  if #shape == 2 then
    x = x:reshape(1, 1, shape[1], shape[2])
  elseif #shape == 3 then
    x = x:reshape(1, shape[1], shape[2], shape[3])
  elseif #shape ~= 4 then
    error(string.format("diffusion.sample: %s must have 3 or 4 dims, got %d", what, #shape), 4)
  end
  shape = x:shape()
  if shape[3] ~= hgt or shape[4] ~= hgt or not channels_ok(shape[2]) then
    error(string.format("diffusion.sample: %s is (%s), the model makes (%d, %d, %d) sprites",
      what, table.concat(shape, ", "), C, hgt, hgt), 4)
  end
  if shape[1] == 1 and n > 1 then
    x = minisd.ones({ n, 1, 1, 1 }) * x
  elseif shape[1] ~= n then
    error(string.format("diffusion.sample: %s has %d sprites for n = %d", what, shape[1], n), 4)
  end
  return x
end

-- guidance: 0 (off), a number, a list of n numbers or an (n) tensor; a row's 0 means off
-- (the plain conditional prediction, as guidance = 1 gives). Returns nil (off) or the
-- scales as an (n, 1, 1, 1) tensor.
local function guidance_scales(g, n)
  if g == nil or g == 0 then
    return nil
  end
  if type(g) == "number" then
    if g ~= g or g == math.huge or g == -math.huge then
      error("diffusion.sample: guidance must be a finite number, got " .. tostring(g), 4)
    end
    return minisd.full({ n, 1, 1, 1 }, g), g
  end
  local list = minisd.is_tensor(g) and g:reshape(-1):totable() or g
  if type(list) ~= "table" or #list ~= n then
    error(string.format("diffusion.sample: guidance must be a number or one per sprite (%d), "
      .. "got %s", n, type(list) == "table" and (#list .. " values") or type(g)), 4)
  end
  local rows = {}
  for i, v in ipairs(list) do
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      error(string.format("diffusion.sample: guidance[%d] must be a finite number, got %s", i,
        tostring(v)), 4)
    end
    rows[i] = v == 0 and 1 or v
  end
  return minisd.tensor(rows):reshape(n, 1, 1, 1)
end

--- Starts a step-wise sampling job, so a game can spread one run over frames.
-- @param model a ContextUnet (switched to eval mode for sampling)
-- @param opts {n=1, context=(K) row, (n, K) tensor, expression or nil,
--   sampler=one of minisd.sched.names() ("ddim", "ddpm", "dpmpp_2m"; default "ddim"),
--   steps=(the sampler's default_steps: 25 for ddim, 12 for dpmpp_2m, T for ddpm),
--   eta=0 (samplers that take it: ddim),
--   variance=(samplers with a choice of it: ddpm, "fixed_large" by default as the seed, or
--     "fixed_small", the posterior's: diffusion.recommended_variance),
--   guidance=0 (0: off; a number, or one per sprite: a list or an (n) tensor),
--   negative=(a context to steer away from, in place of the null context; needs guidance),
--   seed= or generator=, or seeds={s1, ..., sn} (one per sprite: each sprite's noise comes
--   from its own generator, so a sprite of a batch can be made again alone),
--   init=sprites (n, C, H, W) or one (C, H, W) in [-1, 1]: variations (SDEdit) with
--     strength=0.8 in [0, 1] (the fraction of the steps run, from the input noised to
--     that point; 0 returns the input, 1 nearly ignores it), or inpainting with
--   mask=(n, 1, H, W), (1, H, W) or (H, W) in [0, 1]: 1 where to generate, 0 where to keep
--     the input (kept exactly in the result; strength defaults to 1 then), and
--     jumps=0 (RePaint's resampling: each step undone and redone this many times, for a
--     better fit at the mask's border; samplers that keep no history: ddim, ddpm, euler_a),
--   on_step=function(i, t, x) end, noise= initial x_T,
--   signal_leak=(default: on when the model carries the statistics, `config.signal_leak`;
--     false: start from pure noise; not with init or noise): each sprite starts with the
--     per-channel means of a training sprite of its labels leaked in, as in training (see
--     M.signal_leak_stats)}
-- @return job with :step(), :done(), :result(), .i, .total, .timesteps (the ones it runs),
--   .signal_leak (whether it started with the leak)
function M.start(model, opts)
  opts = opts or {}
  check_options("diffusion.sample", opts, sample_options)
  local cfg = model.config or {}
  local n = opts.n
  if n == nil and type(opts.seeds) == "table" and #opts.seeds > 0 then
    n = #opts.seeds
  elseif n == nil and minisd.is_tensor(opts.init) and opts.init:dim() == 4 then
    n = opts.init:shape()[1]
  end
  n = n or 1
  if type(n) ~= "number" or n < 1 or n ~= math.floor(n) then
    error("diffusion.sample: n must be a positive integer, got " .. tostring(opts.n), 3)
  end
  local sampler = opts.sampler or "ddim"
  local Sched = sched.get(sampler)
  local sopts = M.schedule_of(model)
  if Sched.takes_eta then
    sopts.eta = opts.eta or 0
  elseif opts.eta ~= nil then
    error(string.format("diffusion.sample: eta does not apply to the %s sampler", Sched.name), 3)
  end
  if Sched.VARIANCE_TYPES then
    sopts.variance_type = opts.variance -- nil: the scheduler's default; checked by it
  elseif opts.variance ~= nil then
    error(string.format("diffusion.sample: variance does not apply to the %s sampler",
      Sched.name), 3)
  end
  local s = Sched.new(sopts)
  local T = s.num_train_timesteps
  s:set_timesteps(opts.steps or Sched.default_steps or T)
  local gens = sprite_generators(opts, n)
  local gen = not gens and (opts.generator or minisd.Generator(opts.seed or 0)) or nil
  local C, hgt = opts.channels or cfg.in_channels or 3, opts.size or cfg.height or 16
  local x
  if gens then
    x = randn_rows(gens, { n, C, hgt, hgt })
  else
    x = opts.noise or minisd.randn({ n, C, hgt, hgt }, gen)
  end
  local ctx = context_rows("context", opts.context, n, cfg)
  local negative = context_rows("negative", opts.negative, n, cfg)
  local leaked = leak_wanted("diffusion.sample", opts.signal_leak, cfg) and opts.init == nil
    and opts.noise == nil
  if leaked then
    local shape = x:shape()
    x = add_leak(s, x, leak_means(cfg.signal_leak, ctx and ctx:totable(),
      leak_draws(gen, gens, n), n, shape[2]))
  elseif opts._leak_means then -- start_interpolation's: the endpoints' means, blended
    x = add_leak(s, x, opts._leak_means)
    leaked = true
  end
  local scales, scalar = guidance_scales(opts.guidance, n)
  if scales and ctx == nil then
    error("diffusion.sample: guidance needs a context", 3)
  end
  if negative and not scales then
    error("diffusion.sample: a negative context works through guidance: give guidance too", 3)
  end
  -- variations and inpainting: start part-way from the input, noised to that point
  local init, mask, first, strength = nil, nil, 0, nil
  if opts.init ~= nil then
    if not (s.add_noise and s.prev_timestep) then
      error(string.format("diffusion.sample: the %s sampler has no add_noise or prev_timestep, "
        .. "which init and mask need", Sched.name), 3)
    end
    init = batch_of("init", opts.init, n, C, hgt, function(c) return c == C end)
    if opts.mask ~= nil then
      mask = batch_of("mask", opts.mask, n, C, hgt, function(c) return c == 1 or c == C end)
      if mask:min() < 0 or mask:max() > 1 then
        error("diffusion.sample: mask values must be in [0, 1] (1: generate, 0: keep)", 3)
      end
    end
    strength = opts.strength
    if strength == nil then
      strength = mask and 1 or 0.8
    end
    if type(strength) ~= "number" or not (strength >= 0 and strength <= 1) then
      error("diffusion.sample: strength must be a number in [0, 1], got " .. tostring(strength),
        3)
    end
    local S = #s.timesteps
    first = S - math.min(S, math.floor(S * strength + 1e-9))
    if first < S then
      x = s:add_noise(init, x, minisd.full({ n }, s.timesteps[first + 1]))
    else
      x = init
    end
  elseif opts.strength ~= nil or opts.mask ~= nil then
    error("diffusion.sample: strength and mask go with init (the sprites to start from)", 3)
  end
  local jumps = opts.jumps or 0
  if type(jumps) ~= "number" or jumps < 0 or jumps ~= math.floor(jumps) then
    error("diffusion.sample: jumps must be an integer >= 0, got " .. tostring(opts.jumps), 3)
  end
  if jumps > 0 and not mask then
    error("diffusion.sample: jumps (RePaint's resampling) go with a mask", 3)
  end
  if jumps > 0 and Sched.multistep then
    error(string.format("diffusion.sample: jumps need a sampler that keeps no history; %s is "
      .. "multistep (use ddim, ddpm or euler_a)", Sched.name), 3)
  end
  local timesteps = {}
  for i = first + 1, #s.timesteps do
    timesteps[#timesteps + 1] = s.timesteps[i]
  end
  model:eval()
  return setmetatable({
    model = model, scheduler = s, generator = gen, generators = gens, x = x, context = ctx,
    negative = negative, n = n, T = T, scales = scales, guidance = scalar or 0,
    on_step = opts.on_step, i = 0, total = #timesteps, timesteps = timesteps, init = init,
    mask = mask, jumps = jumps, strength = strength, signal_leak = leaked,
  }, Job)
end

--- The noise prediction for x at t, with classifier-free guidance when asked:
-- eps = eps_ref + g * (eps_cond - eps_ref), one batched forward, eps_ref being the null
-- context's prediction or the negative context's.
function Job:predict(x, t)
  local n = self.n
  if not self.scales then
    return self.model(x, M.time_input(t, self.T, n), self.context)
  end
  local xx = minisd.cat({ x, x }, 1)
  local ref = self.negative or minisd.zeros(self.context:shape())
  local cc = minisd.cat({ self.context, ref }, 1)
  local eps = self.model(xx, M.time_input(t, self.T, 2 * n), cc)
  local cond, uncond = eps:narrow(1, 1, n), eps:narrow(1, n + 1, n)
  if self.guidance ~= 0 then -- one scale for all: the same arithmetic as before per-row scales
    return uncond + (cond - uncond) * self.guidance
  end
  return uncond + (cond - uncond) * self.scales
end

-- Noise of x's shape from the job's generators (one per sprite) or its generator.
function Job:noise()
  if self.generators then
    return randn_rows(self.generators, self.x:shape())
  end
  return minisd.randn(self.x:shape(), self.generator)
end

-- Inpainting: the kept pixels are the input's, noised to timestep tp (exactly the input at 0).
function Job:merge(x, tp)
  local known = self.init
  if tp > 0 then
    known = self.scheduler:add_noise(self.init, self:noise(), minisd.full({ self.n }, tp))
  end
  return x * self.mask + known * (self.mask * -1 + 1)
end

--- Runs one denoising step; returns true while steps remain.
function Job:step()
  if self:done() then
    return false
  end
  self.i = self.i + 1
  local t = self.timesteps[self.i]
  local s = self.scheduler
  minisd.no_grad(function()
    local x = self.x
    for jump = 0, self.jumps do
      local eps = self:predict(x, t)
      -- per-sprite generators draw every step's noise row by row (a deterministic step
      -- ignores it), so that each sprite's numbers do not depend on the others
      local sopts = self.generators and { noise = randn_rows(self.generators, x:shape()) }
        or { generator = self.generator }
      local out = s:step(eps, t, x, sopts)
      local xp = out.prev_sample
      local tp = self.mask and s.prev_timestep[t]
      if self.mask then
        xp = self:merge(xp, tp)
      end
      self.pred_original_sample = out.pred_original_sample
      if jump == self.jumps or tp == 0 then
        self.x = xp
        break
      end
      -- RePaint: back from tp to t with fresh noise, x_t ~ q(x_t | x_tp), and again
      local a = s.alphas_cumprod[t] / s.alphas_cumprod[tp]
      x = xp * math.sqrt(a) + self:noise() * math.sqrt(1 - a)
    end
  end)
  if self.on_step then
    self.on_step(self.i, t, self.x)
  end
  return not self:done()
end

--- Whether every step has run.
function Job:done()
  return self.i >= self.total
end

--- The images (n, C, H, W), in [-1, 1] up to the model's accuracy.
function Job:result()
  return self.x
end

--- Runs every remaining step; returns the result.
function Job:run()
  while self:step() do
  end
  return self.x
end

-- The endpoint {seed =, context =} of an interpolation.
local function endpoint(what, e)
  if type(e) ~= "table" or minisd.is_tensor(e) then
    error(string.format("diffusion.interpolate: %s must be a table {seed =, context =}, got %s",
      what, type(e)), 4)
  end
  check_options("diffusion.interpolate: " .. what, e, { seed = true, context = true }, 3)
  local seed = e.seed or 0
  if type(seed) ~= "number" or seed ~= math.floor(seed) or seed < 0 or seed >= 2 ^ 53 then
    error(string.format("diffusion.interpolate: %s.seed must be an integer in [0, 2^53), got %s",
      what, tostring(e.seed)), 4)
  end
  return seed, e.context
end

--- Starts a step-wise interpolation job: `frames` sprites between two endpoints, the
-- starting noise moving along the great circle between the two seeds' (spherical
-- interpolation) and the context row blended linearly. The first frame is what sampling
-- with seeds = {from.seed} and from.context gives, the last the same for `to` (exactly,
-- with a deterministic sampler: ddim with eta 0, or dpmpp_2m). With the signal leak (the
-- model's statistics, unless signal_leak = false), the endpoints' means are picked as those
-- samples pick them and blended linearly.
-- @param model a ContextUnet
-- @param opts {from = {seed =, context =}, to = {seed =, context =}, frames = 8, and
--   diffusion.start's sampler, steps, eta, variance, guidance (a number), negative,
--   on_step, signal_leak}; a
--   missing context is the null one
-- @return job (its result is (frames, C, H, W))
function M.start_interpolation(model, opts)
  opts = opts or {}
  check_options("diffusion.interpolate", opts, { from = true, to = true, frames = true,
    sampler = true, steps = true, eta = true, variance = true, guidance = true, negative = true,
    on_step = true, signal_leak = true })
  local cfg = model.config or {}
  local sa, ca = endpoint("from", opts.from)
  local sb, cb = endpoint("to", opts.to)
  local frames = opts.frames or 8
  if type(frames) ~= "number" or frames < 2 or frames ~= math.floor(frames) then
    error("diffusion.interpolate: frames must be an integer >= 2, got " .. tostring(opts.frames),
      2)
  end
  local C, hgt = cfg.in_channels or 3, cfg.height or 16
  local shape = { 1, C, hgt, hgt }
  local ga, gb = minisd.Generator(sa), minisd.Generator(sb)
  local za = minisd.randn(shape, ga)
  local zb = minisd.randn(shape, gb)
  -- slerp(a, b; u) = sin((1-u) theta) / sin theta a + sin(u theta) / sin theta b
  local dot = (za * zb):sum():item()
  local na, nb = math.sqrt((za * za):sum():item()), math.sqrt((zb * zb):sum():item())
  local cos = math.max(-1, math.min(1, dot / (na * nb)))
  local theta = math.acos(cos)
  local K = cfg.n_cfeat or 5
  local ra = ca ~= nil and context_rows("from.context", ca, 1, cfg):totable()[1] or nil
  local rb = cb ~= nil and context_rows("to.context", cb, 1, cfg):totable()[1] or nil
  local zero = {}
  for k = 1, K do
    zero[k] = 0
  end
  local noise, rows = {}, {}
  for i = 1, frames do
    local u = (i - 1) / (frames - 1)
    if i == 1 then
      noise[i] = za
    elseif i == frames then
      noise[i] = zb
    elseif theta < 1e-4 then -- (nearly) the same direction: a straight line
      noise[i] = za * (1 - u) + zb * u
    else
      noise[i] = za * (math.sin((1 - u) * theta) / math.sin(theta))
        + zb * (math.sin(u * theta) / math.sin(theta))
    end
    local a, b = ra or zero, rb or zero
    local r = {}
    for k = 1, K do
      r[k] = i == 1 and a[k] or i == frames and b[k] or a[k] * (1 - u) + b[k] * u
    end
    rows[i] = r
  end
  local any_context = ra ~= nil or rb ~= nil
  -- the signal leak: each endpoint's means as sampling with its seed alone picks them (the
  -- draw after its noise), blended linearly between
  local means
  if leak_wanted("diffusion.interpolate", opts.signal_leak, cfg) then
    local ma = leak_means(cfg.signal_leak, ra and { ra } or nil, leak_draws(nil, { ga }, 1), 1,
      C)[1]
    local mb = leak_means(cfg.signal_leak, rb and { rb } or nil, leak_draws(nil, { gb }, 1), 1,
      C)[1]
    means = {}
    for i = 1, frames do
      local u, m = (i - 1) / (frames - 1), {}
      for c = 1, C do
        m[c] = i == 1 and ma[c] or i == frames and mb[c] or ma[c] * (1 - u) + mb[c] * u
      end
      means[i] = m
    end
  end
  return M.start(model, {
    n = frames, noise = minisd.cat(noise, 1), context = any_context and minisd.tensor(rows) or nil,
    sampler = opts.sampler, steps = opts.steps, eta = opts.eta, variance = opts.variance,
    guidance = opts.guidance, negative = opts.negative, seed = sa, on_step = opts.on_step,
    _leak_means = means,
  })
end

--- Interpolates in one call (start_interpolation + every step).
-- @return tensor (frames, C, H, W)
function M.interpolate(model, opts)
  return M.start_interpolation(model, opts):run()
end

--- Samples images in one call (start + every step).
-- @param model a ContextUnet
-- @param opts see start
-- @return tensor (n, C, H, W)
function M.sample(model, opts)
  return M.start(model, opts):run()
end

return M
