--- Shared parts of the schedulers: option checks, the beta tables, the
-- timestep spacing and the forward noising q(x_t | x_0).
--
-- Timesteps follow the seed model: tables are indexed t = 0..T, samples are
-- noised at t in 1..T, `alphas_cumprod[0] = 1` (no noise), and the network
-- is fed t/T.
-- @module minisd.sched.schedule

local core = require("minisd.core")
local util = require("minisd.util")

local M = {}

--- The beta schedules `new{beta_schedule = ...}` accepts.
M.BETA_SCHEDULES = { "linear", "scaled_linear", "cosine" }

--- A scheduler's default options: the seed's schedule (500 steps, linear betas from 1e-4 to
-- 0.02) plus the scheduler's own.
-- @param own table of the scheduler's options and their defaults, or nil
-- @return a new table
function M.defaults(own)
  local d = { num_train_timesteps = 500, beta_start = 1e-4, beta_end = 0.02,
    beta_schedule = "linear" }
  for k, v in pairs(own or {}) do
    d[k] = v
  end
  return d
end

-- Cosine schedule constants of Nichol & Dhariwal 2021 (sec. 3.2).
local COSINE_S, COSINE_MAX_BETA = 0.008, 0.999

local function is_int(v)
  return type(v) == "number" and v == math.floor(v) and v > -math.huge and v < math.huge
end

M.is_int = is_int

