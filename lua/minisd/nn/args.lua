--- minisd internal (minisd.nn): argument handling shared by the layers: positional
-- arguments or one options table, PyTorch's names and defaults, checked with messages that
-- name the layer; PyTorch's default initialisation.
-- @module minisd.nn.args

local minisd = require("minisd")

local M = {}

local sorted_keys = require("minisd.util").sorted_keys


local REQUIRED = {}

-- A trailing plain table with no array part holds options.
local function is_opts(v)
  return type(v) == "table" and getmetatable(v) == nil and v[1] == nil
end

-- Reads positional arguments named `names` (then a trailing options table
-- that may give any of them, or one of `extra`) into a table, filling
-- `defaults`; REQUIRED marks a mandatory argument.
local function parse_args(layer, names, defaults, extra, ...)
  local n = select("#", ...)
  local args = { ... }
  local opts = {}
  if n > 0 and is_opts(args[n]) then
    opts, n = args[n], n - 1
  end
  if n > #names then
    error(string.format("%s: at most %d positional arguments (%s), got %d", layer, #names,
      table.concat(names, ", "), n), 4)
  end
  local allowed = {}
  for _, k in ipairs(names) do
    allowed[k] = true
  end
  for _, k in ipairs(extra or {}) do
    allowed[k] = true
  end
  for k in pairs(opts) do
    if not allowed[k] then
      local list = sorted_keys(allowed)
      error(string.format("%s: unknown option '%s' (allowed: %s)", layer, tostring(k),
        table.concat(list, ", ")), 4)
    end
  end
  local a = {}
  for i, k in ipairs(names) do
    local v = args[i]
    if i <= n and v ~= nil and opts[k] ~= nil then
      error(string.format("%s: '%s' given both as argument %d and as an option", layer, k, i), 4)
    end
    if v == nil or i > n then
      v = opts[k]
    end
    if v == nil then
      v = defaults[k]
    end
    if v == REQUIRED then
      error(string.format("%s: missing argument '%s'", layer, k), 4)
    end
    a[k] = v
  end
  for _, k in ipairs(extra or {}) do
    a[k] = opts[k]
  end
  return a
end

local function check_int(layer, what, v, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(string.format("%s: %s must be an integer >= %d, got %s", layer, what, min,
      tostring(v)), 4)
  end
  return v
end

local function check_bool(layer, what, v)
  if type(v) ~= "boolean" then
    error(string.format("%s: %s must be a boolean, got %s", layer, what, tostring(v)), 4)
  end
  return v
end

local function check_num(layer, what, v, min)
  if type(v) ~= "number" or v ~= v or v < min then
    error(string.format("%s: %s must be a number >= %g, got %s", layer, what, min,
      tostring(v)), 4)
  end
  return v
end

-- A kernel size: n or {kh, kw}.
local function check_kernel(layer, v)
  if type(v) == "table" then
    if #v ~= 2 then
      error(layer .. ": kernel_size must be a number or {kh, kw}", 4)
    end
    return check_int(layer, "kernel_size", v[1], 1), check_int(layer, "kernel_size", v[2], 1)
  end
  local k = check_int(layer, "kernel_size", v, 1)
  return k, k
end

-- U(-bound, bound), drawn with minisd.rand from gen (the default generator
-- when nil), as torch.nn.init.uniform_.
local function uniform(shape, bound, gen)
  if not minisd.rand then
    error("minisd.nn: minisd.rand is not available in this build", 3)
  end
  return minisd.rand(shape, gen) * (2 * bound) + (-bound)
end

local function pybool(b)
  return b and "True" or "False"
end

local function fmt_num(v)
  return string.format("%g", v)
end

M.REQUIRED = REQUIRED
M.parse_args = parse_args
M.check_int = check_int
M.check_bool = check_bool
M.check_num = check_num
M.check_kernel = check_kernel
M.uniform = uniform
M.pybool = pybool
M.fmt_num = fmt_num

return M
