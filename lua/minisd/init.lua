--- minisd: a small diffusion-model library; the public face.
-- Re-exports the C core (tensors, ops, files) and loads the Lua modules
-- (`minisd.nn`, `minisd.optim`, ...) on first use.
-- @module minisd

local core = require("minisd.core")

local M = {}
for k, v in pairs(core) do
  if k ~= "dist" then -- the MPI engine of minisd.dist (built with MINISD_MPI)
    M[k] = v
  end
end

M._VERSION = "0.1.0"

local unpack = table.unpack or unpack

local function pack(...)
  return { n = select("#", ...), ... }
end

--- Runs `fn(...)` with autograd recording off, restoring the previous mode
-- afterwards even if `fn` raises an error.
-- @param fn function to run
-- @return whatever `fn` returns
function M.no_grad(fn, ...)
  if type(fn) ~= "function" then
    error("no_grad: expected a function, got " .. type(fn), 2)
  end
  local prev = core.set_grad_enabled(false)
  local res = pack(pcall(fn, ...))
  core.set_grad_enabled(prev)
  if not res[1] then
    error(res[2], 0)
  end
  return unpack(res, 2, res.n)
end

--- Cross-entropy loss (mean) from logits, as torch.nn.functional.cross_entropy.
-- @param logits tensor (N, C)
-- @param target tensor (N) of 1-based class indices, or (N, C) class probabilities
-- @return 0-dim tensor
function M.cross_entropy(logits, target)
  if core.is_tensor(target) and target:dim() == 1 then
    if core.is_tensor(logits) and logits:dim() == 2 and target:size(1) == logits:size(1) then
      -- name a bad index 1-based, as the caller wrote it
      local C = logits:size(2)
      for n, v in ipairs(target:totable()) do
        if not (v >= 1 and v <= C and v == math.floor(v)) then
          error(string.format("cross_entropy: target %d holds %g, not a class index in 1..%d "
            .. "for logits %s", n, v, C, tostring(logits):match("^tensor(%S+)")), 2)
        end
      end
    end
    target = target - 1
  end
  return core.cross_entropy_raw(logits, target)
end

--- Loads a model file (safetensors with minisd metadata) ready to use.
-- @param path model file, or its bytes (default: the shipped sprite model)
-- @param name (optional, with bytes) what to call them in messages
-- @return model, or nil and a message
function M.load_model(path, name)
  return require("minisd.models").load_model(path, name)
end

local lazy = {
  nn = "minisd.nn", optim = "minisd.optim", data = "minisd.data", context = "minisd.context",
  image = "minisd.image", diffusion = "minisd.diffusion", models = "minisd.models",
  train = "minisd.train", json = "minisd.json", sched = "minisd.sched",
  quality = "minisd.quality", classifier = "minisd.classifier", linalg = "minisd.linalg",
  worker = "minisd.worker", dist = "minisd.dist",
}

return setmetatable(M, {
  __index = function(t, k)
    local name = lazy[k]
    if name then
      local mod = require(name)
      rawset(t, k, mod)
      return mod
    end
  end,
})
