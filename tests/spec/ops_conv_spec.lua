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
