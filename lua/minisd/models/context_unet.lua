--- The seed's ContextUnet (DeepLearning.AI, "How Diffusion Models Work") for
-- 16x16 sprites, with PyTorch's state_dict names. One change: the residual
-- shortcut of init_conv is a learned 1x1 conv registered once
-- (`init_conv.shortcut`), where the seed built a new random conv on every call.
-- @module minisd.models.context_unet

local minisd = require("minisd")
local nn = require("minisd.nn")

local M = {}

--- ResidualConvBlock(in, out, is_res): two [Conv3x3, BatchNorm2d, GELU]; with
-- is_res the output is (x or shortcut(x)) + x2, divided by 1.414.
local ResidualConvBlock = nn.Module:extend("ResidualConvBlock")
M.ResidualConvBlock = ResidualConvBlock

function ResidualConvBlock:init(in_channels, out_channels, is_res)
  self.is_res = is_res and true or false
  self.same_channels = in_channels == out_channels
  self:add_module("conv1", nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1),
    nn.BatchNorm2d(out_channels), nn.GELU()))
  self:add_module("conv2", nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1),
    nn.BatchNorm2d(out_channels), nn.GELU()))
  if self.is_res and not self.same_channels then
    self:add_module("shortcut", nn.Conv2d(in_channels, out_channels, 1, 1, 0))
  end
end

function ResidualConvBlock:forward(x)
  local x2 = self.conv2(self.conv1(x))
  if not self.is_res then
    return x2
  end
  local skip = self.same_channels and x or self.shortcut(x)
  return (skip + x2) / 1.414
end

--- UnetDown(in, out) = [RCB(in, out), RCB(out, out), MaxPool2d(2)]
local UnetDown = nn.Module:extend("UnetDown")
M.UnetDown = UnetDown

function UnetDown:init(in_channels, out_channels)
  self:add_module("model", nn.Sequential(ResidualConvBlock(in_channels, out_channels),
    ResidualConvBlock(out_channels, out_channels), nn.MaxPool2d(2)))
end

function UnetDown:forward(x)
  return self.model(x)
end

--- UnetUp(in, out) = [ConvTranspose2d(in, out, 2, 2), RCB, RCB] applied to cat(x, skip)
local UnetUp = nn.Module:extend("UnetUp")
M.UnetUp = UnetUp

function UnetUp:init(in_channels, out_channels)
  self:add_module("model", nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, 2),
    ResidualConvBlock(out_channels, out_channels), ResidualConvBlock(out_channels, out_channels)))
end

function UnetUp:forward(x, skip)
  return self.model(minisd.cat({ x, skip }, 2))
end

--- EmbedFC(in, emb) = [Linear(in, emb), GELU, Linear(emb, emb)] on x viewed as (-1, in)
local EmbedFC = nn.Module:extend("EmbedFC")
M.EmbedFC = EmbedFC

function EmbedFC:init(input_dim, emb_dim)
  self.input_dim = input_dim
  self:add_module("model", nn.Sequential(nn.Linear(input_dim, emb_dim), nn.GELU(),
    nn.Linear(emb_dim, emb_dim)))
end

function EmbedFC:forward(x)
  return self.model(x:reshape(-1, self.input_dim))
end

local ContextUnet = nn.Module:extend("ContextUnet")
M.ContextUnet = ContextUnet

local config_keys = {
  in_channels = true, n_feat = true, n_cfeat = true, height = true, label_names = true,
  background = true, schedule = true, signal_leak = true, guidance = true,
}

M.default_label_names = { "hero", "non-hero", "food", "spell", "side-facing" }

