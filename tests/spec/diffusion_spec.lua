-- minisd.diffusion with a small real ContextUnet (n_feat = 8): one-shot
-- sampling against the step-wise job API, seeding, on_step, classifier-free
-- guidance, context forms and errors, the DDPM sampler, the training loss
-- (against the forward-noising formula computed here) and a tiny overfit run.
local minisd = require("minisd")
local H = require("helpers")
local diffusion = require("minisd.diffusion")
local models = require("minisd.models")

-- A ContextUnet{n_feat=8} from a fixed seed, in eval mode. Its BatchNorm
-- running statistics are first calibrated by 20 train-mode forwards on random
-- inputs: with the initial ones (mean 0, var 1) the decoder's activations are
-- so small that the context changes eps by ~1e-5 only.
local function small_net(seed)
  minisd.manual_seed(seed or 1)
  local m = models.ContextUnet({ n_feat = 8 })
  local g = minisd.Generator(100 + (seed or 1))
  m:train()
  minisd.no_grad(function()
    for _ = 1, 20 do
      m(minisd.randn({ 8, 3, 16, 16 }, g), minisd.rand({ 8, 1, 1, 1 }, g), minisd.rand({ 8, 5 }, g))
    end
  end)
  m:eval()
  return m
end

local function flat(t)
  return minisd.tensor(t:totable()):reshape({ -1 }):totable()
end

local function max_abs_diff(a, b)
  return (a - b):abs():max()
end

