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
-- @param model a ContextUnet (called as model(x_t, t/T, c))
-- @param x0 tensor (B, C, H, W) in [-1, 1]
-- @param c tensor (B, K) of context rows, or nil for unconditional training
-- @param opts {scheduler=, generator=, context_drop=0.1}
-- @return loss (0-dim tensor), and a table {t=, noise=} of what was drawn
function M.loss(model, x0, c, opts)
  opts = opts or {}
  check_options("diffusion.loss", opts, { scheduler = true, generator = true, context_drop = true })
  local s = opts.scheduler or sched.get("ddpm").new(M.schedule_of(model))
  local gen = opts.generator
  local T = s.num_train_timesteps
  local B = x0:shape()[1]
  local t = minisd.randint({ B }, 1, T, gen)
  local noise = minisd.randn(x0:shape(), gen)
  local x_t = s:add_noise(x0, noise, t)
  if c ~= nil then
    local p = opts.context_drop or 0.1
    local u = minisd.rand({ B }, gen):totable()
    local keep = {}
    for i = 1, B do
      keep[i] = u[i] < p and 0 or 1
    end
    c = c * minisd.tensor(keep):reshape(B, 1)
  end
  local pred = model(x_t, M.time_input(t, T), c)
  return minisd.mse_loss(pred, noise), { t = t, noise = noise }
end

local Job = {}
Job.__index = Job

local sample_options = {
  n = true, context = true, sampler = true, steps = true, eta = true, guidance = true,
  seed = true, seeds = true, generator = true, on_step = true, channels = true, size = true,
  noise = true,
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

--- Starts a step-wise sampling job, so a game can spread one run over frames.
-- @param model a ContextUnet (switched to eval mode for sampling)
-- @param opts {n=1, context=(K) row, (n, K) tensor, expression or nil,
--   sampler=one of minisd.sched.names() ("ddim", "ddpm", "dpmpp_2m"; default "ddim"),
--   steps=(the sampler's default_steps: 25 for ddim, 12 for dpmpp_2m, T for ddpm),
--   eta=0 (samplers that take it: ddim), guidance=0 (0: off),
--   seed= or generator=, or seeds={s1, ..., sn} (one per sprite: each sprite's noise comes
--   from its own generator, so a sprite of a batch can be made again alone),
--   on_step=function(i, t, x) end, noise= initial x_T}
-- @return job with :step(), :done(), :result(), .i, .total
function M.start(model, opts)
  opts = opts or {}
  check_options("diffusion.sample", opts, sample_options)
  local cfg = model.config or {}
  local n = opts.n or (type(opts.seeds) == "table" and #opts.seeds > 0 and #opts.seeds) or 1
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
  local ctx = opts.context
  local K = cfg.n_cfeat or 5
  if type(ctx) == "string" or (type(ctx) == "table" and not minisd.is_tensor(ctx)) then
    ctx = require("minisd.context").encode(ctx, cfg.label_names)
  end
  if ctx ~= nil then
    local shape = ctx:shape()
    if #shape == 1 then
      ctx = ctx:reshape(1, shape[1])
      shape = ctx:shape()
    end
    if shape[2] ~= K then
      error(string.format("diffusion.sample: context has %d features, the model expects %d",
        shape[2], K), 3)
    end
    if shape[1] == 1 and n > 1 then
      ctx = minisd.ones({ n, 1 }) * ctx
    elseif shape[1] ~= n then
      error(string.format("diffusion.sample: %d context rows for n = %d samples", shape[1], n), 3)
    end
  end
  local guidance = opts.guidance or 0
  if guidance ~= 0 and ctx == nil then
    error("diffusion.sample: guidance needs a context", 3)
  end
  model:eval()
  return setmetatable({
    model = model, scheduler = s, generator = gen, generators = gens, x = x, context = ctx,
    n = n, T = T, guidance = guidance, on_step = opts.on_step, i = 0, total = #s.timesteps,
  }, Job)
end

--- The noise prediction for x at t, with classifier-free guidance when asked:
-- eps = eps_uncond + g * (eps_cond - eps_uncond), one batched forward.
function Job:predict(x, t)
  local n = self.n
  if self.guidance == 0 then
    return self.model(x, M.time_input(t, self.T, n), self.context)
  end
  local xx = minisd.cat({ x, x }, 1)
  local cc = minisd.cat({ self.context, minisd.zeros(self.context:shape()) }, 1)
  local eps = self.model(xx, M.time_input(t, self.T, 2 * n), cc)
  local cond, uncond = eps:narrow(1, 1, n), eps:narrow(1, n + 1, n)
  return uncond + (cond - uncond) * self.guidance
end

--- Runs one denoising step; returns true while steps remain.
function Job:step()
  if self:done() then
    return false
  end
  self.i = self.i + 1
  local t = self.scheduler.timesteps[self.i]
  minisd.no_grad(function()
    local eps = self:predict(self.x, t)
    -- per-sprite generators draw every step's noise row by row (a deterministic step
    -- ignores it), so that each sprite's numbers do not depend on the others
    local sopts = self.generators and { noise = randn_rows(self.generators, self.x:shape()) }
      or { generator = self.generator }
    local out = self.scheduler:step(eps, t, self.x, sopts)
    self.x = out.prev_sample
    self.pred_original_sample = out.pred_original_sample
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

--- Samples images in one call (start + every step).
-- @param model a ContextUnet
-- @param opts see start
-- @return tensor (n, C, H, W)
function M.sample(model, opts)
  local job = M.start(model, opts)
  while job:step() do
  end
  return job:result()
end

return M
