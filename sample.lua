#!/usr/bin/env lua5.4
-- Samples sprites from a trained minisd model. Run `lua sample.lua --help` for the options.
local root = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
-- from a checkout: scripts/bootstrap.lua finds the source and its build; installed by
-- LuaRocks (minisd-train, minisd-sample), minisd is on the default paths
local boot = loadfile(root .. "/scripts/bootstrap.lua")
local run_main = boot and boot(root) or require("minisd.cli").run_main

local argparse = require("argparse")

local parser = argparse("sample.lua", "Sample sprites from a trained minisd model file.")
parser:epilog([[
Examples:
  lua sample.lua runs/sprites/model.safetensors
  lua sample.lua model.safetensors --context hero --context "food,spell=0.6" -n 8 --guidance 4
  lua sample.lua model.safetensors --sampler ddpm --animate denoise.png
  lua sample.lua --alpha-threshold 0.5 --colors 6 --sheet sprites.png   # pixel art + index
  lua sample.lua -c hero --seeds 12 --alpha-threshold 0.5 -o one.png     # one sprite again
  lua sample.lua -c spell --init sprite.png --strength 0.6   # variations
  lua sample.lua -c hero --init sprite.png --mask mask.png   # redraw a part
  lua sample.lua --interpolate 8 --seeds 3,9 -c hero -c food --animate m.gif
  lua sample.lua model.safetensors --list-contexts]])
parser:argument("model", "Model file (.safetensors written by train.lua or model:save; "
  .. "default: the shipped models/sprites-context.safetensors).")
  :args("?")
parser:option("--context -c", "Context expression, e.g. hero, hero+food, \"hero,food=0.6\", none; "
  .. "repeat for several rows (default: a row per label when the model was trained with them, "
  .. "else none).")
  :count("*")
