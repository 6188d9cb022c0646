-- minisd in LÖVE 11: generates a batch of 16x16 sprites at run time and shows them
-- sharpening live. The network runs in a minisd.worker (a love.thread), so the game's
-- main thread only passes messages and draws: it never waits for the model.
-- Run from the repository root: love examples/love [path/to/model.safetensors]
-- (default: sprites.safetensors inside the game folder or .love if there is one, read
-- with love.filesystem; else the shipped models/sprites-context.safetensors)
-- Keys: space = new batch (new seed), 1-9 = context label (as many as the model has), 0 = no
-- context, v = variations of the first sprite, escape = quit.
-- MINISD_LOVE_TEST=N: make N batches, print the main thread's frame times while sampling,
-- check that the sprites were drawn (a screenshot), and quit (exit status 0 when all went
-- well); what the test suite and the README's frame-time figures run.
-- luacheck: std luajit, globals love game

-- Find the minisd Lua modules and the LuaJIT build of the C core relative to this folder
-- (examples/love -> the repository root); MINISD_CPATH overrides the core's location.
local source = love.filesystem.getSource()
local root = source .. "/../.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MINISD_CPATH") or (root .. "/build/luajit/?.so")) .. ";"
  .. package.cpath

local minisd = require("minisd")

local SPRITES, STEPS, COLUMNS, SCALE_MAX = 8, 25, 4, 12

-- The game's state, global so that a test harness can look at it.
game = {
  worker = nil, request = nil, labels = {}, guidance = {}, seed = 1, label = nil, sprites = {},
  message = nil, batches = 0, step = 0, total = STEPS, frames = {}, sampling = false,
}

local test_batches = tonumber(os.getenv("MINISD_LOVE_TEST") or "")

-- Sprites from the worker's RGBA byte strings: one LÖVE image each.
local function show(ev)
  local list = {}
  for i, bytes in ipairs(ev.sprites) do
    local img = love.graphics.newImage(love.image.newImageData(ev.width, ev.height, "rgba8",
      bytes))
    img:setFilter("nearest", "nearest")
    list[i] = img
  end
  game.sprites = list
  game.step, game.total = ev.step, ev.total
end

-- Asks for a new batch (cancelling the one under way); the worker does the work.
-- variation_of: RGBA bytes of a sprite to make variations of.
local function new_batch(variation_of)
  if game.request then
    game.worker:cancel(game.request)
  end
  local label = game.label and game.labels[game.label] or nil
  game.request = game.worker:request({
    n = SPRITES, context = label, seed = game.seed, steps = STEPS,
    -- the worker samples with ddim: the model's scale for it (its ready event's)
    guidance = label and (game.guidance.ddim or minisd.diffusion.recommended_guidance_for("ddim"))
      or 0,
    every = 1, alpha_threshold = 0.5,
    init = variation_of, strength = variation_of and 0.6 or nil,
  })
  game.step = 0
  game.sampling = true
end

-- A model inside the game itself (a .love zip or a fused game has no files of its own on
-- disk): its bytes, read with love.filesystem.
local GAME_MODEL = "sprites.safetensors"

function love.load(args)
  local model = (args and args[1]) or os.getenv("MINISD_MODEL") -- nil: the shipped model
  local name
  if not model and love.filesystem.getInfo and love.filesystem.getInfo(GAME_MODEL) then
    model, name = love.filesystem.read(GAME_MODEL), GAME_MODEL
  end
  -- one maths thread: the game keeps the other cores
  game.worker = minisd.worker.new({ model = model, name = name, threads = 1 })
  game.seed = test_batches and 1 or os.time() % 100000
  new_batch()
end

