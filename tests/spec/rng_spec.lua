-- The Philox generator from Lua: values against the independent Python
-- Philox of tests/fixtures/gen_files.py, state save/restore, the default
-- generator, rand/randn/randint/randperm.
local minisd = require("minisd")
local H = require("helpers")

local function flat(t)
  return minisd.is_tensor(t) and t:reshape({ -1 }):totable() or t
end

describe("minisd rng", function()
  local ref
  setup(function()
    ref = H.fixture("rng_philox")
  end)

  it("follows the documented Philox stream (values from a Python reimplementation)", function()
    local g = minisd.Generator(42)
    H.assert_close(minisd.rand({ 10 }, g), ref.uniform_seed42, 1e-7, 0, "uniform")
    H.assert_close(minisd.randn({ 2, 5 }, g), ref.normal_seed42_next:reshape({ 2, 5 }), 1e-6,
      1e-7, "normal")
    assert.are.same(flat(ref.randint_seed42_next), flat(minisd.randint({ 4 }, -3, 5, g)))
    assert.are.same(flat(ref.randperm_seed42_next), minisd.randperm(5, g))
    assert.are.equal(40, g:get_state().offset)
  end)

  it("uses both halves of a 64-bit seed (Lua 5.4 integers)", function()
    if not math.type then
      return -- LuaJIT numbers are doubles: seeds are limited to 2^53
    end
    local g = minisd.Generator(0x123456789ABCDEF)
    assert.are.equal(0x123456789ABCDEF, g:seed())
    H.assert_close(minisd.rand({ 4 }, g), ref.uniform_seed_0x123456789ABCDEF, 1e-7, 0)
  end)

  it("saves and restores its state exactly", function()
    local g = minisd.Generator(2024)
    minisd.randn({ 3, 3 }, g)
    local state = g:get_state()
    assert.are.same({ seed = 2024, offset = 12 }, state)
    local a = flat(minisd.randn({ 17 }, g))
    local b = flat(minisd.rand({ 2, 2 }, g))
    local h = minisd.Generator(1)
    h:set_state(state)
    assert.are.same(a, flat(minisd.randn({ 17 }, h)))
    assert.are.same(b, flat(minisd.rand({ 2, 2 }, h)))
    assert.are.same(g:get_state(), h:get_state())
    h:manual_seed(2024)
    assert.are.same({ seed = 2024, offset = 0 }, h:get_state())
    assert.has_error(function() h:set_state({ seed = 1, offset = 3 }) end)
    assert.has_error(function() h:set_state({ seed = -1, offset = 0 }) end)
    assert.has_error(function() minisd.Generator(1.5) end)
    -- a large offset survives a round trip through a double (LuaJIT)
    h:set_state({ seed = 7, offset = 2 ^ 52 })
    assert.are.equal(2 ^ 52, h:get_state().offset)
    assert.is_truthy(tostring(h):find("minisd.Generator(seed=7", 1, true))
  end)

  it("has a default generator seeded 0 and reseeded by manual_seed", function()
    minisd.manual_seed(0)
    local a = flat(minisd.randn({ 6 }))
    local b = flat(minisd.randn({ 6 }, minisd.Generator(0)))
    assert.are.same(b, a)
    assert.are.equal(0, minisd.default_generator():seed())
    minisd.manual_seed(9)
    assert.are.same(flat(minisd.rand({ 3 }, minisd.Generator(9))), flat(minisd.rand({ 3 })))
    assert.are.equal(9, minisd.default_generator():get_state().seed)
  end)

  it("draws sane statistics and integers in range", function()
    local g = minisd.Generator(11)
    local x = flat(minisd.randn({ 100, 100 }, g))
    local s, s2 = 0, 0
    for i = 1, #x do
      s, s2 = s + x[i], s2 + x[i] * x[i]
    end
    local mean = s / #x
    assert.is_true(math.abs(mean) < 0.04)
    assert.is_true(math.abs(s2 / #x - mean * mean - 1) < 0.05)
    local seen = {}
    for _, v in ipairs(flat(minisd.randint({ 1000 }, 1, 6, g))) do
      assert.is_true(v >= 1 and v <= 6 and v == math.floor(v))
      seen[v] = true
    end
    assert.are.same({ true, true, true, true, true, true }, seen)
    local p = minisd.randperm(50, g)
    table.sort(p)
    for i = 1, 50 do
      assert.are.equal(i, p[i])
    end
    assert.are.same({}, minisd.randperm(0, g))
    assert.has_error(function() minisd.randint({ 2 }, 5, 1, g) end)
    assert.has_error(function() minisd.rand({ -2 }, g) end)
    assert.has_error(function() minisd.randn({ 2 }, "gen") end)
  end)
end)
