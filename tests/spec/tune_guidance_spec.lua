-- A model's own guidance scales: config.guidance, diffusion.recommended_guidance_for(sampler,
-- model), quality.pick_guidance, and scripts/tune_guidance.lua, which measures them with the
-- evaluator and records them (checked against quality.evaluate run here, in-process).
local minisd = require("minisd")
local quality = require("minisd.quality")
local json = require("minisd.json")
local H = require("helpers")

local function sh(args)
  return H.run(H.lua_bin .. " scripts/tune_guidance.lua " .. args)
end

describe("quality.pick_guidance", function()
  it("takes the lowest distance among the rows accurate enough", function()
    local rows = { { guidance = 2, accuracy = 0.70, frechet = 5.0 },
      { guidance = 3, accuracy = 0.85, frechet = 6.4 },
      { guidance = 4, accuracy = 0.90, frechet = 7.1 },
      { guidance = 6, accuracy = 0.91, frechet = 6.0 } }
    local row, reached = quality.pick_guidance(rows, 0.8)
    assert.are.equal(6, row.guidance) -- 2 is closer, but below the floor
    assert.is_true(reached)
    row = quality.pick_guidance(rows, 0.6)
    assert.are.equal(2, row.guidance)
    -- equal distances: the more accurate row
    rows[4].frechet = 6.4
    assert.are.equal(6, quality.pick_guidance(rows, 0.8).guidance)
  end)

  it("counts distances within the tolerance of the lowest as equal: the most accurate wins",
    function()
      -- the shipped model's DDPM means over four seeds (models/README.md)
      local rows = { { guidance = 2, accuracy = 0.829, frechet = 4.78 },
        { guidance = 2.5, accuracy = 0.879, frechet = 4.79 },
        { guidance = 3, accuracy = 0.91, frechet = 5.9 } }
      assert.are.equal(2, quality.pick_guidance(rows, 0.69).guidance)
      assert.are.equal(2, quality.pick_guidance(rows, 0.69, 0.005).guidance)
      assert.are.equal(2.5, quality.pick_guidance(rows, 0.69, 0.1).guidance)
      assert.are.equal(3, quality.pick_guidance(rows, 0.69, 1.2).guidance)
      -- equal accuracy within the tolerance: the closer
      rows[1].accuracy = 0.879
      assert.are.equal(2, quality.pick_guidance(rows, 0.69, 0.1).guidance)
      local ok, err = pcall(quality.pick_guidance, rows, 0.69, -1)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("tolerance must be a number >= 0, got -1", 1, true), err)
    end)

  it("takes the most accurate row when none is accurate enough", function()
    local rows = { { guidance = 1, accuracy = 0.3, frechet = 9 },
      { guidance = 3, accuracy = 0.5, frechet = 12 },
      { guidance = 6, accuracy = 0.4, frechet = 8 } }
    local row, reached = quality.pick_guidance(rows, 0.69)
    assert.are.equal(3, row.guidance)
    assert.is_false(reached)
    local ok, err = pcall(quality.pick_guidance, {}, 0.5)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("rows must be a non-empty list", 1, true), err)
  end)
end)

describe("a model's own guidance scales (config.guidance)", function()
  local tmp = H.tmpdir()

  it("are what recommended_guidance_for gives for their samplers, the library's otherwise",
    function()
      local d = minisd.diffusion
      local m = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8,
        guidance = { ddpm = 2, ddim = 4.5 } })
      assert.are.equal(2, d.recommended_guidance_for("ddpm", m))
      assert.are.equal(4.5, d.recommended_guidance_for("ddim", m))
      assert.are.equal(2, d.recommended_guidance_for(nil, m)) -- the recommended sampler: ddpm
      assert.are.equal(d.guidance_by_sampler.euler_a, d.recommended_guidance_for("euler_a", m))
      assert.are.equal(d.guidance_by_sampler.ddim, d.recommended_guidance_for("ddim"))
      assert.are.equal(4.5, d.recommended_guidance_for("ddim", m.config)) -- a config will do
      -- kept by the file
      local path = tmp .. "/g.safetensors"
      assert(m:save(path))
      assert.are.same({ ddpm = 2, ddim = 4.5 }, assert(minisd.load_model(path)).config.guidance)
    end)

  it("are checked: known samplers, scales in [0, 100]", function()
    for _, case in ipairs({
      { { dpm = 2 }, "guidance: dpm is not a sampler (one of: " },
      { { ddpm = -1 }, "guidance: the scale for ddpm must be a number in [0, 100], got -1" },
      { { ddpm = "2" }, "guidance: the scale for ddpm must be a number in [0, 100], got 2" },
      { 3, "guidance must be a table {sampler = scale}, got number" } }) do
      local ok, err = pcall(minisd.models.ContextUnet, { n_feat = 8, guidance = case[1] })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("ContextUnet: " .. case[2], 1, true), err)
    end
  end)
end)

