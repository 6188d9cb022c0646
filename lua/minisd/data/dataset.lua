--- minisd internal (minisd.data): the Dataset object (batches, flips, gathers) and the
-- channel handling every format shares. Use it through minisd.data.
-- @module minisd.data.dataset

local minisd = require("minisd")
local util = require("minisd.util")
local context = require("minisd.context")

local M = {}

local BATCH_OPTS = { "shuffle", "generator", "flip", "drop_last", "share" }
local check_opts = util.check_options

local function parse_background(bg)
  if bg == nil then
    return { 1, 1, 1 }
  end
  if type(bg) == "string" then
    local r, g, b = bg:match("^#(%x%x)(%x%x)(%x%x)$")
    if not r then
      error("data.load: background '" .. bg .. "' is not a \"#rrggbb\" colour", 3)
    end
    return { tonumber(r, 16) / 255, tonumber(g, 16) / 255, tonumber(b, 16) / 255 }
  end
  if type(bg) == "table" and #bg == 3 then
    for i = 1, 3 do
      if type(bg[i]) ~= "number" or bg[i] < 0 or bg[i] > 1 then
        error("data.load: background entries must be numbers in [0,1]", 3)
      end
    end
    return { bg[1], bg[2], bg[3] }
  end
  error("data.load: background must be {r, g, b} in [0,1] or a \"#rrggbb\" string", 3)
end

-- x (N,C,H,W) in [0,1] with C = 1, 3 or 4 -> (N,target,H,W).
local function to_channels(x, target, background)
  local s = x:shape()
  local C = s[2]
  if C == target then
    return x
  end
  if C == 1 then
    x = minisd.cat({ x, x, x }, 2)
    C = 3
  end
  if C == 3 and target == 4 then
    return minisd.cat({ x, minisd.ones({ s[1], 1, s[3], s[4] }) }, 2)
  end
  if C == 4 and target == 3 then
    return minisd.image_composite(x, background)
  end
  return x
end

--- Label names for K columns: opts.label_names, the context default names for K = 5, else
-- label1..labelK.
local function default_names(K, opts)
  if opts.label_names then
    return opts.label_names
  end
  if K == #context.default_names then
    return context.names()
  end
  local names = {}
  for k = 1, K do
    names[k] = "label" .. k
  end
  return names
end

local Dataset = {}
Dataset.__index = Dataset
M.Dataset = Dataset

local default_generator

local function new_dataset(images01, labels, names, opts, info)
  local s = images01:shape()
  local C = s[2]
  if C ~= 1 and C ~= 3 and C ~= 4 then
    return nil, string.format("%s: pictures with %d channels (expected 1, 3 or 4)", info.path, C)
  end
  local target = opts.channels or (C == 4 and 4 or 3)
  local x = to_channels(images01, target, parse_background(opts.background))
  local ds = setmetatable({
    images = minisd.image_affine_clamp(x, 2, -1, -1, 1),
    labels = labels,
    label_names = names,
    n = s[1],
    channels = target,
    height = s[3],
    width = s[4],
    path = info.path,
    format = info.format,
    sources = info.sources,
  }, Dataset)
  return ds
end

