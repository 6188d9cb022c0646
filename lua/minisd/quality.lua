--- minisd.quality: how good are a model's sprites? The metrics of `scripts/eval_quality.lua`,
-- each usable on its own tensors, and `evaluate` to measure a model file.
--
-- * context accuracy: the sprite classifier (`minisd.classifier`) classifies N conditional
--   samples per label; the fraction classified as the label asked for.
-- * Frechet distance between Gaussians fitted to the classifier's penultimate features
--   (the FID recipe with a small, sprite-specific feature extractor):
--   |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(sqrt(S1) S2 sqrt(S1))), in double precision.
-- * memorisation: the fraction of samples whose nearest real sprite (pixel L2, horizontal
--   flips included) is closer than the 1st percentile of the real sprites' own
--   nearest-neighbour distances.
-- * alpha: the fraction of alpha values that are neither transparent nor opaque.
-- @module minisd.quality

local minisd = require("minisd")
local util = require("minisd.util")
local linalg = require("minisd.linalg")
local image = require("minisd.image")
local classifier = require("minisd.classifier")

local M = {}

--- Alpha values in (ALPHA_LOW, ALPHA_HIGH), after mapping [-1, 1] to [0, 1] with clamping,
-- count as neither transparent nor opaque (about 5..250 of 255).
M.ALPHA_LOW, M.ALPHA_HIGH = 0.02, 0.98

--- The real sprites' nearest-neighbour distance percentile below which a sample counts as
-- a copy.
M.MEMORISATION_PERCENTILE = 1

-- Large enough to act as infinity for squared distances of pictures in [-1, 1], small enough
-- to stay finite through float sums.
local FAR = 1e30

-- ---- Frechet distance ----------------------------------------------------------------------

local function as_rows(fn, x)
  if minisd.is_tensor(x) then
    if x:dim() ~= 2 then
      error(string.format("%s: features must be (N, D), got %s", fn, tostring(x)), 3)
    end
    return x:totable()
  end
  if type(x) ~= "table" or type(x[1]) ~= "table" then
    error(fn .. ": features must be a (N, D) tensor or a list of rows", 3)
  end
  return x
end

--- The mean and covariance (unbiased, N - 1) of feature rows, in double precision.
-- @param features tensor (N, D) or a list of N rows of D numbers, N >= 2
-- @return table {mu = list of D, sigma = D x D matrix, n = N}
function M.gaussian_stats(features)
  local rows = as_rows("quality.gaussian_stats", features)
  local n, d = #rows, #rows[1]
  if n < 2 then
    error("quality.gaussian_stats: need at least 2 rows, got " .. n, 2)
  end
  local mu = {}
  for j = 1, d do
    mu[j] = 0
  end
  for _, r in ipairs(rows) do
    for j = 1, d do
      mu[j] = mu[j] + r[j]
    end
  end
  for j = 1, d do
    mu[j] = mu[j] / n
  end
  local sigma = {}
  for i = 1, d do
    sigma[i] = {}
    for j = 1, d do
      sigma[i][j] = 0
    end
  end
  local c = {}
  for _, r in ipairs(rows) do
    for j = 1, d do
      c[j] = r[j] - mu[j]
    end
    for i = 1, d do
      local ci, si = c[i], sigma[i]
      if ci ~= 0 then
        for j = i, d do
          si[j] = si[j] + ci * c[j]
        end
      end
    end
  end
  for i = 1, d do
    for j = i, d do
      local v = sigma[i][j] / (n - 1)
      sigma[i][j], sigma[j][i] = v, v
    end
  end
  return { mu = mu, sigma = sigma, n = n }
end

local function stats_of(fn, x)
  if type(x) == "table" and x.mu and x.sigma then
    return x
  end
  as_rows(fn, x)
  return M.gaussian_stats(x)
end

