-- conv2d, conv_transpose2d, max/avg pooling and linear against PyTorch 1.13
-- (tests/fixtures/gen_conv.py): outputs and the gradients of sum(y * R).
local minisd = require("minisd")
local H = require("helpers")

local F = H.fixture("conv")
local unpack = table.unpack or unpack

-- Each case: the fixture prefix, its inputs in call order, and the op.
local cases = {
  { "conv_s1p1", { "x", "w", "b" }, function(x, w, b) return minisd.conv2d(x, w, b, 1, 1) end },
  { "conv_s2p0", { "x", "w", "b" }, function(x, w, b) return minisd.conv2d(x, w, b, 2, 0) end },
  { "convt_k2s2", { "x", "w", "b" },
    function(x, w, b) return minisd.conv_transpose2d(x, w, b, 2) end },
  { "convt_k4s4", { "x", "w", "b" },
    function(x, w, b) return minisd.conv_transpose2d(x, w, b, 4, 0) end },
  { "convt_p1", { "x", "w", "b" },
    function(x, w, b) return minisd.conv_transpose2d(x, w, b, 2, 1) end },
  { "maxpool2", { "x" }, function(x) return minisd.max_pool2d(x, 2) end },
  { "maxpool4", { "x" }, function(x) return minisd.max_pool2d(x, 4, 4) end },
  { "avgpool2", { "x" }, function(x) return minisd.avg_pool2d(x, 2) end },
  { "avgpool4", { "x" }, function(x) return minisd.avg_pool2d(x, 4) end },
  { "linear2d", { "x", "w", "b" }, function(x, w, b) return minisd.linear(x, w, b) end },
  { "linear3d", { "x", "w", "b" }, function(x, w, b) return minisd.linear(x, w, b) end },
}

describe("conv, pool and linear ops match PyTorch", function()
  for _, case in ipairs(cases) do
    local name, names, op = case[1], case[2], case[3]
    it(name, function()
      local args = {}
      for i, k in ipairs(names) do
        args[i] = F[name .. "_" .. k]:clone()
        args[i].requires_grad = true
      end
      local y = op(unpack(args))
      assert.are.same(F[name .. "_y"]:shape(), y:shape())
      H.assert_close(y, F[name .. "_y"], 1e-4, 1e-5, name .. " y")
      ;(y * F[name .. "_R"]):sum():backward()
      for i, k in ipairs(names) do
        H.assert_close(args[i].grad, F[name .. "_d" .. k], 1e-4, 1e-4, name .. " d" .. k)
      end
    end)
  end

  it("works without bias and without grad", function()
    local x, w = F.conv_s1p1_x, F.conv_s1p1_w
    local y = minisd.no_grad(function() return minisd.conv2d(x, w, nil, 1, 1) end)
    local b = F.conv_s1p1_b:reshape({ 1, 4, 1, 1 })
    H.assert_close(y + b, F.conv_s1p1_y, 1e-4, 1e-5, "conv2d without bias")
    assert.is_false(y.requires_grad)
  end)
end)

describe("conv, pool and linear errors", function()
  it("names both shapes on a channel mismatch", function()
    local ok, err = pcall(minisd.conv2d, minisd.zeros({ 2, 4, 16, 16 }),
      minisd.zeros({ 8, 3, 3, 3 }), nil, 1, 1)
    assert.is_false(ok)
    assert.matches("conv2d", err, 1, true)
    assert.matches("[2,4,16,16]", err, 1, true)
    assert.matches("[8,3,3,3]", err, 1, true)
    ok, err = pcall(minisd.conv_transpose2d, minisd.zeros({ 1, 5, 1, 1 }),
      minisd.zeros({ 4, 4, 4, 4 }), nil, 4)
    assert.is_false(ok)
    assert.matches("[1,5,1,1]", err, 1, true)
    assert.matches("[4,4,4,4]", err, 1, true)
  end)

  it("rejects bad stride, padding, window and features", function()
    local x = minisd.zeros({ 1, 3, 4, 4 })
    local w = minisd.zeros({ 2, 3, 3, 3 })
    assert.has_error(function() minisd.conv2d(x, w, nil, 0, 1) end)
    assert.has_error(function() minisd.conv2d(x, w, nil, 1, -1) end)
    assert.has_error(function() minisd.conv2d(x, w, minisd.zeros({ 3 }), 1, 1) end)
    assert.has_error(function() minisd.max_pool2d(x, 5) end)
    local ok, err = pcall(minisd.linear, minisd.zeros({ 4, 5 }), minisd.zeros({ 3, 6 }))
    assert.is_false(ok)
    assert.matches("[4,5]", err, 1, true)
    assert.matches("[3,6]", err, 1, true)
  end)
end)

