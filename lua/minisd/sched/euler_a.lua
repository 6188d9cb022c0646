--- Euler ancestral (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
-- Generative Models", with the ancestral noise split of k-diffusion's sample_euler_ancestral)
-- on the seed's discrete schedule. Stochastic: every step but the last adds fresh noise.
--
-- In the variance-exploding view x_ve = x / alpha_t with sigma_t = sqrt((1 - ab_t) / ab_t)
-- (alpha_t = sqrt(ab_t)), the network's eps is dx_ve/dsigma. A step from t to s:
--   sigma_up   = sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2)
--   sigma_down = sqrt(sigma_s^2 - sigma_up^2)
--   x_ve(s)    = x_ve(t) + (sigma_down - sigma_t) eps + sigma_up z
-- and back: x_s = alpha_s x_ve(s). The last step lands on t = 0 (sigma 0): x0_pred, no
-- noise.
--
--     local s = require("minisd.sched.euler_a").new{ num_train_timesteps = 500 }
--     s:set_timesteps(25)
--     for _, t in ipairs(s.timesteps) do
--       x = s:step(model(x, t / 500), t, x, { generator = g }).prev_sample
--     end
-- @classmod minisd.sched.euler_a

local schedule = require("minisd.sched.schedule")

local EulerA = {}
EulerA.__index = EulerA

--- Registry entry (minisd.sched): the name, the step count when none is given.
EulerA.name = "euler_a"
EulerA.default_steps = 25

local DEFAULTS = schedule.defaults()

--- Creates an Euler ancestral scheduler; its timesteps are all T steps until set_timesteps
-- is called.
-- @param opts table: num_train_timesteps (500), beta_start (1e-4), beta_end (0.02),
--   beta_schedule ("linear", "scaled_linear" or "cosine"); any other key is an error
-- @return the scheduler (fields as DDIM's)
function EulerA.new(opts)
  local o = schedule.options(opts, DEFAULTS, "EulerAncestral.new", 2)
  local s = setmetatable({}, EulerA)
  schedule.build(s, o, "EulerAncestral.new", 2)
  s:set_timesteps(s.num_train_timesteps)
  return s
end

--- Sets the sampling timesteps as DDIM does (T, T - step, ..., landing on 0).
-- @param n number of steps, an integer in 1..T
function EulerA:set_timesteps(n)
  schedule.set_timesteps(self, n, 2)
end

--- One step from t to the previous timestep (see the module's formulas).
-- @param eps the model's noise prediction, x's shape
-- @param t the current timestep, one of self.timesteps
-- @param x the current sample x_t
-- @param opts {noise = tensor z of x's shape, or generator = g for minisd.randn}; not used
--   on the last step
-- @return {prev_sample = x_s, pred_original_sample = x0_pred}
function EulerA:step(eps, t, x, opts)
  opts = schedule.step_options(opts, "EulerAncestral:step", 2)
  local prev = schedule.prev_of(self, t, "EulerAncestral:step", 2)
  local ab_t = self.alphas_cumprod[t]
  local alpha_t = math.sqrt(ab_t)
  local sigma_t = math.sqrt((1 - ab_t) / ab_t)
  local x0 = (x - eps * math.sqrt(1 - ab_t)) * (1 / alpha_t)
  if prev == 0 then
    return { prev_sample = x0, pred_original_sample = x0 }
  end
  local ab_s = self.alphas_cumprod[prev]
  local alpha_s = math.sqrt(ab_s)
  local sigma_s = math.sqrt((1 - ab_s) / ab_s)
  local up = math.sqrt(sigma_s ^ 2 * (sigma_t ^ 2 - sigma_s ^ 2) / sigma_t ^ 2)
  local down = math.sqrt(sigma_s ^ 2 - up ^ 2)
  local z = schedule.step_noise(x, opts, "EulerAncestral:step", 2)
  -- x_s = alpha_s (x / alpha_t + (down - sigma_t) eps + up z)
  local out = x * (alpha_s / alpha_t) + eps * (alpha_s * (down - sigma_t)) + z * (alpha_s * up)
  return { prev_sample = out, pred_original_sample = x0 }
end

--- Forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4).
-- @function add_noise
EulerA.add_noise = schedule.add_noise

return EulerA
