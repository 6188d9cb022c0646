--- DDPM sampler (Ho et al. 2020, "Denoising Diffusion Probabilistic
-- Models"), in the diffusers manner and model-agnostic.
--
-- With all T steps (the default) it is the seed's `denoise_add_noise`:
-- x_{t-1} = (x_t - eps (1 - a_t) / sqrt(1 - ab_t)) / sqrt(a_t) + sqrt(b_t) z,
-- with z = 0 on the last step. With fewer steps it jumps from t to
-- prev = t - floor(T / n) with the step's alpha = ab_t / ab_prev.
--
--     local DDPM = require("minisd.sched.ddpm")
--     local s = DDPM.new{ num_train_timesteps = 500 }
--     for _, t in ipairs(s.timesteps) do
--       x = s:step(model(x, t / 500), t, x, { generator = gen }).prev_sample
--     end
-- @classmod minisd.sched.ddpm

local core = require("minisd.core")
local schedule = require("minisd.sched.schedule")

local DDPM = {}
DDPM.__index = DDPM

--- Registry entry (minisd.sched): the name; no default_steps: all T steps.
DDPM.name = "ddpm"

--- The variance choices (Ho et al. 2020, sec. 3.2): "fixed_large" is
-- sigma_t^2 = beta_t (the seed's choice), "fixed_small" the posterior's
-- beta~_t = (1 - ab_prev) / (1 - ab_t) beta_t (eq. 7; diffusers' default).
DDPM.VARIANCE_TYPES = { "fixed_large", "fixed_small" }

local DEFAULTS = schedule.defaults({ variance_type = "fixed_large" })

--- Creates a DDPM scheduler with all T timesteps set.
-- @param opts table: num_train_timesteps (500), beta_start (1e-4), beta_end
--   (0.02), beta_schedule ("linear", "scaled_linear" or "cosine"),
--   variance_type ("fixed_large" or "fixed_small"); any other key is an error
-- @return the scheduler: fields betas, alphas, alphas_cumprod (indexed 0..T),
--   timesteps (descending), num_train_timesteps
function DDPM.new(opts)
  local o = schedule.options(opts, DEFAULTS, "DDPM.new", 2)
  local s = setmetatable({}, DDPM)
  schedule.build(s, o, "DDPM.new", 2)
  s.variance_type = schedule.check_choice(o.variance_type, DDPM.VARIANCE_TYPES, "DDPM.new",
    "variance_type", 2)
  s:set_timesteps(s.num_train_timesteps)
  return s
end

--- Sets the sampling timesteps: n of them, descending from T with a stride
-- of floor(T / n); the last step lands on 0 (see schedule.set_timesteps).
-- n = T (the default after `new`) visits T, T-1, ..., 1 as the seed.
-- @param n number of steps, an integer in 1..T
function DDPM:set_timesteps(n)
  schedule.set_timesteps(self, n, 2)
  -- The step's alpha is ab_t / ab_prev (diffusers), taken as the product of
  -- the per-step alphas over (prev, t] so that a unit step uses alphas[t]
  -- exactly as the seed, the last one included (the seed's ab_t[1] also
  -- holds a_t[0], so ab_1 / ab_0 would differ from a_1 there).
  self.step_alpha = {}
  for _, t in ipairs(self.timesteps) do
    local a = 1
    for k = self.prev_timestep[t] + 1, t do
      a = a * self.alphas[k]
    end
    self.step_alpha[t] = a
  end
end

--- One reverse step from t (Ho et al. 2020, eq. 11 and Algorithm 2):
-- prev = (x - (1 - alpha) / sqrt(1 - ab_t) eps) / sqrt(alpha) + sigma z, no
-- noise when landing on 0.
-- @param eps the model's noise prediction, x's shape
-- @param t the current timestep, one of self.timesteps
-- @param x the current sample x_t
-- @param opts optional {noise = tensor z of x's shape, generator = g for
--   minisd.randn when noise is absent}
-- @return {prev_sample = x_prev, pred_original_sample = x0 prediction}
function DDPM:step(eps, t, x, opts)
  opts = schedule.step_options(opts, "DDPM:step", 2)
  local prev = schedule.prev_of(self, t, "DDPM:step", 2)
  local z = nil
  if prev > 0 then -- Algorithm 2, line 3: z = 0 on the last step
    z = schedule.step_noise(x, opts, "DDPM:step", 2)
  end
  local p, x0 = core.sched_ddpm_step(x, eps, z, self.step_alpha[t], self.alphas_cumprod[t],
    self.alphas_cumprod[prev], self.variance_type)
  return { prev_sample = p, pred_original_sample = x0 }
end

--- Forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4).
-- @function add_noise
-- @param x0 tensor (B, ...)
-- @param noise tensor of x0's shape
-- @param t one timestep for all samples, or a list / tensor of B timesteps in 0..T
-- @return x_t
DDPM.add_noise = schedule.add_noise

return DDPM
