--- minisd.data format: a PNG sprite sheet with a labels file: `name.png` (square tiles, row-major)
-- and `name_labels.tsv` (header `index<TAB>label names...<TAB>source`, then one row per
-- sprite: the 0-based tile index, K label values, the source name), given either file or
-- their folder.
-- @module minisd.data.sheet

local minisd = require("minisd")
local util = require("minisd.util")
local dataset = require("minisd.data.dataset")
local lbl = require("minisd.data.labels")
local is_file, basename, join = util.is_file, util.basename, util.join_path
local new_dataset = dataset.new
local read_tsv, label_values, labels_tensor, check_names = lbl.read_tsv, lbl.label_values,
  lbl.labels_tensor, lbl.check_names
local unpack = table.unpack or unpack -- luacheck: ignore (Lua 5.1's global)

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
  sheet, err = minisd.load_png(png_path)
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

return {
  name = "sheet",
  load = load_sheet,
  claims = function(lname)
    return lname:match("%.png$") ~= nil or lname:match("%.tsv$") ~= nil
  end,
  load_file = function(path, opts)
    local lname = basename(path):lower()
    if lname:match("%.png$") then
      local tsv = opts.labels or (path:gsub("%.[pP][nN][gG]$", "_labels.tsv"))
      if not is_file(tsv) then
        return nil, path .. ": no labels file " .. tsv .. " next to this sprite sheet"
      end
      return load_sheet(path, tsv, opts)
    end
    local png = path:gsub("_labels%.tsv$", ".png")
    if png == path then
      png = path:gsub("%.tsv$", ".png")
    end
    return load_sheet(png, path, opts)
  end,
  -- in a folder: a NAME_labels.tsv beside its NAME.png
  find = function(dir, names)
    local has, tsvs = {}, {}
    for _, name in ipairs(names) do
      has[name] = true
    end
    for _, name in ipairs(names) do
      if name:match("_labels%.tsv$") and has[name:gsub("_labels%.tsv$", ".png")] then
        tsvs[#tsvs + 1] = name
      end
    end
    if #tsvs == 0 then
      return nil
    end
    if #tsvs > 1 then
      return false, string.format("%s: several sprite sheets (%s): name the one to load", dir,
        table.concat(tsvs, ", "))
    end
    local tsv = join(dir, tsvs[1])
    return function(opts)
      return load_sheet((tsv:gsub("_labels%.tsv$", ".png")), tsv, opts)
    end
  end,
}
