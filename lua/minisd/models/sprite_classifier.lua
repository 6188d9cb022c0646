--- SpriteClassifier: a small CNN that tells the five context labels (and "other": the
-- null-context sprites) of 16x16 sprites apart. `minisd.quality` uses it to measure
-- generated sprites: its predictions give the context accuracy, its penultimate features
-- the Frechet distance. Input: RGB (N, 3, H, W) in [-1, 1] (RGBA pictures are composited
-- over `config.background` first: see `minisd.classifier.prepare`).
--
-- features = [Conv3x3, BatchNorm2d, GELU] x 2, MaxPool2d(2), [Conv3x3, BatchNorm2d, GELU] x 2,
-- MaxPool2d(2), Flatten, Linear(w2 * H/4 * W/4, feature_dim), GELU; head = Linear(feature_dim,
-- n_classes).
-- @module minisd.models.sprite_classifier

local nn = require("minisd.nn")
local util = require("minisd.util")

local M = {}

local SpriteClassifier = nn.Module:extend("SpriteClassifier")
M.SpriteClassifier = SpriteClassifier

local config_keys = {
  in_channels = true, height = true, widths = true, feature_dim = true, class_names = true,
  label_names = true, background = true,
}

-- Appends [Conv3x3, BatchNorm2d, GELU] to a list of layers.
local function conv_block(layers, cin, cout)
  layers[#layers + 1] = nn.Conv2d(cin, cout, 3, 1, 1)
  layers[#layers + 1] = nn.BatchNorm2d(cout)
  layers[#layers + 1] = nn.GELU()
end

--- SpriteClassifier{in_channels=3, height=16, widths={32, 64}, feature_dim=32, class_names=,
-- label_names=, background={1, 1, 1}}. `class_names` lists the classes the head predicts (the
-- label names, then "other"); `label_names` are the context labels of the diffusion models
-- it measures. The config is kept in `model.config` and saved with the model.
function SpriteClassifier:init(opts)
  opts = util.check_options("SpriteClassifier", opts, config_keys, 3)
  local label_names = opts.label_names or { "hero", "non-hero", "food", "spell", "side-facing" }
  local class_names = opts.class_names
  if class_names == nil then
    class_names = {}
    for i, name in ipairs(label_names) do
      class_names[i] = name
    end
    class_names[#class_names + 1] = "other"
  end
  local cfg = {
    in_channels = opts.in_channels or 3, height = opts.height or 16,
    widths = opts.widths or { 32, 64 }, feature_dim = opts.feature_dim or 32,
    class_names = class_names, label_names = label_names,
    background = opts.background or { 1, 1, 1 },
  }
  if cfg.height % 4 ~= 0 then
    error("SpriteClassifier: height must be a multiple of 4, got " .. tostring(cfg.height), 3)
  end
  self.config = cfg
  local w1, w2 = cfg.widths[1], cfg.widths[2]
  local side = cfg.height / 4
  local layers = {}
  conv_block(layers, cfg.in_channels, w1)
  conv_block(layers, w1, w1)
  layers[#layers + 1] = nn.MaxPool2d(2)
  conv_block(layers, w1, w2)
  conv_block(layers, w2, w2)
  layers[#layers + 1] = nn.MaxPool2d(2)
  layers[#layers + 1] = nn.Flatten()
  layers[#layers + 1] = nn.Linear(w2 * side * side, cfg.feature_dim)
  layers[#layers + 1] = nn.GELU()
  self:add_module("features", nn.Sequential(layers))
  self:add_module("head", nn.Linear(cfg.feature_dim, #class_names))
end

--- The penultimate features.
-- @param x tensor (N, in_channels, height, height) in [-1, 1]
-- @return tensor (N, feature_dim)
function SpriteClassifier:embed(x)
  local s = x:shape()
  local c = self.config
  if #s ~= 4 or s[2] ~= c.in_channels or s[3] ~= c.height or s[4] ~= c.height then
    error(string.format("SpriteClassifier: input %s, expected (N, %d, %d, %d)", tostring(x),
      c.in_channels, c.height, c.height), 3)
  end
  return self.features(x)
end

--- The class logits.
-- @param x tensor (N, in_channels, height, height) in [-1, 1]
-- @return tensor (N, #class_names)
function SpriteClassifier:forward(x)
  return self.head(self:embed(x))
end

--- Saves the weights with "minisd.arch" = "SpriteClassifier", "minisd.config" (JSON) and,
-- when given, "minisd.training" (JSON: the training and held-out summary).
-- @param path file name (written atomically)
-- @param extra optional {training = table, dtype = "F32" (default), "F16" or "BF16"}
-- @return true, or nil and a message
function SpriteClassifier:save(path, extra)
  local json = require("minisd.json")
  local meta = { ["minisd.arch"] = "SpriteClassifier", ["minisd.format"] = "1",
    ["minisd.config"] = json.encode(self.config) }
  if extra and extra.training then
    meta["minisd.training"] = json.encode(extra.training)
  end
  return nn.Module.save(self, path, meta, { dtype = extra and extra.dtype })
end

return M
