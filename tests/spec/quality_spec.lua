-- minisd.quality and scripts/eval_quality.lua: each metric on known inputs, the Frechet
-- distance against numpy (tests/fixtures/gen_quality.py), and a whole evaluation of a tiny
-- untrained model.
local minisd = require("minisd")
local quality = require("minisd.quality")
local json = require("minisd.json")
local H = require("helpers")

local fixture = assert(loadfile(H.root .. "/tests/fixtures/quality.lua"))()

local function rows(f)
  local out = {}
  for i = 1, f.shape[1] do
    out[i] = {}
    for j = 1, f.shape[2] do
      out[i][j] = f.data[(i - 1) * f.shape[2] + j]
    end
  end
  return out
end

local function shifted(r, shift)
  local out = {}
  for i, row in ipairs(r) do
    out[i] = {}
    for j, v in ipairs(row) do
      out[i][j] = v + shift[j]
    end
  end
  return out
end

describe("quality.frechet_distance", function()
  local a, b = rows(fixture.a), rows(fixture.b)

  it("is ~0 for a set against itself", function()
    assert.is_true(math.abs(quality.frechet_distance(a, a)) < 1e-9)
    assert.is_true(math.abs(fixture.fd_aa.data[1]) < 1e-9) -- numpy agrees
  end)

  it("is |shift|^2 for a set against itself shifted (the covariances are equal)", function()
    local shift = { 0.5, -1, 0, 2, 0.25, 0 }
    local fd = quality.frechet_distance(a, shifted(a, shift))
    assert.is_true(math.abs(fd - (0.25 + 1 + 4 + 0.0625)) < 1e-9, fd)
  end)

  it("has the closed form |mu1 - mu2|^2 + sum (sqrt s1 - sqrt s2)^2 for diagonal covariances",
    function()
      local s1 = { mu = { 0, 1, 2 }, sigma = { { 4, 0, 0 }, { 0, 1, 0 }, { 0, 0, 9 } } }
      local s2 = { mu = { 1, 1, 0 }, sigma = { { 1, 0, 0 }, { 0, 0.25, 0 }, { 0, 0, 9 } } }
      -- 1 + 0 + 4, plus (2 - 1)^2 + (1 - 0.5)^2 + 0
      assert.is_true(math.abs(quality.frechet_distance(s1, s2) - 6.25) < 1e-12)
    end)

  it("matches numpy's value, computed there through the eigenvalues of S1 S2", function()
    local fd = quality.frechet_distance(a, b)
    local expected = fixture.fd_ab.data[1]
    assert.is_true(math.abs(fd - expected) < 1e-8 * expected,
      string.format("%.12g vs numpy %.12g", fd, expected))
    assert.is_true(math.abs(quality.frechet_distance(b, a) - fd) < 1e-9 * fd) -- symmetric
  end)

  it("fits the mean and the unbiased covariance as numpy does", function()
    local st = quality.gaussian_stats(b)
    H.assert_close(st.mu, fixture.mu_b.data, 1e-8, 1e-9, "mean")
    local cov = {}
    for _, r in ipairs(st.sigma) do
      for _, v in ipairs(r) do
        cov[#cov + 1] = v
      end
    end
    H.assert_close(cov, fixture.cov_b.data, 1e-8, 1e-9, "covariance")
    assert.are.equal(40, st.n)
  end)

  it("takes (N, D) tensors and rejects mismatched feature sizes", function()
    local t = minisd.tensor(a)
    assert.is_true(math.abs(quality.frechet_distance(t, t)) < 1e-9)
    local ok, err = pcall(quality.frechet_distance, a, { { 1, 2 }, { 3, 4 } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("6 features against 2", 1, true), err)
  end)
end)

describe("quality.percentile", function()
  it("interpolates between order statistics as numpy does", function()
    assert.are.equal(2.5, quality.percentile({ 4, 1, 3, 2 }, 50))
    assert.are.equal(1, quality.percentile({ 4, 1, 3, 2 }, 0))
    assert.are.equal(4, quality.percentile({ 4, 1, 3, 2 }, 100))
    local v = {}
    for i = 1, 101 do
      v[i] = 102 - i
    end
    assert.are.equal(2, quality.percentile(v, 1))
  end)
end)

describe("quality.nearest_real_distances", function()
  -- the same distances by brute force: every value, every real picture and its mirror image
  local function brute(x, real, exclude_self)
    local xt, rt = x:totable(), real:totable()
    local out = {}
    for i, xi in ipairs(xt) do
      local best = math.huge
      for j, rj in ipairs(rt) do
        if not (exclude_self and i == j) then
          for _, flip in ipairs({ false, true }) do
            local s = 0
            for c = 1, #xi do
              for h = 1, #xi[c] do
                local W = #xi[c][h]
                for w = 1, W do
                  local v = math.max(-1, math.min(1, xi[c][h][w]))
                  local r = rj[c][h][flip and (W + 1 - w) or w]
                  s = s + (v - r) ^ 2
                end
              end
            end
            best = math.min(best, s)
          end
        end
      end
      out[i] = math.sqrt(best)
    end
    return out
  end

  it("agrees with a brute-force search (clamping, mirror images, excluding self)", function()
    local g = minisd.Generator(5)
    local real = minisd.rand({ 7, 2, 3, 4 }, g) * 2 - 1
    local x = minisd.randn({ 5, 2, 3, 4 }, g)
    H.assert_close(quality.nearest_real_distances(x, real), brute(x, real), 1e-4, 1e-4, "x")
    H.assert_close(quality.nearest_real_distances(real, real, { exclude_self = true }),
      brute(real, real, true), 1e-4, 1e-4, "real")
    -- a mirror image of a real picture is at distance 0
    local d = quality.nearest_real_distances(minisd.image_flip(real:narrow(1, 3, 1), 4), real)
    assert.is_true(d[1] < 1e-3, d[1])
  end)
end)

describe("quality.memorisation", function()
  local ds = assert(minisd.data.load())
  local threshold = quality.memorisation_threshold(ds.images)

  it("has a positive threshold on the bundled sprites", function()
    assert.is_true(threshold > 0, threshold)
  end)

  it("is 1 for copies of real sprites and for their mirror images", function()
    local idx = {}
    for i = 1, 40 do
      idx[i] = 45 * i
    end
    local copies = minisd.image_gather(ds.images, idx)
    local m = quality.memorisation(copies, ds.images, { threshold = threshold })
    assert.are.equal(1, m.fraction)
    assert.are.equal(40, m.count)
    local mirrored = minisd.image_flip(copies, 4)
    assert.are.equal(1, quality.memorisation(mirrored, ds.images,
      { threshold = threshold }).fraction)
  end)

  it("is 0 for Gaussian noise", function()
    local noise = minisd.randn({ 40, 4, 16, 16 }, minisd.Generator(3))
    local m = quality.memorisation(noise, ds.images, { threshold = threshold })
    assert.are.equal(0, m.fraction)
    assert.are.equal(40, m.n)
  end)
end)

describe("quality.alpha_fraction", function()
  it("counts alpha values strictly inside (0.02, 0.98) after mapping to [0, 1]", function()
    -- alpha in [0, 1]: outside, inside, inside, inside, outside, and clamped ends
    local a01 = { 0, 0.01, 0.019, 0.021, 0.5, 0.979, 0.981, 1 }
    local alpha = {}
    for i, v in ipairs(a01) do
      alpha[i] = 2 * v - 1
    end
    alpha[#alpha + 1] = -1.5 -- clamps to 0
    alpha[#alpha + 1] = 1.5  -- clamps to 1
    local n = #alpha
    local x = minisd.cat({ minisd.zeros({ 1, 3, 1, n }), minisd.tensor(alpha):reshape(1, 1, 1, n) },
      2)
    assert.are.equal(3 / n, quality.alpha_fraction(x))
    assert.are.equal(1 / n, quality.alpha_fraction(x, { low = 0.4, high = 0.6 }))
  end)

  it("is 0 for the bundled sprites (alpha 0 or 255) and nil without an alpha channel", function()
    assert.are.equal(0, quality.alpha_fraction(assert(minisd.data.load()).images))
    assert.is_nil(quality.alpha_fraction(minisd.zeros({ 2, 3, 4, 4 })))
  end)
end)

describe("quality.evaluate and scripts/eval_quality.lua", function()
  local tmp = H.tmpdir()
  minisd.manual_seed(11)
  local tiny = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8 })
  local tiny_path = tmp .. "/tiny.safetensors"
  assert(tiny:save(tiny_path))
  local opts = { n = 2, steps = 2, seed = 3 }
  local r1 -- the in-process result, compared with the command line's below

  local function sh(args)
    return H.run(H.lua_bin .. " scripts/eval_quality.lua " .. args)
  end

  it("measures a tiny untrained model", function()
    r1 = assert(quality.evaluate(tiny_path, opts))
    local f = r1.frechet
    assert.are.equal(360, f.n)
    assert.is_true(f.real_heldout >= 0 and f.real_heldout < f.noise,
      string.format("real %.3f, noise %.3f", f.real_heldout, f.noise))
    assert.is_true(f.samples > f.real_heldout)
    -- the held-out split's labelled sprites (57 + 81 + 4 + 29 + 18, each more than n = 2 per
    -- label) and 171 null-context ones: the Frechet set is every sample drawn
    assert.are.equal(360, r1.memorisation.n)
    assert.are.equal(360, r1.samples)
    assert.are.equal(0, r1.memorisation.fraction)
    assert.are.equal(0, r1.alpha.real)
    assert.is_true(r1.alpha.fraction > 0) -- an untrained model's alpha is anything
    local ca = r1.context_accuracy
    local sum = 0
    for _, name in ipairs(r1.config.label_names) do
      sum = sum + ca.per_label[name]
    end
    assert.are.equal(ca.overall, sum / 5)
    -- the defaults: the recommended sampler, with its variance
    assert.are.same({ "ddpm", "fixed_small" }, { r1.options.sampler, r1.options.variance })
    local text = quality.format(r1)
    for _, want in ipairs({ "ddpm (fixed_small variance), 2 steps", "context accuracy",
      "side-facing", "Frechet distance",
      "reference: real held-out sprites (360)", "memorisation", "alpha" }) do
      assert.truthy(text:find(want, 1, true), "missing " .. want .. " in\n" .. text)
    end
  end)

  it("gives the same numbers from the command line (--json, another thread count)", function()
    local ok, _, out = sh(tiny_path .. " --n 2 --steps 2 --seed 3 --threads 1 --quiet --json "
      .. tmp .. "/q.json")
    assert.is_true(ok, out)
    assert.truthy(out:find("overall (mean over labels)", 1, true), out)
    local r = assert(json.decode(H.read_file(tmp .. "/q.json")))
    local expected = json.decode(json.encode(r1))
    for _, k in ipairs({ "options", "context_accuracy", "frechet", "memorisation", "alpha",
      "samples" }) do
      assert.are.same(expected[k], r[k], k)
    end
  end)

  it("samples with the model's signal leak unless told not to (signal_leak, --no-signal-leak)",
    function()
      assert.is_false(r1.options.signal_leak) -- the tiny model has no statistics
      local leaky = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8,
        signal_leak = { channels = 4, groups = { none = { 0, 0, 0, -1 },
          ["1"] = { 0.5, 0.5, 0.5, 1 } } } })
      leaky:load_state_dict(tiny:state_dict())
      local path = tmp .. "/leaky.safetensors"
      assert(leaky:save(path))
      local on = assert(quality.evaluate(path, opts))
      local off = assert(quality.evaluate(path, { n = 2, steps = 2, seed = 3,
        signal_leak = false }))
      assert.is_true(on.options.signal_leak)
      assert.is_false(off.options.signal_leak)
      -- from pure noise the same model gives the tiny model's numbers exactly
      assert.are.same(r1.frechet, off.frechet)
      assert.are_not.equal(r1.frechet.samples, on.frechet.samples)
      assert.truthy(quality.format(on):find("seed 3, signal leak", 1, true))
      -- the guidance by default is the sampler's recommended one
      assert.are.equal(3, on.options.guidance)
      local ddim = assert(quality.evaluate(path, { n = 2, steps = 2, seed = 3, sampler = "ddim" }))
      assert.are.equal(6, ddim.options.guidance)
      local ok, _, out = sh(path .. " --n 2 --steps 2 --seed 3 --quiet --no-signal-leak --json "
        .. tmp .. "/nl.json")
      assert.is_true(ok, out)
      assert.are.same(json.decode(json.encode(off.frechet)),
        assert(json.decode(H.read_file(tmp .. "/nl.json"))).frechet)
    end)

  it("measures the sprites after the pixel-art alpha when asked (alpha_threshold)", function()
    local r = assert(quality.evaluate(tiny_path, { n = 2, steps = 2, seed = 3,
      alpha_threshold = 0.5 }))
    assert.are.equal(0, r.alpha.fraction) -- every alpha is now 0 or 1
    assert.are.equal(0.5, r.options.alpha_threshold)
    assert.are_not.equal(r1.frechet.samples, r.frechet.samples)
    assert.are.equal(r1.frechet.real_heldout, r.frechet.real_heldout) -- references unchanged
    assert.truthy(quality.format(r):find("seed 3, alpha threshold 0.5", 1, true))
    local ok, err = pcall(quality.evaluate, tiny, { n = 2, alpha_threshold = 2 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("alpha_threshold must be a number in [0, 1], got 2", 1,
      true), err)
    local rgb = minisd.models.ContextUnet({ in_channels = 3, n_feat = 8 })
    local res, msg = quality.evaluate(rgb, { n = 2, steps = 2, alpha_threshold = 0.5 })
    assert.is_nil(res)
    assert.truthy(msg:find("alpha_threshold needs an RGBA model", 1, true), msg)
  end)

  it("splits the distance: real sprites in place of the unlabelled or the labelled samples",
    function()
      -- a sampler that returns the real held-out sprites asked for (by context row), and noise
      -- for the null context: the set with real sprites in place of the noise is then exactly
      -- the real held-out set
      local cls = assert(minisd.classifier.load(minisd.classifier.default_path()))
      local ds = assert(minisd.data.load())
      local labels = ds.labels:totable()
      local queue = {}
      for _, i in ipairs(cls.training_summary.split.heldout) do
        local key = table.concat(labels[i], ",")
        queue[key] = queue[key] or {}
        table.insert(queue[key], ds.images:narrow(1, i, 1))
      end
      local sample, gen = minisd.diffusion.sample, minisd.Generator(5)
      minisd.diffusion.sample = function(_, o)
        local out = {}
        for j, row in ipairs(o.context:totable()) do
          local q = queue[table.concat(row, ",")]
          local null = true
          for _, v in ipairs(row) do
            null = null and v == 0
          end
          out[j] = (not null and q and #q > 0) and table.remove(q, 1)
            or minisd.randn({ 1, 4, 16, 16 }, gen)
        end
        return minisd.cat(out, 1)
      end
      local ok, r = pcall(quality.evaluate, tiny, { n = 2, steps = 1, seed = 3 })
      minisd.diffusion.sample = sample
      assert(ok, r)
      local f = assert(r).frechet
      assert.are.equal(171, f.n_unlabelled)
      H.assert_close(f.real_unlabelled, f.real_heldout, 1e-9, 1e-9, "real set")
      assert.is_true(f.real_labelled > 10 * f.real_heldout, tostring(f.real_labelled))
      -- the labelled samples are the real ones: putting those back changes nothing
      H.assert_close(f.real_labelled, f.samples, 1e-8, 1e-8, "same set")
      assert.truthy(quality.format(r):find("the 171 without a label", 1, true))
    end)

  it("samples the sprites with no label as 'other', guided, for a model with that label",
    function()
      local names = { "hero", "non-hero", "food", "spell", "side-facing", "other" }
      minisd.manual_seed(12)
      local six = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8, n_cfeat = 6,
        label_names = names })
      -- every sampling call's context rows and guidance
      local calls, sample = {}, minisd.diffusion.sample
      minisd.diffusion.sample = function(model, o)
        calls[#calls + 1] = { rows = o.context:totable(), guidance = o.guidance }
        return sample(model, o)
      end
      local ok, r = pcall(quality.evaluate, six, opts)
      minisd.diffusion.sample = sample
      assert(ok, r)
      assert(r, "no result")
      assert.are.equal("other", r.options.other_label)
      local other_rows, unguided = 0, 0
      for _, c in ipairs(calls) do
        for _, row in ipairs(c.rows) do
          assert.are.equal(6, #row)
          if row[6] == 1 then
            other_rows = other_rows + 1
            assert.are.equal(minisd.diffusion.recommended_guidance, c.guidance)
          end
        end
        unguided = unguided + (c.guidance == 0 and 1 or 0)
      end
      assert.are.equal(171, other_rows) -- the held-out split's null-context sprites
      assert.are.equal(0, unguided)
      -- the accuracy is over the classifier's five labels
      assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" },
        r.context_accuracy.label_names)
      assert.is_nil(r.context_accuracy.per_label.other)
      assert.truthy(quality.format(r):find("sampled as 'other', guided", 1, true))
      -- a sixth label of another name is not the classifier's
      names[6] = "misc"
      local misc = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8, n_cfeat = 6,
        label_names = names })
      local res, err = quality.evaluate(misc, opts)
      assert.is_nil(res)
      assert.truthy(err:find("optionally with other", 1, true), err)
    end)

  it("returns nil and a message for a missing file or a model of the wrong kind", function()
    local r, err = quality.evaluate(tmp .. "/missing.safetensors", opts)
    assert.is_nil(r)
    assert.truthy(err:find("cannot open", 1, true), err)
    r, err = quality.evaluate(H.root .. "/models/sprite-classifier.safetensors", opts)
    assert.is_nil(r)
    assert.truthy(err:find("is a SpriteClassifier, not a ContextUnet", 1, true), err)
    local other = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8, n_cfeat = 2,
      label_names = { "cat", "dog" } })
    r, err = quality.evaluate(other, opts)
    assert.is_nil(r)
    assert.truthy(err:find("labels (cat, dog) are not the classifier's", 1, true), err)
    r, err = quality.evaluate(tiny, { n = 2, classifier = tmp .. "/none.safetensors" })
    assert.is_nil(r)
    assert.truthy(err:find("classifier: ", 1, true), err)
  end)

  it("rejects bad options", function()
    local ok, err = pcall(quality.evaluate, tiny, { samples = 3 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("unknown option 'samples'", 1, true), err)
    ok, err = pcall(quality.evaluate, tiny, { n = 0 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("n must be a positive integer", 1, true), err)
  end)

  it("prints --help with its options", function()
    local ok, _, out = sh("--help")
    assert.is_true(ok, out)
    for _, opt in ipairs({ "--n", "--sampler", "--steps", "--variance", "--guidance", "--seed",
      "--threads", "--json", "--classifier" }) do
      assert.truthy(out:find(opt, 1, true), "missing " .. opt)
    end
  end)

  it("fails with a message and no traceback for a missing file or a wrong model", function()
    local cases = {
      { "/nonexistent/model.safetensors", "cannot open /nonexistent/model.safetensors" },
      { "models/sprite-classifier.safetensors", "is a SpriteClassifier, not a ContextUnet" },
      { "data/sprites.png", "data/sprites.png" },
      { "x.safetensors --n 0", "--n must be an integer >= 1" },
      { "x.safetensors --sampler ddim --variance fixed_small",
        "--variance applies to ddpm only, not to ddim" },
      { "models/sprites-context.safetensors --json /nonexistent/q.json",
        "cannot write /nonexistent/q.json: the folder /nonexistent does not exist" },
    }
    for _, c in ipairs(cases) do
      local ok, code, out = sh(c[1])
      assert.is_false(ok, c[1])
      assert.are_not.equal(0, code)
      assert.truthy(out:find(c[2], 1, true), c[1] .. " gave: " .. out)
      assert.falsy(out:find("traceback", 1, true), out)
    end
  end)
end)
