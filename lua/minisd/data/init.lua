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
--
-- Each format is a file of its own (minisd/data/npy.lua, sheet.lua, pngs.lua) registered
-- with `data.register_format`; the Dataset object is minisd/data/dataset.lua, the labels
-- files' parsing minisd/data/labels.lua.
-- @module minisd.data

local minisd = require("minisd")
local util = require("minisd.util")
local context = require("minisd.context")
local dataset = require("minisd.data.dataset")

local M = {}

local LOAD_OPTS = { "channels", "background", "tile", "columns", "label_names", "labels" }
local check_opts = util.check_options
local is_file, dirname, basename, join = util.is_file, util.dirname, util.basename,
  util.join_path
local parse_background = dataset.parse_background

M.Dataset = dataset.Dataset
M.from_tensors = dataset.from_tensors
M.to_channels = dataset.to_channels

-- ---- the format registry --------------------------------------------------------------

-- In the order a folder is tried: the first format found in it is loaded.
local formats = {}

--- Registers a dataset format: {name =, claims = function(lowercase file name) -> bool
-- (a file of this format), load_file = function(path, opts) -> dataset or nil, message,
-- find = function(dir, names) -> a loader function(opts), nil (not here), or false and a
-- message (ambiguous)}. Later formats are tried after the built-in ones.
-- @param f the format table
function M.register_format(f)
  if type(f) ~= "table" or type(f.name) ~= "string" then
    error("data.register_format: expected a table with a name", 2)
  end
  formats[#formats + 1] = f
end

--- The registered format names, in the order a folder is tried.
function M.format_names()
  local out = {}
  for i, f in ipairs(formats) do
    out[i] = f.name
  end
  return out
end

M.register_format(require("minisd.data.npy"))
M.register_format(require("minisd.data.sheet"))
M.register_format(require("minisd.data.pngs"))

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

local function load_folder(dir, opts)
  local names = minisd.list_dir(dir)
  for _, f in ipairs(formats) do
    if f.find then
      local loader, err = f.find(dir, names)
      if loader == false then
        return nil, err
      end
      if loader then
        return loader(opts)
      end
    end
  end
  return nil, dir .. ": no dataset here (no *sprites*.npy with *labels*.npy, no NAME.png with "
    .. "NAME_labels.tsv, no .png files)"
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
    return require("minisd.data.sheet").load(join(dir, "sprites.png"),
      join(dir, "sprites_labels.tsv"), opts)
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
  for _, f in ipairs(formats) do
    if f.claims and f.claims(lname) then
      return f.load_file(path, opts)
    end
  end
  return nil, path .. ": not a dataset file (expected .npy, .png or .tsv, or a folder)"
end

--- Gives the rows that carry no label a label of their own: a column `name` (default
-- "other"), 1 where every other column is 0, appended to ds.labels and ds.label_names (in
-- place). A model trained on it can be guided towards those sprites (classifier-free
-- guidance needs a context that differs from the null one), while the all-zero row stays
-- the null context that training drops rows to.
-- @param ds a dataset (data.load, data.from_tensors)
-- @param name (optional) the new label's name
-- @return ds
function M.add_other_label(ds, name)
  name = name or "other"
  local names = ds.label_names
  for _, n in ipairs(names) do
    if n == name then
      error("data.add_other_label: the dataset already has a label '" .. name .. "'", 2)
    end
  end
  local rows = ds.labels:totable()
  for _, row in ipairs(rows) do
    local any = false
    for _, v in ipairs(row) do
      any = any or v ~= 0
    end
    row[#row + 1] = any and 0 or 1
  end
  local new_names = {}
  for i, n in ipairs(names) do
    new_names[i] = n
  end
  new_names[#new_names + 1] = name
  ds.label_names = context.names(new_names)
  ds.labels = #rows > 0 and minisd.tensor(rows) or minisd.zeros({ 0, #new_names })
  return ds
end

return M
