-- minisd in LÖVE 11: generates a batch of 16x16 sprites at run time, one denoising step
-- per frame, and shows them sharpening live.
-- Run from the repository root: love examples/love [path/to/model.safetensors]
-- (default: the shipped models/sprites-context.safetensors)
-- Keys: space = new batch (new seed), 1-5 = context label, 0 = no context, escape = quit.
-- luacheck: std luajit, globals love game

-- Find the minisd Lua modules and the LuaJIT build of the C core relative to this folder
-- (examples/love -> the repository root); MINISD_CPATH overrides the core's location.
local source = love.filesystem.getSource()
local root = source .. "/../.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MINISD_CPATH") or (root .. "/build/luajit/?.so")) .. ";"
  .. package.cpath

local minisd = require("minisd")
local image = require("minisd.image")

local SPRITES, STEPS, COLUMNS, PADDING = 8, 25, 4, 1

-- The game's state, global so that a test harness can look at it.
game = {
  model = nil, job = nil, seed = 1, label = nil, picture = nil, message = nil,
  batches = 0, steps_shown = 0,
}

-- A LÖVE image of the current samples: [-1,1] -> [0,1], a grid, RGBA bytes.
local function refresh_picture()
  local grid = image.grid(image.to_unit(game.job:result()), { nrow = COLUMNS, padding = PADDING })
  local bytes, w, h = image.rgba_bytes(grid)
  local data = love.image.newImageData(w, h, "rgba8", bytes)
  local pic = love.graphics.newImage(data)
  pic:setFilter("nearest", "nearest")
  game.picture = pic
end

local function label_name(k)
  local names = game.model.config.label_names or {}
  return names[k]
end

-- Starts a new batch; the steps run in love.update.
local function new_batch()
  local ctx = game.label and label_name(game.label) or nil
  game.job = minisd.diffusion.start(game.model, {
    n = SPRITES, context = ctx, steps = STEPS, seed = game.seed,
  })
  game.steps_shown = 0
  refresh_picture()
end

function love.load(args)
  local path = (args and args[1]) or os.getenv("MINISD_MODEL") -- nil: the shipped model
  local model, err = minisd.load_model(path)
  if not model then
    game.message = "could not load the model:\n" .. tostring(err)
      .. "\n\nrun: love examples/love path/to/model.safetensors"
    print(game.message)
    return
  end
  game.model = model
  game.seed = os.time() % 100000
  new_batch()
end

function love.update(_dt)
  local job = game.job
  if not job or job:done() then
    return
  end
  job:step()
  game.steps_shown = job.i
  refresh_picture()
  if job:done() then
    game.batches = game.batches + 1
    print(string.format("batch %d done: %d sprites, seed %d, context %s", game.batches,
      SPRITES, game.seed, tostring(game.label and label_name(game.label) or "none")))
  end
end

function love.keypressed(key)
  if key == "escape" then
    love.event.quit()
    return
  end
  if not game.model then
    return
  end
  if key == "space" then
    game.seed = game.seed + 1
    new_batch()
  elseif key == "0" then
    game.label = nil
    new_batch()
  else
    local k = tonumber(key)
    if k and k >= 1 and k <= 5 and label_name(k) then
      game.label = k
      new_batch()
    end
  end
end

function love.draw()
  love.graphics.clear(0.12, 0.12, 0.15)
  if game.message then
    love.graphics.print(game.message, 20, 20)
    return
  end
  if game.picture then
    local ww, wh = love.graphics.getDimensions()
    local pw, ph = game.picture:getWidth(), game.picture:getHeight()
    local scale = math.max(1, math.floor(math.min((ww - 40) / pw, (wh - 100) / ph)))
    love.graphics.draw(game.picture, math.floor((ww - pw * scale) / 2), 20, 0, scale, scale)
  end
  local job = game.job
  local ctx = game.label and label_name(game.label) or "none"
  love.graphics.print(string.format("step %d/%d   seed %d   context: %s", job.i, job.total,
    game.seed, ctx), 20, love.graphics.getHeight() - 60)
  local keys = { "space: new batch   0: no context" }
  for k = 1, 5 do
    if label_name(k) then
      keys[#keys + 1] = k .. ": " .. label_name(k)
    end
  end
  love.graphics.print(table.concat(keys, "   "), 20, love.graphics.getHeight() - 35)
end