--- The Frechet distance between two Gaussians fitted to feature sets:
-- |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(sqrt(S1) S2 sqrt(S1))) (Dowson and Landau 1982;
-- the FID of Heusel et al. 2017). The inner matrix is symmetric PSD, so its square root's
-- trace is the sum of the square roots of its eigenvalues (Jacobi, double precision).
-- @param a features (N, D) tensor, list of rows, or `gaussian_stats` result
-- @param b the same for the other set
-- @return the distance (>= 0 up to rounding)
function M.frechet_distance(a, b)
  local sa = stats_of("quality.frechet_distance", a)
  local sb = stats_of("quality.frechet_distance", b)
  local d = #sa.mu
  if #sb.mu ~= d then
    error(string.format("quality.frechet_distance: %d features against %d", d, #sb.mu), 2)
  end
  local dist = 0
  for j = 1, d do
    local diff = sa.mu[j] - sb.mu[j]
    dist = dist + diff * diff
  end
  local r1 = linalg.sqrtm_psd(sa.sigma)
  local inner = linalg.matmul(linalg.matmul(r1, sb.sigma), r1)
  for i = 1, d do -- symmetric up to rounding: make it exactly so for Jacobi
    for j = i + 1, d do
      local v = 0.5 * (inner[i][j] + inner[j][i])
      inner[i][j], inner[j][i] = v, v
    end
  end
  local values = linalg.eigh(inner)
  local tr_sqrt = 0
  for _, v in ipairs(values) do
    tr_sqrt = tr_sqrt + math.sqrt(math.max(v, 0))
  end
  return dist + linalg.trace(sa.sigma) + linalg.trace(sb.sigma) - 2 * tr_sqrt
end

-- ---- memorisation ----------------------------------------------------------------------------

-- The minimum of each row of d (R, M), through the max-pooling kernel: the row is laid out
-- as a square plane (padded with -FAR) and pooled with a kernel covering it.
local function row_min(d)
  local s = d:shape()
  local R, m = s[1], s[2]
  local side = math.ceil(math.sqrt(m))
  local neg = -d
  if side * side > m then
    neg = minisd.cat({ neg, minisd.full({ R, side * side - m }, -FAR) }, 2)
  end
  local pooled = minisd.max_pool2d(neg:reshape(R, 1, side, side), side)
  local out = pooled:reshape(R):totable()
  for i = 1, R do
    out[i] = -out[i]
  end
  return out
end

-- (R, R) with FAR on the diagonal.
local function far_eye(R)
  local rows = {}
  for i = 1, R do
    local r = {}
    for j = 1, R do
      r[j] = (i == j) and FAR or 0
    end
    rows[i] = r
  end
  return minisd.tensor(rows)
end

local function as_pictures(fn, x, what)
  if not minisd.is_tensor(x) or x:dim() ~= 4 then
    error(string.format("%s: %s must be pictures (N, C, H, W), got %s", fn, what,
      minisd.is_tensor(x) and tostring(x) or type(x)), 3)
  end
  return x:shape()
end

--- Distance (pixel L2 over every value, pictures clamped to [-1, 1]) from each picture of
-- `x` to its nearest picture of `real` or of the mirror images of `real`.
-- @param x tensor (N, C, H, W)
-- @param real tensor (M, C, H, W)
-- @param opts optional {exclude_self = true when x is real itself: picture i skips real
--   picture i and its mirror image}
-- @return list of N distances
function M.nearest_real_distances(x, real, opts)
  opts = util.check_options("quality.nearest_real_distances", opts, { "exclude_self" })
  local xs = as_pictures("quality.nearest_real_distances", x, "x")
  local rs = as_pictures("quality.nearest_real_distances", real, "real")
  if xs[2] ~= rs[2] or xs[3] ~= rs[3] or xs[4] ~= rs[4] then
    error(string.format("quality.nearest_real_distances: x %s and real %s differ in picture "
      .. "shape", tostring(x), tostring(real)), 2)
  end
  local n, m = xs[1], rs[1]
  if opts.exclude_self and (n ~= m or m < 2) then
    error("quality.nearest_real_distances: exclude_self needs x to be real itself (M >= 2)", 2)
  end
  local D = xs[2] * xs[3] * xs[4]
  local function flat(t, rows)
    return minisd.image_affine_clamp(t, 1, 0, -1, 1):reshape(rows, D)
  end
  -- |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, the products on the GEMM of `linear`
  local ref = minisd.cat({ flat(real, m), flat(minisd.image_flip(real, 4), m) }, 1)
  local ones = minisd.ones({ 1, D })
  local ref_sq = minisd.linear(ref * ref, ones):reshape(1, 2 * m)
  local xf = flat(x, n)
  local out = {}
  local chunk = 128
  for i0 = 1, n, chunk do
    local R = math.min(chunk, n - i0 + 1)
    local a = xf:narrow(1, i0, R)
    local d2 = minisd.linear(a * a, ones) + ref_sq - minisd.linear(a, ref) * 2
    if opts.exclude_self then
      local eye = far_eye(R)
      local parts = {}
      for _ = 1, 2 do
        if i0 > 1 then
          parts[#parts + 1] = minisd.zeros({ R, i0 - 1 })
        end
        parts[#parts + 1] = eye
        if i0 - 1 + R < m then
          parts[#parts + 1] = minisd.zeros({ R, m - (i0 - 1) - R })
        end
      end
      d2 = d2 + minisd.cat(parts, 2)
    end
    for _, v in ipairs(row_min(d2)) do
      out[#out + 1] = math.sqrt(math.max(v, 0)) -- rounding can leave a copy at -1e-4
    end
  end
  return out
end

--- The p-th percentile of a list, interpolating linearly between order statistics (numpy's
-- default).
-- @param values list of numbers (not modified)
-- @param p percentile in [0, 100]
-- @return number
function M.percentile(values, p)
  local v = {}
  for i, x in ipairs(values) do
    v[i] = x
  end
  if #v == 0 then
    error("quality.percentile: no values", 2)
  end
  table.sort(v)
  local pos = (#v - 1) * p / 100 + 1
  local lo = math.floor(pos)
  local hi = math.min(lo + 1, #v)
  return v[lo] + (v[hi] - v[lo]) * (pos - lo)
end

--- The memorisation threshold: the MEMORISATION_PERCENTILE-th percentile of the distances of
-- the real pictures to their nearest other real picture (mirror images included).
-- @param real tensor (M, C, H, W), M >= 2
-- @return the threshold, and the list of the M distances
function M.memorisation_threshold(real)
  local d = M.nearest_real_distances(real, real, { exclude_self = true })
  return M.percentile(d, M.MEMORISATION_PERCENTILE), d
end

--- The fraction of pictures closer to a real one (or its mirror image) than the threshold.
-- @param x tensor (N, C, H, W): samples
-- @param real tensor (M, C, H, W): the real sprites
-- @param opts optional {threshold = a precomputed `memorisation_threshold(real)`}
-- @return table {fraction =, count =, n =, threshold =, distances = list of N}
function M.memorisation(x, real, opts)
  opts = util.check_options("quality.memorisation", opts, { "threshold" })
  local threshold = opts.threshold or M.memorisation_threshold(real)
  local d = M.nearest_real_distances(x, real)
  local count = 0
  for _, v in ipairs(d) do
    if v < threshold then
      count = count + 1
    end
  end
  return { fraction = count / #d, count = count, n = #d, threshold = threshold, distances = d }
end

-- ---- alpha -----------------------------------------------------------------------------------

--- The fraction of alpha values strictly between ALPHA_LOW and ALPHA_HIGH after mapping
-- [-1, 1] to [0, 1] with clamping.
-- @param x tensor (N, 4, H, W) in [-1, 1]
-- @param opts optional {low = ALPHA_LOW, high = ALPHA_HIGH}
-- @return the fraction, or nil when x has no alpha channel (C ~= 4)
function M.alpha_fraction(x, opts)
  opts = util.check_options("quality.alpha_fraction", opts, { "low", "high" })
  local s = as_pictures("quality.alpha_fraction", x, "x")
  if s[2] ~= 4 then
    return nil
  end
  local lo, hi = opts.low or M.ALPHA_LOW, opts.high or M.ALPHA_HIGH
  local a = image.to_unit(x:narrow(2, 4, 1))
  -- steps computed in C: clamp(a * FAR - lo * FAR, 0, 1) is 1 where a > lo and 0 elsewhere
  -- (any difference a - lo above float rounding, times FAR, is past 1), and likewise for
  -- a < hi; so the sum of both is 2 inside the interval and 1 outside it
  local above = minisd.image_affine_clamp(a, FAR, -lo * FAR, 0, 1)
  local below = minisd.image_affine_clamp(a, -FAR, hi * FAR, 0, 1)
  local count = (above + below):sum():item() - a:numel()
  return count / a:numel()
end

-- ---- evaluating a model ----------------------------------------------------------------------

M.defaults = { n = 100, sampler = require("minisd.diffusion").recommended_sampler, seed = 0 }

--- The steps of a sampler when none are given: diffusion.recommended_steps for the
-- recommended sampler, else the sampler's default_steps (25 where it has none).
function M.default_steps(sampler)
  local diffusion = require("minisd.diffusion")
  if sampler == diffusion.recommended_sampler then
    return diffusion.recommended_steps
  end
  return require("minisd.sched").get(sampler).default_steps or 25
end

local EVAL_OPTS = { "n", "sampler", "steps", "variance", "guidance", "seed", "classifier", "data",
  "on_progress", "alpha_threshold", "signal_leak" }

-- Samples one picture per context row, in chunks of at most 100 (memory), all from one
-- generator.
local SAMPLE_CHUNK = 100

local function sample_rows(model, rows, opts, guidance, gen, progress, what)
  local n = #rows
  local out = {}
  for i0 = 1, n, SAMPLE_CHUNK do
    local m = math.min(SAMPLE_CHUNK, n - i0 + 1)
    local ctx = {}
    for i = 1, m do
      ctx[i] = rows[i0 + i - 1]
    end
    local x = minisd.diffusion.sample(model, {
      n = m, context = minisd.tensor(ctx), sampler = opts.sampler, steps = opts.steps,
      variance = opts.variance, signal_leak = opts.signal_leak,
      guidance = guidance, generator = gen,
    })
    -- sample.lua --alpha-threshold's pixel-art alpha, when asked: what a user keeps
    out[#out + 1] = opts.alpha_threshold and image.binary_alpha(x, opts.alpha_threshold) or x
    progress(string.format("sampled %s: %d/%d", what, i0 + m - 1, n))
  end
  return minisd.cat(out, 1)
end

local function one_hot(k, K)
  local r = {}
  for j = 1, K do
    r[j] = (j == k) and 1 or 0
  end
  return r
end

local function pick(list, idx)
  local out = {}
  for i, j in ipairs(idx) do
    out[i] = list[j]
  end
  return out
end

-- The model, the classifier and the real sprites (in the model's channels), checked against
-- each other; or nil and a message.
local function load_inputs(model, opts)
  local model_path = type(model) == "string" and model or nil
  if model_path then
    local err
    model, err = minisd.load_model(model_path)
    if not model then
      return nil, err
    end
  end
  if type(model) ~= "table" or model.__name ~= "ContextUnet" then
    return nil, string.format("%s is a %s, not a ContextUnet diffusion model",
      model_path or "the model", type(model) == "table" and model.__name or type(model))
  end
  local cls, cls_path = opts.classifier, nil
  if cls == nil or type(cls) == "string" then
    local err
    cls_path = cls or classifier.default_path()
    cls, err = classifier.load(cls_path)
    if not cls then
      return nil, "classifier: " .. err
    end
  end
  local cfg, ccfg = model.config, cls.config
  -- the classifier's labels, or those and its class for the sprites with none ("other": a
  -- model trained with train.lua --other-label), which the null-context sprites are then
  -- sampled as
  local labels, other = table.concat(ccfg.label_names, ","), nil
  local extra = ccfg.class_names and ccfg.class_names[#ccfg.label_names + 1]
  if extra and table.concat(cfg.label_names, ",") == labels .. "," .. extra then
    other = #cfg.label_names
  elseif table.concat(cfg.label_names, ",") ~= labels then
    return nil, string.format("the model's labels (%s) are not the classifier's (%s%s)",
      table.concat(cfg.label_names, ", "), table.concat(ccfg.label_names, ", "),
      extra and (", optionally with " .. extra) or "")
  end
  if cfg.height ~= ccfg.height then
    return nil, string.format("the model makes %dx%d pictures, the classifier takes %dx%d",
      cfg.height, cfg.height, ccfg.height, ccfg.height)
  end
  local ds, err = minisd.data.load(opts.data, { channels = cfg.in_channels,
    background = cfg.background })
  if not ds then
    return nil, err
  end
  local split = (cls.training_summary or {}).split
  if not split or split.n ~= ds.n then
    return nil, string.format("the classifier's held-out split is for %s sprites, the real "
      .. "set has %d", split and tostring(split.n) or "no", ds.n)
  end
  local is_held, train = {}, {}
  for _, i in ipairs(split.heldout) do
    is_held[i] = true
  end
  for i = 1, ds.n do
    if not is_held[i] then
      train[#train + 1] = i
    end
  end
  return { model = model, model_path = model_path, cls = cls, cls_path = cls_path, ds = ds,
    held = split.heldout, train = train, other = other }
end

-- The classifier's features of pictures (N, C, H, W) in [-1, 1].
local function features_of(cls, x)
  local _, f = classifier.predict(cls, classifier.prepare(x, cls.config.background),
    { features = true })
  return f
end

-- The label k of a one-hot context row, or nil.
local function label_of(row)
  local k
  for j, v in ipairs(row) do
    if v == 1 and not k then
      k = j
    elseif v ~= 0 then
      return nil
    end
  end
  return k
end

-- For each label, max(n, h) conditional samples, h being the number of held-out sprites with
-- that label: the first n are classified for the context accuracy, the first h join the
-- Frechet set. Returns the accuracy table, the Frechet set's labelled part and all samples.
local function context_accuracy(inp, opts, held_per_label, gen, progress)
  local names, class_names = inp.cls.config.label_names, inp.cls.config.class_names
  local K = #inp.model.config.label_names
  local per_label, predicted, all, fd_part = {}, {}, {}, {}
  local right = 0
  for k, name in ipairs(names) do
    local h = held_per_label[k] or 0
    local rows = {}
    for i = 1, math.max(opts.n, h) do
      rows[i] = one_hot(k, K)
    end
    local x = sample_rows(inp.model, rows, opts, opts.guidance, gen, progress, name)
    all[#all + 1] = x
    if h > 0 then
      fd_part[#fd_part + 1] = x:narrow(1, 1, h)
    end
    local counts = {}
    for _, p in ipairs(classifier.predict(inp.cls, classifier.prepare(x:narrow(1, 1, opts.n),
        inp.cls.config.background))) do
      counts[class_names[p]] = (counts[class_names[p]] or 0) + 1
    end
    predicted[name] = counts
    right = right + (counts[name] or 0)
    per_label[name] = (counts[name] or 0) / opts.n
  end
  local summary = inp.cls.training_summary
  return {
    overall = right / (opts.n * #names), per_label = per_label, predicted = predicted,
    classes = class_names, label_names = names,
    classifier_heldout = summary.heldout_label_accuracy,
    classifier_heldout_per_label = summary.heldout_per_class or {},
    classifier_heldout_all = summary.heldout_accuracy,
  }, fd_part, all
end

--- Measures a diffusion model: context accuracy, Frechet distances (samples, and the
-- references real held-out and Gaussian noise, all against the classifier's training split of
-- the real sprites), memorisation and alpha. Deterministic for a seed.
--
-- Samples: for each label, max(n, h) with its one-hot context, h being the number of held-out
-- sprites with that label; the first n measure the context accuracy. The Frechet set is one
-- sample per held-out sprite with that sprite's context row: the first h of each label, then
-- one per held-out null-context sprite (sampled without guidance, which does nothing for a
-- null context; or, for a model with the classifier's "other" class as a sixth label
-- (train.lua --other-label), with that label and guidance), so that it has the size and
-- label mix of the real held-out reference. The context accuracy is over the classifier's
-- labels. All samples count for memorisation and alpha.
-- @param model a ContextUnet or the path of a model file
-- @param opts optional {n = 100, sampler = "ddpm" (diffusion.recommended_sampler), steps =
--   M.default_steps(sampler) (50 for ddpm: its full chain of 500 would take ten times as
--   long; 25 for ddim), variance = diffusion.default_variance(sampler) ("fixed_small" for
--   ddpm), guidance = (diffusion.recommended_guidance_for(sampler, model): the model's own
--   scale when its file has one, else 3 for ddpm, 6 for ddim),
--   seed = 0, classifier = a
--   SpriteClassifier or a path (default: the shipped one), data = the real sprites' path
--   (default: the bundled ones), on_progress = function(message), alpha_threshold = nil
--   (an RGBA model's samples get image.binary_alpha with this threshold, as sample.lua's
--   --alpha-threshold gives them, before they are measured), signal_leak = nil (the model's
--   default: on when it carries signal-leak statistics; false: pure noise)}
-- @return the results table (see scripts/eval_quality.lua --json), or nil and a message when a
--   file is missing or is not the right kind of model
function M.evaluate(model, opts)
  opts = util.options("quality.evaluate", opts, M.defaults, nil, EVAL_OPTS)
  opts.steps = opts.steps or M.default_steps(opts.sampler)
  if opts.variance == nil then
    opts.variance = minisd.diffusion.default_variance(opts.sampler)
  end
  if type(opts.n) ~= "number" or opts.n < 1 or opts.n ~= math.floor(opts.n) then
    error("quality.evaluate: n must be a positive integer, got " .. tostring(opts.n), 2)
  end
  local progress = opts.on_progress or function() end
  local t0 = minisd.clock()
  local thr = opts.alpha_threshold
  if thr ~= nil and (type(thr) ~= "number" or not (thr >= 0 and thr <= 1)) then
    error("quality.evaluate: alpha_threshold must be a number in [0, 1], got " .. tostring(thr),
      2)
  end
  local inp, err = load_inputs(model, opts)
  if not inp then
    return nil, err
  end
  if thr and inp.model.config.in_channels ~= 4 then
    return nil, string.format("quality.evaluate: alpha_threshold needs an RGBA model; this one "
      .. "has %d channels", inp.model.config.in_channels)
  end
  local ds, cfg = inp.ds, inp.model.config
  if opts.guidance == nil then -- the model's own scale for the sampler, else the library's
    opts.guidance = minisd.diffusion.recommended_guidance_for(opts.sampler, inp.model)
  end

  -- the references: real held-out sprites and Gaussian noise against the training split
  local real_rows = features_of(inp.cls, ds.images):totable()
  local ref = M.gaussian_stats(pick(real_rows, inp.train))
  local fd_real = M.frechet_distance(pick(real_rows, inp.held), ref)
  -- one random stream per part, so that the noise does not depend on the options
  local shape = ds.images:shape()
  local noise = minisd.randn({ #inp.held, shape[2], shape[3], shape[4] },
    minisd.Generator(3 * opts.seed))
  local fd_noise = M.frechet_distance(features_of(inp.cls, noise), ref)
  progress("reference statistics of the real sprites and of noise")

  local held_per_label, unguided, guided = {}, {}, {}
  -- which of the Frechet set's samples, and which real held-out sprites, have no label
  local guided_unlabelled, real_labelled, real_unlabelled = {}, {}, {}
  local K = #cfg.label_names
  local held_rows = pick(ds.labels:totable(), inp.held)
  for i, row in ipairs(held_rows) do
    local k = label_of(row)
    local null = not k
    if k then
      held_per_label[k] = (held_per_label[k] or 0) + 1
    else
      for _, v in ipairs(row) do
        null = null and v == 0
      end
      for j = #row + 1, K do -- the model's "other" column
        row[j] = 0
      end
      if null and inp.other then -- sampled as "other", with guidance
        row[inp.other] = 1
        guided[#guided + 1] = row
        guided_unlabelled[#guided] = true
      else
        table.insert(null and unguided or guided, row) -- guided: mixed labels
      end
    end
    table.insert(null and real_unlabelled or real_labelled, real_rows[inp.held[i]])
  end
  local accuracy, fd_parts, all = context_accuracy(inp, opts, held_per_label,
    minisd.Generator(3 * opts.seed + 1), progress)
  local fd_gen = minisd.Generator(3 * opts.seed + 2)
  for _, part in ipairs({ { unguided, 0 }, { guided, opts.guidance } }) do
    if #part[1] > 0 then
      local x = sample_rows(inp.model, part[1], opts, part[2], fd_gen, progress,
        part[2] == 0 and "the null context" or "mixed contexts and other")
      fd_parts[#fd_parts + 1] = x
      all[#all + 1] = x
    end
  end
  local sample_rows_f = features_of(inp.cls, minisd.cat(fd_parts, 1)):totable()
  local fd_samples = M.frechet_distance(sample_rows_f, ref)
  -- the distance with the real held-out sprites in place of the samples without a label, and
  -- in place of those with one: how much each half keeps the samples from the real ones
  local n_lab = #sample_rows_f - #unguided - #guided
  local with_real_unlabelled, with_real_labelled = {}, {}
  for i, f in ipairs(sample_rows_f) do
    local unlabelled = i > n_lab and (i <= n_lab + #unguided
      or guided_unlabelled[i - n_lab - #unguided])
    table.insert(unlabelled and with_real_labelled or with_real_unlabelled, f)
  end
  for _, f in ipairs(real_unlabelled) do
    with_real_unlabelled[#with_real_unlabelled + 1] = f
  end
  for _, f in ipairs(real_labelled) do
    with_real_labelled[#with_real_labelled + 1] = f
  end
  local fd_swap_unlabelled = #real_unlabelled > 0
    and M.frechet_distance(with_real_unlabelled, ref) or nil
  local fd_swap_labelled = #real_labelled > 0 and M.frechet_distance(with_real_labelled, ref)
    or nil

  all = minisd.cat(all, 1)
  local threshold = M.memorisation_threshold(ds.images)
  local mem = M.memorisation(all, ds.images, { threshold = threshold })
  progress("memorisation and alpha")

  return {
    model = inp.model_path, classifier = inp.cls_path,
    config = { in_channels = cfg.in_channels, n_feat = cfg.n_feat, height = cfg.height,
      label_names = cfg.label_names, background = cfg.background },
    options = { n = opts.n, sampler = opts.sampler, steps = opts.steps, variance = opts.variance,
      guidance = opts.guidance,
      seed = opts.seed, alpha_threshold = thr,
      signal_leak = inp.model.config.signal_leak ~= nil and opts.signal_leak ~= false,
      other_label = inp.other and cfg.label_names[inp.other] or nil },
    context_accuracy = accuracy,
    frechet = {
      samples = fd_samples, real_heldout = fd_real, noise = fd_noise, n = #inp.held,
      real_unlabelled = fd_swap_unlabelled, real_labelled = fd_swap_labelled,
      n_unlabelled = #real_unlabelled,
      n_reference = #inp.train, feature_dim = inp.cls.config.feature_dim,
    },
    memorisation = { fraction = mem.fraction, count = mem.count, n = mem.n,
      threshold = threshold, percentile = M.MEMORISATION_PERCENTILE },
    alpha = { fraction = M.alpha_fraction(all), real = M.alpha_fraction(ds.images),
      low = M.ALPHA_LOW, high = M.ALPHA_HIGH },
    samples = all:shape()[1],
    seconds = minisd.clock() - t0,
  }
end

local function fmt(v, f)
  if v == nil then
    return "-"
  end
  return string.format(f or "%.3f", v)
end

local function ordinal(k)
  local last = k % 10
  local suffix = (k % 100 >= 11 and k % 100 <= 13) and "th"
    or ({ "st", "nd", "rd" })[last] or "th"
  return k .. suffix
end

-- "name 0.90" for the class given most often (ties: the first in class order).
local function most_predicted(counts, class_names, n)
  local best, bname = -1, nil
  for _, cname in ipairs(class_names) do
    if (counts[cname] or 0) > best then
      best, bname = counts[cname] or 0, cname
    end
  end
  return string.format("%s %.2f", bname, best / n)
end

--- The guidance scale to pick from measurements (scripts/tune_guidance.lua): among the rows
-- whose context accuracy is at least `floor` (90% of the classifier's held-out accuracy is
-- issue 8's target), those within `tolerance` of the lowest Frechet distance count as equally
-- close, and the most accurate of them wins (then the closer, then the first); if no row
-- reaches the floor, the most accurate row.
-- @param rows list of {guidance =, accuracy =, frechet =} (e.g. means over seeds)
-- @param floor the accuracy a row must reach
-- @param tolerance optional, default 0: distances this close to the lowest are a tie
-- @return the picked row, and whether it reached the floor
function M.pick_guidance(rows, floor, tolerance)
  if type(rows) ~= "table" or #rows == 0 then
    error("quality.pick_guidance: rows must be a non-empty list", 2)
  end
  tolerance = tolerance or 0
  if type(tolerance) ~= "number" or tolerance ~= tolerance or tolerance < 0 then
    error("quality.pick_guidance: tolerance must be a number >= 0, got " .. tostring(tolerance),
      2)
  end
  local lowest
  for _, row in ipairs(rows) do
    if row.accuracy >= floor and (not lowest or row.frechet < lowest) then
      lowest = row.frechet
    end
  end
  local best
  for _, row in ipairs(rows) do
    local eligible = not lowest or (row.accuracy >= floor and row.frechet <= lowest + tolerance)
    if eligible and (not best or row.accuracy > best.accuracy
        or (lowest and row.accuracy == best.accuracy and row.frechet < best.frechet)) then
      best = row
    end
  end
  return best, lowest ~= nil
end

--- The results of `evaluate` as a readable table.
-- @param r results table
-- @return string (lines ending in "\n")
function M.format(r)
  local o = r.options
  local names = r.context_accuracy.label_names or r.config.label_names
  local class_names = r.context_accuracy.classes
  local lines = {}
  local function add(...)
    lines[#lines + 1] = string.format(...)
  end
  add("model        %s (%d channels, n_feat %s)", r.model or "(in memory)", r.config.in_channels,
    tostring(r.config.n_feat))
  add("sampling     %s%s, %d steps, guidance %g, seed %d%s%s", o.sampler,
    o.variance and string.format(" (%s variance)", o.variance) or "", o.steps, o.guidance, o.seed,
    o.alpha_threshold and string.format(", alpha threshold %g", o.alpha_threshold) or "",
    o.signal_leak and ", signal leak" or "")
  add("classifier   %s", r.classifier or "(in memory)")
  if o.other_label then
    add("             (the held-out sprites with no label are sampled as '%s', guided)",
      o.other_label)
  end
  add("")
  local ca = r.context_accuracy
  add("context accuracy, %d samples per label", o.n)
  add("  %-28s %8s  %-18s %10s", "label", "samples", "most often", "classifier")
  add("  %-28s %8s  %-18s %10s", "", "", "classified as", "held-out")
  for _, name in ipairs(names) do
    add("  %-28s %8s  %-18s %10s", name, fmt(ca.per_label[name]),
      most_predicted(ca.predicted[name], class_names, o.n),
      fmt(ca.classifier_heldout_per_label[name]))
  end
  add("  %-28s %8s  %-18s %10s", "overall (mean over labels)", fmt(ca.overall), "",
    fmt(ca.classifier_heldout))
  add("")
  local f = r.frechet
  add("Frechet distance of the classifier's features (%d dims) to %d real sprites",
    f.feature_dim, f.n_reference)
  add("(the classifier's training split)")
  add("  %-44s %9s", string.format("samples (%d, the held-out label mix)", f.n),
    fmt(f.samples, "%.2f"))
  add("  %-44s %9s", string.format("reference: real held-out sprites (%d)", f.n),
    fmt(f.real_heldout, "%.2f"))
  add("  %-44s %9s", string.format("reference: Gaussian noise (%d)", f.n), fmt(f.noise, "%.2f"))
  if f.real_unlabelled then
    add("  the samples, with real held-out sprites in place of")
    add("    %-42s %9s", string.format("the %d without a label", f.n_unlabelled),
      fmt(f.real_unlabelled, "%.2f"))
    add("    %-42s %9s", string.format("the %d with one", f.n - f.n_unlabelled),
      fmt(f.real_labelled, "%.2f"))
  end
  add("")
  local m = r.memorisation
  add("memorisation %s: %d of %d samples are nearer a real sprite (or its mirror image)",
    fmt(m.fraction), m.count, m.n)
  add("  than %.3f, the %s percentile of the real sprites' nearest-neighbour distances",
    m.threshold, ordinal(m.percentile))
  add("  (pixel L2 over %d values in [-1, 1])", r.config.in_channels * r.config.height
    * r.config.height)
  local a = r.alpha
  if a.fraction then
    add("alpha        %s of alpha values in (%g, %g); real sprites: %s", fmt(a.fraction), a.low,
      a.high, fmt(a.real))
  else
    add("alpha        - (the model has no alpha channel)")
  end
  add("time         %.1f s for %d samples", r.seconds, r.samples)
  return table.concat(lines, "\n") .. "\n"
end

return M