local function stats(t)
  table.sort(t)
  local sum = 0
  for _, v in ipairs(t) do
    sum = sum + v
  end
  local p95 = t[math.max(1, math.ceil(#t * 0.95))]
  return sum / #t * 1000, p95 * 1000, t[#t] * 1000
end

-- The test mode's end: frame times, a screenshot check, quit.
local function finish_test()
  if os.getenv("MINISD_LOVE_DEBUG") then
    for i, v in ipairs(game.frames) do
      if v > 0.03 then print("slow frame", i, v) end
    end
  end
  local mean, p95, max = stats(game.frames)
  print(string.format("frames while sampling: %d, mean %.1f ms, p95 %.1f ms, max %.1f ms",
    #game.frames, mean, p95, max))
  love.graphics.captureScreenshot(function(data)
    -- the sprite area must not be one colour
    local w, h = data:getDimensions()
    local seen, colours = {}, 0
    for y = 20, math.min(h - 1, 300), 3 do
      for x = 0, w - 1, 3 do
        local r, g, b = data:getPixel(x, y)
        local key = string.format("%.2f %.2f %.2f", r, g, b)
        if not seen[key] then
          seen[key], colours = true, colours + 1
        end
      end
    end
    print(string.format("screenshot: %dx%d, %d colours in the sprite area", w, h, colours))
    local ok = colours > 8 and game.batches == test_batches
    print(ok and "love test: ok" or "love test: FAILED")
    love.event.quit(ok and 0 or 1)
  end)
end

function love.update(dt)
  if game.sampling then
    game.frames[#game.frames + 1] = dt
  end
  for _, ev in ipairs(game.worker:poll()) do
    if ev.kind == "ready" then
      game.labels, game.guidance = ev.label_names, ev.guidance or {}
    elseif ev.kind == "error" then
      game.message = ev.message .. "\n\nrun: love examples/love path/to/model.safetensors"
      print(game.message)
      game.sampling = false
      if test_batches then
        love.event.quit(1)
      end
    elseif ev.id == game.request and (ev.kind == "preview" or ev.kind == "done") then
      show(ev)
      if ev.kind == "done" then
        game.finished = ev.sprites
        game.sampling = false
        game.batches = game.batches + 1
        print(string.format("batch %d done: %d sprites, seed %d, context %s, %.2f s",
          game.batches, #ev.sprites, game.seed, tostring(game.labels[game.label or 0] or "none"),
          ev.seconds))
        if test_batches then
          if game.batches < test_batches then
            game.seed = game.seed + 1
            game.label = (game.batches % math.max(#game.labels, 1)) + 1
            new_batch()
          else
            finish_test()
          end
        end
      end
    end
  end
end

function love.keypressed(key)
  if key == "escape" then
    love.event.quit()
    return
  end
  if game.message then
    return
  end
  if key == "space" then
    game.seed = game.seed + 1
    new_batch()
  elseif key == "v" and game.finished then
    game.seed = game.seed + 1
    new_batch(game.finished[1])
  elseif key == "0" then
    game.label = nil
    new_batch()
  else
    local k = tonumber(key)
    if k and k >= 1 and k <= 9 and game.labels[k] then
      game.label = k
      new_batch()
    end
  end
end

function love.quit()
  if game.worker then
    game.worker:close()
  end
end

function love.draw()
  love.graphics.clear(0.12, 0.12, 0.15)
  if game.message then
    love.graphics.print(game.message, 20, 20)
    return
  end
  local ww, wh = love.graphics.getDimensions()
  local rows = math.ceil(SPRITES / COLUMNS)
  local cell = 16 + 1
  local scale = math.max(1, math.min(SCALE_MAX,
    math.floor(math.min((ww - 40) / (COLUMNS * cell), (wh - 100) / (rows * cell)))))
  local x0 = math.floor((ww - COLUMNS * cell * scale) / 2)
  for i, img in ipairs(game.sprites) do
    local col, row = (i - 1) % COLUMNS, math.floor((i - 1) / COLUMNS)
    love.graphics.draw(img, x0 + col * cell * scale, 20 + row * cell * scale, 0, scale, scale)
  end
  local ctx = game.label and game.labels[game.label] or "none"
  local status = game.sampling and string.format("step %d/%d", game.step, game.total)
    or "done"
  love.graphics.print(string.format("%s   seed %d   context: %s", status, game.seed, ctx), 20,
    wh - 60)
  local keys = { "space: new batch   v: variations of the first   0: no context" }
  for k = 1, 5 do
    if game.labels[k] then
      keys[#keys + 1] = k .. ": " .. game.labels[k]
    end
  end
  love.graphics.print(table.concat(keys, "   "), 20, wh - 35)
end
