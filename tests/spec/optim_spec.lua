-- minisd.optim: Adam, AdamW, SGD and EMA against PyTorch 1.13 training
-- runs (tests/fixtures/gen_nn.py) and hand-computed updates.
local minisd = require("minisd")
local nn = require("minisd.nn")
local optim = require("minisd.optim")
local H = require("helpers")

local FX = H.fixture("nn")

local KEYS = { "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
  "1.num_batches_tracked", "4.weight", "4.bias", "5.weight", "5.bias", "9.weight", "9.bias" }

local function make_net()
  local net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.GELU(),
    nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, 1, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AvgPool2d(2),
    nn.Flatten(), nn.Linear(16, 5))
  local sd = {}
  for _, k in ipairs(KEYS) do
    sd[k] = FX["sd." .. k]
  end
  net:load_state_dict(sd)
  return net
end

local function train_steps(net, opt, n)
  for _ = 1, n do
    opt:zero_grad()
    minisd.mse_loss(net(FX.x), FX.y):backward()
    opt:step()
  end
end

-- Compares the network state and the optimizer state with PyTorch's after
-- three training steps (fixture keys "<tag>.sd.*" and "<tag>.<field>.*").
local function check_against_torch(tag, net, opt, fields)
  for k, v in pairs(net:state_dict()) do
    H.assert_close(v, FX[tag .. ".sd." .. k], 1e-4, 2e-5, tag .. " " .. k)
  end
  local sd = opt:state_dict()
  local _, names = net:named_parameters()
  for i, name in ipairs(names) do
    for _, f in ipairs(fields) do
      H.assert_close(sd["state." .. i .. "." .. f], FX[tag .. "." .. f .. "." .. name], 1e-3,
        1e-6, tag .. " " .. f .. " " .. name)
    end
  end
end

local function params_of(net)
  local out = {}
  for i, p in ipairs(net:parameters()) do
    out[i] = p:clone()
  end
  return out
end

