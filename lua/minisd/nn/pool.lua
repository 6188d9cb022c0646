--- minisd.nn layers: pooling (MaxPool2d, AvgPool2d), as torch.nn
-- @module minisd.nn.pool

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local REQUIRED, parse_args, check_int =
  args.REQUIRED, args.parse_args, args.check_int

local M = {}

local function pool_init(L, self, ...)
  local a = parse_args(L, { "kernel_size", "stride", "padding" },
    { kernel_size = REQUIRED, padding = 0 }, nil, ...)
  self.kernel_size = check_int(L, "kernel_size", a.kernel_size, 1)
  self.stride = check_int(L, "stride", a.stride == nil and a.kernel_size or a.stride, 1)
  if a.padding ~= 0 then
    error(L .. ": only padding=0 is supported, got " .. tostring(a.padding), 4)
  end
end

--- Max pooling: `MaxPool2d(kernel_size, stride=kernel_size)`.
local MaxPool2d = Module:extend("MaxPool2d")
M.MaxPool2d = MaxPool2d

function MaxPool2d:init(...)
  pool_init("MaxPool2d", self, ...)
end

function MaxPool2d:forward(x)
  return minisd.max_pool2d(x, self.kernel_size, self.stride)
end

function MaxPool2d:extra_repr()
  return string.format("kernel_size=%d, stride=%d, padding=0, dilation=1, ceil_mode=False",
    self.kernel_size, self.stride)
end

--- Average pooling: `AvgPool2d(kernel_size, stride=kernel_size)`.
local AvgPool2d = Module:extend("AvgPool2d")
M.AvgPool2d = AvgPool2d

function AvgPool2d:init(...)
  pool_init("AvgPool2d", self, ...)
end

function AvgPool2d:forward(x)
  return minisd.avg_pool2d(x, self.kernel_size, self.stride)
end

function AvgPool2d:extra_repr()
  return string.format("kernel_size=%d, stride=%d, padding=0", self.kernel_size, self.stride)
end

--- The identity: returns its input.

return M
