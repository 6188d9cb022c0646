-- A headless smoke test of main.lua under plain LuaJIT: stubs the small part of the LÖVE API
-- that main.lua uses, builds a tiny random ContextUnet{n_feat=8} in a temporary file, and
-- runs love.load / love.update / love.draw / love.keypressed for a few batches, checking
-- what the game hands to LÖVE. Without love.thread, minisd.worker runs its in-line
-- backend: the same requests and events, one denoising step per poll.
--   luajit examples/love/smoke.lua      (MINISD_CPATH=path/to/luajit/?.so to pick the core)
-- luacheck: std luajit, globals love game
local here = (arg and arg[0] or "examples/love/smoke.lua"):match("^(.*)/[^/]*$") or "."
local root = here .. "/../.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("MINISD_CPATH") or (root .. "/build/luajit/?.so")) .. ";"
  .. package.cpath

local minisd = require("minisd")

local function check(cond, msg)
  if not cond then
    io.stderr:write("smoke: FAILED: " .. msg .. "\n")
    os.exit(1)
  end
end

-- ---- the love stubs ---------------------------------------------------------
local made, drawn, printed, filters = 0, 0, {}, {}
love = {
  filesystem = { getSource = function() return here end },
  image = {
    newImageData = function(w, h, format, bytes)
      check(format == "rgba8", "image data format " .. tostring(format))
      check(type(bytes) == "string" and #bytes == w * h * 4,
        string.format("%dx%d image data with %d bytes", w, h, #bytes))
      return { w = w, h = h, bytes = bytes }
    end,
  },
  graphics = {
    newImage = function(data)
      made = made + 1
      local img = { data = data }
      function img.setFilter(_, min, mag) filters[#filters + 1] = min .. "/" .. mag end
      function img.getWidth() return data.w end
      function img.getHeight() return data.h end
      return img
    end,
    draw = function(img, _, _, _, sx, sy)
      check(img and img.data, "draw of a non-image")
      check(sx and sx >= 1 and sx == sy, "draw scale")
      drawn = drawn + 1
    end,
    print = function(text) printed[#printed + 1] = text end,
    clear = function() end,
    getDimensions = function() return 800, 480 end,
  },
  event = { quit = function() end },
}

-- ---- a tiny model -------------------------------------------------------------
local path = os.tmpname()
os.remove(path)
path = path .. ".safetensors"
local model = minisd.models.ContextUnet({ n_feat = 8 })
model:save(path)
local mf = assert(io.open(path, "rb"))
local model_bytes = mf:read("*a")
mf:close()

dofile(here .. "/main.lua")
check(type(love.load) == "function" and type(love.update) == "function"
  and type(love.draw) == "function", "main.lua defines love.load, love.update and love.draw")

love.load({ path })
os.remove(path)
check(game.worker ~= nil and game.request ~= nil, "a worker started and a batch was requested")
love.draw()

-- runs frames until the current batch is done; returns the number of frames
local function run_batch(label)
  local frames, batches = 0, game.batches
  local first
  while game.batches == batches do
    love.update(1 / 60)
    love.draw()
    check(game.message == nil, "no error: " .. tostring(game.message))
    frames = frames + 1
    if frames == 2 then
      first = game.sprites[1].data.bytes
    end
    check(frames <= 1000, "the batch never finishes")
  end
  check(game.step == game.total and game.total == 25, "every step shown")
  check(#game.sprites == 8, "8 sprites shown, got " .. #game.sprites)
  check(game.sprites[1]:getWidth() == 16 and game.sprites[1]:getHeight() == 16, "16x16 sprites")
  check(game.sprites[1].data.bytes ~= first, "the sprites changed while denoising")
  print(string.format("smoke: %s: %d frames, %d steps, seed %d", label, frames, game.total,
    game.seed))
  return frames
end

-- the inline backend (no love.thread here) runs one step per poll, so one per frame
check(run_batch("batch 1") == 25, "25 steps, one per frame")
local seed = game.seed
love.keypressed("space")
check(game.seed == seed + 1 and game.step == 0, "space starts a new batch with a new seed")
run_batch("space")
love.keypressed("3")
check(game.label == 3, "key 3 selects the third label")
run_batch("context " .. game.labels[3])
-- v: variations of the first sprite: a batch that starts part-way (15 of the 25 steps)
local first = game.finished[1]
love.keypressed("v")
local frames_v = 0
local before = game.batches
while game.batches == before do
  love.update(1 / 60)
  frames_v = frames_v + 1
  check(frames_v <= 100, "the variations never finish")
end
check(frames_v == 15 and game.total == 15, "variations run 15 steps, got " .. frames_v)
check(game.finished[1] ~= first, "the variations differ from the sprite")
love.keypressed("0")
check(game.label == nil and game.step == 0, "key 0 clears the context")
love.update(1 / 60)
local req = game.request
love.keypressed("x") -- ignored
check(game.request == req, "other keys are ignored")
check(game.batches == 4, "4 batches finished, got " .. game.batches)
for _, f in ipairs(filters) do
  check(f == "nearest/nearest", "filter " .. f)
end
check(made >= 75 * 8 and drawn >= 74 * 8,
  string.format("sprites made and drawn each frame: %d images, %d draws", made, drawn))
love.quit()

-- a model inside the game: love.filesystem.read's bytes go to the worker
local bytes = model_bytes
love.filesystem.getInfo = function(name) return name == "sprites.safetensors" and {} or nil end
love.filesystem.read = function(name)
  check(name == "sprites.safetensors", "read " .. tostring(name))
  return bytes
end
local batches = game.batches
game.request = nil
love.load({})
check(game.message == nil, "the game's own model: " .. tostring(game.message))
for _ = 1, 30 do
  love.update(1 / 60)
end
check(game.batches == batches + 1 and #game.sprites == 8,
  "a batch from the model read with love.filesystem")
love.quit()
print(string.format("smoke: ok (%d images made, %d draws)", made, drawn))
