--- minisd.nn layers: BatchNorm2d and GroupNorm, as torch.nn
-- @module minisd.nn.norm

-- luacheck: ignore 212/self
local minisd = require("minisd")
local Module = require("minisd.nn.module").Module
local args = require("minisd.nn.args")
local REQUIRED, parse_args, check_int = args.REQUIRED, args.parse_args, args.check_int
local check_bool, check_num = args.check_bool, args.check_num
local pybool, fmt_num = args.pybool, args.fmt_num

local M = {}

local BatchNorm2d = Module:extend("BatchNorm2d")
M.BatchNorm2d = BatchNorm2d

function BatchNorm2d:init(...)
  local L = "BatchNorm2d"
  local a = parse_args(L, { "num_features", "eps", "momentum", "affine", "track_running_stats" },
    { num_features = REQUIRED, eps = 1e-5, momentum = 0.1, affine = true,
      track_running_stats = true }, nil, ...)
  local c = check_int(L, "num_features", a.num_features, 1)
  self.num_features = c
  self.eps = check_num(L, "eps", a.eps, 0)
  self.momentum = check_num(L, "momentum", a.momentum, 0)
  self.affine = check_bool(L, "affine", a.affine)
  self.track_running_stats = check_bool(L, "track_running_stats", a.track_running_stats)
  if self.affine then
    self:register_parameter("weight", minisd.ones({ c }))
    self:register_parameter("bias", minisd.zeros({ c }))
  end
  if self.track_running_stats then
    self:register_buffer("running_mean", minisd.zeros({ c }))
    self:register_buffer("running_var", minisd.ones({ c }))
    self:register_buffer("num_batches_tracked", minisd.zeros({}), { dtype = "I64" })
  end
end

--- @param x tensor (N, C, H, W)
-- @param gelu (optional) apply GELU to the result in the same op (what
--   Sequential does for a BatchNorm2d followed by a GELU)
-- @return tensor (N, C, H, W)
-- With `self.sync` set to a reducer (`minisd.dist.sync_batch_norm(model)` sets it),
-- training normalises with the statistics of every rank's batch (SyncBatchNorm).
function BatchNorm2d:forward(x, gelu)
  local track = self.track_running_stats
  if self.training and track then
    local nbt = self.num_batches_tracked
    nbt:fill_(nbt:item() + 1)
  end
  return minisd.batch_norm2d(x, track and self.running_mean or nil,
    track and self.running_var or nil, self.weight, self.bias,
    self.training or not track, self.momentum, self.eps, gelu, self.sync)
end

function BatchNorm2d:extra_repr()
  return string.format("%d, eps=%s, momentum=%s, affine=%s, track_running_stats=%s",
    self.num_features, fmt_num(self.eps), fmt_num(self.momentum), pybool(self.affine),
    pybool(self.track_running_stats))
end

--- Group normalisation: `GroupNorm(num_groups, num_channels, eps=1e-5,
-- affine=true)`; weight 1, bias 0.
local GroupNorm = Module:extend("GroupNorm")
M.GroupNorm = GroupNorm

function GroupNorm:init(...)
  local L = "GroupNorm"
  local a = parse_args(L, { "num_groups", "num_channels", "eps", "affine" },
    { num_groups = REQUIRED, num_channels = REQUIRED, eps = 1e-5, affine = true }, nil, ...)
  local g = check_int(L, "num_groups", a.num_groups, 1)
  local c = check_int(L, "num_channels", a.num_channels, 1)
  if c % g ~= 0 then
    error(string.format("GroupNorm: num_channels %d is not divisible by num_groups %d", c, g), 3)
  end
  self.num_groups, self.num_channels = g, c
  self.eps = check_num(L, "eps", a.eps, 0)
  self.affine = check_bool(L, "affine", a.affine)
  if self.affine then
    self:register_parameter("weight", minisd.ones({ c }))
    self:register_parameter("bias", minisd.zeros({ c }))
  end
end

--- @param x tensor (N, C, ...)
-- @return tensor of the same shape
function GroupNorm:forward(x)
  return minisd.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
end

function GroupNorm:extra_repr()
  return string.format("%d, %d, eps=%s, affine=%s", self.num_groups, self.num_channels,
    fmt_num(self.eps), pybool(self.affine))
end

--- GELU, exact erf form: `GELU()` (approximate="none" only).

return M