--- Checks an options table against `defaults` (name -> default value) and
-- returns a new table with every option filled in.
-- @param opts table of options, or nil
-- @param defaults table name -> default
-- @param who name of the caller, for messages (e.g. "DDIM.new")
-- @param level error level for misuse (the user's call)
-- @return table of options
function M.options(opts, defaults, who, level)
  return util.options(who, opts, defaults, (level or 1) + 1)
end

--- Checks that `value` is one of `allowed` (a list of strings).
-- @return value
function M.check_choice(value, allowed, who, what, level)
  for _, a in ipairs(allowed) do
    if value == a then
      return value
    end
  end
  error(string.format("%s: unknown %s '%s' (allowed: %s)", who, what, tostring(value),
    table.concat(allowed, ", ")), (level or 1) + 1)
end

--- Builds the schedule tables of `opts` into `s` (fields betas, alphas,
-- alphas_cumprod, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, all
-- indexed 0..T, and num_train_timesteps). The tables are computed in double
-- in C and rounded to float32, so they equal the seed's float32 torch
-- tensors; for "linear" this is the seed's `b_t`, `a_t`, `ab_t`.
-- @param s the scheduler object to fill
-- @param opts checked options (num_train_timesteps, beta_start, beta_end, beta_schedule)
-- @param who name of the caller, for messages
-- @param level error level for misuse
function M.build(s, opts, who, level)
  level = (level or 1) + 1
  local T = opts.num_train_timesteps
  if not is_int(T) or T < 1 then
    error(string.format("%s: num_train_timesteps must be an integer >= 1, got %s", who,
      tostring(T)), level)
  end
  local kind = M.check_choice(opts.beta_schedule, M.BETA_SCHEDULES, who, "beta_schedule", level)
  local a, b = opts.beta_start, opts.beta_end
  if kind == "cosine" then
    a, b = COSINE_S, COSINE_MAX_BETA
  elseif type(a) ~= "number" or type(b) ~= "number" or not (a > 0 and a < 1 and b > 0 and b < 1)
  then
    error(string.format("%s: beta_start and beta_end must be numbers in (0, 1), got %s and %s",
      who, tostring(a), tostring(b)), level)
  end
  s.num_train_timesteps = T
  s.beta_schedule = kind
  s.betas, s.alphas, s.alphas_cumprod = core.sched_tables(kind, T, a, b)
  s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod = {}, {}
  for t = 0, T do
    s.sqrt_alphas_cumprod[t] = math.sqrt(s.alphas_cumprod[t])
    s.sqrt_one_minus_alphas_cumprod[t] = math.sqrt(1 - s.alphas_cumprod[t])
  end
end

--- Sets `s.timesteps` to n descending timesteps and `s.prev_timestep`
-- (t -> the timestep the step from t lands on). With step = floor(T / n)
-- the timesteps are T, T - step, ..., T - (n - 1) step, as the seed's
-- `range(T, 0, -step)`, and the last step lands on 0 (alphas_cumprod = 1).
-- When n does not divide T that last step is longer than the others
-- (T - (n - 1) step instead of step), where the seed would take one more
-- step past 0.
-- @param s the scheduler
-- @param n number of sampling steps, an integer in 1..T
-- @param level error level for misuse
function M.set_timesteps(s, n, level)
  level = (level or 1) + 1
  local T = s.num_train_timesteps
  if not is_int(n) or n < 1 or n > T then
    error(string.format("set_timesteps: the number of steps must be an integer in 1..%d "
      .. "(num_train_timesteps), got %s", T, tostring(n)), level)
  end
  local step = math.floor(T / n)
  local ts, prev = {}, {}
  for i = 1, n do
    ts[i] = T - (i - 1) * step
  end
  for i = 1, n do
    prev[ts[i]] = ts[i + 1] or 0
  end
  s.num_inference_steps = n
  s.timesteps = ts
  s.prev_timestep = prev
end

--- The timestep the step from t lands on, or a misuse error.
function M.prev_of(s, t, who, level)
  local p = s.prev_timestep[t]
  if p == nil then
    local ts = s.timesteps
    error(string.format("%s: t = %s is not one of the %d timesteps set by set_timesteps "
      .. "(%d, %s..., %d)", who, tostring(t), #ts, ts[1], ts[2] and (ts[2] .. ", ") or "",
      ts[#ts]), (level or 1) + 1)
  end
  return p
end

local function flatten(v, acc)
  if type(v) == "table" then
    for i = 1, #v do
      flatten(v[i], acc)
    end
  else
    acc[#acc + 1] = v
  end
  return acc
end

--- Forward noising (Ho et al. 2020, eq. 4), a method of every scheduler
-- (`s:add_noise(x0, noise, t)`): x_t = sqrt(alphas_cumprod[t]) x0
-- + sqrt(1 - alphas_cumprod[t]) noise, with one t per sample.
-- @param s the scheduler
-- @param x0 tensor (B, ...)
-- @param noise tensor of x0's shape
-- @param t a timestep for all samples, or B timesteps (a list or a tensor of
--   integers), each in 0..T
-- @return a new tensor x_t (no autograd history)
function M.add_noise(s, x0, noise, t)
  if not core.is_tensor(x0) or not core.is_tensor(noise) then
    error(string.format("add_noise: x0 and noise must be tensors, got %s and %s", type(x0),
      type(noise)), 2)
  end
  local B = x0:dim() > 0 and x0:size(1) or 1
  local ts
  if type(t) == "number" then
    ts = {}
    for b = 1, B do
      ts[b] = t
    end
  elseif core.is_tensor(t) then
    ts = flatten(t:totable(), {})
  elseif type(t) == "table" then
    ts = flatten(t, {})
  else
    error("add_noise: t must be a number, a list or a tensor, got " .. type(t), 2)
  end
  if #ts ~= B then
    error(string.format("add_noise: x0 [%s] has %d samples but %d timesteps were given",
      table.concat(x0:shape(), ","), B, #ts), 2)
  end
  local T, ca, cb = s.num_train_timesteps, {}, {}
  for b = 1, B do
    local tb = ts[b]
    if not is_int(tb) or tb < 0 or tb > T then
      error(string.format("add_noise: timestep %d is %s, expected an integer in 0..%d", b,
        tostring(tb), T), 2)
    end
    ca[b] = s.sqrt_alphas_cumprod[tb]
    cb[b] = s.sqrt_one_minus_alphas_cumprod[tb]
  end
  return core.sched_add_noise(x0, noise, ca, cb)
end

--- Checks the options of `step` ({generator =, noise =}, or nil) and
-- returns them.
function M.step_options(opts, who, level)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error(string.format("%s: expected an options table, got %s", who, type(opts)),
      (level or 1) + 1)
  end
  for k in pairs(opts) do
    if k ~= "generator" and k ~= "noise" then
      error(string.format("%s: unknown option '%s' (allowed: generator, noise)", who,
        tostring(k)), (level or 1) + 1)
    end
  end
  if opts.noise ~= nil and not core.is_tensor(opts.noise) then
    error(who .. ": opts.noise must be a tensor, got " .. type(opts.noise), (level or 1) + 1)
  end
  return opts
end

--- The noise z for a step: opts.noise if given, else a draw from
-- minisd.randn(shape, opts.generator).
function M.step_noise(x, opts, who, level)
  if opts.noise ~= nil then
    return opts.noise
  end
  local randn = require("minisd").randn
  if not randn then
    error(who .. ": this step adds noise: pass opts.noise (minisd.randn is not available)",
      (level or 1) + 1)
  end
  return randn(x:shape(), opts.generator)
end

return M
