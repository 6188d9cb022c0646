--- Sampling that never blocks a game: requests in, sprites out, the network elsewhere.
--
--     local w = minisd.worker.new({ model = bytes_or_path, threads = 1 })
--     local id = w:request({ n = 8, context = "hero", seed = 7, every = 5 })
--     -- each frame:
--     for _, ev in ipairs(w:poll()) do
--       if ev.kind == "done" then ... ev.sprites[i] ... end  -- RGBA byte strings
--     end
--
-- Two backends with the same API. In LÖVE (`love.thread` present) the model lives in a
-- `love.thread` of its own: `request`, `cancel` and `poll` only pass messages, so the
-- game's main thread never runs the network. Elsewhere (plain Lua or LuaJIT: Lua has no
-- threads) the work runs in-line, inside `poll`, one denoising step per call or as many
-- as fit in the time given to it.
--
-- Events (tables) from `poll`, in the order they happened:
--   {kind = "ready", label_names = {...}, channels = C, size = S, guidance = {ddim = 6, ...}}:
--     the model is loaded; guidance: the scale to sample a context with, per sampler
--     (diffusion.recommended_guidance_for: the model's own when its file has one)
--   {kind = "preview", id =, step =, total =, sprites =, width =, height =}: every
--     `every` steps, the sprites as the model sees them so far (its estimate of the clean
--     sprites), so a game can show them sharpening
--   {kind = "done", id =, step = total, total =, sprites =, width =, height =, seeds =,
--     seconds =}: the finished sprites
--   {kind = "cancelled", id =}
--   {kind = "error", id = (nil when not about one request), message =}: a request that
--     failed, or (id nil) a worker that could not start; later requests fail the same way
-- `sprites` is a list of n strings of width*height*4 bytes (RGBA, row-major), ready for
-- `love.image.newImageData(width, height, "rgba8", sprites[i])`.
-- @module minisd.worker
-- luacheck: read globals love

local util = require("minisd.util")

local M = {}

local REQUEST_OPTIONS = {
  "n", "context", "seed", "seeds", "sampler", "steps", "eta", "guidance", "every",
  "alpha_threshold", "palette", "colors", "init", "strength", "mask", "jumps", "negative",
  "interpolate", "signal_leak",
}

-- RGBA byte strings (one, or a list) of sprites of the model's size as (k, C, size, size):
-- in [-1, 1] for init, the mean of R, G and B in [0, 1] for a mask (white: generate).
local function sprites_from_bytes(what, list, cfg)
  local minisd, image = require("minisd"), require("minisd.image")
  local size, C = cfg.height or 16, cfg.in_channels or 3
  if type(list) == "string" then
    list = { list }
  end
  local pics = {}
  for i, bytes in ipairs(list) do
    if type(bytes) ~= "string" or #bytes ~= size * size * 4 then
      error(string.format("%s[%d]: expected %dx%d RGBA bytes (%d), got %s", what, i, size, size,
        size * size * 4, type(bytes) == "string" and (#bytes .. " bytes") or type(bytes)), 0)
    end
    pics[i] = image.from_rgba_bytes(bytes, size, size):reshape(1, 4, size, size)
  end
  local x = minisd.cat(pics, 1)
  if what == "mask" then
    return (x:narrow(2, 1, 1) + x:narrow(2, 2, 1) + x:narrow(2, 3, 1)) * (1 / 3)
  end
  x = require("minisd.data").to_channels(x, C, cfg.background or { 1, 1, 1 })
  return image.from_unit(x)
end

-- ---- the runner: loads the model and runs requests step by step -----------------------
-- Pure Lua over minisd; it runs inside the worker thread (love backend) or in the
-- caller's state (inline backend).

local Runner = {}
Runner.__index = Runner

-- opts: {model = path, bytes or nil (the shipped model), name =, threads =}.
-- Returns the runner; a model that fails to load leaves runner.failure set.
function M._runner(opts)
  local minisd = require("minisd")
  local r = setmetatable({ queue = {}, events = {}, job = nil }, Runner)
  if opts.threads then
    minisd.set_threads(opts.threads)
  end
  local model, err = minisd.load_model(opts.model, opts.name)
  if not model then
    r.failure = "worker: could not load the model: " .. tostring(err)
    r:emit({ kind = "error", message = r.failure })
    return r
  end
  r.model = model
  local cfg = model.config or {}
  local names = {}
  for i, v in ipairs(cfg.label_names or {}) do
    names[i] = v
  end
  -- the guidance scale to use with a context, per sampler: the model's own where its file
  -- records one (diffusion.recommended_guidance_for)
  local guidance = {}
  for _, s in ipairs(require("minisd.sched").names()) do
    guidance[s] = minisd.diffusion.recommended_guidance_for(s, model)
  end
  r:emit({ kind = "ready", label_names = names, channels = cfg.in_channels or 3,
    size = cfg.height or 16, guidance = guidance })
  return r
end

function Runner:emit(ev)
  self.events[#self.events + 1] = ev
end

-- The events so far, emptied.
function Runner:take()
  local ev = self.events
  self.events = {}
  return ev
end

function Runner:submit(id, req)
  if self.failure then
    self:emit({ kind = "error", id = id, message = self.failure })
    return
  end
  self.queue[#self.queue + 1] = { id = id, req = req }
end

function Runner:cancel(id)
  if self.job and self.job.id == id then
    self.job = nil
    self:emit({ kind = "cancelled", id = id })
    return
  end
  for i, q in ipairs(self.queue) do
    if q.id == id then
      table.remove(self.queue, i)
      self:emit({ kind = "cancelled", id = id })
      return
    end
  end
end

function Runner:busy()
  return self.job ~= nil or #self.queue > 0
end

-- The sprites of x (n, C, H, W) in [-1, 1] as RGBA byte strings, with the request's
-- pixel-art options.
local function sprite_bytes(x, req)
  local image = require("minisd.image")
  local shape = x:shape()
  if req.alpha_threshold and shape[2] == 4 then
    x = image.binary_alpha(x, req.alpha_threshold)
  end
  if req.palette then
    x = image.quantize(x, req.palette)
  elseif req.colors then
    x = image.reduce_colors(x, req.colors)
  end
  x = image.to_unit(x)
  local out = {}
  for i = 1, shape[1] do
    out[i] = image.rgba_bytes(x:narrow(1, i, 1):reshape(shape[2], shape[3], shape[4]))
  end
  return out, shape[4], shape[3]
end

-- Starts request q ({id =, req =}) as the current job.
function Runner:start(q)
  local req = q.req
  local minisd = require("minisd")
  local seeds = req.seeds
  if seeds == nil then
    -- one seed per sprite, from the request's seed, so any sprite can be made again alone
    seeds = {}
    for i = 1, req.n or 1 do
      seeds[i] = (req.seed or 0) + i - 1
    end
  end
  local cfg = self.model.config or {}
  local job
  if req.interpolate then
    local ip = req.interpolate
    job = minisd.diffusion.start_interpolation(self.model, {
      from = ip.from, to = ip.to, frames = ip.frames, sampler = req.sampler, steps = req.steps,
      eta = req.eta, guidance = req.guidance, negative = req.negative,
      signal_leak = req.signal_leak,
    })
    seeds = nil
  else
    local init = req.init and sprites_from_bytes("init", req.init, cfg) or nil
    local mask = req.mask and sprites_from_bytes("mask", req.mask, cfg) or nil
    -- sprite k starts from init k, cycling (one init: every sprite from it)
    local function cycle(x)
      if not x or x:shape()[1] == 1 or x:shape()[1] == #seeds then
        return x
      end
      local rows = {}
      for k = 1, #seeds do
        rows[k] = x:narrow(1, (k - 1) % x:shape()[1] + 1, 1)
      end
      return minisd.cat(rows, 1)
    end
    job = minisd.diffusion.start(self.model, {
      n = #seeds, context = req.context, seeds = seeds, sampler = req.sampler,
      steps = req.steps, eta = req.eta, guidance = req.guidance, negative = req.negative,
      init = cycle(init), strength = req.strength, mask = cycle(mask), jumps = req.jumps,
      signal_leak = req.signal_leak,
    })
  end
  self.job = { id = q.id, job = job, req = req, seeds = seeds, t0 = minisd.clock() }
end

-- Runs one step of the current request (starting the next one if none runs); returns
-- whether work remains. Failures become error events.
function Runner:work()
  if not self:busy() then
    return false
  end
  local id = self.job and self.job.id or self.queue[1].id
  local ok, err = pcall(function()
    if not self.job then
      self:start(table.remove(self.queue, 1))
    end
    local cur = self.job
    local job, req = cur.job, cur.req
    job:step()
    if job:done() then
      local sprites, w, h = sprite_bytes(job:result(), req)
      self.job = nil
      self:emit({ kind = "done", id = cur.id, step = job.i, total = job.total,
        sprites = sprites, width = w, height = h, seeds = cur.seeds,
        seconds = require("minisd").clock() - cur.t0 })
    elseif req.every and req.every > 0 and job.i % req.every == 0 then
      local sprites, w, h = sprite_bytes(job.pred_original_sample or job:result(), req)
      self:emit({ kind = "preview", id = cur.id, step = job.i, total = job.total,
        sprites = sprites, width = w, height = h })
    end
  end)
  if not ok then
    self.job = nil
    local msg = tostring(err):gsub("^[^:\n]*%.lua:%d+: ", "")
    self:emit({ kind = "error", id = id, message = msg })
  end
  return self:busy()
end

-- ---- request checking (in the caller, so that misuse raises where it happens) ----------

local function check_request(req)
  if type(req) ~= "table" then
    error("worker:request: expected a table of options, got " .. type(req), 3)
  end
  util.check_options("worker:request", req, REQUEST_OPTIONS, 2)
  local function int(name, min)
    local v = req[name]
    if v ~= nil and (type(v) ~= "number" or v ~= math.floor(v) or v < min) then
      error(string.format("worker:request: %s must be an integer >= %d, got %s", name, min,
        tostring(v)), 4)
    end
  end
  int("n", 1)
  int("steps", 1)
  int("colors", 1)
  int("jumps", 0)
  if req.interpolate ~= nil and (type(req.interpolate) ~= "table" or req.init ~= nil) then
    error("worker:request: interpolate must be a table {from = {seed =, context =}, to = "
      .. "{...}, frames =}, and does not go with init", 3)
  end
  for _, name in ipairs({ "init", "mask" }) do
    local v = req[name]
    if v ~= nil and type(v) ~= "string" and type(v) ~= "table" then
      error(string.format("worker:request: %s must be RGBA bytes of a sprite or a list of them, "
        .. "got %s", name, type(v)), 3)
    end
  end
  if req.signal_leak ~= nil and type(req.signal_leak) ~= "boolean" then
    error("worker:request: signal_leak must be true or false, got " .. type(req.signal_leak), 3)
  end
  if (req.strength ~= nil or req.mask ~= nil) and req.init == nil then
    error("worker:request: strength and mask go with init (the sprites to start from)", 3)
  end
  int("every", 0)
  int("seed", 0)
  if req.seeds ~= nil then
    if type(req.seeds) ~= "table" or #req.seeds == 0 then
      error("worker:request: seeds must be a non-empty list of integers", 3)
    end
    if req.n ~= nil and req.n ~= #req.seeds then
      error(string.format("worker:request: %d seeds for n = %d", #req.seeds, req.n), 3)
    end
    if req.seed ~= nil then
      error("worker:request: give seed or seeds, not both", 3)
    end
  end
  local ctx = req.context
  if ctx ~= nil and type(ctx) ~= "string" and type(ctx) ~= "table" then
    error("worker:request: context must be a label expression (\"hero\", \"hero,food\") or a "
      .. "table of feature values, got " .. type(ctx), 3)
  end
  if type(req.guidance) == "table" then -- one per sprite
    for i, g in ipairs(req.guidance) do
      if type(g) ~= "number" then
        error(string.format("worker:request: guidance[%d] must be a number, got %s", i,
          type(g)), 3)
      end
    end
  end
  for _, name in ipairs({ "eta", "alpha_threshold", "strength" }) do
    if req[name] ~= nil and type(req[name]) ~= "number" then
      error(string.format("worker:request: %s must be a number, got %s", name,
        type(req[name])), 3)
    end
  end
  if req.palette ~= nil and req.colors ~= nil then
    error("worker:request: give palette or colors, not both", 3)
  end
  local palette
  if req.palette ~= nil then
    local ok, pal = pcall(require("minisd.image").palette, req.palette)
    if not ok then
      error("worker:request: palette: " .. tostring(pal):gsub("^.-image%.palette: ", ""), 3)
    end
    palette = pal
  end
  if req.sampler ~= nil and type(req.sampler) ~= "string" then
    error("worker:request: sampler must be a name (" .. table.concat(
      require("minisd.sched").names(), ", ") .. ")", 3)
  end
  if req.guidance ~= nil and type(req.guidance) ~= "number" and type(req.guidance) ~= "table" then
    error("worker:request: guidance must be a number or one per sprite, got "
      .. type(req.guidance), 3)
  end
  -- a copy of plain values, so that a thread can take it
  local function copy_of(v)
    if type(v) ~= "table" then
      return v
    end
    local t = {}
    for k, x in pairs(v) do
      t[k] = copy_of(x)
    end
    return t
  end
  local copy = copy_of(req)
  copy.palette = palette -- {r, g, b} lists, whatever form it was given in
  return copy
end

-- ---- the worker object -------------------------------------------------------------

local Worker = {}
Worker.__index = Worker

--- Queues a request; returns its id (events about it carry this id).
-- @param req {n = 1, context = "hero" (label expression) or feature values, seed = 0
--   (sprite i gets seed + i - 1) or seeds = {s1, ..., sn}, sampler = "ddim", steps =
--   (the sampler's default), eta =, guidance = 0, every = k (a preview every k steps; 0
--   or nil: none), alpha_threshold = (RGBA models: binary alpha at this level in [0, 1]),
--   palette = (every pixel to the nearest of these colours: anything image.palette takes,
--   e.g. "#1a1c2c,#5d275d") or colors = k (each sprite to k colours of its own),
--   negative = a context to steer away from (with guidance; guidance may be one per sprite),
--   init = RGBA bytes of a sprite (or a list: sprite k starts from init k, cycling) for
--   variations with strength = 0.8, or inpainting with mask = RGBA bytes (white: generate,
--   black: keep) and jumps, or interpolate = {from = {seed =, context =}, to = {...},
--   frames = 8} (n and seeds do not apply: the result has `frames` sprites), signal_leak =
--   false (start from pure noise, not from the model's signal-leak statistics: see
--   diffusion.start)}
-- @return id (integer)
function Worker:request(req)
  if self.closed then
    error("worker:request: the worker is closed", 2)
  end
  local copy = check_request(req)
  self.next_id = self.next_id + 1
  local id = self.next_id
  self:send({ cmd = "request", id = id, req = copy })
  return id
end

--- Cancels a request (queued or running); a "cancelled" event follows. Unknown or
-- finished ids are ignored.
function Worker:cancel(id)
  if type(id) ~= "number" then
    error("worker:cancel: expected a request id, got " .. type(id), 2)
  end
  if not self.closed then
    self:send({ cmd = "cancel", id = id })
  end
end

--- The events since the last call (a list, possibly empty). The inline backend does its
-- work here: one denoising step per call, or as many as fit in `seconds`.
-- @param seconds (inline backend) time to spend on steps (default 0: one step)
function Worker:poll(seconds)
  if seconds ~= nil and type(seconds) ~= "number" then
    error("worker:poll: seconds must be a number, got " .. type(seconds), 2)
  end
  if self.closed then
    return {}
  end
  return self:receive(seconds or 0)
end

--- Stops the worker (a running request is dropped). Safe to call twice.
function Worker:close()
  if not self.closed then
    self.closed = true
    self:shutdown()
  end
end

-- inline backend

local Inline = setmetatable({}, { __index = Worker })
Inline.__index = Inline

function Inline:send(msg)
  if msg.cmd == "request" then
    self.runner:submit(msg.id, msg.req)
  elseif msg.cmd == "cancel" then
    self.runner:cancel(msg.id)
  end
end

function Inline:receive(seconds)
  local r = self.runner
  if r:busy() then
    local clock = require("minisd").clock
    local t0 = clock()
    repeat
      r:work()
    until not r:busy() or clock() - t0 >= seconds
  end
  return r:take()
end

function Inline:shutdown()
  self.runner.queue, self.runner.job, self.runner.model = {}, nil, nil
end

--- Whether requests are queued or running.
function Worker:busy()
  if self.runner then
    return self.runner:busy()
  end
  return self.pending > 0
end

-- love backend

local Love = setmetatable({}, { __index = Worker })
Love.__index = Love

-- The thread's code: a string, so that it needs no file (a fused game has none).
local THREAD_CODE = [[
local path, cpath, inbox, outbox, opts = ...
package.path, package.cpath = path, cpath
require("love.thread")
local ok, err = pcall(function()
  require("minisd.worker")._thread_main(inbox, outbox, opts)
end)
if not ok then
  outbox:push({ kind = "error", message = "worker: " .. tostring(err) })
end
]]

-- Runs in the worker thread: requests from inbox, events to outbox.
function M._thread_main(inbox, outbox, opts)
  local r = M._runner(opts)
  local function flush()
    for _, ev in ipairs(r:take()) do
      outbox:push(ev)
    end
  end
  local function handle(msg)
    if msg.cmd == "request" then
      r:submit(msg.id, msg.req)
    elseif msg.cmd == "cancel" then
      r:cancel(msg.id)
    elseif msg.cmd == "quit" then
      return true
    end
  end
  flush()
  while true do
    -- between steps, take every message waiting; when idle, sleep until one comes
    local msg
    if r:busy() then
      msg = inbox:pop()
    else
      msg = inbox:demand()
    end
    while msg do
      if handle(msg) then
        return
      end
      msg = inbox:pop()
    end
    r:work()
    flush()
  end
end

function Love:send(msg)
  if msg.cmd == "request" then
    self.pending = self.pending + 1
  end
  self.inbox:push(msg)
end

function Love:receive()
  local out = {}
  local ev = self.outbox:pop()
  while ev do
    if ev.kind == "done" or ev.kind == "cancelled" or (ev.kind == "error" and ev.id) then
      self.pending = math.max(0, self.pending - 1)
    end
    out[#out + 1] = ev
    ev = self.outbox:pop()
  end
  local err = self.thread:getError()
  if err and not self.reported then
    self.reported = true
    out[#out + 1] = { kind = "error", message = "worker: the thread stopped: " .. err }
  end
  return out
end

function Love:shutdown()
  self.inbox:clear()
  self.inbox:push({ cmd = "quit" })
  self.thread:wait()
end

--- Starts a worker.
-- @param opts {model = a model file's path or its bytes (`love.filesystem.read`), nil:
--   the shipped model; name = what to call bytes in messages; threads = the worker's
--   maths threads (default 1: a game keeps the other cores); backend = "love" (a
--   love.thread), "inline", or "auto" (the default: love inside LÖVE, else inline)}
-- @return the worker; a model that cannot be loaded is reported by the first poll as an
--   error event (id nil), so the love and inline backends behave alike
function M.new(opts)
  opts = util.check_options("worker.new", opts, { "model", "name", "threads", "backend" })
  if opts.model ~= nil and type(opts.model) ~= "string" then
    error("worker.new: model must be a file name or a model file's bytes, got "
      .. type(opts.model), 2)
  end
  local threads = opts.threads or 1
  if type(threads) ~= "number" or threads ~= math.floor(threads) or threads < 1 then
    error("worker.new: threads must be a positive integer, got " .. tostring(opts.threads), 2)
  end
  local backend = opts.backend or "auto"
  local has_love = type(love) == "table" and type(love.thread) == "table"
    and type(love.thread.newThread) == "function"
  if backend == "auto" then
    backend = has_love and "love" or "inline"
  end
  local ropts = { model = opts.model, name = opts.name, threads = threads }
  if backend == "inline" then
    return setmetatable({ next_id = 0, pending = 0, runner = M._runner(ropts) }, Inline)
  elseif backend == "love" then
    if not has_love then
      error("worker.new: the love backend needs LÖVE's love.thread", 2)
    end
    local w = setmetatable({ next_id = 0, pending = 0, inbox = love.thread.newChannel(),
      outbox = love.thread.newChannel() }, Love)
    w.thread = love.thread.newThread(THREAD_CODE)
    w.thread:start(package.path, package.cpath, w.inbox, w.outbox, ropts)
    return w
  end
  error("worker.new: backend must be \"auto\", \"love\" or \"inline\", got "
    .. tostring(opts.backend), 2)
end

return M