-- a stand-in for the model that counts forward calls and their batch sizes
local function counting(model)
  local calls = {}
  local proxy = setmetatable({ config = model.config, calls = calls }, {
    __call = function(_, x, t, c)
      calls[#calls + 1] = { batch = x:shape()[1], has_c = c ~= nil }
      return model(x, t, c)
    end,
  })
  function proxy.eval()
    model:eval()
  end
  return proxy
end

describe("diffusion sampling", function()
  local model = small_net(1)

  it("samples the same in one call as step by step with the job API", function()
    local opts = { n = 2, seed = 3, steps = 5 }
    local a = diffusion.sample(model, opts)
    local job = diffusion.start(model, { n = 2, seed = 3, steps = 5 })
    assert.are.equal(5, job.total)
    local steps = 0
    assert.is_false(job:done())
    while not job:done() do
      job:step()
      steps = steps + 1
    end
    assert.are.equal(5, steps)
    assert.is_false(job:step())
    assert.are.same({ 2, 3, 16, 16 }, a:shape())
    assert.are.same(a:totable(), job:result():totable())
  end)

  it("is reproducible for a seed and differs between seeds", function()
    local a = diffusion.sample(model, { n = 2, seed = 3, steps = 5 })
    local b = diffusion.sample(model, { n = 2, seed = 3, steps = 5 })
    local c = diffusion.sample(model, { n = 2, seed = 4, steps = 5 })
    assert.are.same(a:totable(), b:totable())
    assert.is_true(max_abs_diff(a, c) > 1e-3)
    -- a generator gives the same as the seed it was made from
    local d = diffusion.sample(model, { n = 2, generator = minisd.Generator(3), steps = 5 })
    assert.are.same(a:totable(), d:totable())
  end)

  it("starts from the given noise and matches the seed's DDIM loop run by hand", function()
    local x0 = minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(9))
    local got = diffusion.sample(model, { noise = x0, steps = 4, context = "food" })
    -- the seed's denoise_ddim with its own schedule, written out here
    local T = 500
    local ab = { [0] = 1 }
    local acc = 0
    for i = 0, T do
      local b = 1e-4 + (0.02 - 1e-4) * i / T
      acc = acc + math.log(1 - b)
      if i > 0 then
        ab[i] = math.exp(acc)
      end
    end
    local c = minisd.tensor({ { 0, 0, 1, 0, 0 } })
    local x = x0
    for _, t in ipairs({ 500, 375, 250, 125 }) do
      local prev = t - 125
      local eps = minisd.no_grad(function()
        return model(x, minisd.full({ 1, 1, 1, 1 }, t / T), c)
      end)
      local x0_pred = (x - eps * math.sqrt(1 - ab[t])) * (math.sqrt(ab[prev]) / math.sqrt(ab[t]))
      x = x0_pred + eps * math.sqrt(1 - ab[prev])
    end
    H.assert_close(got, x, 1e-4, 1e-4, "ddim by hand")
  end)

  it("calls on_step once per step with (i, t, x)", function()
    local seen = {}
    local last
    local out = diffusion.sample(model, {
      n = 2, seed = 3, steps = 5,
      on_step = function(i, t, x)
        seen[#seen + 1] = { i, t }
        assert.is_true(minisd.is_tensor(x))
        assert.are.same({ 2, 3, 16, 16 }, x:shape())
        last = x:totable()
      end,
    })
    assert.are.same({ { 1, 500 }, { 2, 400 }, { 3, 300 }, { 4, 200 }, { 5, 100 } }, seen)
    assert.are.same(out:totable(), last)
  end)

  it("runs classifier-free guidance as one batched forward per step", function()
    local proxy = counting(model)
    local g = diffusion.sample(proxy, { n = 2, seed = 5, steps = 3, context = "hero",
      guidance = 2.5 })
    assert.are.same({ 2, 3, 16, 16 }, g:shape())
    assert.are.equal(3, #proxy.calls)
    for _, call in ipairs(proxy.calls) do
      assert.are.equal(4, call.batch)
      assert.is_true(call.has_c)
    end
    -- without guidance: one forward of n per step
    local plain = counting(model)
    diffusion.sample(plain, { n = 2, seed = 5, steps = 3, context = "hero" })
    assert.are.equal(3, #plain.calls)
    assert.are.equal(2, plain.calls[1].batch)
  end)

  it("guides with eps_uncond + g (eps_cond - eps_uncond)", function()
    local ctx = minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 0, 0.6, 1, 0 } })
    local job = diffusion.start(model, { n = 2, seed = 6, context = ctx, guidance = 3 })
    local x = job.x
    local eps = minisd.no_grad(function()
      return job:predict(x, 300)
    end)
    local tt = minisd.full({ 2, 1, 1, 1 }, 300 / 500)
    local cond, uncond = minisd.no_grad(function()
      return model(x, tt, ctx), model(x, tt, minisd.zeros({ 2, 5 }))
    end)
    local want = uncond + (cond - uncond) * 3
    H.assert_close(eps, want, 1e-4, 1e-5, "guided eps")
    assert.is_true(max_abs_diff(eps, cond) > 1e-4)
  end)

  it("with guidance = 1 equals plain conditional sampling", function()
    local a = diffusion.sample(model, { n = 2, seed = 7, steps = 5, context = "food",
      guidance = 1 })
    local b = diffusion.sample(model, { n = 2, seed = 7, steps = 5, context = "food" })
    H.assert_close(a, b, 1e-4, 1e-4, "guidance 1")
  end)

  it("takes contexts as expressions, rows and tables", function()
    local base = { n = 2, seed = 8, steps = 3 }
    local function with(ctx)
      local o = {}
      for k, v in pairs(base) do
        o[k] = v
      end
      o.context = ctx
      return diffusion.sample(model, o)
    end
    local e = with("hero,food=0.6")
    local row = with(minisd.tensor({ 1, 0, 0.6, 0, 0 }))
    local rows = with(minisd.tensor({ { 1, 0, 0.6, 0, 0 }, { 1, 0, 0.6, 0, 0 } }))
    assert.are.same(flat(e), flat(row))
    assert.are.same(flat(e), flat(rows))
    local none = with(nil)
    local zero = with(minisd.zeros({ 2, 5 }))
    assert.are.same(flat(none), flat(zero))
    assert.is_true(max_abs_diff(e, none) > 1e-4)
    -- different rows per sample: each sample follows its own row
    local mixed = with(minisd.tensor({ { 1, 0, 0.6, 0, 0 }, { 0, 0, 0, 0, 0 } }))
    assert.are.same(flat(e:narrow(1, 1, 1)), flat(mixed:narrow(1, 1, 1)))
    H.assert_close(mixed:narrow(1, 2, 1), none:narrow(1, 2, 1), 1e-5, 1e-5, "row 2")
  end)

  it("rejects mismatched contexts and bad options with clear messages", function()
    local ok, err = pcall(diffusion.sample, model, { n = 2, context = minisd.zeros({ 2, 3 }) })
    assert.is_false(ok)
    assert.truthy(err:find("context has 3 features, the model expects 5", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { n = 2, context = minisd.zeros({ 3, 5 }) })
    assert.is_false(ok)
    assert.truthy(err:find("3 context rows for n = 2", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { n = 1, context = "dragon" })
    assert.is_false(ok)
    assert.truthy(err:find("dragon", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { n = 1, guidance = 2 })
    assert.is_false(ok)
    assert.truthy(err:find("guidance needs a context", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { n = 1, stpes = 3 })
    assert.is_false(ok)
    assert.truthy(err:find("unknown option 'stpes'", 1, true), err)
    assert.truthy(err:find("steps", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { n = 0 })
    assert.is_false(ok)
    assert.truthy(err:find("positive integer", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { sampler = "euler" })
    assert.is_false(ok)
    assert.truthy(err:find("unknown scheduler 'euler'", 1, true), err)
    ok, err = pcall(diffusion.sample, model, { sampler = "ddpm", eta = 1 })
    assert.is_false(ok)
    assert.truthy(err:find("eta does not apply to the ddpm sampler", 1, true), err)
  end)

  it("runs dpmpp_2m: 12 steps by default, deterministic, the solver's own steps", function()
    local job = diffusion.start(model, { n = 2, seed = 4, sampler = "dpmpp_2m" })
    assert.are.equal(12, job.total)
    local a = diffusion.sample(model, { n = 2, seed = 4, sampler = "dpmpp_2m" })
    local b = diffusion.sample(model, { n = 2, seed = 4, sampler = "dpmpp_2m" })
    assert.are.same(a:totable(), b:totable())
    -- by hand with the scheduler and the same starting noise
    local s = require("minisd.sched.dpmpp_2m").new(diffusion.schedule_of(model))
    s:set_timesteps(12)
    local x = minisd.randn({ 2, 3, 16, 16 }, minisd.Generator(4))
    minisd.no_grad(function()
      for _, t in ipairs(s.timesteps) do
        x = s:step(model(x, diffusion.time_input(t, 500, 2)), t, x).prev_sample
      end
    end)
    assert.are.same(x:totable(), a:totable())
    local c = diffusion.sample(model, { n = 2, seed = 4, sampler = "ddim", steps = 12 })
    assert.is_true((a - c):abs():max() > 1e-4)
  end)

  it("runs the ddpm sampler with 10 steps, noise seeded", function()
    local n = 0
    local a = diffusion.sample(model, { n = 2, seed = 2, sampler = "ddpm", steps = 10,
      on_step = function()
        n = n + 1
      end })
    local b = diffusion.sample(model, { n = 2, seed = 2, sampler = "ddpm", steps = 10 })
    assert.are.equal(10, n)
    assert.are.same({ 2, 3, 16, 16 }, a:shape())
    assert.are.same(a:totable(), b:totable())
    for _, v in ipairs(flat(a)) do
      assert(v == v and math.abs(v) < 1e6, "non-finite sample value")
    end
    -- ddpm draws fresh noise per step: it differs from deterministic ddim
    local d = diffusion.sample(model, { n = 2, seed = 2, steps = 10 })
    assert.is_true(max_abs_diff(a, d) > 1e-3)
  end)

  it("gives ddpm the variance asked for: the posterior's by hand, the seed's by default",
    function()
      local a = diffusion.sample(model, { n = 2, seed = 3, sampler = "ddpm", steps = 5,
        variance = "fixed_small" })
      local opts = diffusion.schedule_of(model)
      opts.variance_type = "fixed_small"
      local s = require("minisd.sched.ddpm").new(opts)
      s:set_timesteps(5)
      local g = minisd.Generator(3)
      local x = minisd.randn({ 2, 3, 16, 16 }, g)
      minisd.no_grad(function()
        for _, t in ipairs(s.timesteps) do
          x = s:step(model(x, diffusion.time_input(t, 500, 2)), t, x, { generator = g })
            .prev_sample
        end
      end)
      assert.are.same(x:totable(), a:totable())
      local large = diffusion.sample(model, { n = 2, seed = 3, sampler = "ddpm", steps = 5 })
      local named = diffusion.sample(model, { n = 2, seed = 3, sampler = "ddpm", steps = 5,
        variance = "fixed_large" })
      assert.are.same(large:totable(), named:totable())
      assert.is_true(max_abs_diff(a, large) > 1e-3)
      assert.are.equal("fixed_small", diffusion.default_variance("ddpm"))
      assert.is_nil(diffusion.default_variance("ddim"))
      local ok, err = pcall(diffusion.sample, model, { sampler = "ddim", variance = "fixed_small" })
      assert.is_false(ok)
      assert.truthy(err:find("variance does not apply to the ddim sampler", 1, true), err)
      ok, err = pcall(diffusion.sample, model, { sampler = "ddpm", variance = "wide" })
      assert.is_false(ok)
      assert.truthy(err:find("unknown variance_type 'wide'", 1, true), err)
    end)

  it("leaves the model in eval mode and records no graph", function()
    local m = small_net(2)
    m:train()
    local x = diffusion.sample(m, { n = 1, seed = 1, steps = 2 })
    assert.is_false(m.training)
    assert.is_false(x.requires_grad)
  end)
end)

describe("variations, inpainting, interpolation, negative contexts", function()
  local model = small_net(3)
  local ddim = require("minisd.sched.ddim")
  local start = diffusion.sample(model, { seeds = { 21, 22 }, steps = 10 }) -- two sprites

  it("maps strength to the first timestep and noises the input to it", function()
    -- 10 DDIM steps: 500, 450, ..., 50; strength s runs the last floor(10 s) of them
    local cases = { { 1, 10, 500 }, { 0.6, 6, 300 }, { 0.55, 5, 250 }, { 0.1, 1, 50 },
      { 0.05, 0, nil }, { 0, 0, nil } }
    for _, c in ipairs(cases) do
      local job = diffusion.start(model, { init = start, strength = c[1], steps = 10,
        seeds = { 5, 6 } })
      assert.are.equal(c[2], job.total, "strength " .. c[1])
      assert.are.equal(c[3], job.timesteps[1], "strength " .. c[1])
      if c[3] then -- x = sqrt(ab) init + sqrt(1 - ab) z, z the seeds' first draw
        local s = ddim.new({})
        local ab = s.alphas_cumprod[c[3]]
        local z = minisd.cat({ minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(5)),
          minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(6)) }, 1)
        H.assert_close(job.x, start * math.sqrt(ab) + z * math.sqrt(1 - ab), 1e-6, 1e-6)
      end
    end
    -- strength 0 returns the input itself; a small strength stays close to it
    local same = diffusion.sample(model, { init = start, strength = 0, seeds = { 5, 6 } })
    H.assert_close(same, start, 0, 0, "strength 0")
    local near = diffusion.sample(model, { init = start, strength = 0.04, steps = 50,
      seeds = { 5, 6 } })
    local far = diffusion.sample(model, { init = start, strength = 1, steps = 50,
      seeds = { 5, 6 } })
    local d_near = (near - start):abs():mean():item()
    local d_far = (far - start):abs():mean():item()
    -- (a random small net: 0.09 against 10.6 on average)
    assert.is_true(d_near < 0.25, "strength 0.04 moved the sprites by " .. d_near .. " on average")
    assert.is_true(d_near < 0.05 * d_far, d_near .. " against " .. d_far .. " for strength 1")
  end)

  it("works with every sampler, through the job API", function()
    for _, name in ipairs({ "ddim", "ddpm", "dpmpp_2m", "euler_a" }) do
      local job = diffusion.start(model, { init = start, strength = 0.5, sampler = name,
        steps = 10, seeds = { 1, 2 } })
      assert.are.equal(5, job.total, name)
      while job:step() do
      end
      local x = job:result()
      assert.are.same({ 2, 3, 16, 16 }, x:shape())
      local m = x:abs():max()
      assert.is_true(m == m and m < math.huge, name)
    end
  end)

  it("inpaints: the kept pixels are the input's exactly, the others are generated",
    function()
      local rows = {}
      for y = 1, 16 do
        rows[y] = {}
        for x = 1, 16 do
          rows[y][x] = (x > 4 and x <= 12 and y > 4 and y <= 12) and 1 or 0
        end
      end
      local mask = minisd.tensor({ rows }) -- (1, H, W): generate the middle 8x8
      local keep = (mask * -1 + 1):reshape(1, 1, 16, 16)
      for _, c in ipairs({ { "ddim", 0 }, { "ddim", 2 }, { "dpmpp_2m", 0 }, { "euler_a", 1 } }) do
        local x = diffusion.sample(model, { init = start, mask = mask, sampler = c[1],
          steps = 8, jumps = c[2], seeds = { 3, 4 } })
        -- exactly the input where the mask is 0
        assert.are.equal(0, ((x - start) * keep):abs():max(), c[1] .. " jumps " .. c[2])
        local inside = ((x - start) * mask:reshape(1, 1, 16, 16)):abs():sum():item()
        assert.is_true(inside > 1, c[1] .. ": the middle was not generated")
      end
      assert.has_error(function()
        diffusion.sample(model, { init = start, mask = mask, sampler = "dpmpp_2m", jumps = 1 })
      end, "diffusion.sample: jumps need a sampler that keeps no history; dpmpp_2m is "
        .. "multistep (use ddim, ddpm or euler_a)")
      assert.has_error(function() diffusion.sample(model, { mask = mask }) end,
        "diffusion.sample: strength and mask go with init (the sprites to start from)")
      assert.has_error(function()
        diffusion.sample(model, { init = start, mask = mask * 2 })
      end, "diffusion.sample: mask values must be in [0, 1] (1: generate, 0: keep)")
      assert.has_error(function() diffusion.sample(model, { init = minisd.zeros({ 3, 8, 8 }) }) end,
        "diffusion.sample: init is (1, 3, 8, 8), the model makes (3, 16, 16) sprites")
    end)

  it("interpolates: the ends are plain samples of the two seeds and contexts", function()
    local x = diffusion.interpolate(model, { from = { seed = 31, context = "hero" },
      to = { seed = 32, context = "spell" }, frames = 5, guidance = 2, steps = 6 })
    assert.are.same({ 5, 3, 16, 16 }, x:shape())
    local a = diffusion.sample(model, { seeds = { 31 }, context = "hero", guidance = 2,
      steps = 6 })
    local b = diffusion.sample(model, { seeds = { 32 }, context = "spell", guidance = 2,
      steps = 6 })
    H.assert_close(x:narrow(1, 1, 1), a, 0, 0, "first frame")
    H.assert_close(x:narrow(1, 5, 1), b, 0, 0, "last frame")
    -- the middle frame starts from noise of the same norm (slerp), not a shrunken average
    local job = diffusion.start_interpolation(model, { from = { seed = 31 }, to = { seed = 32 },
      frames = 3 })
    local z1, z2 = job.x:narrow(1, 1, 1), job.x:narrow(1, 2, 1)
    local n1, n2 = math.sqrt((z1 * z1):sum():item()), math.sqrt((z2 * z2):sum():item())
    assert.is_true(math.abs(n2 / n1 - 1) < 0.05, n2 / n1)
    assert.has_error(function() diffusion.interpolate(model, { from = { seed = 1 },
      to = { seed = 2 }, frames = 1 }) end,
      "diffusion.interpolate: frames must be an integer >= 2, got 1")
  end)

  it("guides away from a negative context: eps_neg + g (eps_cond - eps_neg)", function()
    local job = diffusion.start(model, { n = 2, seed = 6, context = "hero",
      negative = "side-facing", guidance = 3 })
    local x = job.x
    local eps = minisd.no_grad(function() return job:predict(x, 300) end)
    local tt = minisd.full({ 2, 1, 1, 1 }, 300 / 500)
    local hero = minisd.tensor({ { 1, 0, 0, 0, 0 }, { 1, 0, 0, 0, 0 } })
    local side = minisd.tensor({ { 0, 0, 0, 0, 1 }, { 0, 0, 0, 0, 1 } })
    local cond, neg = minisd.no_grad(function()
      return model(x, tt, hero), model(x, tt, side)
    end)
    H.assert_close(eps, neg + (cond - neg) * 3, 1e-4, 1e-5, "negative guidance")
    assert.has_error(function() diffusion.start(model, { context = "hero", negative = "food" }) end,
      "diffusion.sample: a negative context works through guidance: give guidance too")
  end)

  it("takes one guidance scale per sprite; a row's 0 is off, as guidance = 1", function()
    local both = diffusion.sample(model, { seeds = { 8, 9 }, context = "food", steps = 5,
      guidance = { 3, 0 } })
    local g3 = diffusion.sample(model, { seeds = { 8 }, context = "food", steps = 5,
      guidance = 3 })
    local g0 = diffusion.sample(model, { seeds = { 9 }, context = "food", steps = 5 })
    H.assert_close(both:narrow(1, 1, 1), g3, 1e-5, 1e-5, "row 1")
    H.assert_close(both:narrow(1, 2, 1), g0, 1e-4, 1e-4, "row 2")
    assert.has_error(function() diffusion.sample(model, { n = 2, context = "food",
      guidance = { 1, 2, 3 } }) end,
      "diffusion.sample: guidance must be a number or one per sprite (2), got 3 values")
  end)
end)

describe("diffusion.loss", function()
  local x0 = minisd.rand({ 4, 3, 16, 16 }, minisd.Generator(11)) * 2 - 1
  local c = minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 1, 0, 0, 0 }, { 0, 0, 1, 0.5, 0 },
    { 0, 0, 0, 0, 1 } })

  it("is the MSE of the predicted noise at x_t = sqrt(ab) x0 + sqrt(1 - ab) noise", function()
    local m = small_net(3)
    m:train()
    local loss, drawn = diffusion.loss(m, x0, c, { generator = minisd.Generator(4),
      context_drop = 0 })
    assert.are.equal(0, loss:dim())
    local ts = drawn.t:totable()
    local T = 500
    local ab = {}
    local acc = 0
    for i = 0, T do
      acc = acc + math.log(1 - (1e-4 + (0.02 - 1e-4) * i / T))
      ab[i] = math.exp(acc)
    end
    local a, b, tin = {}, {}, {}
    for i, t in ipairs(ts) do
      assert.is_true(t >= 1 and t <= T and t == math.floor(t))
      a[i], b[i], tin[i] = math.sqrt(ab[t]), math.sqrt(1 - ab[t]), t / T
    end
    local xt = x0 * minisd.tensor(a):reshape(4, 1, 1, 1)
      + drawn.noise * minisd.tensor(b):reshape(4, 1, 1, 1)
    local want = minisd.no_grad(function()
      return minisd.mse_loss(m(xt, minisd.tensor(tin):reshape(4, 1, 1, 1), c), drawn.noise)
    end)
    H.assert_close(loss:item(), want:item(), 1e-4, 1e-6, "loss")
  end)

  it("weights each sample by min(SNR, gamma) / SNR with weighting = min-snr", function()
    local m = small_net(3)
    m:train()
    local gamma = 2
    local loss, drawn = diffusion.loss(m, x0, c, { generator = minisd.Generator(21),
      context_drop = 0, weighting = "min-snr", snr_gamma = gamma })
    -- the same draws give the plain loss: the weights are the only change
    local plain, same = diffusion.loss(m, x0, c, { generator = minisd.Generator(21),
      context_drop = 0 })
    assert.are.same(drawn.t:totable(), same.t:totable())
    -- abar_t written out from the linear betas, the SNR and the weight by hand
    local T, acc, ab = 500, 0, {}
    for i = 0, T do
      acc = acc + math.log(1 - (1e-4 + (0.02 - 1e-4) * i / T))
      ab[i] = math.exp(acc)
    end
    local ts = drawn.t:totable()
    local a, b, tin, w = {}, {}, {}, {}
    local some_below, some_one = false, false
    for i, t in ipairs(ts) do
      a[i], b[i], tin[i] = math.sqrt(ab[t]), math.sqrt(1 - ab[t]), t / T
      local snr = ab[t] / (1 - ab[t])
      w[i] = snr > gamma and gamma / snr or 1
      H.assert_close(drawn.weights[i], w[i], 1e-6, 1e-9, "weight " .. i) -- abar in float32
      some_below, some_one = some_below or w[i] < 1, some_one or w[i] == 1
    end
    -- each sample's mean squared error, from the prediction at the drawn x_t
    local xt = x0 * minisd.tensor(a):reshape(4, 1, 1, 1)
      + drawn.noise * minisd.tensor(b):reshape(4, 1, 1, 1)
    local pred = minisd.no_grad(function()
      return m(xt, minisd.tensor(tin):reshape(4, 1, 1, 1), c)
    end)
    local p, n = pred:totable(), drawn.noise:totable()
    local want, mse = 0, 0
    for i = 1, 4 do
      local se = 0
      for ch = 1, 3 do
        for y = 1, 16 do
          for x = 1, 16 do
            local d = p[i][ch][y][x] - n[i][ch][y][x]
            se = se + d * d
          end
        end
      end
      want, mse = want + w[i] * se / (4 * 768), mse + se / (4 * 768)
    end
    H.assert_close(loss:item(), want, 1e-4, 1e-6, "weighted loss")
    H.assert_close(plain:item(), mse, 1e-4, 1e-6, "plain loss")
    -- seed 21 draws both kinds of timestep, so the weighting is seen to act
    assert.is_true(some_below and some_one, "draws: " .. table.concat(ts, ", "))
    loss:backward()
    assert.is_true(m:named_parameters()["out.3.weight"].grad:abs():max() > 0)
  end)

  it("refuses a bad weighting, gamma or context_drop by name", function()
    local m = small_net(3)
    for _, case in ipairs({ { { weighting = "snr" }, "weighting must be" },
      { { weighting = "min-snr", snr_gamma = 0 }, "snr_gamma must be a positive number" },
      { { snr_gamma = 0 / 0 }, "snr_gamma must be" }, { { context_drop = 1.5 }, "context_drop" },
      { { context_drop = "x" }, "context_drop must be a number in [0, 1]" } }) do
      local ok, err = pcall(diffusion.loss, m, x0, c, case[1])
      assert.is_false(ok)
      assert.truthy(tostring(err):find(case[2], 1, true), err)
    end
  end)

  it("back-propagates into every parameter and is reproducible", function()
    local m = small_net(3)
    m:train()
    local l1 = diffusion.loss(m, x0, c, { generator = minisd.Generator(5) })
    l1:backward()
    local params, names = m:named_parameters()
    assert.are.equal(#m:parameters(), #names)
    for _, name in ipairs(names) do
      local g = params[name].grad
      assert(g, name .. " has no gradient")
      local v = g:abs():max()
      assert(v == v, name .. ": NaN gradient")
    end
    assert.is_true(params["out.3.weight"].grad:abs():max() > 0)
    assert.is_true(params["contextembed1.model.0.weight"].grad:abs():max() > 0)
    local l2 = diffusion.loss(m, x0, c, { generator = minisd.Generator(5) })
    assert.are.equal(l1:item(), l2:item())
    local l3 = diffusion.loss(m, x0, c, { generator = minisd.Generator(6) })
    assert.are_not.equal(l1:item(), l3:item())
  end)

  it("drops contexts with probability context_drop", function()
    local m = small_net(3)
    m:train()
    local dropped = diffusion.loss(m, x0, c, { generator = minisd.Generator(7), context_drop = 1 })
    local uncond = diffusion.loss(m, x0, nil, { generator = minisd.Generator(7) })
    local kept = diffusion.loss(m, x0, c, { generator = minisd.Generator(7), context_drop = 0 })
    assert.are.equal(uncond:item(), dropped:item())
    assert.are_not.equal(uncond:item(), kept:item())
    local ok, err = pcall(diffusion.loss, m, x0, c, { dropout = 0.1 })
    assert.is_false(ok)
    assert.truthy(err:find("unknown option 'dropout'", 1, true), err)
  end)

  it("goes down when a small net overfits 8 sprites", function()
    local m = small_net(4)
    m:train()
    local gen = minisd.Generator(12)
    local sprites = minisd.rand({ 8, 3, 16, 16 }, gen) * 2 - 1
    local ctx = minisd.zeros({ 8, 5 })
    local opt = minisd.optim.Adam(m:parameters(), { lr = 2e-3 })
    local losses = {}
    for step = 1, 40 do
      opt:zero_grad()
      local loss = diffusion.loss(m, sprites, ctx, { generator = gen })
      loss:backward()
      opt:step()
      losses[step] = loss:item()
    end
    local first, last = 0, 0
    for i = 1, 10 do
      first, last = first + losses[i] / 10, last + losses[30 + i] / 10
    end
    assert(last < first, string.format("loss did not go down: first 10 %.4f, last 10 %.4f",
      first, last))
  end)
end)

describe("the signal leak", function()
  local ddim = require("minisd.sched.ddim")

  -- a (C, S, S) sprite with channel c filled by values[c] (a number, or a function of the
  -- pixel's row and column)
  local function sprite(values, S)
    local img = {}
    for c, v in ipairs(values) do
      local plane = {}
      for y = 1, S do
        plane[y] = {}
        for x = 1, S do
          plane[y][x] = type(v) == "function" and v(y, x) or v
        end
      end
      img[c] = plane
    end
    return img
  end

  it("groups each sprite's channel means by its label set, rounded to 1e-3", function()
    -- channel 2 of sprite 1: a ramp whose mean is (1 + 16) / 2 / 100 - 0.2 = -0.115, by hand
    local imgs = minisd.tensor({
      sprite({ 0.5, function(y, x) return ((y - 1) * 4 + x) / 100 - 0.2 end }, 4),
      sprite({ -1, 0.12345 }, 4),
      sprite({ 0.25, -0.7 }, 4),
      sprite({ 0, 0 }, 4) })
    local labels = minisd.tensor({ { 1, 0, 0 }, { 0, 0, 0 }, { 1, 0, 0 }, { 0, 0.7, 1 } })
    local s = diffusion.signal_leak_stats(imgs, labels)
    assert.are.equal(2, s.channels)
    assert.are.same({ "1", "2+3", "none" }, require("minisd.util").sorted_keys(s.groups))
    H.assert_close(minisd.tensor(s.groups["1"]), minisd.tensor({ 0.5, -0.115, 0.25, -0.7 }),
      1e-6, 0)
    assert.are.same({ -1, 0.123 }, s.groups.none)
    assert.are.same({ 0, 0 }, s.groups["2+3"])
    -- without labels (an unconditional model): every sprite in "none", in order
    local u = diffusion.signal_leak_stats(imgs)
    assert.are.same({ "none" }, require("minisd.util").sorted_keys(u.groups))
    assert.are.equal(8, #u.groups.none)
    assert.are.same({ -1, 0.123 }, { u.groups.none[3], u.groups.none[4] })
    -- past SIGNAL_LEAK_MAX per set, evenly spaced sprites: of 4 keep 2, the 1st and the 3rd
    local keep = diffusion.SIGNAL_LEAK_MAX
    diffusion.SIGNAL_LEAK_MAX = 2
    local ok, capped = pcall(diffusion.signal_leak_stats, imgs)
    diffusion.SIGNAL_LEAK_MAX = keep
    assert.is_true(ok, capped)
    assert.are.same({ 0.5, -0.115, 0.25, -0.7 }, capped.groups.none)
    assert.has_error(function() diffusion.signal_leak_stats(minisd.zeros({ 2, 3, 4, 5 })) end,
      "diffusion.signal_leak_stats: square sprites expected, got 4x5")
    assert.has_error(function() diffusion.signal_leak_stats(imgs, minisd.zeros({ 3, 3 })) end,
      "diffusion.signal_leak_stats: labels must be a tensor (4, K)")
  end)

  it("starts x_T as sqrt(ab) m + sqrt(1 - ab) z, m the means of the context's label set",
    function()
      local model = small_net(5)
      model.config.signal_leak = { channels = 3, groups = {
        ["1"] = { 0.5, -0.25, 1 }, ["3"] = { -0.75, 0.125, 0 }, none = { -1, -1, 0.5 } } }
      local s = ddim.new({})
      local ab = s.alphas_cumprod[500] -- 10 DDIM steps start at 500
      local function expect(z, means)
        local rows = {}
        for i, m in ipairs(means) do
          rows[i] = sprite(m, 16)
        end
        return minisd.tensor(rows) * math.sqrt(ab) + z * math.sqrt(1 - ab)
      end
      -- one generator: the noise, then one uniform per sprite (which picks within a set)
      local g = minisd.Generator(8)
      local z = minisd.randn({ 4, 3, 16, 16 }, g)
      local u = minisd.rand({ 4 }, g):totable()
      -- "hero,food" has no set of its own and none holds both: the sets holding either,
      -- "1" then "3", one sprite each, so u < 1/2 takes "1"
      local mixed = u[4] < 0.5 and { 0.5, -0.25, 1 } or { -0.75, 0.125, 0 }
      local job = diffusion.start(model, { n = 4, seed = 8, steps = 10,
        context = minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0 }, { 0, 0, 1, 0, 0 },
          { 1, 0, 1, 0, 0 } }) })
      H.assert_close(job.x, expect(z, { { 0.5, -0.25, 1 }, { -1, -1, 0.5 },
        { -0.75, 0.125, 0 }, mixed }), 1e-6, 1e-6)
      -- per-sprite seeds: each sprite's noise and then its uniform from its own generator
      local g1, g2 = minisd.Generator(3), minisd.Generator(4)
      local z2 = minisd.cat({ minisd.randn({ 1, 3, 16, 16 }, g1),
        minisd.randn({ 1, 3, 16, 16 }, g2) }, 1)
      job = diffusion.start(model, { seeds = { 3, 4 }, steps = 10,
        context = minisd.zeros({ 1, 5 }) })
      H.assert_close(job.x, expect(z2, { { -1, -1, 0.5 }, { -1, -1, 0.5 } }), 1e-6, 1e-6)
      -- no context: the "none" set
      job = diffusion.start(model, { n = 1, seed = 2, steps = 10 })
      H.assert_close(job.x, expect(minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(2)),
        { { -1, -1, 0.5 } }), 1e-6, 1e-6)
      -- off: pure noise, as before; with init or noise given, those as before
      job = diffusion.start(model, { n = 1, seed = 2, steps = 10, signal_leak = false })
      H.assert_close(job.x, minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(2)), 0, 0)
      local z0 = minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(6))
      job = diffusion.start(model, { noise = z0, steps = 10, context = "hero" })
      H.assert_close(job.x, z0, 0, 0)
      local init = minisd.zeros({ 1, 3, 16, 16 })
      job = diffusion.start(model, { init = init, strength = 1, seed = 2, steps = 10 })
      H.assert_close(job.x, minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(2))
        * math.sqrt(1 - ab), 1e-6, 1e-6)
      -- a set of several: the uniform picks sprite floor(u * count) + 1
      model.config.signal_leak.groups.none = { -1, -1, 0.5, 0, 0, 0, 1, 1, 1 }
      g = minisd.Generator(11)
      z = minisd.randn({ 6, 3, 16, 16 }, g)
      u = minisd.rand({ 6 }, g):totable()
      local picks, all = {}, { { -1, -1, 0.5 }, { 0, 0, 0 }, { 1, 1, 1 } }
      for i = 1, 6 do
        picks[i] = all[math.floor(u[i] * 3) + 1]
      end
      job = diffusion.start(model, { n = 6, seed = 11, steps = 10 })
      H.assert_close(job.x, expect(z, picks), 1e-6, 1e-6)
      -- every sampler starts so, and samples the same in one call as step by step
      for _, name in ipairs({ "ddpm", "dpmpp_2m", "euler_a" }) do
        local a = diffusion.sample(model, { n = 2, seed = 1, steps = 3, sampler = name })
        local b = diffusion.sample(model, { n = 2, seed = 1, steps = 3, sampler = name,
          signal_leak = false })
        assert.is_true((a - b):abs():max() > 1e-3, name)
        local j = diffusion.start(model, { n = 2, seed = 1, steps = 3, sampler = name })
        while j:step() do end
        assert.are.same(a:totable(), j:result():totable(), name)
      end
    end)

  it("interpolates from the endpoints' leaked starts: the ends are their plain samples",
    function()
      local model = small_net(7)
      model.config.signal_leak = { channels = 3, groups = {
        ["1"] = { 0.5, -0.25, 1, -0.5, 0.5, 0 }, none = { -1, -1, 0.5, 1, 0, -1 } } }
      local job = diffusion.start_interpolation(model, { from = { seed = 3, context = "hero" },
        to = { seed = 9 }, frames = 3, steps = 4 })
      local a = diffusion.start(model, { seeds = { 3 }, context = "hero", steps = 4 })
      local b = diffusion.start(model, { seeds = { 9 }, context = minisd.zeros({ 1, 5 }),
        steps = 4 })
      assert.is_true(job.signal_leak and a.signal_leak and b.signal_leak)
      H.assert_close(job.x:narrow(1, 1, 1), a.x, 0, 0, "first frame's start")
      H.assert_close(job.x:narrow(1, 3, 1), b.x, 0, 0, "last frame's start")
      -- the middle: the means halfway, onto the noise halfway along the great circle
      local s = ddim.new({})
      s:set_timesteps(4)
      local ab = s.alphas_cumprod[s.timesteps[1]]
      local ma = (a.x - minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(3)) * math.sqrt(1 - ab))
        / math.sqrt(ab)
      local mb = (b.x - minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(9)) * math.sqrt(1 - ab))
        / math.sqrt(ab)
      local za = minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(3))
      local zb = minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(9))
      local cos = (za * zb):sum():item() / math.sqrt((za * za):sum():item()
        * (zb * zb):sum():item())
      local th = math.acos(cos)
      local zm = (za + zb) * (math.sin(th / 2) / math.sin(th))
      H.assert_close(job.x:narrow(1, 2, 1), (ma + mb) * (0.5 * math.sqrt(ab))
        + zm * math.sqrt(1 - ab), 1e-4, 1e-4, "middle frame's start")
      local frames = job:run()
      H.assert_close(frames:narrow(1, 1, 1), a:run(), 1e-6, 1e-6, "first frame")
      H.assert_close(frames:narrow(1, 3, 1), b:run(), 1e-6, 1e-6, "last frame")
      local off = diffusion.start_interpolation(model, { from = { seed = 3, context = "hero" },
        to = { seed = 9 }, frames = 3, steps = 4, signal_leak = false })
      assert.is_false(off.signal_leak)
      H.assert_close(off.x:narrow(1, 1, 1), minisd.randn({ 1, 3, 16, 16 }, minisd.Generator(3)),
        0, 0)
    end)

  it("refuses bad statistics and a leak the model cannot give, by name", function()
    local model = small_net(6)
    assert.has_error(function() diffusion.start(model, { signal_leak = true }) end,
      "diffusion.sample: signal_leak: the model carries no signal-leak statistics (a model "
      .. "file from train.lua of this version has them; see scripts/signal_leak.lua)")
    assert.has_error(function() diffusion.start(model, { signal_leak = "on" }) end,
      "diffusion.sample: signal_leak must be true or false, got string")
    for _, case in ipairs({
      { { channels = 4, groups = { none = { 0, 0, 0, 0 } } },
        "signal_leak has 4 channels, the model 3" },
      { { channels = 3, groups = { none = { 0, 0 } } },
        "signal_leak: group none must hold a multiple of 3" },
      { { channels = 3, groups = { none = { 0, 2, 0 } } },
        "signal_leak: group none holds 2, not a mean in [-1, 1]" },
      { { channels = 3, groups = { hero = { 0, 0, 0 } } },
        "signal_leak: group hero is not a label set" },
      { { channels = 3, groups = {} }, "signal_leak has no groups" },
      { 7, "signal_leak must be a table" } }) do
      local ok, err = pcall(models.ContextUnet, { n_feat = 8, signal_leak = case[1] })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("ContextUnet: " .. case[2], 1, true), tostring(err))
    end
  end)

  it("travels with the model file", function()
    local s = diffusion.signal_leak_stats(minisd.rand({ 5, 3, 16, 16 }, minisd.Generator(1)) * 2
      - 1, minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0 }, { 1, 0, 0, 0, 0 },
      { 0, 0, 0, 0, 1 }, { 0, 0, 0, 0, 0 } }))
    minisd.manual_seed(1)
    local m = models.ContextUnet({ n_feat = 8, signal_leak = s })
    local path = os.tmpname() .. ".safetensors"
    assert(m:save(path))
    local back = assert(minisd.load_model(path))
    os.remove(path)
    assert.are.same(s, back.config.signal_leak)
    assert.are.same(diffusion.sample(m, { n = 2, seed = 4, steps = 3 }):totable(),
      diffusion.sample(back, { n = 2, seed = 4, steps = 3 }):totable())
  end)
end)
