--- minisd.nn layers: Linear, as torch.nn
-- @module minisd.nn.linear

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local REQUIRED, parse_args, check_int, check_bool, uniform, pybool =
  args.REQUIRED, args.parse_args, args.check_int, args.check_bool, args.uniform, args.pybool

local M = {}

local Linear = Module:extend("Linear")
M.Linear = Linear

function Linear:init(...)
  local a = parse_args("Linear", { "in_features", "out_features", "bias" },
    { in_features = REQUIRED, out_features = REQUIRED, bias = true }, { "gen" }, ...)
  local fin = check_int("Linear", "in_features", a.in_features, 1)
  local fout = check_int("Linear", "out_features", a.out_features, 1)
  check_bool("Linear", "bias", a.bias)
  self.in_features, self.out_features = fin, fout
  local bound = 1 / math.sqrt(fin)
  self:register_parameter("weight", uniform({ fout, fin }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ fout }, bound, a.gen))
  end
end

--- @param x tensor (..., in)
-- @return tensor (..., out)
function Linear:forward(x)
  return minisd.linear(x, self.weight, self.bias)
end

function Linear:extra_repr()
  return string.format("in_features=%d, out_features=%d, bias=%s", self.in_features,
    self.out_features, pybool(self.bias ~= nil))
end

--- Batch normalisation over (N, H, W): `BatchNorm2d(num_features,
-- eps=1e-5, momentum=0.1, affine=true, track_running_stats=true)`.
-- Training uses batch statistics and updates running_mean / running_var
-- and num_batches_tracked (a 0-dim buffer saved as I64); eval uses the
-- running statistics.

return M
