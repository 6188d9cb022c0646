--- Model architectures and model files.
-- @module minisd.models

local M = {}

local unet = require("minisd.models.context_unet")
local sprite_classifier = require("minisd.models.sprite_classifier")

M.context_unet = unet
M.sprite_classifier = sprite_classifier

--- The seed's ContextUnet: `ContextUnet{in_channels=3, n_feat=64, n_cfeat=5, height=16}`.
-- @param opts config (see minisd.models.context_unet)
-- @return model
function M.ContextUnet(opts)
  return unet.ContextUnet(opts)
end

--- The sprite classifier of `minisd.quality` (see minisd.models.sprite_classifier).
-- @param opts config
-- @return model
function M.SpriteClassifier(opts)
  return sprite_classifier.SpriteClassifier(opts)
end

-- ---- the architecture registry -----------------------------------------------------

local registry, order = {}, {}

--- Registers an architecture, so that model files naming it load (`load_model`), and, for
-- a diffusion model, `train.lua --arch NAME` trains it. Fields:
--   name: what a model file's "minisd.arch" says;
--   new(config) -> an untrained model;
--   kind: "diffusion" (called as model(x_t, t / T, c): trainable by train.lua) or
--     "classifier";
--   config_for(dataset, args) (diffusion): the config train.lua builds for a dataset
--     and its options (n_feat, background, context: with it, the signal-leak statistics group
--     the sprites by their labels);
--   check(config, tensors) (optional): nil and a message when a file's config does not
--     match its tensors, checked before the model is built;
--   infer_config(tensors) (optional): the config of a bare state_dict (no minisd
--     metadata) of this architecture, or nil when the tensors are not one.
-- @param arch the table above
function M.register(arch)
  if type(arch) ~= "table" or type(arch.name) ~= "string" or type(arch.new) ~= "function" then
    error("models.register: expected a table with a name and new(config)", 2)
  end
  if arch.kind ~= "diffusion" and arch.kind ~= "classifier" then
    error("models.register: kind must be \"diffusion\" or \"classifier\", got "
      .. tostring(arch.kind), 2)
  end
  if not registry[arch.name] then
    order[#order + 1] = arch.name
  end
  registry[arch.name] = arch
end

--- The registered architecture called name, or an error naming the known ones.
function M.get(name)
  local arch = registry[name]
  if not arch then
    error(string.format("unknown architecture '%s' (known: %s)", tostring(name),
      table.concat(M.names(), ", ")), 2)
  end
  return arch
end

--- The registered names, in registration order; `kind` filters them.
function M.names(kind)
  local out = {}
  for _, name in ipairs(order) do
    if kind == nil or registry[name].kind == kind then
      out[#out + 1] = name
    end
  end
  return out
end

--- Builds an untrained model from an architecture name and its config table.
-- @param config table (as stored in a model file's "minisd.config")
-- @param arch architecture name, default "ContextUnet"
function M.from_config(config, arch)
  return M.get(arch or "ContextUnet").new(config)
end

-- the shape of tensor name, or nil
local function shape_of(tensors, name)
  local t = tensors[name]
  return t and t:shape() or nil
end

M.register({
  name = "ContextUnet", kind = "diffusion", new = M.ContextUnet,
  config_for = function(ds, args)
    return {
      in_channels = ds.channels, n_feat = args.n_feat, n_cfeat = #ds.label_names,
      height = ds.images:shape()[3], label_names = ds.label_names,
      background = ds.channels == 3 and args.background or nil,
      signal_leak = require("minisd.diffusion").signal_leak_stats(ds.images,
        args.context and ds.labels or nil),
    }
  end,
  -- the config against the tensors' shapes before anything is built: a damaged config
  -- (n_feat 8192) would otherwise allocate gigabytes first
  check = function(config, tensors)
    local n, ch, k, h = config.n_feat or 64, config.in_channels or 3, config.n_cfeat or 5,
      config.height or 16
    local want = { { "init_conv.conv1.0.weight", { n, ch, 3, 3 } },
      { "contextembed1.model.0.weight", { 2 * n, k } },
      { "up0.0.weight", { 2 * n, 2 * n, h / 4, h / 4 } } }
    for _, e in ipairs(want) do
      local got = shape_of(tensors, e[1])
      local same = got ~= nil and #got == #e[2]
      for d = 1, #e[2] do
        same = same and got[d] == e[2][d]
      end
      if not same then
        return nil, string.format("its minisd.config (in_channels %s, n_feat %s, n_cfeat %s, "
          .. "height %s) does not match tensor %s (%s)", tostring(ch), tostring(n),
          tostring(k), tostring(h), e[1], got and ("[" .. table.concat(got, ", ") .. "]")
          or "missing")
      end
    end
    return true
  end,
  -- the state of a model with k context features for one with more (train.lua --init with
  -- data that has more labels, e.g. --other-label): the new inputs get zero weights, so a
  -- row that sets only them is the null context at first
  widen_context = function(state, k)
    local minisd = require("minisd")
    local out = {}
    for name, t in pairs(state) do
      out[name] = t
    end
    for _, name in ipairs({ "contextembed1.model.0.weight", "contextembed2.model.0.weight" }) do
      local w = state[name]
      local s = w:shape()
      if s[2] > k then
        error(string.format("widen_context: %s has %d inputs, more than %d", name, s[2], k), 2)
      end
      out[name] = s[2] == k and w or minisd.cat({ w, minisd.zeros({ s[1], k - s[2] }) }, 2)
    end
    return out
  end,
  -- a bare state_dict (e.g. converted from PyTorch): the shapes give the config
  infer_config = function(tensors)
    local w = shape_of(tensors, "init_conv.conv1.0.weight")
    local c = shape_of(tensors, "contextembed1.model.0.weight")
    local up0 = shape_of(tensors, "up0.0.weight")
    if not (w and c and up0) then
      return nil
    end
    return { in_channels = w[2], n_feat = w[1], n_cfeat = c[2], height = 4 * up0[3] }
  end,
})

M.register({ name = "SpriteClassifier", kind = "classifier", new = M.SpriteClassifier })

--- The shipped sprite model: `models/` + this name in a source tree.
M.DEFAULT_MODEL = "sprites-context.safetensors"

--- Where a shipped model file is: beside the bundled dataset of an installed rock (LuaRocks
-- installs `models/*.safetensors` into `minisd/data/`), else `models/` next to the `data/`
-- folder of a source tree.
-- @param file the file name (default: DEFAULT_MODEL)
-- @return the path (the file may be missing)
function M.shipped_path(file)
  local util = require("minisd.util")
  file = file or M.DEFAULT_MODEL
  local data_dir = util.normalize_path(require("minisd.data").data_dir())
  local beside = data_dir .. "/" .. file
  if util.is_file(beside) then
    return beside
  end
  local root = data_dir:match("^(.*)/[^/]*$")
  return (root and (root .. "/") or "") .. "models/" .. file
end

--- The dtype a safetensors file stores its floating-point weights in: "F16" or "BF16" when a
-- tensor has it, else "F32" (also for a file that cannot be read: load_model says why). A
-- script that rewrites a model file (a new config, the same weights) keeps it with this.
function M.file_dtype(path)
  local f = io.open(path, "rb")
  if not f then
    return "F32"
  end
  local head = f:read(8)
  local n = 0 -- the header's length: 8 bytes, little-endian
  for i = 8, 1, -1 do
    n = n * 256 + (head and #head == 8 and head:byte(i) or 0)
  end
  local text = n > 0 and n < 2 ^ 26 and f:read(n)
  f:close()
  local ok, hdr = pcall(require("minisd.json").decode, text or "")
  if ok and type(hdr) == "table" then
    for _, tname in ipairs(require("minisd.util").sorted_keys(hdr)) do
      local info = hdr[tname]
      if tname ~= "__metadata__" and type(info) == "table"
          and (info.dtype == "F16" or info.dtype == "BF16") then
        return info.dtype
      end
    end
  end
  return "F32"
end

--- Loads a model file written by model:save / train.lua: rebuilds the
-- architecture from the file's metadata and loads the weights (strict).
-- A PyTorch state_dict saved as safetensors without minisd metadata loads as
-- the default ContextUnet config (n_feat and channels read off the weights).
-- @param path .safetensors file (default: the shipped sprite model, `shipped_path()`), or the
--   file's bytes (a string holding NUL bytes, as every safetensors header does: what
--   `love.filesystem.read` gives a game for a model inside its .love archive)
-- @param name (optional, with bytes) what to call them in messages (default "(model bytes)")
-- @return model (in eval mode, its field `arch` the architecture's name), or nil and a message
function M.load_model(path, name)
  local minisd = require("minisd")
  local json = require("minisd.json")
  if path == nil then
    path = M.shipped_path()
    if not require("minisd.util").is_file(path) then
      return nil, "load_model: no shipped model at " .. path .. " (give a model file, or "
        .. "train one with train.lua)"
    end
  end
  if type(path) ~= "string" then
    error("load_model: expected a file name or a file's bytes, got " .. type(path), 2)
  end
  local ok, tensors, meta
  if path:find("\0", 1, true) then -- bytes: a path holds no NUL
    local bytes = path
    path = name or "(model bytes)"
    ok, tensors, meta = pcall(minisd.load_safetensors_string, bytes, path)
  else
    local f = io.open(path, "rb")
    if not f then
      return nil, "load_model: cannot open " .. path
    end
    f:close()
    ok, tensors, meta = pcall(minisd.load_safetensors, path)
  end
  if not ok or not tensors then
    return nil, tostring(ok and meta or tensors)
  end
  -- a damaged file can hold numbers that load but poison every sample: NaN or infinite
  -- values (the sum of |t| is NaN or infinite then), or a negative BatchNorm variance
  for _, tname in ipairs(require("minisd.util").sorted_keys(tensors)) do
    local t = tensors[tname]
    local s = t:numel() > 0 and t:abs():sum():item() or 0
    if s ~= s or s == math.huge then
      return nil, string.format("load_model: %s: tensor %s holds NaN or infinite values; the "
        .. "file is damaged", path, tname)
    end
    if tname:match("running_var$") and t:numel() > 0 and t:min() < 0 then
      return nil, string.format("load_model: %s: tensor %s (a BatchNorm variance) holds a "
        .. "negative value, %g; the file is damaged", path, tname, t:min())
    end
  end
  meta = meta or {}
  local config, arch
  if meta["minisd.config"] then
    -- json.decode returns nil and a message on bad JSON (and raises on a bug)
    local okj, cfg, jerr = pcall(json.decode, meta["minisd.config"])
    if not okj or type(cfg) ~= "table" then
      return nil, string.format("load_model: %s: its minisd.config metadata is not a JSON "
        .. "object (%s); the file is damaged", path,
        tostring(not okj and cfg or jerr or ("a JSON " .. type(cfg))))
    end
    config, arch = cfg, meta["minisd.arch"] or "ContextUnet"
    if not registry[arch] then
      return nil, string.format("load_model: %s: unknown architecture '%s' (known: %s)", path,
        arch, table.concat(M.names(), ", "))
    end
  else
    -- a bare state_dict (e.g. converted from PyTorch): the first architecture that
    -- recognises its tensors
    for _, aname in ipairs(order) do
      local infer = registry[aname].infer_config
      config = infer and infer(tensors)
      if config then
        arch = aname
        break
      end
    end
    if not config then
      return nil, "load_model: " .. path .. " has no minisd metadata and is not a ContextUnet "
        .. "state_dict (init_conv.conv1.0.weight missing)"
    end
  end
  local check = registry[arch].check
  if check then
    local okc, cerr = check(config, tensors)
    if not okc then
      return nil, string.format("load_model: %s: %s; the file is damaged", path, cerr)
    end
  end
  local okb, model = pcall(M.from_config, config, arch)
  if not okb then
    return nil, "load_model: " .. path .. ": " .. tostring(model)
  end
  local okl, err = pcall(model.load_state_dict, model, tensors)
  if not okl then
    return nil, "load_model: " .. path .. ": " .. tostring(err)
  end
  if meta["minisd.training"] then
    local okt, tr = pcall(json.decode, meta["minisd.training"])
    if not okt or type(tr) ~= "table" then
      return nil, string.format("load_model: %s: its minisd.training metadata is not a JSON "
        .. "object; the file is damaged", path)
    end
    model.training_summary = tr
  end
  model.arch = arch
  model:eval()
  return model
end

return M