--- A dataset from tensors already in memory.
-- @param images tensor (N,C,H,W) in [-1,1], C = 1, 3 or 4
-- @param labels tensor (N,K), or nil for zero labels with the default names
-- @param label_names list of K names (default: the context default names when K = 5, else
--   label1..labelK)
-- @return the dataset
function M.from_tensors(images, labels, label_names)
  if not minisd.is_tensor(images) or images:dim() ~= 4 then
    error("data.from_tensors: images must be a tensor (N,C,H,W)", 2)
  end
  local s = images:shape()
  if s[2] ~= 1 and s[2] ~= 3 and s[2] ~= 4 then
    error("data.from_tensors: images have " .. s[2] .. " channels, expected 1, 3 or 4", 2)
  end
  if labels == nil then
    labels = minisd.zeros({ s[1], #(label_names or context.default_names) })
  end
  if not minisd.is_tensor(labels) or labels:dim() ~= 2 or labels:shape()[1] ~= s[1] then
    error(string.format("data.from_tensors: labels must be a tensor (%d,K)", s[1]), 2)
  end
  local K = labels:shape()[2]
  local names = label_names and context.names(label_names) or default_names(K, {})
  if #names ~= K then
    error(string.format("data.from_tensors: %d label names for %d label columns", #names, K), 2)
  end
  return setmetatable({
    images = images, labels = labels, label_names = names, n = s[1], channels = s[2],
    height = s[3], width = s[4], format = "tensors",
  }, Dataset)
end

--- The number of samples.
-- @return n
function Dataset:size()
  return self.n
end

--- One sample.
-- @param i 1-based index
-- @return image (C,H,W) in [-1,1], labels (K)
function Dataset:get(i)
  if type(i) ~= "number" or i ~= math.floor(i) or i < 1 or i > self.n then
    error(string.format("Dataset:get: index %s out of range 1..%d", tostring(i), self.n), 2)
  end
  local img = self.images:narrow(1, i, 1)
  local lab = self.labels:narrow(1, i, 1)
  return img:reshape({ self.channels, self.height, self.width }), lab:reshape({ -1 })
end

--- The rows of a batch of b that share `rank` (0-based) of `size` gets: the contiguous
-- rows first .. first + count - 1, counts differing by at most one (equal when size
-- divides b).
-- @return first (1-based), count
function M.share_rows(b, rank, size)
  local first = math.floor(rank * b / size)
  return first + 1, math.floor((rank + 1) * b / size) - first
end

--- An iterator over batches: `for x, c in ds:batches(32, {generator = g, flip = true}) do`.
-- The order is drawn once, when `batches` is called: `minisd.randperm` with the generator.
-- With `flip`, each sample of each batch is mirrored left-right with probability 1/2, drawn
-- from the same generator when its batch is made.
-- With `share = {rank = r, size = n}` (data-parallel training, r 0-based), the iterator
-- draws the same order and flips as without it and yields only share r of each batch (see
-- share_rows), so the n shares together are the batches one process would get.
-- @param batch_size samples per batch
-- @param opts optional: `shuffle` (true), `generator` (a minisd.Generator; default one shared
--   generator seeded with 0), `flip` (false), `drop_last` (false: the last batch may be
--   smaller), `share` (none)
-- @return an iterator yielding images (B,C,H,W), labels (B,K), the whole batch's size and
--   the position of the first row yielded in it (1 without `share`)
function Dataset:batches(batch_size, opts)
  opts = check_opts("Dataset:batches", opts, BATCH_OPTS, 2)
  if type(batch_size) ~= "number" or batch_size ~= math.floor(batch_size) or batch_size < 1 then
    error("Dataset:batches: batch_size must be an integer >= 1, got " .. tostring(batch_size), 2)
  end
  local share = opts.share
  if share ~= nil then
    local r, n = type(share) == "table" and share.rank, type(share) == "table" and share.size
    if type(n) ~= "number" or n ~= math.floor(n) or n < 1 or type(r) ~= "number"
      or r ~= math.floor(r) or r < 0 or r >= n then
      error("Dataset:batches: share must be {rank = r, size = n} with integers 0 <= r < n", 2)
    end
  end
  local shuffle = opts.shuffle
  if shuffle == nil then
    shuffle = true
  end
  local flip = opts.flip and true or false
  local gen = opts.generator
  if gen == nil and (shuffle or flip) then
    default_generator = default_generator or minisd.Generator(0)
    gen = default_generator
  end
  local n = self.n
  local order
  if shuffle then
    order = minisd.randperm(n, gen)
  else
    order = {}
    for i = 1, n do
      order[i] = i
    end
  end
  local pos = 0
  local images, labels = self.images, self.labels
  return function()
    local b = math.min(batch_size, n - pos)
    if b <= 0 or (opts.drop_last and b < batch_size) then
      return nil
    end
    local first, count = 1, b
    if share then
      first, count = M.share_rows(b, share.rank, share.size)
      if count < 1 then
        error(string.format("Dataset:batches: a batch of %d cannot be shared by %d ranks (rank "
          .. "%d gets none)", b, share.size, share.rank), 2)
      end
    end
    local idx = {}
    for i = 1, count do
      idx[i] = order[pos + first - 1 + i]
    end
    pos = pos + b
    local flips
    if flip then
      local all = minisd.rand({ b }, gen):totable()
      flips = {}
      for i = 1, count do
        flips[i] = all[first - 1 + i] < 0.5
      end
    end
    return minisd.image_gather(images, idx, flips), minisd.image_gather(labels, idx), b, first
  end
end

M.parse_background = parse_background
M.to_channels = to_channels
M.default_names = default_names
M.new = new_dataset

return M
