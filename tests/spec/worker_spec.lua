-- minisd.worker with its in-line backend (what runs outside LÖVE): requests, previews,
-- per-sprite seeds, cancel, errors as events, and the sprites' bytes against a direct
-- diffusion.sample of the same model. The love.thread backend runs under real LÖVE in
-- tests/love_check.sh.
local minisd = require("minisd")
local image = require("minisd.image")
local H = require("helpers")

-- RGBA byte strings of x (n, C, H, W) in [-1, 1], computed here without the worker.
local function bytes_of(x)
  x = image.to_unit(x)
  local s = x:shape()
  local out = {}
  for i = 1, s[1] do
    out[i] = image.rgba_bytes(x:narrow(1, i, 1):reshape(s[2], s[3], s[4]))
  end
  return out
end

-- every event until the worker is idle, after the ones already taken
local function drain(w, events)
  events = events or {}
  local polls = 0
  repeat
    for _, ev in ipairs(w:poll()) do
      events[#events + 1] = ev
    end
    polls = polls + 1
    assert(polls < 10000, "the worker never becomes idle")
  until not w:busy()
  for _, ev in ipairs(w:poll()) do
    events[#events + 1] = ev
  end
  return events, polls
end

local function of_kind(events, kind, id)
  local out = {}
  for _, ev in ipairs(events) do
    if ev.kind == kind and (id == nil or ev.id == id) then
      out[#out + 1] = ev
    end
  end
  return out
end

describe("minisd.worker (inline backend)", function()
  local dir, path, model

  setup(function()
    dir = H.tmpdir()
    minisd.manual_seed(3)
    model = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    path = dir .. "/tiny.safetensors"
    model:save(path)
    model = assert(minisd.load_model(path))
  end)

  teardown(function()
    os.remove(path)
    os.remove(dir)
  end)

  it("is the backend outside LÖVE, and says when the model is ready", function()
    local w = minisd.worker.new({ model = path })
    local ev = w:poll()
    assert.are.equal(1, #ev)
    assert.are.equal("ready", ev[1].kind)
    assert.are.same(model.config.label_names, ev[1].label_names)
    assert.are.equal(4, ev[1].channels)
    assert.are.equal(16, ev[1].size)
    -- the guidance per sampler: the library's for a model without its own
    assert.are.same(minisd.diffusion.guidance_by_sampler, ev[1].guidance)
    assert.is_false(w:busy())
    w:close()
    -- a model file that records its own scale for a sampler
    local own = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8,
      guidance = { ddim = 4.5 } })
    own:load_state_dict(model:state_dict())
    local own_path = path .. ".own.safetensors"
    assert(own:save(own_path))
    w = minisd.worker.new({ model = own_path })
    ev = w:poll()
    os.remove(own_path)
    assert.are.equal(4.5, ev[1].guidance.ddim)
    assert.are.equal(minisd.diffusion.guidance_by_sampler.ddpm, ev[1].guidance.ddpm)
    w:close()
  end)

  it("returns the sprites diffusion.sample makes, one step per poll, previews every k", function()
    local w = minisd.worker.new({ model = path })
    local id = w:request({ n = 3, context = "food", seed = 5, steps = 6, guidance = 2,
      every = 2 })
    assert.is_true(w:busy())
    local events, polls = drain(w)
    assert.are.equal(6, polls) -- six steps, one per poll
    local previews = of_kind(events, "preview", id)
    assert.are.equal(2, #previews) -- steps 2 and 4 (step 6 is the result)
    assert.are.same({ 2, 4 }, { previews[1].step, previews[2].step })
    local done = of_kind(events, "done", id)
    assert.are.equal(1, #done)
    done = done[1]
    assert.are.same({ 6, 6, 16, 16 }, { done.step, done.total, done.width, done.height })
    assert.are.same({ 5, 6, 7 }, done.seeds)
    local x = minisd.diffusion.sample(model, { seeds = { 5, 6, 7 }, context = "food",
      steps = 6, guidance = 2 })
    assert.are.same(bytes_of(x), done.sprites)
    for _, s in ipairs(done.sprites) do
      assert.are.equal(16 * 16 * 4, #s)
    end
    w:close()
  end)

  it("makes a sprite of a batch again alone from its seed", function()
    local w = minisd.worker.new({ model = path })
    local a = w:request({ n = 4, seed = 10, steps = 5 })
    local b = w:request({ seeds = { 12 }, steps = 5 })
    local events = drain(w)
    local batch, alone = of_kind(events, "done", a)[1], of_kind(events, "done", b)[1]
    assert.are.equal(4, #batch.sprites)
    assert.are.equal(batch.sprites[3], alone.sprites[1])
    assert.are_not.equal(batch.sprites[2], batch.sprites[3])
    -- and diffusion.start's seeds: the same noise as a generator seeded alone
    local x = minisd.diffusion.start(model, { seeds = { 12, 13 }, steps = 5 }).x
    local z = minisd.randn({ 1, 4, 16, 16 }, minisd.Generator(13))
    H.assert_close(x:narrow(1, 2, 1), z, 0, 0)
    w:close()
  end)

  it("gives only 0 or 255 alpha with alpha_threshold", function()
    local w = minisd.worker.new({ model = path })
    local id = w:request({ n = 2, steps = 3, alpha_threshold = 0.5 })
    local done = of_kind(drain(w), "done", id)[1]
    local counts = { [0] = 0, [255] = 0 }
    for _, s in ipairs(done.sprites) do
      for i = 4, #s, 4 do
        local a = s:byte(i)
        assert.is_true(a == 0 or a == 255, "alpha " .. a)
        counts[a] = counts[a] + 1
      end
    end
    assert.are.equal(2 * 256, counts[0] + counts[255])
    w:close()
  end)

  it("maps colours to a palette or to k colours per sprite", function()
    local w = minisd.worker.new({ model = path })
    local a = w:request({ n = 2, steps = 3, alpha_threshold = 0.5, palette = "#000000,#ff0000" })
    local b = w:request({ n = 2, steps = 3, colors = 2 })
    local events = drain(w)
    for _, s in ipairs(of_kind(events, "done", a)[1].sprites) do
      for i = 1, #s, 4 do
        local r, g, bl = s:byte(i, i + 2)
        assert.is_true(g == 0 and bl == 0 and (r == 0 or r == 255), r .. "," .. g .. "," .. bl)
      end
    end
    for _, s in ipairs(of_kind(events, "done", b)[1].sprites) do
      local seen, n = {}, 0
      for i = 1, #s, 4 do
        local key = s:sub(i, i + 2)
        if not seen[key] then
          seen[key], n = true, n + 1
        end
      end
      assert.is_true(n <= 2, n .. " colours")
    end
    assert.has_error(function() w:request({ palette = "#zz0000" }) end,
      "worker:request: palette: '#zz0000' is not a colour (#rrggbb)")
    assert.has_error(function() w:request({ palette = "#000000", colors = 2 }) end)
    w:close()
  end)

  it("makes variations, inpaints and interpolates from RGBA bytes", function()
    local w = minisd.worker.new({ model = path })
    local base = w:request({ n = 1, seed = 3, steps = 3 })
    local src = of_kind(drain(w), "done", base)[1].sprites[1]
    -- strength 0: the input's bytes back, for each sprite
    local same = w:request({ n = 2, init = src, strength = 0 })
    local d = of_kind(drain(w), "done", same)[1]
    assert.are.same({ src, src }, d.sprites)
    -- a mask (white: generate) over the right half: the left half's bytes stay
    local px = {}
    for _ = 1, 16 do
      for x = 1, 16 do
        px[#px + 1] = x > 8 and string.char(255, 255, 255, 255) or string.char(0, 0, 0, 255)
      end
    end
    local inp = w:request({ n = 1, init = { src }, mask = table.concat(px), steps = 4, seed = 8,
      jumps = 1, guidance = { 2 }, context = "hero", negative = "food" })
    local out = of_kind(drain(w), "done", inp)[1].sprites[1]
    local changed = false
    for y = 0, 15 do
      local row = y * 64
      assert.are.equal(src:sub(row + 1, row + 32), out:sub(row + 1, row + 32), "row " .. y)
      changed = changed or src:sub(row + 33, row + 64) ~= out:sub(row + 33, row + 64)
    end
    assert.is_true(changed, "the right half was not generated")
    local ip = w:request({ interpolate = { from = { seed = 1, context = "hero" },
      to = { seed = 2, context = "food" }, frames = 3 }, steps = 3, guidance = 2 })
    assert.are.equal(3, #of_kind(drain(w), "done", ip)[1].sprites)
    local bad = w:request({ init = "short" })
    local e = of_kind(drain(w), "error", bad)[1]
    assert.truthy(e and e.message:find("init[1]: expected 16x16 RGBA bytes (1024), got 5 bytes",
      1, true), e and e.message)
    assert.has_error(function() w:request({ mask = src }) end,
      "worker:request: strength and mask go with init (the sprites to start from)")
    w:close()
  end)

  it("starts from the model's signal-leak statistics, or from pure noise when asked",
    function()
      local leaky = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4,
        signal_leak = { channels = 4, groups = { none = { 0.5, -0.5, 0.25, 1, -1, 0, 0, -1 },
          ["1"] = { 1, 1, 1, 1 } } } })
      leaky:load_state_dict(model:state_dict())
      local lpath = dir .. "/leaky.safetensors"
      assert(leaky:save(lpath))
      local w = minisd.worker.new({ model = lpath })
      local on = w:request({ n = 2, seed = 4, steps = 3, context = "hero" })
      local off = w:request({ n = 2, seed = 4, steps = 3, context = "hero", signal_leak = false })
      local events = drain(w)
      local direct = function(leak)
        return bytes_of(minisd.diffusion.sample(leaky, { seeds = { 4, 5 }, steps = 3,
          context = "hero", signal_leak = leak }))
      end
      assert.are.same(direct(nil), of_kind(events, "done", on)[1].sprites)
      assert.are.same(direct(false), of_kind(events, "done", off)[1].sprites)
      assert.are_not.same(direct(nil), direct(false))
      assert.has_error(function() w:request({ signal_leak = 1 }) end,
        "worker:request: signal_leak must be true or false, got number")
      w:close()
      os.remove(lpath)
      -- asked of a model without the statistics: an error event naming the problem
      local w2 = minisd.worker.new({ model = path })
      local bad = w2:request({ signal_leak = true, steps = 2 })
      local e = of_kind(drain(w2), "error", bad)[1]
      assert.truthy(e and e.message:find("carries no signal-leak statistics", 1, true),
        e and e.message)
      w2:close()
    end)

  it("runs several steps in one poll when given the time, and stops when done", function()
    local w = minisd.worker.new({ model = path })
    w:poll()
    local id = w:request({ n = 1, steps = 6, every = 1 })
    -- far more time than six steps of a tiny net take: the whole request in one call
    local events = w:poll(600)
    assert.are.equal(6, #events)
    assert.are.same({ "preview", 1 }, { events[1].kind, events[1].step })
    assert.are.same({ "done", id, 6 }, { events[6].kind, events[6].id, events[6].step })
    assert.is_false(w:busy())
    w:close()
    assert.are.same({}, w:poll())
  end)

  it("cancels a queued and a running request", function()
    local w = minisd.worker.new({ model = path })
    local a = w:request({ n = 1, steps = 10 })
    local b = w:request({ n = 1, steps = 10 })
    local c = w:request({ n = 1, steps = 2 })
    w:poll() -- a: step 1
    w:cancel(a)
    w:cancel(b)
    w:cancel(999) -- unknown: ignored
    local events = drain(w)
    assert.are.equal(1, #of_kind(events, "cancelled", a))
    assert.are.equal(1, #of_kind(events, "cancelled", b))
    assert.are.equal(0, #of_kind(events, "done", a))
    assert.are.equal(0, #of_kind(events, "done", b))
    assert.are.equal(1, #of_kind(events, "done", c))
    w:close()
  end)

  it("loads the model from its bytes as from its file", function()
    local bytes = H.read_file(path)
    local w1 = minisd.worker.new({ model = path })
    local w2 = minisd.worker.new({ model = bytes, name = "tiny (bytes)" })
    local r1 = of_kind(drain(w1, {}), "ready")
    local a, b = w1:request({ n = 2, steps = 3, seed = 1 }), w2:request({ n = 2, steps = 3,
      seed = 1 })
    local d1 = of_kind(drain(w1), "done", a)[1]
    local d2 = of_kind(drain(w2), "done", b)[1]
    assert.are.equal(1, #r1)
    assert.are.same(d1.sprites, d2.sprites)
  end)

  it("reports a failed request as an event and goes on with the next", function()
    local w = minisd.worker.new({ model = path })
    local bad = w:request({ n = 1, context = "Dragon" })
    local bad2 = w:request({ n = 1, guidance = 2 }) -- guidance needs a context
    local good = w:request({ n = 1, steps = 2 })
    local events = drain(w)
    local e1, e2 = of_kind(events, "error", bad)[1], of_kind(events, "error", bad2)[1]
    assert.truthy(e1 and e1.message:find("unknown label 'Dragon'", 1, true), e1 and e1.message)
    assert.falsy(e1.message:find("%.lua:%d+"), e1.message)
    assert.truthy(e2 and e2.message:find("guidance needs a context", 1, true))
    assert.are.equal(1, #of_kind(events, "done", good))
  end)

  it("reports a model that cannot be loaded, then fails each request the same way", function()
    local w = minisd.worker.new({ model = dir .. "/missing.safetensors" })
    local id = w:request({ n = 1 })
    local events = drain(w)
    assert.are.equal("error", events[1].kind)
    assert.is_nil(events[1].id)
    assert.truthy(events[1].message:find("missing.safetensors", 1, true), events[1].message)
    local e = of_kind(events, "error", id)[1]
    assert.truthy(e and e.message:find("could not load the model", 1, true))
    local w2 = minisd.worker.new({ model = "not a model\0" })
    assert.are.equal("error", w2:poll()[1].kind)
  end)

  it("raises on misuse, naming the option", function()
    assert.has_error(function() minisd.worker.new({ threads = 0 }) end,
      "worker.new: threads must be a positive integer, got 0")
    assert.has_error(function() minisd.worker.new({ model = 3 }) end)
    assert.has_error(function() minisd.worker.new({ backend = "love" }) end,
      "worker.new: the love backend needs LÖVE's love.thread")
    assert.has_error(function() minisd.worker.new({ backend = "gpu", model = path }) end)
    assert.has_error(function() minisd.worker.new({ bogus = 1 }) end)
    local w = minisd.worker.new({ model = path })
    assert.has_error(function() w:request({ n = 0 }) end,
      "worker:request: n must be an integer >= 1, got 0")
    assert.has_error(function() w:request({ nn = 2 }) end)
    assert.has_error(function() w:request({ seeds = { 1, 2 }, n = 3 }) end,
      "worker:request: 2 seeds for n = 3")
    assert.has_error(function() w:request({ seeds = { 1 }, seed = 2 }) end)
    assert.has_error(function() w:request({ context = 5 }) end)
    assert.has_error(function() w:request("hero") end)
    assert.has_error(function() w:cancel("x") end)
    assert.has_error(function() w:poll("soon") end)
    w:close()
    w:close() -- twice is fine
    assert.has_error(function() w:request({ n = 1 }) end, "worker:request: the worker is closed")
  end)
end)

describe("diffusion.start's seeds", function()
  it("checks them", function()
    local m = minisd.models.ContextUnet({ n_feat = 8 })
    assert.has_error(function() minisd.diffusion.start(m, { seeds = { 1, 2 }, n = 3 }) end,
      "diffusion.sample: 2 seeds for n = 3 sprites")
    assert.has_error(function() minisd.diffusion.start(m, { seeds = { 1, 2 }, seed = 3 }) end)
    assert.has_error(function() minisd.diffusion.start(m, { seeds = { 1.5 } }) end)
    assert.has_error(function() minisd.diffusion.start(m, { seeds = {} }) end)
  end)
end)
