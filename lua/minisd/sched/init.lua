--- The samplers: `minisd.sched.ddpm`, `minisd.sched.ddim`, and `get(name)`.
-- @module minisd.sched

local M = {
  ddpm = require("minisd.sched.ddpm"),
  ddim = require("minisd.sched.ddim"),
}

local NAMES = { "ddim", "ddpm" }

--- The scheduler class called `name`.
-- @param name "ddpm" or "ddim"
-- @return the class (call `.new{...}` on it)
function M.get(name)
  local cls = type(name) == "string" and M[name:lower()] or nil
  if type(cls) ~= "table" then
    error(string.format("sched.get: unknown scheduler '%s' (allowed: %s)", tostring(name),
      table.concat(NAMES, ", ")), 2)
  end
  return cls
end

return M
