--- minisd.classifier: the sprite classifier behind `minisd.quality`, trained with minisd
-- itself on the labelled bundled sprites.
--
-- Classes: the dataset's K context labels, then "other" for the sprites with the null
-- (all-zero) context. The diffusion models learn those sprites too (they are half of the
-- bundled set), so "other" lets the classifier say that a sample looks like none of the
-- labels instead of forcing it onto one, and its features cover every real sprite.
--
-- Pictures: the classifier sees RGB in [-1, 1]. RGBA sprites are composited over a background:
-- a random colour (or white) per sprite while training, white (`config.background`) when
-- measuring, so that RGBA models and RGB models trained over the default white background
-- give it the same pictures.
--
-- The held-out split is stratified per class with a fixed seed; the indices travel in the
-- model file (`minisd.training` -> split.heldout) so the evaluator uses the same sprites.
-- @module minisd.classifier

local minisd = require("minisd")
local util = require("minisd.util")
local image = require("minisd.image")

local M = {}

--- The file name of the shipped classifier.
M.FILE = "sprite-classifier.safetensors"

--- Training defaults (see scripts/train_classifier.lua --help).
M.defaults = {
  seed = 0, split_seed = 0, holdout = 0.2, epochs = 30, batch_size = 32, lr = 2e-3,
  weight_decay = 0.05, feature_dim = 32, widths = { 32, 64 }, random_background = 0.5,
  class_weight_power = 0.5, evaluate = true,
}

