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

-- ---- palettes --------------------------------------------------------------------------

local function hex_colour(fn, h)
  local r, g, b = tostring(h):match("^#?(%x%x)(%x%x)(%x%x)$")
  if not r then
    error(string.format("%s: '%s' is not a colour (#rrggbb)", fn, tostring(h)), 4)
  end
  return { tonumber(r, 16), tonumber(g, 16), tonumber(b, 16) }
end

--- A palette: a list of {r, g, b} colours with components 0..255.
-- @param spec a list of "#rrggbb" strings or {r, g, b} tables (0..255); a string of
--   "#rrggbb" colours separated by commas or spaces; or a swatch picture (C, H, W) in [0, 1]
--   (e.g. `minisd.load_png("palette.png")`) whose distinct opaque colours, in row-major
--   order of first appearance, are the palette (at most 256)
-- @return list of {r, g, b}
function M.palette(spec)
  local fn = "image.palette"
  local out = {}
  if type(spec) == "string" then
    for h in spec:gmatch("[^,%s]+") do
      out[#out + 1] = hex_colour(fn, h)
    end
  elseif minisd.is_tensor(spec) then
    local shape = check_tensor(fn, "swatch", spec, { [3] = true, text = "(C,H,W)" })
    local c = shape[1]
    if c ~= 3 and c ~= 4 then
      error(string.format("%s: a swatch needs 3 or 4 channels, got %d", fn, c), 2)
    end
    local bytes = M.rgba_bytes(spec)
    local seen = {}
    for i = 1, #bytes, 4 do
      local r, g, b, a = bytes:byte(i, i + 3)
      local key = r * 65536 + g * 256 + b
      if a >= 128 and not seen[key] then
        seen[key] = true
        out[#out + 1] = { r, g, b }
        if #out > 256 then
          error(fn .. ": the swatch has more than 256 colours; a palette picture holds each "
            .. "colour once (or a few times)", 2)
        end
      end
    end
  elseif type(spec) == "table" then
    for i, v in ipairs(spec) do
      if type(v) == "table" then
        for j = 1, 3 do
          local x = v[j]
          if type(x) ~= "number" or x < 0 or x > 255 or x ~= math.floor(x) then
            error(string.format("%s: colour %d must be {r, g, b} with integers in 0..255", fn,
              i), 2)
          end
        end
        out[i] = { v[1], v[2], v[3] }
      else
        out[i] = hex_colour(fn, v)
      end
    end
  else
    error(fn .. ": expected colours (a list, a string of #rrggbb) or a swatch picture, got "
      .. type(spec), 2)
  end
  if #out == 0 then
    error(fn .. ": the palette has no colours", 2)
  end
  return out
end

-- Pixels of one sample (C, H, W) in [-1, 1] as bytes: {r, g, b, a} lists (a = 255 for RGB).
local function pixels_of(img, c)
  local unit = M.to_unit(img)
  if c == 3 then
    unit = minisd.cat({ unit, minisd.ones({ 1, unit:shape()[2], unit:shape()[3] }) }, 1)
  end
  return minisd.image_rgba_bytes(unit)
end

-- The sample (C, H, W) in [-1, 1] whose colours are palette[idx[p]] for pixel p, alpha as in
-- the bytes (C = 4).
local function from_pixels(bytes, idx, palette, c, h, w)
  local planes = {}
  for k = 1, c do
    planes[k] = {}
    for y = 1, h do
      planes[k][y] = {}
    end
  end
  for p = 1, h * w do
    local y, x = math.floor((p - 1) / w) + 1, (p - 1) % w + 1
    local col = palette[idx[p]]
    for k = 1, 3 do
      planes[k][y][x] = col[k] / 255 * 2 - 1
    end
    if c == 4 then
      planes[4][y][x] = bytes:byte(4 * p) / 255 * 2 - 1
    end
  end
  return minisd.tensor(planes)
end

local function nearest(palette, r, g, b)
  local best, bd = 1, math.huge
  for i, col in ipairs(palette) do
    local dr, dg, db = r - col[1], g - col[2], b - col[3]
    local d = dr * dr + dg * dg + db * db
    if d < bd then
      best, bd = i, d
    end
  end
  return best
end

-- Every pixel of bytes (RGBA) in its nearest colour of colours: the sample (C, H, W).
local function recolour(bytes, colours, c, h, w)
  local idx = {}
  for p = 1, h * w do
    local r, g, b = bytes:byte(4 * p - 3, 4 * p - 1)
    idx[p] = nearest(colours, r, g, b)
  end
  return from_pixels(bytes, idx, colours, c, h, w)
end

-- Applies fn(img (C,H,W), c, h, w) -> img to each picture of a batch.
local function per_picture(fn_name, x, fn)
  local shape = check_tensor(fn_name, "x", x, batch_dims)
  local c = shape[#shape - 2]
  if c ~= 3 and c ~= 4 then
    error(string.format("%s: expected RGB or RGBA pictures, got %d channels", fn_name, c), 3)
  end
  local h, w = shape[#shape - 1], shape[#shape]
  if #shape == 3 then
    return fn(x, c, h, w)
  end
  local out = {}
  for i = 1, shape[1] do
    out[i] = fn(x:narrow(1, i, 1):reshape(c, h, w), c, h, w)
  end
  return M.stack(out)
end

--- Pixel-art colours: every pixel takes the nearest colour of a palette (Euclidean distance
-- in 8-bit RGB, after rounding to bytes); alpha is kept.
-- @param x RGB or RGBA pictures (N,C,H,W) or (C,H,W) in [-1, 1], as sampled
-- @param palette anything `image.palette` takes
-- @return a new tensor of x's shape whose colours are palette colours exactly (in [-1, 1])
function M.quantize(x, palette)
  palette = M.palette(palette)
  return per_picture("image.quantize", x, function(img, c, h, w)
    return recolour(pixels_of(img, c), palette, c, h, w)
  end)
end

--- Each picture to at most k colours of its own: k-means over its opaque pixels (alpha at
-- least one half; every pixel for RGB) in 8-bit RGB, started from the farthest-point
-- choice (deterministic), then every pixel takes the nearest of the k colours.
-- @param x RGB or RGBA pictures (N,C,H,W) or (C,H,W) in [-1, 1]
-- @param k number of colours (integer >= 1)
-- @return a new tensor of x's shape
function M.reduce_colors(x, k)
  check_int("image.reduce_colors", "k", k, 1)
  return per_picture("image.reduce_colors", x, function(img, c, h, w)
    local bytes = pixels_of(img, c)
    local pts = {}
    for p = 1, h * w do
      local r, g, b, a = bytes:byte(4 * p - 3, 4 * p)
      if a >= 128 then
        pts[#pts + 1] = { r, g, b }
      end
    end
    if #pts == 0 then -- nothing visible: any colour will do
      for p = 1, h * w do
        pts[p] = { bytes:byte(4 * p - 3, 4 * p - 1) }
      end
    end
    -- farthest-point start: the first opaque pixel, then each time the pixel farthest
    -- from the colours chosen so far
    local centres = { { pts[1][1], pts[1][2], pts[1][3] } }
    while #centres < k do
      local far, fd = nil, 0
      for _, q in ipairs(pts) do
        local col = centres[nearest(centres, q[1], q[2], q[3])]
        local d = (q[1] - col[1]) ^ 2 + (q[2] - col[2]) ^ 2 + (q[3] - col[3]) ^ 2
        if d > fd then
          far, fd = q, d
        end
      end
      if not far then -- fewer distinct colours than k
        break
      end
      centres[#centres + 1] = { far[1], far[2], far[3] }
    end
    for _ = 1, 10 do -- Lloyd's iterations, centres kept as whole bytes
      local sum, count = {}, {}
      for i = 1, #centres do
        sum[i], count[i] = { 0, 0, 0 }, 0
      end
      for _, q in ipairs(pts) do
        local i = nearest(centres, q[1], q[2], q[3])
        local s2 = sum[i]
        s2[1], s2[2], s2[3] = s2[1] + q[1], s2[2] + q[2], s2[3] + q[3]
        count[i] = count[i] + 1
      end
      local moved = false
      for i, col in ipairs(centres) do
        if count[i] > 0 then
          for j = 1, 3 do
            local v = math.floor(sum[i][j] / count[i] + 0.5)
            moved = moved or v ~= col[j]
            col[j] = v
          end
        end
      end
      if not moved then
        break
      end
    end
    return recolour(bytes, centres, c, h, w)
  end)
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
  local ok, res, err = pcall(minisd.save_png, path, g)
  if not ok or not res then
    return nil, tostring(ok and err or res)
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
  local ok, res, err = pcall(minisd.save_gif, path, list, scale, delay, loop, last_delay)
  if not ok or not res then
    return nil, tostring(ok and err or res)
  end
  return true
end

return M
