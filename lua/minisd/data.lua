--- minisd.data: sprite datasets, shuffling, batching and augmentation.
-- `data.load(path, opts)` reads one of:
--
-- 1. the seed's NumPy pair: images `*sprites*.npy` (uint8 N,H,W,C) and one-hot labels
--    `*labels*.npy` (N,K), given either file or their folder;
-- 2. a PNG sprite sheet with a labels file: `name.png` (square tiles, row-major) and
--    `name_labels.tsv` (header `index<TAB>label names...<TAB>source`, then one row per sprite:
--    the 0-based tile index, K label values, the source name), given either file or their
--    folder;
-- 3. a folder of PNGs, one sprite each, sorted by file name, with an optional `labels.tsv`
--    (header `file<TAB>label names...`, one row per file; without it the labels are zero);
-- 4. nothing: the bundled dataset `data/sprites.png` + `data/sprites_labels.tsv` (found from
--    the `minisd` module's location, or in the folder named by the MINISD_DATA variable).
--
-- Images become (N,C,H,W) floats in [-1,1]; labels (N,K) floats. The pixel work (layout,
-- tiles, compositing, gathers, flips) runs in C.
-- @module minisd.data

local minisd = require("minisd")
local util = require("minisd.util")
local context = require("minisd.context")

local unpack = table.unpack or unpack

local M = {}

local LOAD_OPTS = { "channels", "background", "tile", "columns", "label_names", "labels" }
local BATCH_OPTS = { "shuffle", "generator", "flip", "drop_last" }

local check_opts = util.check_options

-- ---- files ---------------------------------------------------------------------------------

local is_file = require("minisd.util").is_file

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function basename(path)
  return path:match("([^/]*)$")
end

local function join(dir, name)
  return dir == "." and name or (dir:gsub("/$", "") .. "/" .. name)
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local s = f:read("*a")
  f:close()
  return s
end

-- Calls a loader that raises on failure; returns its result or nil, message.
local function try(fn, ...)
  local ok, res, err = pcall(fn, ...)
  if not ok then
    return nil, tostring(res)
  end
  if res == nil then -- the file functions return nil and a message
    return nil, err
  end
  return res
end

--- The folder of the bundled dataset: $MINISD_DATA; else `minisd/data/` beside the
-- installed modules (a LuaRocks install puts it there); else `data/` next to the `lua/`
-- folder of a source tree.
-- @return the folder's path
function M.data_dir()
  local env = os.getenv("MINISD_DATA")
  if env and env ~= "" then
    return env
  end
  local found = require("minisd.util").searchpath("minisd", package.path)
  if not found then
    return "data"
  end
  local dir = dirname(found) -- .../lua/minisd (init.lua) or .../lua (minisd.lua)
  if basename(dir) == "minisd" then
    if is_file(join(join(dir, "data"), "sprites_labels.tsv")) then
      return join(dir, "data")
    end
    dir = dirname(dir)
  end
  return join(dirname(dir), "data")
end

-- ---- parsing the labels files --------------------------------------------------------------

-- Reads a tab-separated file: header fields and rows of fields (blank lines skipped).
local function read_tsv(path)
  local text, err = read_file(path)
  if not text then
    return nil, err
  end
  local rows, header = {}, nil
  local lineno = 0
  for line in (text:gsub("\r\n", "\n") .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line ~= "" then
      local fields = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do
        fields[#fields + 1] = field
      end
      if not header then
        header = fields
      elseif #fields ~= #header then
        return nil, string.format("%s: line %d has %d fields, the header has %d", path, lineno,
          #fields, #header)
      else
        fields.line = lineno
        rows[#rows + 1] = fields
      end
    end
  end
  if not header then
    return nil, path .. ": empty file (expected a header line)"
  end
  return header, rows
end

-- Label columns 2..K+1 of a row as numbers.
local function label_values(path, row, first, K)
  local values = {}
  for k = 1, K do
    local v = tonumber(row[first + k - 1])
    if not v or v ~= v or v == math.huge or v == -math.huge then
      return nil, string.format("%s: line %d: label %d is '%s', not a finite number", path,
        row.line, k, row[first + k - 1])
    end
    values[k] = v
  end
  return values
end

local function labels_tensor(values, n, K)
  if K == 0 or n == 0 then
    return minisd.zeros({ n, K })
  end
  return minisd.tensor(values)
end

-- ---- channels ------------------------------------------------------------------------------

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

--- Pictures (N, C, H, W) in [0, 1] with C = 1, 3 or 4 as `target` channels: grey copied to
-- RGB, an opaque alpha added, or RGBA composited over `background` ({r, g, b} in [0, 1]).
M.to_channels = to_channels

-- ---- the dataset object --------------------------------------------------------------------

local default_names

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

--- An iterator over batches: `for x, c in ds:batches(32, {generator = g, flip = true}) do`.
-- The order is drawn once, when `batches` is called: `minisd.randperm` with the generator.
-- With `flip`, each sample of each batch is mirrored left-right with probability 1/2, drawn
-- from the same generator when its batch is made.
-- @param batch_size samples per batch
-- @param opts optional: `shuffle` (true), `generator` (a minisd.Generator; default one shared
--   generator seeded with 0), `flip` (false), `drop_last` (false: the last batch may be
--   smaller)
-- @return an iterator yielding images (B,C,H,W) and labels (B,K)
function Dataset:batches(batch_size, opts)
  opts = check_opts("Dataset:batches", opts, BATCH_OPTS, 2)
  if type(batch_size) ~= "number" or batch_size ~= math.floor(batch_size) or batch_size < 1 then
    error("Dataset:batches: batch_size must be an integer >= 1, got " .. tostring(batch_size), 2)
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
    local idx = {}
    for i = 1, b do
      idx[i] = order[pos + i]
    end
    pos = pos + b
    local flips
    if flip then
      flips = minisd.rand({ b }, gen):totable()
      for i = 1, b do
        flips[i] = flips[i] < 0.5
      end
    end
    return minisd.image_gather(images, idx, flips), minisd.image_gather(labels, idx)
  end
end

-- ---- the formats ---------------------------------------------------------------------------

default_names = function(K, opts)
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

local function check_names(path, names, K)
  if #names ~= K then
    return nil, string.format("%s: %d label names for %d label columns", path, #names, K)
  end
  return true
end

-- The labels .npy that goes with an images .npy (or the reverse): the candidate in the same
-- folder sharing the longest file-name ending.
local function npy_partner(path, want_labels)
  local dir = dirname(path)
  local names = minisd.list_dir(dir) or {}
  local mine = basename(path)
  local best, best_len = nil, -1
  for _, name in ipairs(names) do
    local lname = name:lower()
    local is_labels = lname:find("labels", 1, true) ~= nil
    if name ~= mine and lname:match("%.npy$") and is_labels == want_labels
        and (want_labels or lname:find("sprite", 1, true)) then
      local k = 0
      while k < #name and k < #mine and name:byte(#name - k) == mine:byte(#mine - k) do
        k = k + 1
      end
      if k > best_len then
        best, best_len = join(dir, name), k
      end
    end
  end
  return best
end

local function load_npy_pair(images_path, labels_path, opts)
  local raw, err = try(minisd.load_npy, images_path)
  if not raw then
    return nil, err
  end
  local s = raw:shape()
  if #s ~= 4 or (s[4] ~= 1 and s[4] ~= 3 and s[4] ~= 4) then
    return nil, string.format("%s: images of shape [%s], expected (N,H,W,C) with C = 1, 3 or 4",
      images_path, table.concat(s, ","))
  end
  local labels
  labels, err = try(minisd.load_npy, labels_path)
  if not labels then
    return nil, err
  end
  -- a NaN or infinite value would train every step on a NaN loss
  for _, e in ipairs({ { raw, images_path, "images" }, { labels, labels_path, "labels" } }) do
    local total = e[1]:numel() > 0 and e[1]:abs():sum():item() or 0
    if total ~= total or total == math.huge then
      return nil, string.format("%s: the %s hold NaN or infinite values", e[2], e[3])
    end
  end
  local ls = labels:shape()
  if #ls ~= 2 or ls[1] ~= s[1] then
    return nil, string.format("%s: labels of shape [%s] do not fit the %d images of %s",
      labels_path, table.concat(ls, ","), s[1], images_path)
  end
  local names = default_names(ls[2], opts)
  local ok
  ok, err = check_names(labels_path, names, ls[2])
  if not ok then
    return nil, err
  end
  local x01 = minisd.image_hwc_to_chw(raw, 1 / 255, 0)
  return new_dataset(x01, labels, names, opts, { path = images_path, format = "npy" })
end

local function load_sheet(png_path, tsv_path, opts)
  if not is_file(png_path) then
    return nil, png_path .. ": no such file (the sprite sheet for " .. tsv_path .. ")"
  end
  local header, rows = read_tsv(tsv_path)
  if not header then
    return nil, rows
  end
  if header[1] ~= "index" then
    return nil, tsv_path .. ": the header must start with 'index', got '" .. header[1] .. "'"
  end
  local last = #header
  local sources = header[last] == "source"
  local K = last - 1 - (sources and 1 or 0)
  local names = opts.label_names or { unpack(header, 2, K + 1) }
  local ok, err = check_names(tsv_path, names, K)
  if not ok then
    return nil, err
  end
  local sheet
  sheet, err = try(minisd.load_png, png_path)
  if not sheet then
    return nil, err
  end
  local ss = sheet:shape()
  local tile = opts.tile or 16
  if ss[2] % tile ~= 0 or ss[3] % tile ~= 0 then
    return nil, string.format("%s: a %dx%d sheet is not a whole number of %dx%d tiles",
      png_path, ss[3], ss[2], tile, tile)
  end
  local columns = opts.columns or ss[3] / tile
  if columns > ss[3] / tile then
    return nil, string.format("%s: %d columns of %d-pixel tiles do not fit a %d-pixel-wide sheet",
      png_path, columns, tile, ss[3])
  end
  local ntiles = (ss[2] / tile) * columns
  local idx, values, src, seen = {}, {}, {}, {}
  for r, row in ipairs(rows) do
    local k = tonumber(row[1])
    if not k or k ~= math.floor(k) or k < 0 or k >= ntiles then
      return nil, string.format("%s: line %d: index '%s' is not a tile of %s (0..%d)", tsv_path,
        row.line, row[1], png_path, ntiles - 1)
    end
    if seen[k] then
      return nil, string.format("%s: line %d: index %d appears twice", tsv_path, row.line, k)
    end
    seen[k] = true
    idx[r] = k + 1
    values[r], err = label_values(tsv_path, row, 2, K)
    if not values[r] then
      return nil, err
    end
    src[r] = sources and row[last] or nil
  end
  if #rows == 0 then
    return nil, tsv_path .. ": no sprites (only a header)"
  end
  local tiles = minisd.image_tiles(sheet, tile, columns, idx)
  return new_dataset(tiles, labels_tensor(values, #rows, K), names, opts,
    { path = png_path, format = "sheet", sources = sources and src or nil })
end

local function load_png_folder(dir, files, opts)
  local pics, has_alpha = {}, false
  local h, w
  for i, name in ipairs(files) do
    local path = join(dir, name)
    local img, err = try(minisd.load_png, path)
    if not img then
      return nil, err
    end
    local s = img:shape()
    if not h then
      h, w = s[2], s[3]
    elseif s[2] ~= h or s[3] ~= w then
      return nil, string.format("%s: %dx%d pixels, but %s is %dx%d", path, s[3], s[2],
        join(dir, files[1]), w, h)
    end
    has_alpha = has_alpha or s[1] == 4
    pics[i] = img
  end
  local target = opts.channels or (has_alpha and 4 or 3)
  local background = parse_background(opts.background)
  for i, img in ipairs(pics) do
    local s = img:shape()
    pics[i] = to_channels(img:reshape({ 1, s[1], s[2], s[3] }), target, background)
  end
  local x01 = minisd.cat(pics, 1)
  local labels_path = opts.labels or join(dir, "labels.tsv")
  local names, labels
  if is_file(labels_path) then
    local header, rows = read_tsv(labels_path)
    if not header then
      return nil, rows
    end
    if header[1] ~= "file" then
      return nil, labels_path .. ": the header must start with 'file', got '" .. header[1] .. "'"
    end
    local K = #header - 1
    names = opts.label_names or { unpack(header, 2, K + 1) }
    local ok, err = check_names(labels_path, names, K)
    if not ok then
      return nil, err
    end
    local by_file = {}
    for _, row in ipairs(rows) do
      if by_file[row[1]] then
        return nil, string.format("%s: line %d: '%s' appears twice", labels_path, row.line,
          row[1])
      end
      by_file[row[1]], err = label_values(labels_path, row, 2, K)
      if not by_file[row[1]] then
        return nil, err
      end
    end
    local values = {}
    for i, name in ipairs(files) do
      values[i] = by_file[name]
      if not values[i] then
        return nil, string.format("%s: no row for %s", labels_path, name)
      end
      by_file[name] = nil
    end
    local extra = next(by_file)
    if extra then
      return nil, string.format("%s: a row names '%s', which is not a PNG in %s", labels_path,
        extra, dir)
    end
    labels = labels_tensor(values, #files, K)
  else
    names = opts.label_names or context.names()
    labels = minisd.zeros({ #files, #names })
  end
  return new_dataset(x01, labels, names, { channels = target }, { path = dir, format = "folder" })
end

local function load_folder(dir, opts)
  local names = minisd.list_dir(dir)
  local npy_images, npy_labels, tsvs, pngs = {}, {}, {}, {}
  local has = {}
  for _, name in ipairs(names) do
    has[name] = true
  end
  for _, name in ipairs(names) do
    local lname = name:lower()
    if lname:match("%.npy$") then
      if lname:find("labels", 1, true) then
        npy_labels[#npy_labels + 1] = name
      elseif lname:find("sprites", 1, true) then
        npy_images[#npy_images + 1] = name
      end
    elseif lname:match("%.png$") then
      pngs[#pngs + 1] = name
    elseif name:match("_labels%.tsv$") and has[name:gsub("_labels%.tsv$", ".png")] then
      tsvs[#tsvs + 1] = name
    end
  end
  if #npy_images > 0 and #npy_labels > 0 then
    if #npy_images > 1 then
      return nil, string.format("%s: several image .npy files (%s): name the one to load", dir,
        table.concat(npy_images, ", "))
    end
    local images_path = join(dir, npy_images[1])
    return load_npy_pair(images_path, npy_partner(images_path, true), opts)
  end
  if #tsvs > 1 then
    return nil, string.format("%s: several sprite sheets (%s): name the one to load", dir,
      table.concat(tsvs, ", "))
  elseif #tsvs == 1 then
    local tsv = join(dir, tsvs[1])
    return load_sheet((tsv:gsub("_labels%.tsv$", ".png")), tsv, opts)
  end
  if #pngs == 0 then
    return nil, dir .. ": no dataset here (no *sprites*.npy with *labels*.npy, no NAME.png with "
      .. "NAME_labels.tsv, no .png files)"
  end
  return load_png_folder(dir, pngs, opts)
end

--- Loads a dataset.
-- @param path a file or folder (see the module doc), or nil for the bundled dataset
-- @param opts optional: `channels` (3 or 4; default 4 when the source has alpha, else 3),
--   `background` (the colour that 3 channels composite RGBA over: {r,g,b} in [0,1] or
--   "#rrggbb", default white), `tile` (sheet tile size, 16), `columns` (tiles per sheet
--   row, default sheet width / tile), `label_names` (override the names), `labels` (the
--   labels file of a folder of PNGs)
-- @return the dataset (fields `images` (N,C,H,W) in [-1,1], `labels` (N,K), `label_names`,
--   `n`, `channels`, `height`, `width`, `sources` for sheets), or nil and a message when the
--   files are missing or do not make a dataset
function M.load(path, opts)
  local given = check_opts("data.load", opts, LOAD_OPTS, 2)
  opts = {}
  for k, v in pairs(given) do
    opts[k] = v
  end
  if opts.channels ~= nil and opts.channels ~= 3 and opts.channels ~= 4 then
    error("data.load: channels must be 3 or 4, got " .. tostring(opts.channels), 2)
  end
  for _, k in ipairs({ "tile", "columns" }) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v ~= math.floor(v) or v < 1) then
      error("data.load: " .. k .. " must be an integer >= 1, got " .. tostring(v), 2)
    end
  end
  if opts.label_names ~= nil then
    opts.label_names = context.names(opts.label_names)
  end
  parse_background(opts.background) -- check it now, before any file is read
  if path == nil then
    local dir = M.data_dir()
    return load_sheet(join(dir, "sprites.png"), join(dir, "sprites_labels.tsv"), opts)
  end
  if type(path) ~= "string" then
    error("data.load: path must be a string or nil, got " .. type(path), 2)
  end
  if minisd.list_dir(path) then
    return load_folder((path:gsub("/+$", "")), opts)
  end
  if not is_file(path) then
    return nil, path .. ": no such file or folder"
  end
  local lname = basename(path):lower()
  if lname:match("%.npy$") then
    local is_labels = lname:find("labels", 1, true) ~= nil
    local partner = npy_partner(path, not is_labels)
    if not partner then
      return nil, string.format("%s: no %s .npy file next to it", path,
        is_labels and "*sprites* images" or "*labels*")
    end
    if is_labels then
      return load_npy_pair(partner, path, opts)
    end
    return load_npy_pair(path, partner, opts)
  elseif lname:match("%.png$") then
    local tsv = opts.labels or (path:gsub("%.[pP][nN][gG]$", "_labels.tsv"))
    if not is_file(tsv) then
      return nil, path .. ": no labels file " .. tsv .. " next to this sprite sheet"
    end
    return load_sheet(path, tsv, opts)
  elseif lname:match("%.tsv$") then
    local png = path:gsub("_labels%.tsv$", ".png")
    if png == path then
      png = path:gsub("%.tsv$", ".png")
    end
    return load_sheet(png, path, opts)
  end
  return nil, path .. ": not a dataset file (expected .npy, .png or .tsv, or a folder)"
end

return M
