--- DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit Models"),
-- in the diffusers manner and model-agnostic.
--
-- With eta = 0 it is the seed's `denoise_ddim`; eta > 0 adds noise as in
-- eq. 12 and 16 (eta = 1 is the DDPM posterior).
--
--     local DDIM = require("minisd.sched.ddim")
--     local s = DDIM.new{ num_train_timesteps = 500, eta = 0 }
--     s:set_timesteps(25)
--     for _, t in ipairs(s.timesteps) do
--       x = s:step(model(x, t / 500), t, x).prev_sample
--     end
-- @classmod minisd.sched.ddim

local core = require("minisd.core")
local schedule = require("minisd.sched.schedule")

local DDIM = {}
DDIM.__index = DDIM

--- Registry entry (minisd.sched): the name, the step count when none is given, and eta.
DDIM.name = "ddim"
DDIM.default_steps = 25
DDIM.takes_eta = true

local DEFAULTS = schedule.defaults({ eta = 0 })

--- Creates a DDIM scheduler; its timesteps are all T steps until
-- set_timesteps is called.
-- @param opts table: num_train_timesteps (500), beta_start (1e-4), beta_end
--   (0.02), beta_schedule ("linear", "scaled_linear" or "cosine"), eta (0,
--   a number >= 0); any other key is an error
-- @return the scheduler: fields betas, alphas, alphas_cumprod (indexed 0..T),
--   timesteps (descending), num_train_timesteps, eta
function DDIM.new(opts)
  local o = schedule.options(opts, DEFAULTS, "DDIM.new", 2)
  local s = setmetatable({}, DDIM)
  schedule.build(s, o, "DDIM.new", 2)
  if type(o.eta) ~= "number" or not (o.eta >= 0 and o.eta < math.huge) then
    error("DDIM.new: eta must be a number >= 0, got " .. tostring(o.eta), 2)
  end
  s.eta = o.eta
  s:set_timesteps(s.num_train_timesteps)
  return s
end

--- Sets the sampling timesteps: n of them, T, T - step, ..., with step =
-- floor(T / n), as the seed's sample_ddim; the last step lands on 0 (see
-- schedule.set_timesteps for n not dividing T).
-- @param n number of steps, an integer in 1..T
function DDIM:set_timesteps(n)
  schedule.set_timesteps(self, n, 2)
end

--- One reverse step from t to the previous timestep (Song et al. 2021,
-- eq. 12, with sigma from eq. 16):
-- x_prev = sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
-- x0_pred = (x - sqrt(1 - ab_t) eps) / sqrt(ab_t).
-- @param eps the model's noise prediction, x's shape
-- @param t the current timestep, one of self.timesteps
-- @param x the current sample x_t
-- @param opts optional {noise = tensor z of x's shape, generator = g for
--   minisd.randn}; only used when eta > 0
-- @return {prev_sample = x_prev, pred_original_sample = x0_pred}
function DDIM:step(eps, t, x, opts)
  opts = schedule.step_options(opts, "DDIM:step", 2)
  local prev = schedule.prev_of(self, t, "DDIM:step", 2)
  local z = nil
  if self.eta > 0 and prev > 0 then -- sigma = 0 when landing on ab = 1
    z = schedule.step_noise(x, opts, "DDIM:step", 2)
  end
  local p, x0 = core.sched_ddim_step(x, eps, z, self.alphas_cumprod[t],
    self.alphas_cumprod[prev], self.eta)
  return { prev_sample = p, pred_original_sample = x0 }
end

--- Forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4).
-- @function add_noise
-- @param x0 tensor (B, ...)
-- @param noise tensor of x0's shape
-- @param t one timestep for all samples, or a list / tensor of B timesteps in 0..T
-- @return x_t
DDIM.add_noise = schedule.add_noise

return DDIM
