--- minisd.image: grids, scaling, animation strips, RGBA bytes for LÖVE, saving PNG.
-- Pictures are tensors (C,H,W) (batches (N,C,H,W)) with C = 1, 3 or 4. The pixel work runs
-- in C (`minisd.image_*`); this module checks arguments and composes.
-- @module minisd.image

local minisd = require("minisd")
local util = require("minisd.util")

local M = {}

local check_opts = util.check_options

local function check_int(fn, name, v, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(string.format("%s: %s must be an integer >= %d, got %s", fn, name, min, tostring(v)), 3)
  end
  return v
end

local function check_tensor(fn, what, x, dims)
  if not minisd.is_tensor(x) then
    error(fn .. ": " .. what .. " must be a tensor, got " .. type(x), 3)
  end
  local shape = x:shape()
  if dims and not dims[#shape] then
    error(string.format("%s: %s has shape [%s], expected %s", fn, what,
      table.concat(shape, ","), dims.text), 3)
  end
  return shape
end

--- Stacks pictures of the same shape into a batch.
-- @param list a non-empty list of tensors (C,H,W)
-- @return tensor (N,C,H,W)
function M.stack(list)
  if type(list) ~= "table" or minisd.is_tensor(list) or #list == 0 then
    error("image.stack: expected a non-empty list of tensors", 2)
  end
  local rows = {}
  for i, x in ipairs(list) do
    if not minisd.is_tensor(x) then
      error("image.stack: entry " .. i .. " is a " .. type(x) .. ", expected a tensor", 2)
    end
    local shape = x:shape()
    table.insert(shape, 1, 1)
    rows[i] = x:reshape(shape)
  end
  return minisd.cat(rows, 1)
end

--- Maps values from [-1,1] to [0,1], clamping.
-- @param x tensor of any shape
-- @return a new tensor, (x + 1) / 2 clamped to [0,1]
function M.to_unit(x)
  check_tensor("image.to_unit", "x", x)
  return minisd.image_affine_clamp(x, 0.5, 0.5, 0, 1)
end

--- Maps values from [0,1] to [-1,1] (no clamping).
-- @param x tensor of any shape
-- @return a new tensor, 2x - 1
function M.from_unit(x)
  check_tensor("image.from_unit", "x", x)
  return x * 2 - 1
end

local batch_dims = { [3] = true, [4] = true, text = "(N,C,H,W) or (C,H,W)" }

--- Pixel-art alpha: every pixel fully opaque or fully transparent.
-- @param x RGBA pictures (N,4,H,W) or (4,H,W) in [-1,1], as sampled
-- @param threshold in [0,1] (default 0.5): alpha (mapped to [0,1]) at or above it becomes
--   opaque (1), below it transparent (-1); the colour channels are kept
-- @return a new tensor of x's shape
function M.binary_alpha(x, threshold)
  local shape = check_tensor("image.binary_alpha", "x", x, batch_dims)
  threshold = threshold == nil and 0.5 or threshold
  if type(threshold) ~= "number" or not (threshold >= 0 and threshold <= 1) then
    error("image.binary_alpha: threshold must be a number in [0, 1], got "
      .. tostring(threshold), 2)
  end
  local c = shape[#shape - 2]
  if c ~= 4 then
    error(string.format("image.binary_alpha: expected RGBA pictures (4 channels), got %d", c), 2)
  end
  local t = x:totable()
  local batch = #shape == 4 and t or { t }
  for _, img in ipairs(batch) do
    for _, row in ipairs(img[4]) do
      for j, a in ipairs(row) do
        row[j] = (a + 1) / 2 >= threshold and 1 or -1
      end
    end
  end
  return minisd.tensor(t)
end

-- A batch from a tensor (N,C,H,W) / (C,H,W) or a list of (C,H,W).
local function as_batch(fn, images)
  if type(images) == "table" and not minisd.is_tensor(images) then
    return M.stack(images)
  end
  local shape = check_tensor(fn, "images", images, batch_dims)
  if #shape == 3 then
    return images:reshape({ 1, shape[1], shape[2], shape[3] })
  end
  return images
end

--- Lays pictures out in a grid, as torchvision.utils.make_grid.
-- @param images tensor (N,C,H,W), one picture (C,H,W), or a list of (C,H,W)
-- @param opts optional: `nrow` pictures per row (8), `padding` pixels between and around
--   them (1), `pad_value` (0)
-- @return tensor (C, rows*(H+padding)+padding, min(nrow,N)*(W+padding)+padding)
function M.grid(images, opts)
  opts = check_opts("image.grid", opts, { "nrow", "padding", "pad_value" })
  local x = as_batch("image.grid", images)
  local nrow = check_int("image.grid", "nrow", opts.nrow or 8, 1)
  local padding = check_int("image.grid", "padding", opts.padding or 1, 0)
  local pad_value = opts.pad_value or 0
  if type(pad_value) ~= "number" then
    error("image.grid: pad_value must be a number, got " .. type(pad_value), 2)
  end
  return minisd.image_grid(x, nrow, padding, pad_value)
end

--- Nearest-neighbour upscaling.
-- @param img tensor (C,H,W) or (N,C,H,W)
-- @param factor integer >= 1
-- @return tensor (C,H*factor,W*factor) (or batched)
function M.upscale(img, factor)
  check_tensor("image.upscale", "img", img, batch_dims)
  check_int("image.upscale", "factor", factor, 1)
  return minisd.image_upscale(img, factor)
end

--- Frames of an animation side by side, left to right.
-- @param frames a list of tensors (C,H,W), or a tensor (N,C,H,W)
-- @param opts optional: `padding` (1), `pad_value` (0)
-- @return tensor (C, H+2*padding, N*(W+padding)+padding)
function M.strip(frames, opts)
  opts = check_opts("image.strip", opts, { "padding", "pad_value" })
  local x = as_batch("image.strip", frames)
  return M.grid(x, { nrow = x:shape()[1], padding = opts.padding, pad_value = opts.pad_value })
end

--- RGBA bytes of a picture, for LÖVE's `love.image.newImageData(w, h, "rgba8", bytes)`.
-- @param img tensor (C,H,W) with values in [0,1] (clamped), C = 1 (grey), 3 (alpha 255) or 4
-- @return a string of H*W*4 bytes (row-major, R,G,B,A per pixel), the width W and height H
function M.rgba_bytes(img)
  local shape = check_tensor("image.rgba_bytes", "img", img,
    { [3] = true, text = "(C,H,W) with C = 1, 3 or 4" })
  return minisd.image_rgba_bytes(img), shape[3], shape[2]
end

--- A picture from RGBA bytes (what `rgba_bytes` and LÖVE's `ImageData:getString()` give).
-- @param bytes a string of w*h*4 bytes, row-major, R,G,B,A per pixel
-- @param w width, h height (positive integers)
-- @return tensor (4, h, w) with values byte / 255 in [0, 1]
function M.from_rgba_bytes(bytes, w, h)
  if type(bytes) ~= "string" then
    error("image.from_rgba_bytes: expected a string of bytes, got " .. type(bytes), 2)
  end
  check_int("image.from_rgba_bytes", "w", w, 1)
  check_int("image.from_rgba_bytes", "h", h, 1)
  if #bytes ~= w * h * 4 then
    error(string.format("image.from_rgba_bytes: %dx%d RGBA needs %d bytes, got %d", w, h,
      w * h * 4, #bytes), 2)
  end
  local planes = { {}, {}, {}, {} }
  for y = 1, h do
    local row = { {}, {}, {}, {} }
    local base = (y - 1) * w * 4
    for x = 1, w do
      local r, g, b, a = bytes:byte(base + 4 * x - 3, base + 4 * x)
      row[1][x], row[2][x], row[3][x], row[4][x] = r / 255, g / 255, b / 255, a / 255
    end
    for c = 1, 4 do
      planes[c][y] = row[c]
    end
  end
  return minisd.tensor(planes)
end

--- Saves a batch of pictures as one PNG grid.
-- @param path file name
-- @param images tensor (N,C,H,W), (C,H,W), or a list of (C,H,W); values in `value_range`
-- @param opts optional: `value_range` ({-1, 1}: mapped to [0,1] and clamped), `scale`
--   (integer upscaling of the whole grid, 1), and grid's `nrow`, `padding`, `pad_value`
--   (the pad value is in [0,1], after the mapping)
-- @return true, or nil and a message when the file cannot be written
function M.save_grid(path, images, opts)
  opts = check_opts("image.save_grid", opts,
    { "nrow", "padding", "pad_value", "scale", "value_range" })
  if type(path) ~= "string" then
    error("image.save_grid: path must be a string, got " .. type(path), 2)
  end
  local range = opts.value_range or { -1, 1 }
  local lo, hi = range[1], range[2]
  if type(lo) ~= "number" or type(hi) ~= "number" or hi - lo <= 0 or hi ~= hi or lo ~= lo then
    error("image.save_grid: value_range must be {lo, hi} with hi > lo", 2)
  end
  local scale = check_int("image.save_grid", "scale", opts.scale or 1, 1)
  local x = as_batch("image.save_grid", images)
  x = minisd.image_affine_clamp(x, 1 / (hi - lo), -lo / (hi - lo), 0, 1)
  local g = M.grid(x, { nrow = opts.nrow, padding = opts.padding, pad_value = opts.pad_value })
  if scale > 1 then
    g = minisd.image_upscale(g, scale)
  end
  local ok, err = pcall(minisd.save_png, path, g)
  if not ok then
    return nil, tostring(err)
  end
  return true
end

--- Saves an animation as a looping GIF (encoded in C: one global palette of at most 256
-- colours, exact when the frames hold few colours, else median cut; alpha < 0.5 becomes
-- transparent; see csrc/core/gif.h).
-- @param path file name (written atomically)
-- @param frames a non-empty list of tensors (C,H,W) with values in [0,1] (clamped), C = 1, 3
--   or 4, all of the same H and W; or a tensor (N,C,H,W)
-- @param opts optional: `scale` (nearest-neighbour upscaling, 1), `delay` (centiseconds per
--   frame, 10), `loop` (0 = forever), `last_delay` (centiseconds the last frame is held, 100)
-- @return true, or nil and a message (naming the file) when it cannot be written
function M.save_gif(path, frames, opts)
  opts = check_opts("image.save_gif", opts, { "scale", "delay", "loop", "last_delay" })
  if type(path) ~= "string" then
    error("image.save_gif: path must be a string, got " .. type(path), 2)
  end
  local scale = check_int("image.save_gif", "scale", opts.scale or 1, 1)
  local delay = check_int("image.save_gif", "delay", opts.delay or 10, 0)
  local loop = check_int("image.save_gif", "loop", opts.loop or 0, 0)
  local last_delay = check_int("image.save_gif", "last_delay", opts.last_delay or 100, 0)
  local list = frames
  if minisd.is_tensor(frames) then
    local shape = check_tensor("image.save_gif", "frames", frames,
      { [4] = true, text = "(N,C,H,W) or a list of (C,H,W)" })
    list = {}
    for i = 1, shape[1] do
      list[i] = frames:narrow(1, i, 1):reshape({ shape[2], shape[3], shape[4] })
    end
  elseif type(frames) ~= "table" or #frames == 0 then
    error("image.save_gif: frames must be a non-empty list of tensors (C,H,W)", 2)
  else
    for i, x in ipairs(frames) do
      check_tensor("image.save_gif", "frame " .. i, x,
        { [3] = true, text = "(C,H,W) with C = 1, 3 or 4" })
    end
  end
  for _, v in ipairs({ delay, loop, last_delay }) do
    if v > 65535 then
      error("image.save_gif: delay, loop and last_delay must be at most 65535", 2)
    end
  end
  local ok, err = pcall(minisd.save_gif, path, list, scale, delay, loop, last_delay)
  if not ok then
    return nil, tostring(err)
  end
  return true
end

return M