describe("scripts/tune_guidance.lua", function()
  local tmp = H.tmpdir()
  minisd.manual_seed(21)
  local tiny = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8 })
  local path = tmp .. "/tiny.safetensors"
  assert(tiny:save(path, { training = { context = true } }))

  it("measures each scale as the evaluator does, picks by quality.pick_guidance and records it",
    function()
      local ok, _, out = sh(path .. " --scales 1,4 --seeds 0,2 --n 2 --steps 1 --threads 1 "
        .. "--quiet --write -o " .. tmp .. "/tuned.safetensors --json " .. tmp .. "/t.json")
      assert.is_true(ok, out)
      local r = assert(json.decode(H.read_file(tmp .. "/t.json")))
      -- the figures, from the evaluator here
      local means = {}
      for i, g in ipairs({ 1, 4 }) do
        local row = r.scales[i]
        assert.are.equal(g, row.guidance)
        local sa, sf = 0, 0
        for j, seed in ipairs({ 0, 2 }) do
          local e = assert(quality.evaluate(tiny, { n = 2, steps = 1, guidance = g,
            seed = seed }))
          H.assert_close(row.accuracy[j], e.context_accuracy.overall, 1e-12, 1e-12, "accuracy")
          H.assert_close(row.frechet[j], e.frechet.samples, 1e-9, 1e-9, "Frechet distance")
          sa, sf = sa + e.context_accuracy.overall, sf + e.frechet.samples
          r.heldout = e.context_accuracy.classifier_heldout
        end
        means[i] = { guidance = g, accuracy = sa / 2, frechet = sf / 2 }
      end
      local picked = quality.pick_guidance(means, 0.9 * r.heldout, 0.1) -- (--tolerance 0.1)
      assert.are.equal(picked.guidance, r.best)
      assert.truthy(out:find("best: guidance " .. r.best .. " for ddpm", 1, true), out)
      -- recorded in the new file, the weights unchanged; the original untouched
      local tuned = assert(minisd.load_model(tmp .. "/tuned.safetensors"))
      assert.are.same({ ddpm = r.best }, tuned.config.guidance)
      assert.is_true(tuned.training_summary.context)
      local a, b = tiny:state_dict(), tuned:state_dict()
      for k, v in pairs(a) do
        assert.are.equal(0, (v - b[k]):abs():max(), k)
      end
      assert.is_nil(assert(minisd.load_model(path)).config.guidance)
      -- and sample.lua takes it when sampling a context with ddpm (guidance auto)
      local index = tmp .. "/sheet.lua"
      ok, _, out = H.run(H.lua_bin .. " sample.lua " .. tmp .. "/tuned.safetensors -c hero -n 1 "
        .. "--steps 2 --sheet " .. tmp .. "/sheet.png -o " .. tmp .. "/grid.png")
      assert.is_true(ok, out)
      assert.are.equal(r.best, dofile(index).guidance)
    end)

  it("records scales without measuring (--set) and removes them (--clear)", function()
    local p = tmp .. "/set.safetensors"
    assert(tiny:save(p, { training = { context = true }, dtype = "F16" }))
    local ok, _, out = sh(p .. " --set ddpm=2 --set ddim=5.5")
    assert.is_true(ok, out)
    assert.truthy(out:find("guidance ddim 5.5, ddpm 2", 1, true), out)
    assert.are.same({ ddpm = 2, ddim = 5.5 }, assert(minisd.load_model(p)).config.guidance)
    assert.are.equal("F16", minisd.models.file_dtype(p)) -- kept
    ok, _, out = sh(p .. " --set ddim=6")
    assert.is_true(ok, out)
    assert.are.same({ ddpm = 2, ddim = 6 }, assert(minisd.load_model(p)).config.guidance)
    ok, _, out = sh(p .. " --clear")
    assert.is_true(ok, out)
    assert.is_nil(assert(minisd.load_model(p)).config.guidance)
  end)

  it("fails with a message for bad options and models", function()
    local plain = tmp .. "/plain.safetensors"
    assert(tiny:save(plain)) -- no training summary: not trained with contexts
    for _, case in ipairs({
      { path .. " --set ddpm", "--set wants SAMPLER=SCALE (e.g. ddpm=2), got 'ddpm'" },
      { path .. " --set dpm=2", "guidance: dpm is not a sampler" },
      { path .. " --set ddpm=-3", "the scale for ddpm must be a number in [0, 100], got -3" },
      { path .. " --scales 2,x", "--scales: 'x' is not a non-negative number" },
      { path .. " --seeds 0.5", "--seeds: '0.5' is not a non-negative integer" },
      { path .. " --tolerance -1", "--tolerance must be a number >= 0" },
      { path .. " --json /nonexistent/t.json", "cannot write /nonexistent/t.json" },
      { path .. " --set ddpm=2 -o /nonexistent/m.safetensors", "cannot write /nonexistent/m" },
      { path .. " -o " .. tmp .. "/x.safetensors", "-o/--out goes with --write" },
      { plain, "was not trained with contexts" },
      { tmp .. "/none.safetensors", "cannot open" },
      { "models/sprite-classifier.safetensors --set ddpm=2", "not a ContextUnet" } }) do
      local ok, code, out = sh(case[1])
      assert.is_false(ok, case[1])
      assert.are_not.equal(0, code)
      assert.truthy(out:find(case[2], 1, true), case[1] .. " gave: " .. out)
      assert.falsy(out:find("traceback", 1, true), out)
    end
    assert.is_nil(assert(minisd.load_model(path)).config.guidance) -- nothing written
  end)

  it("prints --help with its options", function()
    local ok, _, out = sh("--help")
    assert.is_true(ok, out)
    for _, opt in ipairs({ "--sampler", "--steps", "--scales", "--seeds", "--n", "--tolerance",
      "--write",
      "--set", "--clear", "--json", "--threads" }) do
      assert.truthy(out:find(opt, 1, true), "missing " .. opt)
    end
  end)
end)
