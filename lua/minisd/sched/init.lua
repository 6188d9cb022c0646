--- The samplers, as a registry: each scheduler module declares its `name` and its
-- `default_steps` (nil: all T steps) and, when it takes DDIM's eta, `takes_eta = true`.
-- `get(name)`, `names()`, `diffusion.sample` and `sample.lua --sampler` all come from here,
-- so a new sampler is one module and one `register` call.
-- @module minisd.sched

local M = {}

local registry, order = {}, {}

--- Adds a scheduler class (or replaces the one of the same name).
-- @param cls a table with `name` (a lower-case string), `new(opts)` and `default_steps`
-- @return cls
function M.register(cls)
  if type(cls) ~= "table" or type(cls.name) ~= "string" or type(cls.new) ~= "function" then
    error("sched.register: expected a scheduler class with a name and new()", 2)
  end
  local name = cls.name:lower()
  if not registry[name] then
    order[#order + 1] = name
  end
  registry[name] = cls
  M[name] = cls
  return cls
end

--- The registered names, in registration order.
-- @return list of strings
function M.names()
  local out = {}
  for i, name in ipairs(order) do
    out[i] = name
  end
  return out
end

--- The scheduler class called `name`.
-- @param name one of names()
-- @return the class (call `.new{...}` on it)
function M.get(name)
  local cls = type(name) == "string" and registry[name:lower()] or nil
  if not cls then
    error(string.format("sched.get: unknown scheduler '%s' (allowed: %s)", tostring(name),
      table.concat(order, ", ")), 2)
  end
  return cls
end

M.register(require("minisd.sched.ddim"))
M.register(require("minisd.sched.ddpm"))
M.register(require("minisd.sched.dpmpp_2m"))
M.register(require("minisd.sched.euler_a"))

return M