parser:option("-n --count", "Sprites per context.", "8"):convert(tonumber)
local sampler_names = require("minisd.sched").names()
local recommended = require("minisd.diffusion")
parser:option("--sampler", table.concat(sampler_names, ", ", 1, #sampler_names - 1) .. " or "
  .. sampler_names[#sampler_names] .. " (ddpm: the best sprites; ddim, dpmpp_2m: faster).",
  recommended.recommended_sampler):choices(sampler_names)
parser:option("--steps", "Denoising steps (default: " .. recommended.recommended_steps
  .. " for ddpm, 25 for ddim and euler_a, 12 for dpmpp_2m).")
  :convert(tonumber)
parser:option("--eta", "DDIM eta (0: deterministic).", "0"):convert(tonumber)
parser:option("--variance", "DDPM's variance: " .. recommended.recommended_variance
  .. " (the default: the posterior's) or fixed_large (the seed's beta_t).")
  :choices(require("minisd.sched").get("ddpm").VARIANCE_TYPES)
parser:option("--guidance", "Classifier-free guidance scale (0: off; auto: the model's own "
  .. "scale for the sampler when its file records one, else 3 for ddpm and euler_a, 6 for ddim "
  .. "and dpmpp_2m, when sampling with a context from a model trained with them, else off).",
  "auto")
  :convert(function(s)
    if s == "auto" or tonumber(s) then
      return s == "auto" and s or tonumber(s)
    end
    return nil, "--guidance must be a number or auto, got '" .. s .. "'"
  end)
parser:option("--seed", "Random seed: sprite k of the batch (counting row by row across the "
  .. "contexts) has seed + k - 1.", "0"):convert(tonumber)
parser:option("--seeds", "Per-sprite seeds, e.g. 12 or 3,7,12: one sprite per seed for each "
  .. "context (instead of --count and --seed); a sprite of a sheet is made again from the "
  .. "seed its index records.")
parser:option("-o --out", "Output PNG grid.", "samples.png")
parser:option("--scale", "Upscale factor for the grid (nearest neighbour).", "4"):convert(tonumber)
parser:option("--nrow", "Sprites per grid row (default: --count).")
  :convert(tonumber)
parser:option("--animate", "Also write the denoising animation: a PNG strip (.png) or an animated "
  .. "GIF (.gif).")
parser:option("--frames", "Frames in the animation.", "10"):convert(tonumber)
parser:option("--each", "Also write one PNG per sprite into this directory (RGBA when the model "
  .. "has 4 channels).")
parser:option("--alpha-threshold", "Pixel-art alpha for RGBA models: alpha at or above this "
  .. "value (in [0, 1]) becomes opaque, below it transparent.")
  :convert(tonumber)
parser:option("--init", "Variations of existing sprites: a PNG of one sprite, or a sheet of "
  .. "them (tiles of the model's size, row-major), noised to --strength and denoised again "
  .. "with the given context; sprite k of the batch starts from tile k (cycling).")
parser:option("--strength", "With --init: the fraction of the steps run, in [0, 1] (0: the "
  .. "input as it is, 1: almost ignores it; default 0.8, or 1 with --mask).")
  :convert(tonumber)
parser:option("--mask", "With --init: inpainting. A PNG of the sprite's size (or a sheet like "
  .. "--init): white where to generate, black where to keep the input, which stays exact.")
parser:option("--jumps", "With --mask: RePaint's resampling, each step undone and redone this "
  .. "many times (ddim, ddpm, euler_a).", "0"):convert(tonumber)
parser:option("--negative", "Guide away from this context instead of the null one (works "
  .. "through guidance: not with --guidance 0).")
parser:flag("--no-signal-leak", "Start from pure noise, not with the per-channel means of a "
  .. "training sprite of the context's labels leaked in as in training (the model's "
  .. "signal-leak statistics, when its file has them; see README).")
parser:option("--interpolate", "Interpolate in this many frames between two seeds (--seeds A,B) "
  .. "and contexts (-c FROM -c TO; one -c for both ends): the grid is one row of frames, and "
  .. "--animate writes them as the animation. Samples with ddim unless --sampler is given (a "
  .. "deterministic sampler keeps the frames a smooth path).")
  :convert(tonumber)
parser:option("--palette", "Pixel-art colours: every pixel takes the nearest colour of this "
  .. "palette: a PNG swatch (its distinct opaque colours) or #rrggbb colours separated by "
  .. "commas.")
parser:option("--colors", "Pixel-art colours: each sprite reduced to at most this many colours "
  .. "of its own (k-means).")
  :convert(tonumber)
parser:option("--sheet", "Also write a sprite sheet for a game: the sprites at their own size "
  .. "in a grid (no padding, --nrow per row) plus an index of each sprite's quad, context and "
  .. "seed (see --sheet-index).")
parser:option("--sheet-index", "The sheet's index: a .lua file (a table, e.g. for "
  .. "love.filesystem.load) or .json (default: the sheet's name with .lua).")
parser:option("--threads", "Threads for the maths."):convert(tonumber)
parser:option("--precision", "Convolution precision: fp32, or bf16 (bfloat16 products, fp32 "
  .. "sums; fast on CPUs with AMX).", "fp32"):choices({ "fp32", "bf16" })
parser:flag("--list-contexts", "Print the model's context label names and exit.")

local a = parser:parse(require("minisd.util").negative_numbers(arg))

local check_int = require("minisd.util").check_int_arg
-- limits that fit sprites: a typo must not ask for gigabytes
local MAX_SPRITES = 4096
check_int(parser, "--count", a.count, 1, true, MAX_SPRITES)
check_int(parser, "--steps", a.steps, 1, true, 10000)
if a.interpolate then -- the frames are a smooth path only with a deterministic sampler
  local given = false
  for i = 1, #arg do
    given = given or arg[i]:match("^%-%-sampler") ~= nil
  end
  if not given then
    a.sampler = "ddim"
  end
end
if a.steps == nil and a.sampler == recommended.recommended_sampler then
  a.steps = recommended.recommended_steps
end
if a.variance and not require("minisd.sched").get(a.sampler).VARIANCE_TYPES then
  parser:error("--variance applies to ddpm only, not to " .. a.sampler)
end
a.variance = a.variance or recommended.default_variance(a.sampler)
check_int(parser, "--scale", a.scale, 1, true, 64)
check_int(parser, "--nrow", a.nrow, 1, true, MAX_SPRITES)
check_int(parser, "--frames", a.frames, 1, true, 1000)
check_int(parser, "--threads", a.threads, 1, true, 256)
check_int(parser, "--colors", a.colors, 1, true, 256)
check_int(parser, "--jumps", a.jumps, 0, false, 100)
check_int(parser, "--interpolate", a.interpolate, 2, true, 1000)
if #a.context * (a.count or 1) > MAX_SPRITES then
  parser:error(string.format("%d contexts x %d sprites is more than %d sprites in one run",
    #a.context, a.count, MAX_SPRITES))
end
if (a.strength or a.mask) and not a.init then
  parser:error("--strength and --mask go with --init")
end
if a.strength ~= nil and not (a.strength >= 0 and a.strength <= 1) then
  parser:error("--strength must be a number in [0, 1], got " .. tostring(a.strength))
end
if a.jumps > 0 and not a.mask then
  parser:error("--jumps goes with --mask")
end
if a.negative and a.guidance == 0 then
  parser:error("--negative works through guidance: not with --guidance 0")
end
if a.interpolate and a.init then
  parser:error("give --interpolate or --init, not both")
end
if a.seed == nil or a.seed ~= math.floor(a.seed) or a.seed < 0 then
  parser:error("--seed must be an integer >= 0, got " .. tostring(a.seed))
end
local seed_list
if a.seeds then
  seed_list = {}
  for item in a.seeds:gmatch("[^,%s]+") do
    local v = tonumber(item)
    if not v or v ~= math.floor(v) or v < 0 then
      parser:error("--seeds must be integers >= 0 separated by commas, got '" .. item .. "'")
    end
    seed_list[#seed_list + 1] = v
  end
  if #seed_list == 0 then
    parser:error("--seeds needs at least one seed")
  end
end
if a.palette and a.colors then
  parser:error("give --palette or --colors, not both")
end
-- outputs: only the formats this program writes
local function ext_of(path)
  return (path:match("%.([%w]+)$") or ""):lower()
end
if ext_of(a.out) ~= "png" then
  parser:error("--out must name a .png file, got " .. a.out)
end
if a.animate and ext_of(a.animate) ~= "png" and ext_of(a.animate) ~= "gif" then
  parser:error("--animate must name a .png or .gif file, got " .. a.animate)
end
if a.sheet and ext_of(a.sheet) ~= "png" then
  parser:error("--sheet must name a .png file, got " .. a.sheet)
end
if a.sheet_index and not a.sheet then
  parser:error("--sheet-index goes with --sheet")
end
if a.sheet then
  a.sheet_index = a.sheet_index or a.sheet:gsub("%.[%w]+$", "") .. ".lua"
  local e = ext_of(a.sheet_index)
  if e ~= "lua" and e ~= "json" then
    parser:error("--sheet-index must name a .lua or .json file, got " .. a.sheet_index)
  end
end
if a.eta == nil or a.eta < 0 then
  parser:error("--eta must be a number >= 0")
end
if a.alpha_threshold ~= nil and not (a.alpha_threshold >= 0 and a.alpha_threshold <= 1) then
  parser:error("--alpha-threshold must be a number in [0, 1], got " .. tostring(a.alpha_threshold))
end
if a.guidance == nil then
  parser:error("--guidance must be a number")
end

local function main()
  local minisd = require("minisd")
  local image = require("minisd.image")
  local context = require("minisd.context")
  if a.threads then
    minisd.set_threads(a.threads)
  end
  minisd.set_precision(a.precision)
  local util = require("minisd.util")
  -- every output writable before the sampling starts
  for _, path in ipairs({ a.out, a.animate or false, a.sheet or false, a.sheet_index or false }) do
    if path then
      assert(util.check_writable(path))
    end
  end
  local palette
  if a.palette then
    local spec = a.palette
    if not spec:match("^%s*#") and util.is_file(spec) then -- a swatch file
      spec = assert(minisd.load_png(spec))
    end
    local ok, pal = pcall(image.palette, spec)
    if not ok then
      error("--palette: " .. tostring(pal):gsub("^.-image%.palette: ", ""), 0)
    end
    palette = pal
  end
  local model, err = minisd.load_model(a.model)
  if not model then
    error(err, 0)
  end
  -- --init / --mask: pictures as (tiles, C, H, W), cut into the model's sprite size
  local function tiles_of(opt, path, channels)
    local img, perr = minisd.load_png(path)
    if not img then
      error(opt .. ": " .. perr, 0)
    end
    local size = model.config.height or 16
    local shape = img:shape()
    if shape[2] % size ~= 0 or shape[3] % size ~= 0 then
      error(string.format("%s: %s is %dx%d, not a sprite or a sheet of %dx%d sprites", opt, path,
        shape[3], shape[2], size, size), 0)
    end
    local cols, rows_ = math.floor(shape[3] / size), math.floor(shape[2] / size)
    local t = minisd.image_tiles(img, size, cols, rows_ * cols)
    return require("minisd.data").to_channels(t, channels,
      model.config.background or { 1, 1, 1 })
  end
  local init_tiles, mask_tiles
  if a.init then
    init_tiles = image.from_unit(tiles_of("--init", a.init, model.config.in_channels))
    if a.mask then
      local m = tiles_of("--mask", a.mask, 3) -- the mean of R, G, B: white 1, black 0
      mask_tiles = (m:narrow(2, 1, 1) + m:narrow(2, 2, 1) + m:narrow(2, 3, 1)) * (1 / 3)
    end
  end
  if a.alpha_threshold and model.config.in_channels ~= 4 then
    error(string.format("--alpha-threshold needs an RGBA model; this one has %d channels",
      model.config.in_channels), 0)
  end
  local names = model.config.label_names or context.default_names
  if a.list_contexts then
    for i, name in ipairs(names) do
      print(i, name)
    end
    return
  end
  local exprs = a.context
  if #exprs == 0 then -- a row per label from a model trained with them, else unconditional
    local trained = model.training_summary
    exprs = (trained and trained.context and not a.interpolate) and names or { "none" }
  end
  if a.interpolate and (#exprs > 2 or (seed_list and #seed_list > 2)) then
    error("--interpolate goes from one seed and context to another: give at most two --seeds "
      .. "and two --context", 0)
  end
  -- one row per sprite, with its context and seed
  local rows, row_expr, seeds = {}, {}, {}
  local per = seed_list and #seed_list or a.count
  for _, e in ipairs(exprs) do
    if e:match("^%s*$") then
      error("--context: an empty expression (write none for the null context)", 0)
    end
    local ok, encoded = pcall(context.encode, e, names)
    if not ok then
      error("--context " .. e .. ": " .. tostring(encoded):gsub("^[^\n:]*%.lua:%d+: ", "")
        :gsub("^context: ", ""), 0)
    end
    local r = encoded:totable()[1]
    for j = 1, per do
      rows[#rows + 1] = r
      row_expr[#rows] = e
      seeds[#rows] = seed_list and seed_list[j] or a.seed + #rows - 1
    end
  end
  if a.guidance == "auto" then -- guided where the model learnt the contexts and one is asked
    local trained = model.training_summary
    local any = false
    for _, e in ipairs(exprs) do
      any = any or not e:match("^%s*none%s*$")
    end
    a.guidance = (trained and trained.context and any)
      and minisd.diffusion.recommended_guidance_for(a.sampler, model) or 0
  end
  local count = per
  local frames = {}
  local eta = require("minisd.sched").get(a.sampler).takes_eta and a.eta or nil
  local job, interp_seeds
  local leak = nil -- the model's default: on when its file has the statistics
  if a.no_signal_leak then
    leak = false
  end
  if a.interpolate then
    local sa = seed_list and seed_list[1] or a.seed
    local sb = seed_list and (seed_list[2] or seed_list[1]) or a.seed + 1
    interp_seeds = { sa, sb }
    job = minisd.diffusion.start_interpolation(model, {
      from = { seed = sa, context = exprs[1] }, to = { seed = sb, context = exprs[2] or exprs[1] },
      frames = a.interpolate, sampler = a.sampler, steps = a.steps, eta = eta,
      variance = a.variance,
      guidance = a.guidance, negative = a.negative, signal_leak = leak,
    })
    -- the sheet's index: each frame's blended context, and no seed (a blend of two)
    rows, row_expr, seeds, count = {}, {}, {}, a.interpolate
    local blended = job.context and context.decode(job.context, names) or nil
    for k = 1, a.interpolate do
      rows[k] = true
      row_expr[k] = type(blended) == "table" and blended[k] or blended or "none"
    end
  else
    local init, mask
    if init_tiles then -- sprite k starts from tile k (cycling)
      local nt = init_tiles:shape()[1]
      local pick_init, pick_mask = {}, {}
      for k = 1, #rows do
        pick_init[k] = init_tiles:narrow(1, (k - 1) % nt + 1, 1)
        if mask_tiles then
          pick_mask[k] = mask_tiles:narrow(1, (k - 1) % mask_tiles:shape()[1] + 1, 1)
        end
      end
      init = minisd.cat(pick_init, 1)
      mask = mask_tiles and minisd.cat(pick_mask, 1) or nil
    end
    job = minisd.diffusion.start(model, {
      context = minisd.tensor(rows), sampler = a.sampler, steps = a.steps, eta = eta,
      variance = a.variance,
      guidance = a.guidance, seeds = seeds, init = init, strength = a.strength, mask = mask,
      jumps = a.jumps > 0 and a.jumps or nil, negative = a.negative,
      signal_leak = leak,
    })
  end
  local total = job.total
  local frames_wanted = math.min(a.frames, total)
  local tty = os.execute("test -t 2")
  tty = tty == true or tty == 0
  local t0 = minisd.clock()
  while not job:done() do
    job:step()
    if tty then -- a live step counter on a terminal only
      io.stderr:write(string.format("\rstep %d/%d", job.i, total))
    end
    -- frames at evenly spaced steps, the last one being the result
    if a.animate and not a.interpolate and math.floor(job.i * frames_wanted / total)
        > math.floor((job.i - 1) * frames_wanted / total) then
      frames[#frames + 1] = image.grid(image.to_unit(job:result()), { nrow = a.nrow or count })
    end
  end
  io.stderr:write(string.format("%ssampled %d sprites in %d steps (%.2f s)\n", tty and "\r" or "",
    #rows, total, minisd.clock() - t0))
  local x = job:result()
  if a.alpha_threshold then
    x = image.binary_alpha(x, a.alpha_threshold)
  end
  if palette then
    x = image.quantize(x, palette)
  elseif a.colors then
    x = image.reduce_colors(x, a.colors)
  end
  if a.interpolate and a.animate then -- the animation is the interpolation itself
    local unit = image.to_unit(x)
    local sh = unit:shape()
    for k = 1, sh[1] do
      frames[k] = unit:narrow(1, k, 1):reshape(sh[2], sh[3], sh[4])
    end
  end
  assert(image.save_grid(a.out, x, { nrow = a.nrow or count, scale = a.scale }))
  print("wrote " .. a.out)
  if a.animate then
    if a.animate:lower():match("%.gif$") then
      assert(image.save_gif(a.animate, frames, { scale = a.scale, delay = 10 }))
    else
      assert(minisd.save_png(a.animate, image.upscale(image.strip(frames, { padding = 2 }),
        a.scale)))
    end
    print("wrote " .. a.animate)
  end
  if a.each then
    assert(util.mkdir_p(a.each))
    local unit = image.to_unit(x)
    for i = 1, #rows do
      local path = string.format("%s/sprite_%03d.png", a.each, i)
      assert(minisd.save_png(path, unit:narrow(1, i, 1):reshape(unit:shape()[2],
        unit:shape()[3], unit:shape()[4])))
    end
    print(string.format("wrote %d sprites to %s", #rows, a.each))
  end
  if a.sheet then
    local cols = a.nrow or count
    local shape = x:shape()
    local h, w = shape[3], shape[4]
    assert(image.save_grid(a.sheet, x, { nrow = cols, padding = 0 }))
    local sprites = {}
    for k = 1, #rows do
      sprites[k] = { x = ((k - 1) % cols) * w, y = math.floor((k - 1) / cols) * h, w = w, h = h,
        context = row_expr[k], seed = seeds[k] }
    end
    local index = {
      image = a.sheet:match("[^/]*$"), sprite_width = w, sprite_height = h, columns = cols,
      model = a.model or "(shipped)", sampler = a.sampler, variance = a.variance, steps = total,
      guidance = a.guidance, eta = require("minisd.sched").get(a.sampler).takes_eta and a.eta
        or nil, alpha_threshold = a.alpha_threshold, palette = a.palette, colors = a.colors,
      negative = a.negative, init = a.init, strength = job.strength, mask = a.mask,
      signal_leak = job.signal_leak, sprites = sprites,
    }
    if a.interpolate then
      index.interpolate = { from = { seed = interp_seeds[1], context = exprs[1] },
        to = { seed = interp_seeds[2], context = exprs[2] or exprs[1] } }
    end
    local text
    if ext_of(a.sheet_index) == "json" then
      text = require("minisd.json").encode(index) .. "\n"
    else
      text = "-- minisd sprite sheet index: quads of " .. index.image .. " (written by "
        .. "sample.lua)\nreturn " .. util.lua_literal(index) .. "\n"
    end
    assert(util.write_file(a.sheet_index, text))
    print("wrote " .. a.sheet .. " and " .. a.sheet_index)
  end
end

run_main("sample.lua", main)
