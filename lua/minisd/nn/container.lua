--- minisd.nn layers: Identity, Flatten, Sequential, ModuleList, as torch.nn
-- @module minisd.nn.container

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local parse_args =
  args.parse_args
local module = require("minisd.nn.module")
local is_module, shape_str = module.is_module, module.shape_str
local Conv2d = require("minisd.nn.conv").Conv2d
local BatchNorm2d = require("minisd.nn.norm").BatchNorm2d
local GELU = require("minisd.nn.act").GELU

local M = {}

local Identity = Module:extend("Identity")
M.Identity = Identity

function Identity:init() end

function Identity:forward(x)
  return x
end

--- Flattens dims start_dim..end_dim into one: `Flatten(start_dim=2,
-- end_dim=-1)`; dims are 1-based (PyTorch's default start_dim=1 is 2 here),
-- negative ones count from the end.
local Flatten = Module:extend("Flatten")
M.Flatten = Flatten

function Flatten:init(...)
  local a = parse_args("Flatten", { "start_dim", "end_dim" }, { start_dim = 2, end_dim = -1 },
    nil, ...)
  self.start_dim, self.end_dim = a.start_dim, a.end_dim
end

function Flatten:forward(x)
  local shape = x:shape()
  local nd = #shape
  local s = self.start_dim < 0 and nd + 1 + self.start_dim or self.start_dim
  local e = self.end_dim < 0 and nd + 1 + self.end_dim or self.end_dim
  if s < 1 or e > nd or s > e then
    error(string.format("Flatten: dims %d..%d out of range for shape %s", self.start_dim,
      self.end_dim, shape_str(x)), 2)
  end
  local out, prod = {}, 1
  for d = 1, nd do
    if d < s or d > e then
      out[#out + 1] = shape[d]
    else
      prod = prod * shape[d]
      if d == e then
        out[#out + 1] = prod
      end
    end
  end
  return x:reshape(out)
end

function Flatten:extra_repr()
  return string.format("start_dim=%d, end_dim=%d", self.start_dim, self.end_dim)
end

--- A chain of modules: `Sequential(m1, m2, ...)` or `Sequential{m1, m2}`.
-- Children are named "0", "1", ... as in PyTorch; `seq[i]` and `seq:get(i)`
-- give the i-th (1-based) module.
local Sequential = Module:extend("Sequential")
M.Sequential = Sequential

function Sequential:init(...)
  local n, mods = select("#", ...), { ... }
  if n == 1 and type(mods[1]) == "table" and not is_module(mods[1]) then
    mods = mods[1]
    n = #mods
  end
  for i = 1, n do
    if not is_module(mods[i]) then
      error(string.format("Sequential: argument %d is a %s, expected a Module", i,
        type(mods[i])), 3)
    end
    self:append(mods[i])
  end
end

--- Appends a module (named by its 0-based position).
-- @param m Module
-- @return self
function Sequential:append(m)
  self:add_module(tostring(#rawget(self, "_modules").keys), m)
  return self
end

--- The i-th module (1-based).
-- @param i index
-- @return Module or nil
function Sequential:get(i)
  local mods = rawget(self, "_modules")
  local name = mods.keys[i]
  return name and mods.map[name]
end

--- Number of modules.
-- @return integer
function Sequential:len()
  return #rawget(self, "_modules").keys
end
Sequential.__len = Sequential.len

--- Runs the modules in order.
-- @param x input
-- @return the last module's output
function Sequential:forward(x)
  local mods = rawget(self, "_modules")
  local keys, map = mods.keys, mods.map
  local fuse = not minisd.is_grad_enabled()
  local i = 1
  while i <= #keys do
    local m = map[keys[i]]
    local bn = fuse and map[keys[i + 1]]
    -- Conv2d, BatchNorm2d in eval [, GELU] under no_grad: one fused pass, same bits
    if bn and getmetatable(m) == Conv2d and getmetatable(bn) == BatchNorm2d
      and not bn.training and bn.track_running_stats then
      local next_m = map[keys[i + 2]]
      local gelu = next_m ~= nil and getmetatable(next_m) == GELU
      x = minisd.conv2d_bn_act(x, m.weight, m.bias, m.stride, m.padding, bn.weight, bn.bias,
        bn.running_mean, bn.running_var, bn.eps, gelu)
      i = i + (gelu and 3 or 2)
    elseif getmetatable(m) == BatchNorm2d and map[keys[i + 1]] ~= nil
      and getmetatable(map[keys[i + 1]]) == GELU then
      -- BatchNorm2d, GELU (training): one op, the same bits, no BatchNorm output kept
      x = m:forward(x, true)
      i = i + 2
    else
      x = m(x)
      i = i + 1
    end
  end
  return x
end

--- A list of modules registered as children "0", "1", ... (no forward).
local ModuleList = Module:extend("ModuleList")
M.ModuleList = ModuleList

function ModuleList:init(list)
  for i, m in ipairs(list or {}) do
    if not is_module(m) then
      error(string.format("ModuleList: entry %d is a %s, expected a Module", i, type(m)), 3)
    end
    self:append(m)
  end
end

ModuleList.append = Sequential.append
ModuleList.get = Sequential.get
ModuleList.len = Sequential.len
ModuleList.__len = Sequential.len

return M
