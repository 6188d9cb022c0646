-- minisd.classifier and scripts/train_classifier.lua: classes, the stratified split, the
-- pictures the classifier takes, a tiny training run, and the shipped classifier file.
local minisd = require("minisd")
local classifier = require("minisd.classifier")
local H = require("helpers")

local SHIPPED = H.root .. "/models/sprite-classifier.safetensors"

describe("classifier.classes_of", function()
  it("gives the label of one-hot rows, the largest of mixed ones, K + 1 for null rows", function()
    local labels = minisd.tensor({ { 1, 0, 0 }, { 0, 0, 1 }, { 0, 0, 0 }, { 0.2, 0.6, 0.6 } })
    assert.are.same({ 1, 3, 4, 2 }, classifier.classes_of(labels))
  end)
end)

describe("classifier.split", function()
  local classes = {}
  for i = 1, 100 do
    classes[i] = (i <= 50) and 1 or (i <= 90 and 2 or (i <= 99 and 3 or 4))
  end

  it("holds out round(n * fraction) of each class, disjoint from the rest", function()
    local train, held = classifier.split(classes, 0.2, 7)
    assert.are.equal(100, #train + #held)
    local per, seen = {}, {}
    for _, i in ipairs(held) do
      per[classes[i]] = (per[classes[i]] or 0) + 1
      seen[i] = true
    end
    for _, i in ipairs(train) do
      assert.is_nil(seen[i])
    end
    -- 10 of 50, 8 of 40, round(1.8) = 2 of 9; a class of one stays in training
    assert.are.same({ [1] = 10, [2] = 8, [3] = 2 }, per)
  end)

  it("is the same for the same seed and differs for another", function()
    local _, h1 = classifier.split(classes, 0.2, 7)
    local _, h2 = classifier.split(classes, 0.2, 7)
    local _, h3 = classifier.split(classes, 0.2, 8)
    assert.are.same(h1, h2)
    assert.are_not.same(h1, h3)
  end)

  it("rejects a fraction outside (0, 1)", function()
    local ok, err = pcall(classifier.split, classes, 1, 0)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("holdout must be a fraction in (0, 1)", 1, true), err)
  end)
end)

describe("classifier.prepare", function()
  it("composites RGBA over white and clamps RGB", function()
    -- one pixel: red at alpha 1, then green at alpha 0.5, then blue at alpha 0 (values in [-1,1])
    local x = minisd.tensor({ { { { 1, -1, -1 } }, { { -1, 1, -1 } }, { { -1, -1, 1 } },
      { { 1, 0, -1 } } } })
    local y = classifier.prepare(x)
    H.assert_close(y, { { { { 1, 0, 1 } }, { { -1, 1, 1 } }, { { -1, 0, 1 } } } }, 0, 1e-6,
      "composite")
    local rgb = minisd.tensor({ { { { 2, -3 } }, { { 0.5, 0 } }, { { -1, 1 } } } })
    H.assert_close(classifier.prepare(rgb), { { { { 1, -1 } }, { { 0.5, 0 } }, { { -1, 1 } } } },
      0, 0, "clamp")
  end)
end)

describe("classifier.accuracy", function()
  it("counts per class, overall, and the mean over the labels (not 'other')", function()
    local acc = classifier.accuracy({ 1, 1, 2, 3, 3, 3 }, { 1, 2, 2, 3, 3, 1 },
      { "a", "b", "other" }, 2)
    assert.are.equal(4 / 6, acc.overall)
    assert.are.same({ a = 0.5, b = 0.5, other = 1 }, acc.per_class)
    assert.are.equal(0.5, acc.label_mean)
    assert.are.same({ a = 2, b = 2, other = 2 }, acc.counts)
  end)
end)

