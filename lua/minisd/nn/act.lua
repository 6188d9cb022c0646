--- minisd.nn layers: activations (GELU, ReLU), as torch.nn
-- @module minisd.nn.act

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local parse_args =
  args.parse_args

local M = {}

local GELU = Module:extend("GELU")
M.GELU = GELU

function GELU:init(...)
  local a = parse_args("GELU", { "approximate" }, { approximate = "none" }, nil, ...)
  if a.approximate ~= "none" then
    error(string.format("GELU: approximate='%s' is not supported (allowed: none)",
      tostring(a.approximate)), 3)
  end
end

function GELU:forward(x)
  return minisd.gelu(x)
end

function GELU:extra_repr()
  return "approximate='none'"
end

--- ReLU: `ReLU()`. (`inplace` is accepted for PyTorch compatibility; the
-- result is always a new tensor.)
local ReLU = Module:extend("ReLU")
M.ReLU = ReLU

function ReLU:init(...)
  parse_args("ReLU", { "inplace" }, { inplace = false }, nil, ...)
end

function ReLU:forward(x)
  return minisd.relu(x)
end

return M