--- ContextUnet{in_channels=3, n_feat=64, n_cfeat=5, height=16, label_names=, background=,
-- schedule=, signal_leak=, guidance=}. The config (without the generator) is kept in
-- `model.config` and saved with the model. signal_leak: the training sprites' per-channel
-- means, which sampling starts from (diffusion.signal_leak_stats; train.lua stores them).
-- guidance: the model's measured best guidance scale per sampler ({ddpm = 2, ...}; see
-- diffusion.recommended_guidance_for and scripts/tune_guidance.lua).
function ContextUnet:init(opts)
  opts = require("minisd.util").check_options("ContextUnet", opts, config_keys, 3)
  local c = opts.in_channels or 3
  local n = opts.n_feat or 64
  local k = opts.n_cfeat or 5
  local h = opts.height or 16
  -- sizes for sprites: a wider net or a larger picture would take gigabytes before any use
  local limits = { { "n_feat", n, 1024 }, { "height", h, 256 }, { "n_cfeat", k, 256 },
    { "in_channels", c, 64 } }
  for _, l in ipairs(limits) do
    if type(l[2]) ~= "number" or l[2] < 1 or l[2] > l[3] or l[2] ~= math.floor(l[2]) then
      error(string.format("ContextUnet: %s must be an integer in 1..%d, got %s", l[1], l[3],
        tostring(l[2])), 3)
    end
  end
  if n % 8 ~= 0 then
    error("ContextUnet: n_feat must be a multiple of 8 (GroupNorm(8, n_feat)), got " .. n, 3)
  end
  if h % 4 ~= 0 then
    error("ContextUnet: height must be a multiple of 4, got " .. h, 3)
  end
  local names = opts.label_names
  if names == nil then
    names = {}
    for i = 1, k do
      names[i] = M.default_label_names[i] or ("label" .. i)
    end
  end
  if #names ~= k then
    error(string.format("ContextUnet: %d label_names for n_cfeat = %d", #names, k), 3)
  end
  if opts.signal_leak ~= nil then
    local ok, err = require("minisd.diffusion").check_signal_leak(opts.signal_leak, c)
    if not ok then
      error("ContextUnet: " .. err, 3)
    end
  end
  if opts.guidance ~= nil then
    local ok, err = require("minisd.diffusion").check_guidance(opts.guidance)
    if not ok then
      error("ContextUnet: " .. err, 3)
    end
  end
  local cfg = {
    in_channels = c, n_feat = n, n_cfeat = k, height = h, label_names = names,
    signal_leak = opts.signal_leak, guidance = opts.guidance,
    background = opts.background, schedule = opts.schedule or {
      num_train_timesteps = 500, beta_start = 1e-4, beta_end = 0.02, beta_schedule = "linear",
    },
  }
  self.config = cfg
  self.n_feat, self.n_cfeat = n, k
  self:add_module("init_conv", ResidualConvBlock(c, n, true))
  self:add_module("down1", UnetDown(n, n))
  self:add_module("down2", UnetDown(n, 2 * n))
  -- the seed pools with AvgPool2d(4), which is global (a 1x1 hidden vector)
  -- only at height 16; a (height / 4) kernel keeps it global for any height
  self:add_module("to_vec", nn.Sequential(nn.AvgPool2d(h / 4), nn.GELU()))
  self:add_module("timeembed1", EmbedFC(1, 2 * n))
  self:add_module("timeembed2", EmbedFC(1, n))
  self:add_module("contextembed1", EmbedFC(k, 2 * n))
  self:add_module("contextembed2", EmbedFC(k, n))
  self:add_module("up0", nn.Sequential(nn.ConvTranspose2d(2 * n, 2 * n, h / 4, h / 4),
    nn.GroupNorm(8, 2 * n), nn.ReLU()))
  self:add_module("up1", UnetUp(4 * n, n))
  self:add_module("up2", UnetUp(2 * n, n))
  self:add_module("out", nn.Sequential(nn.Conv2d(2 * n, n, 3, 1, 1), nn.GroupNorm(8, n), nn.ReLU(),
    nn.Conv2d(n, c, 3, 1, 1)))
end

--- Saves the weights (safetensors, PyTorch names) with everything needed to
-- rebuild and use the model in `__metadata__`: "minisd.arch" ("ContextUnet"),
-- "minisd.config" (JSON: in_channels, n_feat, n_cfeat, height, label_names,
-- background, schedule, signal_leak and guidance when it has them) and, when given,
-- "minisd.training" (JSON summary).
-- @param path file name
-- @param extra optional {training = table, dtype = "F32" (default), "F16" or "BF16" (how
--   the weights are stored; see nn.Module.save), [string] = string}
-- @return true, or nil and a message
function ContextUnet:save(path, extra)
  local json = require("minisd.json")
  local meta = { ["minisd.arch"] = "ContextUnet", ["minisd.format"] = "1",
    ["minisd.config"] = json.encode(self.config) }
  if extra ~= nil and type(extra) ~= "table" then
    error("ContextUnet:save: options must be a table, got " .. type(extra), 2)
  end
  for k, v in pairs(extra or {}) do
    if k == "training" then
      meta["minisd.training"] = type(v) == "string" and v or json.encode(v)
    elseif k ~= "dtype" then
      meta[k] = v
    end
  end
  return nn.Module.save(self, path, meta, { dtype = extra and extra.dtype })
end

--- The noise prediction eps(x, t, c).
-- @param x tensor (B, C, H, W)
-- @param t tensor (B, 1, 1, 1) (or (B, 1)) holding t / T
-- @param c tensor (B, n_cfeat) of context rows, or nil for the null context
-- @return tensor (B, C, H, W)
function ContextUnet:forward(x, t, c)
  local n = self.n_feat
  local xs = x:shape()
  if #xs ~= 4 or xs[2] ~= self.config.in_channels or xs[3] ~= self.config.height
    or xs[4] ~= self.config.height then
    error(string.format("ContextUnet: input %s, expected (B, %d, %d, %d)", tostring(x),
      self.config.in_channels, self.config.height, self.config.height), 2)
  end
  x = self.init_conv(x)
  local down1 = self.down1(x)
  local down2 = self.down2(down1)
  local hiddenvec = self.to_vec(down2)
  if c == nil then
    c = minisd.zeros({ xs[1], self.n_cfeat })
  end
  local cemb1 = self.contextembed1(c):reshape(-1, 2 * n, 1, 1)
  local temb1 = self.timeembed1(t):reshape(-1, 2 * n, 1, 1)
  local cemb2 = self.contextembed2(c):reshape(-1, n, 1, 1)
  local temb2 = self.timeembed2(t):reshape(-1, n, 1, 1)
  local up1 = self.up0(hiddenvec)
  local up2 = self.up1(cemb1 * up1 + temb1, down2)
  local up3 = self.up2(cemb2 * up2 + temb2, down1)
  return self.out(minisd.cat({ up3, x }, 2))
end

return M
