--- minisd.data format: the seed's NumPy pair: images `*sprites*.npy` (uint8 N,H,W,C) and one-hot
-- labels `*labels*.npy` (N,K), given either file or their folder.
-- @module minisd.data.npy

local minisd = require("minisd")
local util = require("minisd.util")
local dataset = require("minisd.data.dataset")
local check_names = require("minisd.data.labels").check_names
local dirname, basename, join = util.dirname, util.basename, util.join_path
local new_dataset, default_names = dataset.new, dataset.default_names

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
  local raw, err = minisd.load_npy(images_path)
  if not raw then
    return nil, err
  end
  local s = raw:shape()
  if #s ~= 4 or (s[4] ~= 1 and s[4] ~= 3 and s[4] ~= 4) then
    return nil, string.format("%s: images of shape [%s], expected (N,H,W,C) with C = 1, 3 or 4",
      images_path, table.concat(s, ","))
  end
  local labels
  labels, err = minisd.load_npy(labels_path)
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

return {
  name = "npy",
  -- a file of this format
  claims = function(lname)
    return lname:match("%.npy$") ~= nil
  end,
  load_file = function(path, opts)
    local lname = basename(path):lower()
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
  end,
  -- in a folder: a *sprites*.npy with a *labels*.npy; returns a loader, or nil, or
  -- false and a message when the folder is ambiguous
  find = function(dir, names)
    local images, found_labels = {}, false
    for _, name in ipairs(names) do
      local lname = name:lower()
      if lname:match("%.npy$") then
        if lname:find("labels", 1, true) then
          found_labels = true
        elseif lname:find("sprites", 1, true) then
          images[#images + 1] = name
        end
      end
    end
    if #images == 0 or not found_labels then
      return nil
    end
    if #images > 1 then
      return false, string.format("%s: several image .npy files (%s): name the one to load",
        dir, table.concat(images, ", "))
    end
    local images_path = join(dir, images[1])
    return function(opts)
      return load_npy_pair(images_path, npy_partner(images_path, true), opts)
    end
  end,
}