describe("minisd.optim", function()
  describe("against PyTorch (3 training steps)", function()
    it("Adam with weight decay", function()
      local net = make_net()
      local opt = optim.Adam(net:parameters(), { lr = 1e-2, betas = { 0.9, 0.99 },
        weight_decay = 1e-2 })
      train_steps(net, opt, 3)
      check_against_torch("adam", net, opt, { "exp_avg", "exp_avg_sq" })
      assert.are.equal(3, opt:state_dict()["state.1.step"])
    end)

    it("AdamW", function()
      local net = make_net()
      -- eps 1e-4: the first conv's bias feeds a BatchNorm, so its gradient is
      -- rounding noise (~1e-9) that Adam without weight decay would amplify to
      -- +-lr steps of arbitrary sign
      local opt = optim.AdamW(net, { lr = 1e-2, eps = 1e-4, weight_decay = 0.1 })
      train_steps(net, opt, 3)
      check_against_torch("adamw", net, opt, { "exp_avg", "exp_avg_sq" })
    end)

    it("SGD with Nesterov momentum", function()
      local net = make_net()
      local opt = optim.SGD(net:parameters(), { lr = 0.05, momentum = 0.9, nesterov = true,
        weight_decay = 1e-3 })
      train_steps(net, opt, 3)
      check_against_torch("sgd", net, opt, { "momentum_buffer" })
    end)
  end)

  describe("state_dict", function()
    local function resumed_equals_uninterrupted(make_opt)
      local a = make_net()
      local oa = make_opt(a)
      train_steps(a, oa, 3)

      local b = make_net()
      local ob = make_opt(b)
      train_steps(b, ob, 2)
      local osd, nsd = ob:state_dict(), {}
      for k, v in pairs(b:state_dict()) do
        nsd[k] = v:clone()
      end
      -- a fresh network and optimizer, restored from the two state dicts
      local c = make_net()
      c:load_state_dict(nsd)
      local oc = make_opt(c)
      oc:load_state_dict(osd)
      train_steps(c, oc, 1)
      local pa, pc = params_of(a), params_of(c)
      for i = 1, #pa do
        H.assert_close(pc[i], pa[i], 0, 0, "parameter " .. i)
      end
      for k, v in pairs(oa:state_dict()) do
        local w = oc:state_dict()[k]
        if minisd.is_tensor(v) then
          H.assert_close(w, v, 0, 0, k)
        else
          assert.are.equal(v, w, k)
        end
      end
    end

    it("resumes Adam exactly (2 steps + save + load + 1 step == 3 steps)", function()
      resumed_equals_uninterrupted(function(net)
        return optim.Adam(net:parameters(), { lr = 1e-2 })
      end)
    end)

    it("resumes AdamW and SGD exactly", function()
      resumed_equals_uninterrupted(function(net)
        return optim.AdamW(net:parameters(), { lr = 1e-2 })
      end)
      resumed_equals_uninterrupted(function(net)
        return optim.SGD(net:parameters(), { lr = 0.05, momentum = 0.9 })
      end)
    end)

    it("is a plain table of numbers and independent tensor copies", function()
      local net = make_net()
      local opt = optim.Adam(net:parameters(), { lr = 3e-3, betas = { 0.8, 0.9 } })
      train_steps(net, opt, 1)
      local sd = opt:state_dict()
      assert.are.equal(3e-3, sd.lr)
      assert.are.equal(0.8, sd.beta1)
      assert.are.equal(0.9, sd.beta2)
      assert.are.equal(1e-8, sd.eps)
      assert.are.equal(0, sd.weight_decay)
      local n = 0
      for k, v in pairs(sd) do
        assert.is_true(type(v) == "number" or minisd.is_tensor(v), k)
        n = n + 1
      end
      assert.are.equal(5 + 3 * #net:parameters(), n)
      local before = sd["state.1.exp_avg"]:clone()
      train_steps(net, opt, 1)
      H.assert_close(sd["state.1.exp_avg"], before, 0, 0, "copy unchanged by a step")
      assert.are.equal(2, opt:state_dict()["state.1.step"])
    end)

    it("rejects a state dict that does not fit, listing the problems", function()
      local net = make_net()
      local opt = optim.Adam(net:parameters())
      local sgd = optim.SGD(net:parameters(), { lr = 0.1, momentum = 0.9 })
      train_steps(net, sgd, 1)
      local ok, err = pcall(opt.load_state_dict, opt, sgd:state_dict())
      assert.is_false(ok)
      assert.matches("missing 'beta1'", err, 1, true)
      assert.matches("unexpected 'momentum'", err, 1, true)
      assert.matches("unexpected 'state.1.momentum_buffer'", err, 1, true)
      local lin = optim.SGD(nn.Linear(3, 2):parameters(), { lr = 0.1, momentum = 0.9 })
      ok, err = pcall(lin.load_state_dict, lin, sgd:state_dict())
      assert.is_false(ok)
      assert.matches("'state.1.momentum_buffer' has shape [8,3,3,3], the parameter [2,3]", err, 1,
        true)
      assert.matches("unexpected 'state.3.momentum_buffer'", err, 1, true)
    end)
  end)

  describe("options and parameters", function()
    it("rejects unknown options, listing the allowed ones", function()
      local p = { minisd.zeros({ 2 }) }
      local ok, err = pcall(optim.Adam, p, { lr = 1e-3, momentum = 0.9 })
      assert.is_false(ok)
      assert.matches("Adam: unknown option 'momentum' (allowed: betas, eps, lr, weight_decay)",
        err, 1, true)
      ok, err = pcall(optim.SGD, p, { lr = 0.1, betas = { 0.9, 0.99 } })
      assert.is_false(ok)
      assert.matches("allowed: dampening, lr, momentum, nesterov, weight_decay", err, 1, true)
      ok, err = pcall(optim.EMA, p, { rate = 0.9 })
      assert.is_false(ok)
      assert.matches("allowed: decay", err, 1, true)
      assert.has_error(function()
        optim.SGD(p, {})
      end, nil)
      assert.has_error(function()
        optim.Adam(p, { betas = { 0.9, 1.0 } })
      end)
      assert.has_error(function()
        optim.Adam(p, { lr = -1 })
      end)
      assert.has_error(function()
        optim.SGD(p, { lr = 0.1, nesterov = true })
      end)
      assert.has_error(function()
        optim.Adam({})
      end)
    end)

    it("uses the learning rate set between steps", function()
      local w = minisd.tensor({ 1, 2 })
      w.requires_grad = true
      local opt = optim.SGD({ w }, { lr = 0.5 })
      assert.are.equal(0.5, opt.lr)
      w.grad = minisd.tensor({ 1, -1 })
      opt:step()
      H.assert_close(w, { 0.5, 2.5 }, 0, 1e-7, "lr 0.5")
      opt.lr = 0.25
      opt:step()
      H.assert_close(w, { 0.25, 2.75 }, 0, 1e-7, "lr 0.25")
      opt:set_lr(0)
      assert.are.equal(0, opt:get_lr())
      opt:step()
      H.assert_close(w, { 0.25, 2.75 }, 0, 1e-7, "lr 0")
      assert.has_error(function()
        opt:set_lr(-1)
      end)
      -- Adam: the first step moves each element by lr (normalised step)
      local v = minisd.tensor({ 1, 2 })
      v.requires_grad = true
      local adam = optim.Adam({ v })
      adam.lr = 0.1
      v.grad = minisd.tensor({ 3, -0.5 })
      adam:step()
      H.assert_close(v, { 0.9, 2.1 }, 0, 1e-6, "adam lr 0.1")
    end)

    it("skips parameters without a gradient and zero_grad zeros in place", function()
      local a, b = minisd.tensor({ 1, 1 }), minisd.tensor({ 2, 2 })
      a.requires_grad, b.requires_grad = true, true
      local opt = optim.Adam({ a, b }, { lr = 0.1 })
      a.grad = minisd.tensor({ 1, 1 })
      opt:step()
      H.assert_close(b, { 2, 2 }, 0, 0, "no grad: untouched")
      assert.is_nil(opt:state_dict()["state.2.step"])
      assert.are.equal(1, opt:state_dict()["state.1.step"])
      local g = a.grad
      opt:zero_grad()
      assert.are.same({ 0, 0 }, g:totable())
      assert.is_nil(b.grad)
    end)

    it("accepts a closure returning the loss", function()
      local net = make_net()
      local opt = optim.SGD(net, { lr = 0.01 })
      local loss = opt:step(function()
        opt:zero_grad()
        local l = minisd.mse_loss(net(FX.x), FX.y)
        l:backward()
        return l
      end)
      H.assert_close(loss, FX.loss, 1e-4, 1e-6, "closure loss")
    end)
  end)

  describe("EMA", function()
    it("averages, copies back and round-trips its state", function()
      local p = minisd.tensor({ 1, 2, 3 })
      local ema = optim.EMA({ p }, { decay = 0.9 })
      p:copy_(minisd.tensor({ 11, 2, -7 }))
      ema:update()
      H.assert_close(ema.shadow[1], { 2, 2, 2 }, 1e-6, 1e-6, "one update")
      ema:update()
      H.assert_close(ema.shadow[1], { 2.9, 2, 1.1 }, 1e-6, 1e-6, "two updates")
      local sd = ema:state_dict()
      assert.are.equal(0.9, sd.decay)
      assert.are.equal(2, sd.num_updates)
      local q = minisd.zeros({ 3 })
      ema:copy_to({ q })
      H.assert_close(q, { 2.9, 2, 1.1 }, 1e-6, 1e-6, "copy_to")
      local ema2 = optim.EMA({ p })
      assert.are.equal(0.999, ema2.decay)
      ema2:load_state_dict(sd)
      ema2:update()
      ema:update()
      H.assert_close(ema2.shadow[1], ema.shadow[1], 0, 0, "resumed")
      assert.has_error(function()
        ema:copy_to({ minisd.zeros({ 2 }) })
      end)
    end)

    it("tracks a module's parameters", function()
      local net = make_net()
      local ema = optim.EMA(net, { decay = 0.5 })
      local opt = optim.SGD(net, { lr = 0.1 })
      train_steps(net, opt, 1)
      ema:update()
      local now = net:parameters()
      local fresh = make_net():parameters()
      for i, s in ipairs(ema.shadow) do
        H.assert_close(s, (now[i] + fresh[i]) * 0.5, 1e-5, 1e-6, "shadow " .. i)
      end
    end)
  end)
end)
