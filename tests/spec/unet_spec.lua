-- ContextUnet (minisd.models): the state_dict layout of the default config
-- against the seed's PyTorch module (tests/fixtures/unet_keys.lua), config
-- variants and option errors, and parity with PyTorch on an n_feat = 8 net
-- (tests/fixtures/gen_unet.py): eval / train forwards, the MSE loss, every
-- parameter's gradient, the state after one Adam step (running statistics
-- included) and a 25-step DDIM trajectory.
local minisd = require("minisd")
local H = require("helpers")
local models = require("minisd.models")

local FILES = H.root .. "/tests/fixtures/files/"

local function load(name)
  local t, meta = minisd.load_safetensors(FILES .. name .. ".safetensors")
  assert(t, meta)
  return t
end

-- a ContextUnet{n_feat=8} holding the fixture's initial state
local function fixture_net()
  local m = models.ContextUnet({ n_feat = 8 })
  m:load(FILES .. "unet_init.safetensors")
  return m
end

-- |a - b| <= rtol * max|b| + atol, elementwise (a scale-aware comparison for
-- tensors whose entries span several orders of magnitude)
local function assert_scaled(actual, expected, rtol, atol, what)
  local scale = expected:abs():max()
  H.assert_close(actual, expected, 0, rtol * scale + (atol or 0), what)
  return (actual - expected):abs():max(), scale
end

local function same_shape(a, b)
  if #a ~= #b then
    return false
  end
  for i = 1, #a do
    if a[i] ~= b[i] then
      return false
    end
  end
  return true
end