describe("Winograd modes", function()
  after_each(function() minisd.set_winograd(true) end)

  it("set_winograd takes true, false and \"2x2\", and get_winograd reports it", function()
    assert.is_true(minisd.get_winograd())
    minisd.set_winograd("2x2")
    assert.are.equal("2x2", minisd.get_winograd())
    minisd.set_winograd(false)
    assert.is_false(minisd.get_winograd())
    minisd.set_winograd(true)
    assert.is_true(minisd.get_winograd())
    assert.has_error(function() minisd.set_winograd("4x4") end,
      "set_winograd: expected true, false or \"2x2\", got 4x4")
    assert.has_error(function() minisd.set_winograd(1) end,
      "set_winograd: expected true, false or \"2x2\", got number")
  end)

  it("F(4x4), F(2x2) and direct agree to float rounding, and differ in their bits", function()
    -- 4 maps of 16x16: 64 tiles of 4x4, so the default takes F(4x4, 3x3)
    local g = minisd.Generator(5)
    local x = minisd.randn({ 4, 16, 16, 16 }, g)
    local w = minisd.randn({ 16, 16, 3, 3 }, g)
    local function conv(mode)
      minisd.set_winograd(mode)
      return minisd.no_grad(function() return minisd.conv2d(x, w, nil, 1, 1) end)
    end
    local y4, y2, yd = conv(true), conv("2x2"), conv(false)
    local scale = yd:abs():max()
    assert.is_true((y4 - yd):abs():max() < 1e-5 * scale)
    assert.is_true((y2 - yd):abs():max() < 1e-5 * scale)
    assert.is_true((y4 - y2):abs():max() > 0)
  end)
end)

describe("transformed-kernel cache (inference)", function()
  local g = minisd.Generator(9)
  local x = minisd.randn({ 2, 16, 16, 16 }, g)
  local w = minisd.randn({ 24, 16, 3, 3 }, g)
  local b = minisd.randn({ 24 }, g)
  local function infer()
    return minisd.no_grad(function() return minisd.conv2d(x, w, b, 1, 1) end)
  end
  local function stats() return minisd.conv_cache_stats() end
  after_each(function()
    minisd.clear_conv_cache()
    minisd.set_precision("fp32")
  end)

  for _, prec in ipairs({ "fp32", "bf16" }) do
    it(prec .. ": a forward without grad keeps the kernels, checked against the weights", function()
      minisd.set_precision(prec)
      minisd.clear_conv_cache()
      assert.are.same({ entries = 0, bytes = 0, hits = 0, misses = 0 }, stats())
      -- with grad on and weights that require it: not cached (training changes them)
      local wg = w:clone():requires_grad_(true)
      local yg = minisd.conv2d(x, wg, b, 1, 1)
      assert.are.equal(0, stats().entries)
      local _, hw = minisd.get_precision()
      if prec == "bf16" and hw ~= "avx512bf16" and hw ~= "amx" then
        -- without vdpbf16ps bf16 convolutions are direct on rounded weights, not Winograd:
        -- no transformed kernels to keep (with AMX, 16 -> 24 channels is not a shape for
        -- the tiles, and takes Winograd on vdpbf16ps)
        H.assert_close(infer(), yg, 0, 0, "the same bits as with grad")
        assert.are.same({ entries = 0, bytes = 0, hits = 0, misses = 0 }, stats())
        return
      end
      local y1 = infer()
      local s1 = stats()
      assert.are.equal(1, s1.entries)
      assert.are.equal(1, s1.misses)
      assert.is_true(s1.bytes > 24 * 16 * 9 * 4)
      local y2 = infer()
      assert.are.equal(1, stats().hits)
      H.assert_close(y2, y1, 0, 0, "cached kernels: the same bits")
      H.assert_close(y1, yg, 0, 0, "the same bits as the uncached forward")
      -- weights changed in place: transformed again, never used stale
      w:copy_(w * 0.5)
      local y3 = infer()
      assert.are.equal(2, stats().misses)
      H.assert_close(y3, minisd.conv2d(x, w:clone():requires_grad_(true), b, 1, 1), 0, 0,
        "after the change")
      w:copy_(w * 2)
      minisd.clear_conv_cache()
      assert.are.equal(0, stats().entries)
    end)
  end

  it("sees an optimizer step on the weights (their storage's stamp): transformed again",
    function()
      minisd.clear_conv_cache()
      local w2 = w:clone():requires_grad_(true)
      local function infer2()
        return minisd.no_grad(function() return minisd.conv2d(x, w2, b, 1, 1) end)
      end
      local ya = infer2()
      H.assert_close(infer2(), ya, 0, 0, "served from the cache")
      assert.are.same({ 1, 1 }, { stats().misses, stats().hits })
      minisd.conv2d(x, w2, b, 1, 1):sum():backward()
      minisd.optim.SGD({ w2 }, { lr = 0.1 }):step()
      local yb = infer2()
      assert.are.equal(2, stats().misses)
      assert.is_true((yb - ya):abs():max() > 1e-3, "the step changed the output")
      H.assert_close(yb, minisd.conv2d(x, w2:clone():requires_grad_(true), b, 1, 1), 0, 0,
        "the stepped weights' bits")
      -- an entry of freed weights is never taken for new ones at the same address
      w2 = nil
      collectgarbage()
      collectgarbage()
      local w3 = (w * 0.25):requires_grad_(false)
      H.assert_close(minisd.no_grad(function() return minisd.conv2d(x, w3, b, 1, 1) end),
        minisd.conv2d(x, w3:clone():requires_grad_(true), b, 1, 1), 0, 0, "new weights")
    end)
end)
