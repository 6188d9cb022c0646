--- minisd.nn layers: convolutions (Conv2d, ConvTranspose2d), as torch.nn
-- @module minisd.nn.conv

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local REQUIRED, parse_args, check_int, check_bool, check_kernel, uniform =
  args.REQUIRED, args.parse_args, args.check_int, args.check_bool, args.check_kernel, args.uniform

local M = {}

--- 2-D convolution: `Conv2d(in_channels, out_channels, kernel_size,
-- stride=1, padding=0, bias=true [, {gen=...}])`. Weight
-- (out, in, kh, kw) and bias (out) start U(-1/sqrt(fan_in), 1/sqrt(fan_in))
-- with fan_in = in*kh*kw, as PyTorch's default init.
local Conv2d = Module:extend("Conv2d")
M.Conv2d = Conv2d

function Conv2d:init(...)
  local a = parse_args("Conv2d", { "in_channels", "out_channels", "kernel_size", "stride",
    "padding", "bias" }, { in_channels = REQUIRED, out_channels = REQUIRED,
    kernel_size = REQUIRED, stride = 1, padding = 0, bias = true }, { "gen" }, ...)
  local cin = check_int("Conv2d", "in_channels", a.in_channels, 1)
  local cout = check_int("Conv2d", "out_channels", a.out_channels, 1)
  local kh, kw = check_kernel("Conv2d", a.kernel_size)
  self.in_channels, self.out_channels, self.kernel_size = cin, cout, { kh, kw }
  self.stride = check_int("Conv2d", "stride", a.stride, 1)
  self.padding = check_int("Conv2d", "padding", a.padding, 0)
  check_bool("Conv2d", "bias", a.bias)
  local bound = 1 / math.sqrt(cin * kh * kw)
  self:register_parameter("weight", uniform({ cout, cin, kh, kw }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ cout }, bound, a.gen))
  end
end

--- @param x tensor (N, in, H, W)
-- @return tensor (N, out, H', W')
function Conv2d:forward(x)
  return minisd.conv2d(x, self.weight, self.bias, self.stride, self.padding)
end

local function conv_repr(self)
  local k = self.kernel_size
  local s = string.format("%d, %d, kernel_size=(%d, %d), stride=(%d, %d)", self.in_channels,
    self.out_channels, k[1], k[2], self.stride, self.stride)
  if self.padding ~= 0 then
    s = s .. string.format(", padding=(%d, %d)", self.padding, self.padding)
  end
  if self.bias == nil then
    s = s .. ", bias=False"
  end
  return s
end
Conv2d.extra_repr = conv_repr

--- Transposed 2-D convolution: `ConvTranspose2d(in_channels, out_channels,
-- kernel_size, stride=1, padding=0, bias=true [, {gen=...}])`. Weight
-- (in, out, kh, kw); PyTorch's init with fan_in = out*kh*kw (weight dim 2).
local ConvTranspose2d = Module:extend("ConvTranspose2d")
M.ConvTranspose2d = ConvTranspose2d

function ConvTranspose2d:init(...)
  local L = "ConvTranspose2d"
  local a = parse_args(L, { "in_channels", "out_channels", "kernel_size", "stride", "padding",
    "bias" }, { in_channels = REQUIRED, out_channels = REQUIRED, kernel_size = REQUIRED,
    stride = 1, padding = 0, bias = true }, { "gen" }, ...)
  local cin = check_int(L, "in_channels", a.in_channels, 1)
  local cout = check_int(L, "out_channels", a.out_channels, 1)
  local kh, kw = check_kernel(L, a.kernel_size)
  self.in_channels, self.out_channels, self.kernel_size = cin, cout, { kh, kw }
  self.stride = check_int(L, "stride", a.stride, 1)
  self.padding = check_int(L, "padding", a.padding, 0)
  check_bool(L, "bias", a.bias)
  local bound = 1 / math.sqrt(cout * kh * kw)
  self:register_parameter("weight", uniform({ cin, cout, kh, kw }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ cout }, bound, a.gen))
  end
end

--- @param x tensor (N, in, H, W)
-- @return tensor (N, out, (H-1)s-2p+kh, (W-1)s-2p+kw)
function ConvTranspose2d:forward(x)
  return minisd.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)
end
ConvTranspose2d.extra_repr = conv_repr

--- Fully connected layer: `Linear(in_features, out_features, bias=true
-- [, {gen=...}])`; weight (out, in), PyTorch's default init.

return M
