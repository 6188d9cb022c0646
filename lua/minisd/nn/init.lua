--- minisd.nn: a small Module system in the spirit of torch.nn.
-- Modules hold parameters, buffers and child modules in registration order;
-- parameter and buffer names are PyTorch's state_dict names for the same
-- structure ("0.weight", "conv1.1.running_mean"), so state dicts and
-- safetensors files move between the two.
--
--     local nn = require("minisd.nn")
--     local Net = nn.Module:extend("Net")
--     function Net:init(n)
--       self.body = nn.Sequential(nn.Linear(4, n), nn.GELU(), nn.Linear(n, 2))
--     end
--     function Net:forward(x) return self.body(x) end
--     local net = Net(16)
--
-- Assigning a module to a field registers it as a child (as in PyTorch);
-- tensors become parameters or buffers through `register_parameter` /
-- `register_buffer`, and are then readable as fields (`conv.weight`).
-- @module minisd.nn
--
-- The Module class is minisd/nn/module.lua; the layers are by family, as the C ops are:
-- conv.lua, linear.lua, norm.lua, act.lua, pool.lua, container.lua.

local M = {}

local module = require("minisd.nn.module")
M.Module = module.Module
M.is_module = module.is_module

for _, family in ipairs({ "conv", "linear", "norm", "act", "pool", "container" }) do
  for name, cls in pairs(require("minisd.nn." .. family)) do
    M[name] = cls
  end
end

return M