describe("ContextUnet layout", function()
  it("has the seed's 158 state_dict entries, in PyTorch's order and shapes", function()
    local ref = dofile(H.root .. "/tests/fixtures/unet_keys.lua")
    local m = models.ContextUnet()
    local sd, names = m:state_dict()
    assert.are.equal(158, #ref.keys)
    assert.are.equal(#ref.keys, #names)
    for i, entry in ipairs(ref.keys) do
      local name, shape = entry[1], entry[2]
      if names[i] ~= name then
        error(string.format("entry %d: %s, expected %s", i, tostring(names[i]), name))
      end
      local got = sd[name]:shape()
      if not same_shape(got, shape) then
        error(string.format("%s: shape {%s}, expected {%s}", name, table.concat(got, ", "),
          table.concat(shape, ", ")))
      end
    end
    assert.are.equal(ref.n_parameters, m:num_parameters())
    assert.are.equal(1481027, m:num_parameters())
    assert.are.equal(104, #m:parameters())
    assert.are.equal(ref.n_parameter_tensors, #m:parameters())
  end)

  it("keeps its config with the seed's defaults", function()
    local m = models.ContextUnet()
    local c = m.config
    assert.are.equal(3, c.in_channels)
    assert.are.equal(64, c.n_feat)
    assert.are.equal(5, c.n_cfeat)
    assert.are.equal(16, c.height)
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" }, c.label_names)
    assert.are.same({ num_train_timesteps = 500, beta_start = 1e-4, beta_end = 0.02,
      beta_schedule = "linear" }, c.schedule)
  end)

  local variants = {
    { opts = { in_channels = 4, n_feat = 8 }, x = { 2, 4, 16, 16 } },
    { opts = { n_feat = 16 }, x = { 2, 3, 16, 16 } },
    { opts = { n_feat = 8, height = 32 }, x = { 1, 3, 32, 32 } },
    { opts = { n_feat = 8, n_cfeat = 3, label_names = { "a", "b", "c" } }, x = { 2, 3, 16, 16 } },
  }
  for _, v in ipairs(variants) do
    local desc = {}
    for k, val in pairs(v.opts) do
      desc[#desc + 1] = k .. "=" .. (type(val) == "table" and "{...}" or tostring(val))
    end
    table.sort(desc)
    it("builds and runs with " .. table.concat(desc, ", "), function()
      local m = models.ContextUnet(v.opts)
      m:eval()
      local B = v.x[1]
      local x = minisd.randn(v.x, minisd.Generator(1))
      local t = minisd.full({ B, 1, 1, 1 }, 0.5)
      local c = minisd.zeros({ B, m.config.n_cfeat })
      local y = minisd.no_grad(function()
        return m(x, t, c)
      end)
      assert.are.same(v.x, y:shape())
      -- the up0 kernel follows the height
      local sd = m:state_dict()
      assert.are.equal(m.config.height / 4, sd["up0.0.weight"]:shape()[3])
      assert.are.equal(m.config.in_channels, sd["init_conv.conv1.0.weight"]:shape()[2])
    end)
  end

  it("registers no shortcut when in_channels == n_feat", function()
    local m = models.ContextUnet({ in_channels = 8, n_feat = 8 })
    local sd = m:state_dict()
    assert.is_nil(sd["init_conv.shortcut.weight"])
    assert.is_not_nil(sd["init_conv.conv1.0.weight"])
  end)

  it("rejects bad options with the allowed ones listed", function()
    local ok, err = pcall(models.ContextUnet, { n_feats = 8 })
    assert.is_false(ok)
    assert.truthy(err:find("unknown option 'n_feats'", 1, true), err)
    for _, name in ipairs({ "background", "height", "in_channels", "label_names", "n_cfeat",
      "n_feat", "schedule" }) do
      assert.truthy(err:find(name, 1, true), err)
    end
    ok, err = pcall(models.ContextUnet, { n_feat = 12 })
    assert.is_false(ok)
    assert.truthy(err:find("multiple of 8", 1, true), err)
    ok, err = pcall(models.ContextUnet, { height = 18 })
    assert.is_false(ok)
    assert.truthy(err:find("multiple of 4", 1, true), err)
    ok, err = pcall(models.ContextUnet, { n_cfeat = 2, label_names = { "a" } })
    assert.is_false(ok)
    assert.truthy(err:find("label_names", 1, true), err)
    ok, err = pcall(models.from_config, {}, "Transformer")
    assert.is_false(ok)
    assert.truthy(err:find("unknown architecture 'Transformer'", 1, true), err)
  end)

  it("rejects a mis-shaped input with the expected shape named", function()
    local m = models.ContextUnet({ n_feat = 8 })
    local ok, err = pcall(m, minisd.zeros({ 1, 3, 8, 8 }), minisd.zeros({ 1, 1, 1, 1 }))
    assert.is_false(ok)
    assert.truthy(err:find("expected (B, 3, 16, 16)", 1, true), err)
  end)
end)

describe("ContextUnet parity with PyTorch (n_feat = 8)", function()
  local io_ = load("unet_io")

  -- a bias in front of a train-mode BatchNorm, or of GroupNorm(8, 8) (out.0:
  -- one channel per group), is removed by the normalization: its true
  -- gradient is 0 and both sides hold float32 rounding noise
  local function zero_grad_bias(name)
    return name:match("conv[12]%.0%.bias$") or name == "out.0.bias"
  end

  it("matches the eval-mode outputs with and without a context", function()
    local m = fixture_net()
    m:eval()
    local y, y0 = minisd.no_grad(function()
      return m(io_.x, io_.t, io_.c), m(io_.x, io_.t)
    end)
    assert_scaled(y, io_.y_eval, 1e-5, 0, "y_eval")
    assert_scaled(y0, io_.y_eval_noc, 1e-5, 0, "y_eval_noc")
    -- a nil context is the zero context; the second sample's context is all zero
    local r1 = y:narrow(1, 2, 1):totable()
    local r0 = y0:narrow(1, 2, 1):totable()
    assert.are.same(r0, r1)
  end)

  it("matches the train-mode output, the loss and every gradient", function()
    local m = fixture_net()
    m:train()
    local y = m(io_.x, io_.t, io_.c)
    assert_scaled(y, io_.y_train, 1e-5, 0, "y_train")
    local loss = minisd.mse_loss(y, io_.target)
    H.assert_close(loss:item(), io_.loss:totable()[1], 1e-5, 0, "loss")
    loss:backward()
    local grads = load("unet_grads")
    local params, names = m:named_parameters()
    assert.are.equal(#names, #(function()
      local k = {}
      for n in pairs(grads) do
        k[#k + 1] = n
      end
      return k
    end)())
    for _, name in ipairs(names) do
      local g, ref = params[name].grad, grads[name]
      assert(g, name .. ": no gradient")
      if zero_grad_bias(name) then
        H.assert_close(g, ref, 0, 1e-6, name)
      else
        assert_scaled(g, ref, 1e-4, 0, name)
      end
    end
  end)

  -- a zero-gradient bias (see above): Adam's first step turns its rounding
  -- noise g into a move of lr * g / (|g| + eps), up to lr either way, so those
  -- are checked against the formula on our own gradient and loosely against
  -- PyTorch
  it("matches the state after one Adam step, running statistics included", function()
    local m = fixture_net()
    local init = load("unet_init")
    m:train()
    local loss = minisd.mse_loss(m(io_.x, io_.t, io_.c), io_.target)
    loss:backward()
    local grads = {}
    local params = m:named_parameters()
    for name, p in pairs(params) do
      grads[name] = p.grad:clone()
    end
    local opt = minisd.optim.Adam(m:parameters(), { lr = 1e-3 })
    opt:step()
    local ref = load("unet_adam1")
    local sd, names = m:state_dict()
    local n_ref = 0
    for _ in pairs(ref) do
      n_ref = n_ref + 1
    end
    assert.are.equal(n_ref, #names)
    for _, name in ipairs(names) do
      assert(ref[name], name .. " missing in unet_adam1")
      if name:match("num_batches_tracked$") then
        assert.are.same(ref[name]:totable(), sd[name]:totable())
        assert.are.equal(8, sd[name]:item())
      elseif name:match("running_") then
        assert_scaled(sd[name], ref[name], 1e-5, 0, name)
      elseif zero_grad_bias(name) then
        local g = grads[name]
        local want = init[name] - g / (g:abs() + 1e-8) * 1e-3
        H.assert_close(sd[name], want, 1e-5, 1e-6, name .. " (Adam formula)")
        H.assert_close(sd[name], ref[name], 0, 2e-3 + 1e-6, name)
      else
        H.assert_close(sd[name], ref[name], 1e-5, 2e-6, name)
      end
    end
  end)

  it("follows the seed's 25-step DDIM trajectory (eval mode)", function()
    local m = models.ContextUnet({ n_feat = 8 })
    m:load(FILES .. "unet_adam1.safetensors")
    m:eval()
    local d = load("unet_ddim")
    local s = minisd.sched.ddim.new({})
    s:set_timesteps(25)
    assert.are.equal(25, #s.timesteps)
    local x = d.x_T
    local checked = 0
    for k, t in ipairs(s.timesteps) do
      x = minisd.no_grad(function()
        local eps = m(x, minisd.full({ 2, 1, 1, 1 }, t / 500), d.c)
        return s:step(eps, t, x).prev_sample
      end)
      local key = string.format("x_after_%02d", k)
      if d[key] then
        assert_scaled(x, d[key], 1e-5, 0, key)
        checked = checked + 1
      end
    end
    assert.are.equal(4, checked)
  end)
end)
