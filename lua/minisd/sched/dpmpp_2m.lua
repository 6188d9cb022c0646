--- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
-- Diffusion Probabilistic Models", Algorithm 2): the multistep second-order solver in data
-- prediction, on the seed's discrete schedule. Deterministic; good sprites in fewer steps
-- than DDIM.
--
-- With alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t) and lambda_t = log(alpha_t / sigma_t),
-- one step from t to s = the previous timestep, h = lambda_s - lambda_t, is
--   x0_t = (x - sigma_t eps) / alpha_t                                   (data prediction)
--   D    = x0_t                                    on the first step
--   D    = (1 + 1/(2r)) x0_t - 1/(2r) x0_last,  r = h_last / h,  on the others (eq. 18)
--   x_s  = (sigma_s / sigma_t) x - alpha_s (exp(-h) - 1) D
-- The last step lands on 0, where ab = 1 and sigma = 0 (h is infinite): it returns x0_t,
-- the usual first-order final step ("lower_order_final" in diffusers).
--
--     local s = require("minisd.sched.dpmpp_2m").new{ num_train_timesteps = 500 }
--     s:set_timesteps(12)
--     for _, t in ipairs(s.timesteps) do
--       x = s:step(model(x, t / 500), t, x).prev_sample
--     end
-- The steps must run in order: the solver keeps the previous step's x0 and h. A run may
-- begin at a later timestep on a fresh scheduler (or after set_timesteps).
-- @classmod minisd.sched.dpmpp_2m

local schedule = require("minisd.sched.schedule")

local DPM = {}
DPM.__index = DPM

--- Registry entry (minisd.sched): the name, the step count when none is given.
DPM.name = "dpmpp_2m"
DPM.default_steps = 12
--- It keeps the previous step's x0: steps run once each, in order (no RePaint jumps).
DPM.multistep = true

local DEFAULTS = schedule.defaults()

--- Creates a DPM-Solver++(2M) scheduler; its timesteps are all T steps until set_timesteps
-- is called.
-- @param opts table: num_train_timesteps (500), beta_start (1e-4), beta_end (0.02),
--   beta_schedule ("linear", "scaled_linear" or "cosine"); any other key is an error
-- @return the scheduler (fields as DDIM's)
function DPM.new(opts)
  local o = schedule.options(opts, DEFAULTS, "DPMSolverPP2M.new", 2)
  local s = setmetatable({}, DPM)
  schedule.build(s, o, "DPMSolverPP2M.new", 2)
  s:set_timesteps(s.num_train_timesteps)
  return s
end

--- Sets the sampling timesteps as DDIM does (T, T - step, ..., landing on 0) and forgets
-- the previous steps.
-- @param n number of steps, an integer in 1..T
function DPM:set_timesteps(n)
  schedule.set_timesteps(self, n, 2)
  self.last_x0, self.last_h, self.last_t = nil, nil, nil
end

--- One solver step from t to the previous timestep (see the module's formulas).
-- @param eps the model's noise prediction, x's shape
-- @param t the current timestep: the first of self.timesteps, or the one after the last
--   step's
-- @param x the current sample x_t
-- @param opts optional {}: the solver draws no noise
-- @return {prev_sample = x_s, pred_original_sample = x0_t}
function DPM:step(eps, t, x, opts)
  schedule.step_options(opts, "DPMSolverPP2M:step", 2)
  local prev = schedule.prev_of(self, t, "DPMSolverPP2M:step", 2)
  if t == self.timesteps[1] or self.last_t == nil then
    -- a run starts: at the first timestep, or anywhere on a fresh scheduler (img2img
    -- starts part-way), with a first-order step
    self.last_x0, self.last_h = nil, nil
  elseif self.prev_timestep[self.last_t] ~= t then
    error(string.format("DPMSolverPP2M:step: t = %d out of order (the solver is multistep: "
      .. "run the timesteps in order from %d)", t, self.timesteps[1]), 2)
  end
  local ab_t = self.alphas_cumprod[t]
  local alpha_t, sigma_t = math.sqrt(ab_t), math.sqrt(1 - ab_t)
  local x0 = (x - eps * sigma_t) * (1 / alpha_t)
  local out
  if prev == 0 then
    out = x0
  else
    local ab_s = self.alphas_cumprod[prev]
    local alpha_s, sigma_s = math.sqrt(ab_s), math.sqrt(1 - ab_s)
    local h = math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)
    local d = x0
    if self.last_x0 then
      local r = self.last_h / h
      d = x0 * (1 + 1 / (2 * r)) - self.last_x0 * (1 / (2 * r))
    end
    out = x * (sigma_s / sigma_t) - d * (alpha_s * (math.exp(-h) - 1))
    self.last_h = h
  end
  self.last_x0, self.last_t = x0, t
  return { prev_sample = out, pred_original_sample = x0 }
end

--- Forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4).
-- @function add_noise
DPM.add_noise = schedule.add_noise

return DPM