local TRAIN_OPTS = { "data", "limit", "on_step", "on_epoch" }
for k in pairs(M.defaults) do
  TRAIN_OPTS[#TRAIN_OPTS + 1] = k
end
table.sort(TRAIN_OPTS)

--- Where the shipped classifier is: beside the bundled dataset of an installed rock, else
-- `models/` next to the `data/` folder of a source tree.
-- @return the path (the file may be missing)
function M.default_path()
  return require("minisd.models").shipped_path(M.FILE)
end

--- Loads a classifier file.
-- @param path file name (default: `default_path()`)
-- @return the classifier (eval mode), or nil and a message
function M.load(path)
  path = path or M.default_path()
  local model, err = minisd.load_model(path)
  if not model then
    return nil, err
  end
  if model.__name ~= "SpriteClassifier" then
    return nil, string.format("%s is a %s, not a SpriteClassifier", path, model.__name)
  end
  return model
end

--- Pictures as the classifier takes them: clamped to [-1, 1], RGBA composited over
-- `background`.
-- @param x tensor (N, 3 or 4, H, W) in [-1, 1]
-- @param background {r, g, b} in [0, 1] (default white)
-- @return tensor (N, 3, H, W) in [-1, 1]
function M.prepare(x, background)
  local s = x:shape()
  if #s ~= 4 or (s[2] ~= 3 and s[2] ~= 4) then
    error("classifier.prepare: expected pictures (N, 3 or 4, H, W), got " .. tostring(x), 2)
  end
  if s[2] == 3 then
    return minisd.image_affine_clamp(x, 1, 0, -1, 1)
  end
  return image.from_unit(minisd.image_composite(image.to_unit(x), background or { 1, 1, 1 }))
end

--- The class of each context row: the index of its largest label (the first on ties), or
-- K + 1 ("other") for an all-zero row.
-- @param labels tensor (N, K)
-- @return list of N class indices in 1..K+1
function M.classes_of(labels)
  local rows = labels:totable()
  local K = labels:shape()[2]
  local out = {}
  for i, row in ipairs(rows) do
    local best, bi = 0, K + 1
    for k = 1, K do
      if row[k] > best then
        best, bi = row[k], k
      end
    end
    out[i] = bi
  end
  return out
end

--- A held-out split, stratified per class: from each class with n members, round(n * holdout)
-- of them (at least 1 when n >= 2, never all) in an order drawn with `seed`.
-- @param classes list of class indices
-- @param holdout fraction held out, in (0, 1)
-- @param seed split seed
-- @return train indices, held-out indices (sorted lists of 1-based indices into `classes`)
function M.split(classes, holdout, seed)
  if type(holdout) ~= "number" or holdout <= 0 or holdout >= 1 then
    error("classifier.split: holdout must be a fraction in (0, 1), got " .. tostring(holdout), 2)
  end
  local members, order = {}, {}
  for i, c in ipairs(classes) do
    if not members[c] then
      members[c] = {}
      order[#order + 1] = c
    end
    table.insert(members[c], i)
  end
  table.sort(order)
  local gen = minisd.Generator(seed or 0)
  local train, held = {}, {}
  for _, c in ipairs(order) do
    local list = members[c]
    local n = #list
    local k = math.floor(n * holdout + 0.5)
    if n >= 2 then
      k = math.max(1, math.min(n - 1, k))
    else
      k = 0
    end
    local perm = minisd.randperm(n, gen)
    for j = 1, n do
      local dest = j <= k and held or train
      dest[#dest + 1] = list[perm[j]]
    end
  end
  table.sort(train)
  table.sort(held)
  return train, held
end

local function gather_rows(t, idx)
  return minisd.image_gather(t, idx)
end

--- Predicted classes, batch by batch, without autograd.
-- @param model the classifier
-- @param x tensor (N, 3, H, W) prepared pictures
-- @param opts optional {features = true: also return the features}
-- @return list of N class indices, and a (N, feature_dim) tensor when asked
function M.predict(model, x, opts)
  opts = util.check_options("classifier.predict", opts, { "features" })
  model:eval()
  local n = x:shape()[1]
  local preds, feats = {}, {}
  local B = 256
  minisd.no_grad(function()
    for i0 = 1, n, B do
      local xb = x:narrow(1, i0, math.min(B, n - i0 + 1))
      local f = model:embed(xb)
      local logits = model.head(f):totable()
      for _, row in ipairs(logits) do
        local best, bi = -math.huge, 1
        for k, v in ipairs(row) do
          if v > best then
            best, bi = v, k
          end
        end
        preds[#preds + 1] = bi
      end
      if opts.features then
        feats[#feats + 1] = f
      end
    end
  end)
  if opts.features then
    return preds, minisd.cat(feats, 1)
  end
  return preds
end

--- Per-class and overall accuracy of predictions.
-- @param pred list of predicted class indices
-- @param truth list of true class indices
-- @param names class names
-- @param K the number of context labels (classes 1..K; the mean over them is `label_mean`)
-- @return table {overall=, label_mean=, per_class = {name = accuracy}, counts = {name = n}};
--   overall is nil without predictions, label_mean when no label class is present
function M.accuracy(pred, truth, names, K)
  local right, count = {}, {}
  local total_right = 0
  for i, c in ipairs(truth) do
    count[c] = (count[c] or 0) + 1
    if pred[i] == c then
      right[c] = (right[c] or 0) + 1
      total_right = total_right + 1
    end
  end
  local per_class, counts = {}, {}
  local sum, m = 0, 0
  for c, name in ipairs(names) do
    if count[c] then
      per_class[name] = (right[c] or 0) / count[c]
      counts[name] = count[c]
      if c <= K then
        sum, m = sum + per_class[name], m + 1
      end
    end
  end
  return {
    overall = #truth > 0 and total_right / #truth or nil,
    label_mean = m > 0 and sum / m or nil,
    per_class = per_class, counts = counts,
  }
end

-- Composites RGBA pictures (B, 4, H, W) in [-1, 1] over one background per picture: white
-- with probability 1 - p, else a uniform random colour.
local function random_composite(x, p, gen)
  local B = x:shape()[1]
  local u = minisd.rand({ B, 4 }, gen):totable()
  local bg = {}
  for i = 1, B do
    local white = u[i][4] >= p
    bg[i] = { white and 1 or u[i][1], white and 1 or u[i][2], white and 1 or u[i][3] }
  end
  local x01 = image.to_unit(x)
  local rgb, alpha = x01:narrow(2, 1, 3), x01:narrow(2, 4, 1)
  local back = minisd.tensor(bg):reshape(B, 3, 1, 1)
  return image.from_unit(rgb * alpha + back * (1 - alpha))
end

--- Trains a classifier on a labelled dataset (default: the bundled sprites).
-- @param opts the fields of M.defaults: `data` (a path, a dataset or nil), `seed` (weights,
--   batches, augmentation), `split_seed`, `holdout`, `epochs`, `batch_size`, `lr` (AdamW,
--   cosine decay to 0), `weight_decay`, `feature_dim`, `widths`, `random_background`
--   (probability of a random background colour per RGBA sprite, else white),
--   `class_weight_power` (loss weight of a class: (count / mean count)^-power),
--   `limit` (only the first N sprites), `on_step(info)`, `on_epoch(info)`, `evaluate`
--   (measure the held-out accuracy at the end)
-- @return the classifier (eval mode, its `training_summary` set), the summary table (the
--   file's `minisd.training`: split, held-out accuracy, ...) and the list of step losses
function M.train(opts)
  opts = util.options("classifier.train", opts, M.defaults, nil, TRAIN_OPTS)
  local ds = opts.data
  if ds == nil or type(ds) == "string" then
    local err
    ds, err = require("minisd.data").load(ds, { channels = 4 })
    if not ds then
      error(err, 0)
    end
  end
  local images, labels = ds.images, ds.labels
  if ds.channels ~= 4 then
    error("classifier.train: the dataset must have 4 channels (RGBA), it has " .. ds.channels, 2)
  end
  local n = ds.n
  if opts.limit and opts.limit < n then
    images, labels, n = images:narrow(1, 1, opts.limit), labels:narrow(1, 1, opts.limit),
      opts.limit
  end
  local K = #ds.label_names
  local class_names = {}
  for i, name in ipairs(ds.label_names) do
    class_names[i] = name
  end
  class_names[K + 1] = "other"
  local classes = M.classes_of(labels)
  local train_idx, held_idx = M.split(classes, opts.holdout, opts.split_seed)

  -- loss weights per class, in one-hot target rows: cross_entropy with (N, C) targets that sum
  -- to w is w times the usual loss
  local count = {}
  for _, i in ipairs(train_idx) do
    count[classes[i]] = (count[classes[i]] or 0) + 1
  end
  local present = 0
  for _ in pairs(count) do
    present = present + 1
  end
  local mean_count = #train_idx / math.max(present, 1)
  local targets = {}
  for j, i in ipairs(train_idx) do
    local row = {}
    for c = 1, K + 1 do
      row[c] = 0
    end
    row[classes[i]] = (count[classes[i]] / mean_count) ^ -opts.class_weight_power
    targets[j] = row
  end
  local train_set = require("minisd.data").from_tensors(gather_rows(images, train_idx),
    minisd.tensor(targets), class_names)

  minisd.manual_seed(opts.seed) -- the initial weights come from the default generator
  local model = require("minisd.models").from_config({
    in_channels = 3, height = ds.height, widths = opts.widths, feature_dim = opts.feature_dim,
    class_names = class_names, label_names = ds.label_names,
  }, "SpriteClassifier")
  model:train()
  local opt = minisd.optim.AdamW(model:parameters(), { lr = opts.lr,
    weight_decay = opts.weight_decay })
  local gen = minisd.Generator(opts.seed)
  local steps_per_epoch = math.ceil(#train_idx / opts.batch_size)
  local total = steps_per_epoch * opts.epochs
  local step, losses = 0, {}
  local t0 = minisd.clock()
  for epoch = 1, opts.epochs do
    local sum, nb = 0, 0
    for x, target in train_set:batches(opts.batch_size, { generator = gen, flip = true }) do
      opt.lr = opts.lr * 0.5 * (1 + math.cos(math.pi * step / total))
      local logits = model(random_composite(x, opts.random_background, gen))
      local loss = minisd.cross_entropy(logits, target)
      opt:zero_grad()
      loss:backward()
      opt:step()
      step = step + 1
      losses[step] = loss:item()
      sum, nb = sum + losses[step], nb + 1
      if opts.on_step then
        opts.on_step({ epoch = epoch, step = step, total = total, loss = losses[step] })
      end
    end
    if opts.on_epoch then
      opts.on_epoch({ epoch = epoch, epochs = opts.epochs, step = step, loss = sum / nb,
        elapsed = minisd.clock() - t0 })
    end
  end
  model:eval()

  local summary = {
    epochs = opts.epochs, steps = step, batch_size = opts.batch_size, lr = opts.lr,
    weight_decay = opts.weight_decay, seed = opts.seed, final_loss = losses[step],
    random_background = opts.random_background, class_weight_power = opts.class_weight_power,
    dataset = opts.data == nil and "bundled" or (type(opts.data) == "string" and opts.data
      or "tensors"),
    images = n, seconds = minisd.clock() - t0,
    split = { seed = opts.split_seed, holdout = opts.holdout, n = n, heldout = held_idx },
  }
  if opts.evaluate and #held_idx > 0 then
    local held_classes = {}
    for j, i in ipairs(held_idx) do
      held_classes[j] = classes[i]
    end
    local pred = M.predict(model, M.prepare(gather_rows(images, held_idx)))
    local acc = M.accuracy(pred, held_classes, class_names, K)
    summary.heldout_accuracy = acc.overall
    summary.heldout_label_accuracy = acc.label_mean
    summary.heldout_per_class = acc.per_class
    summary.heldout_counts = acc.counts
  end
  model.training_summary = summary -- as load_model gives it
  return model, summary, losses
end

return M
