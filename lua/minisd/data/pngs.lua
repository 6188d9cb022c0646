--- minisd.data format: a folder of PNGs, one sprite each, sorted by file name, with an optional
-- `labels.tsv` (header `file<TAB>label names...`, one row per file; without it the labels
-- are zero).
-- @module minisd.data.pngs

local minisd = require("minisd")
local util = require("minisd.util")
local context = require("minisd.context")
local dataset = require("minisd.data.dataset")
local lbl = require("minisd.data.labels")
local is_file, join = util.is_file, util.join_path
local new_dataset, parse_background, to_channels = dataset.new, dataset.parse_background,
  dataset.to_channels
local read_tsv, label_values, labels_tensor, check_names = lbl.read_tsv, lbl.label_values,
  lbl.labels_tensor, lbl.check_names
local unpack = table.unpack or unpack -- luacheck: ignore (Lua 5.1's global)

local function load_png_folder(dir, files, opts)
  local pics, has_alpha = {}, false
  local h, w
  for i, name in ipairs(files) do
    local path = join(dir, name)
    local img, err = minisd.load_png(path)
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

return {
  name = "pngs",
  claims = function()
    return false -- one PNG is a sheet; this format is a folder's
  end,
  find = function(dir, names)
    local pngs = {}
    for _, name in ipairs(names) do
      if name:lower():match("%.png$") then
        pngs[#pngs + 1] = name
      end
    end
    if #pngs == 0 then
      return nil
    end
    return function(opts)
      return load_png_folder(dir, pngs, opts)
    end
  end,
}