describe("classifier.train", function()
  -- 8 sprites of each class of the bundled set
  local function small_set()
    local ds = assert(minisd.data.load())
    local classes = classifier.classes_of(ds.labels)
    local idx, per = {}, {}
    for i, c in ipairs(classes) do
      if (per[c] or 0) < 8 then
        per[c] = (per[c] or 0) + 1
        idx[#idx + 1] = i
      end
    end
    return minisd.data.from_tensors(minisd.image_gather(ds.images, idx),
      minisd.image_gather(ds.labels, idx), ds.label_names)
  end

  it("lowers the loss on a tiny subset, and the saved file loads with its summary", function()
    local set = small_set()
    assert.are.equal(48, set.n)
    local model, summary, losses = classifier.train({ data = set, epochs = 8, batch_size = 16,
      lr = 3e-3, holdout = 0.25, seed = 1, widths = { 8, 16 }, feature_dim = 8 })
    assert.are.equal(24, #losses) -- 36 training sprites, 3 batches, 8 epochs
    local first = (losses[1] + losses[2] + losses[3]) / 3
    local last = (losses[22] + losses[23] + losses[24]) / 3
    assert.is_true(last < 0.7 * first, string.format("loss %.4f -> %.4f", first, last))
    assert.are.equal(12, #summary.split.heldout) -- 2 of each class of 8
    assert.is_number(summary.heldout_accuracy)

    local path = H.tmpdir() .. "/cls.safetensors"
    assert(model:save(path, { training = summary }))
    local back = assert(classifier.load(path))
    assert.are.same(model.config.class_names, back.config.class_names)
    assert.are.same(summary.split.heldout, back.training_summary.split.heldout)
    local x = classifier.prepare(set.images)
    assert.are.same(classifier.predict(model, x), classifier.predict(back, x))
  end)

  it("rejects unknown options", function()
    local ok, err = pcall(classifier.train, { epoch = 3 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("unknown option 'epoch'", 1, true), err)
  end)
end)

describe("the shipped classifier", function()
  it("is small, loads, and its recorded held-out accuracy is what its weights give", function()
    local f = assert(io.open(SHIPPED, "rb"))
    local size = f:seek("end")
    f:close()
    assert.is_true(size < 1024 * 1024, "size " .. size)
    local model = assert(classifier.load(SHIPPED))
    local s = model.training_summary
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" },
      model.config.label_names)
    assert.are.equal("other", model.config.class_names[6])
    local ds = assert(minisd.data.load())
    assert.are.equal(ds.n, s.split.n)
    local classes = classifier.classes_of(ds.labels)
    local truth = {}
    for j, i in ipairs(s.split.heldout) do
      truth[j] = classes[i]
    end
    local pred = classifier.predict(model, classifier.prepare(
      minisd.image_gather(ds.images, s.split.heldout)))
    local acc = classifier.accuracy(pred, truth, model.config.class_names, 5)
    assert.is_true(math.abs(acc.overall - s.heldout_accuracy) < 1e-12)
    assert.is_true(math.abs(acc.label_mean - s.heldout_label_accuracy) < 1e-12)
    assert.is_true(acc.overall > 0.5, "held-out accuracy " .. acc.overall) -- chance: 1/6
  end)

  it("is not a diffusion model for load_model's users, and says what it is", function()
    local m = assert(minisd.load_model(SHIPPED))
    assert.are.equal("SpriteClassifier", m.__name)
    local ok, err = classifier.load(H.root .. "/no/such/file.safetensors")
    assert.is_nil(ok)
    assert.truthy(err:find("cannot open", 1, true), err)
  end)
end)

describe("scripts/train_classifier.lua", function()
  local function sh(args)
    return H.run(H.lua_bin .. " scripts/train_classifier.lua " .. args)
  end

  it("prints --help with its options", function()
    local ok, _, out = sh("--help")
    assert.is_true(ok, out)
    for _, opt in ipairs({ "--seed", "--split-seed", "--threads", "--out", "--epochs",
      "--holdout", "--limit" }) do
      assert.truthy(out:find(opt, 1, true), "missing " .. opt)
    end
  end)

  it("trains on a few sprites and writes a file with its metadata", function()
    local out = H.tmpdir() .. "/c.safetensors"
    local ok, _, text = sh("--limit 40 --epochs 1 --threads 1 --quiet --out " .. out)
    assert.is_true(ok, text)
    assert.truthy(text:find("held-out accuracy", 1, true), text)
    local m = assert(classifier.load(out))
    assert.are.equal(40, m.training_summary.split.n)
    assert.are.equal(0, m.training_summary.split.seed)
  end)

  it("rejects a bad option with a message", function()
    local ok, _, out = sh("--holdout 1.5")
    assert.is_false(ok)
    assert.truthy(out:find("--holdout must be a fraction", 1, true), out)
  end)
end)
