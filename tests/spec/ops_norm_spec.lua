-- batch_norm2d, group_norm, gelu, relu, mse_loss and cross_entropy against
-- PyTorch 1.13 (tests/fixtures/gen_norm.py): outputs, updated running stats
-- and the gradients of sum(y * R); then the error messages seen from Lua.
local minisd = require("minisd")
local H = require("helpers")

local F = H.fixture("norm")
local unpack = table.unpack or unpack

-- A fresh leaf copy of fixture tensor name, requiring grad.
local function leaf(name)
  local t = F[name]:clone()
  t.requires_grad = true
  return t
end

-- Runs op on leaf copies of the named inputs (nil entries pass nil), checks
-- y against case_y, backpropagates sum(y * R) and checks each gradient.
local function check_case(case, names, op)
  local args = {}
  for i, k in ipairs(names) do
    args[i] = leaf(case .. "_" .. k)
  end
  local y = op(unpack(args, 1, #names))
  assert.are.same(F[case .. "_y"]:shape(), y:shape())
  H.assert_close(y, F[case .. "_y"], 1e-4, 1e-5, case .. " y")
  ;(y * F[case .. "_R"]):sum():backward()
  for i, k in ipairs(names) do
    H.assert_close(args[i].grad, F[case .. "_d" .. k], 1e-4, 1e-5, case .. " d" .. k)
  end
  return y
end

describe("batch_norm2d matches PyTorch", function()
  it("in training mode, with the running stats updated", function()
    local rm, rv = F.bn_train_rm:clone(), F.bn_train_rv:clone()
    check_case("bn_train", { "x", "w", "b" }, function(x, w, b)
      return minisd.batch_norm2d(x, rm, rv, w, b, true, 0.1, 1e-5)
    end)
    H.assert_close(rm, F.bn_train_rm_new, 1e-4, 1e-6, "running_mean")
    H.assert_close(rv, F.bn_train_rv_new, 1e-4, 1e-6, "running_var")
  end)

  it("in training mode without affine, another momentum and eps", function()
    local rm, rv = F.bn_train_noaffine_rm:clone(), F.bn_train_noaffine_rv:clone()
    check_case("bn_train_noaffine", { "x" }, function(x)
      return minisd.batch_norm2d(x, rm, rv, nil, nil, true, 0.3, 1e-3)
    end)
    H.assert_close(rm, F.bn_train_noaffine_rm_new, 1e-4, 1e-6, "running_mean")
    H.assert_close(rv, F.bn_train_noaffine_rv_new, 1e-4, 1e-6, "running_var")
  end)

  it("in eval mode, leaving the running stats alone", function()
    local rm, rv = F.bn_eval_rm:clone(), F.bn_eval_rv:clone()
    check_case("bn_eval", { "x", "w", "b" }, function(x, w, b)
      return minisd.batch_norm2d(x, rm, rv, w, b, false, 0.1, 1e-5)
    end)
    assert.are.same(F.bn_eval_rm:totable(), rm:totable())
    assert.are.same(F.bn_eval_rv:totable(), rv:totable())
  end)

  it("defaults to eval mode, momentum 0.1 and eps 1e-5", function()
    local y = minisd.batch_norm2d(F.bn_eval_x, F.bn_eval_rm, F.bn_eval_rv, F.bn_eval_w,
      F.bn_eval_b)
    H.assert_close(y, F.bn_eval_y, 1e-4, 1e-5, "bn eval defaults")
  end)
end)

describe("group_norm matches PyTorch", function()
  for _, case in ipairs({ "gn16", "gn32", "gn2d" }) do
    it(case, function()
      check_case(case, { "x", "w", "b" }, function(x, w, b)
        return minisd.group_norm(x, 8, w, b, 1e-5)
      end)
    end)
  end
end)

describe("activations match PyTorch", function()
  it("gelu (exact erf form)", function()
    check_case("gelu", { "x" }, minisd.gelu)
  end)

  it("relu, with gradient 0 at exact zeros", function()
    check_case("relu", { "x" }, minisd.relu)
    local x = leaf("relu_x")
    minisd.relu(x):sum():backward()
    local xs, g = x:totable(), x.grad:totable()
    assert.are.equal(0, xs[1][1])
    assert.are.equal(0, g[1][1])
  end)
end)

describe("losses match PyTorch", function()
  it("mse_loss, with gradients to both inputs", function()
    local y = check_case("mse", { "a", "b" }, minisd.mse_loss)
    assert.are.equal(0, y:dim())
  end)

  it("cross_entropy with 1-based class indices", function()
    local logits = leaf("ce_idx_logits")
    local target = F.ce_idx_target + 1 -- the fixture holds PyTorch's 0-based indices
    local y = minisd.cross_entropy(logits, target)
    assert.are.equal(0, y:dim())
    H.assert_close(y, F.ce_idx_y, 1e-4, 1e-5, "ce_idx y")
    ;(y * F.ce_idx_R):backward()
    H.assert_close(logits.grad, F.ce_idx_dlogits, 1e-4, 1e-5, "ce_idx dlogits")
  end)

  it("cross_entropy with class probabilities", function()
    check_case("ce_prob", { "logits", "target" }, minisd.cross_entropy)
  end)
end)

describe("norm, activation and loss errors", function()
  local function err_of(fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok)
    return err
  end

  it("batch_norm2d names the channel counts and shapes", function()
    local x = minisd.zeros({ 2, 3, 4, 4 })
    local err = err_of(minisd.batch_norm2d, x, minisd.zeros({ 5 }), minisd.ones({ 3 }), nil, nil,
      true)
    assert.matches("batch_norm2d: input [2,3,4,4] has 3 channels, running_mean has 5", err, 1,
      true)
    err = err_of(minisd.batch_norm2d, minisd.zeros({ 2, 3, 4 }), nil, nil, nil, nil, true)
    assert.matches("4-D", err, 1, true)
    assert.matches("[2,3,4]", err, 1, true)
    err = err_of(minisd.batch_norm2d, x, nil, nil)
    assert.matches("eval mode needs running_mean", err, 1, true)
  end)

  it("group_norm rejects channels not divisible by groups", function()
    local err = err_of(minisd.group_norm, minisd.zeros({ 2, 6, 4, 4 }), 4)
    assert.matches("group_norm: input [2,6,4,4] has 6 channels, not divisible by 4 groups", err,
      1, true)
  end)

  it("mse_loss names both shapes", function()
    local err = err_of(minisd.mse_loss, minisd.zeros({ 2, 3 }), minisd.zeros({ 3, 2 }))
    assert.matches("mse_loss", err, 1, true)
    assert.matches("[2,3]", err, 1, true)
    assert.matches("[3,2]", err, 1, true)
  end)

  it("cross_entropy rejects bad class indices and shapes", function()
    local logits = minisd.zeros({ 3, 4 })
    local err = err_of(minisd.cross_entropy, logits, minisd.tensor({ 1, 5, 2 }))
    assert.matches("target 2 holds 5, not a class index in 1..4 for logits [3,4]", err, 1, true)
    err = err_of(minisd.cross_entropy, logits, minisd.tensor({ 1, 0, 2 }))
    assert.matches("not a class index", err, 1, true)
    err = err_of(minisd.cross_entropy, logits, minisd.tensor({ 1, 2.5, 2 }))
    assert.matches("not a class index", err, 1, true)
    err = err_of(minisd.cross_entropy, logits, minisd.zeros({ 2 }))
    assert.matches("[3,4]", err, 1, true)
    assert.matches("[2]", err, 1, true)
    -- the highest 1-based class is valid
    local y = minisd.cross_entropy(logits, minisd.tensor({ 4, 4, 1 }))
    assert.is_true(math.abs(y:item() - math.log(4)) < 1e-6)
  end)
end)
