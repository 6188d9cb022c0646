-- minisd.context: parsing context expressions into rows, names, decoding.
local minisd = require("minisd")
local context = require("minisd.context")

local function rows(t)
  return t:totable()
end

local function close_rows(actual, expected)
  local a = rows(actual)
  assert.are.equal(#expected, #a)
  for i = 1, #expected do
    assert.are.equal(#expected[i], #a[i])
    for k = 1, #expected[i] do
      assert.is_true(math.abs(a[i][k] - expected[i][k]) < 1e-6,
        string.format("row %d col %d: %g vs %g", i, k, a[i][k], expected[i][k]))
    end
  end
end

describe("context", function()
  it("has the seed's default names in its column order", function()
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" },
      context.default_names)
    assert.are.same(context.default_names, context.names())
    assert.are_not.equal(context.default_names, context.names()) -- a copy
  end)

  it("encodes names, sums and weights", function()
    close_rows(context.encode("hero"), { { 1, 0, 0, 0, 0 } })
    close_rows(context.encode("side-facing"), { { 0, 0, 0, 0, 1 } })
    close_rows(context.encode("hero+food"), { { 1, 0, 1, 0, 0 } })
    close_rows(context.encode("hero,food=0.6"), { { 1, 0, 0.6, 0, 0 } })
    close_rows(context.encode(" non-hero = -0.5 + Spell=2e-1 "), { { 0, -0.5, 0, 0.2, 0 } })
    close_rows(context.encode("none"), { { 0, 0, 0, 0, 0 } })
    close_rows(context.encode(""), { { 0, 0, 0, 0, 0 } })
    assert.are.same({ 1, 5 }, context.encode("hero"):shape())
  end)

  it("encodes tables of names, of weights, and weight arrays", function()
    close_rows(context.encode({ "hero", "food" }), { { 1, 0, 1, 0, 0 } })
    close_rows(context.encode({ hero = 1, food = 0.6 }), { { 1, 0, 0.6, 0, 0 } })
    close_rows(context.encode({ 1, 0, 0.6, 0, 0 }), { { 1, 0, 0.6, 0, 0 } })
    close_rows(context.encode(minisd.tensor({ 0, 1, 0, 0, 0 })), { { 0, 1, 0, 0, 0 } })
  end)

  it("encodes lists into one row each", function()
    local t = context.encode({ { "hero" }, { food = 0.5 }, { 0, 0, 0, 1, 0 } })
    assert.are.same({ 3, 5 }, t:shape())
    close_rows(t, { { 1, 0, 0, 0, 0 }, { 0, 0, 0.5, 0, 0 }, { 0, 0, 0, 1, 0 } })
    close_rows(context.encode_list({ "hero", "food+spell", "none" }),
      { { 1, 0, 0, 0, 0 }, { 0, 0, 1, 1, 0 }, { 0, 0, 0, 0, 0 } })
  end)

  it("uses other label names", function()
    local names = { "cat", "dog" }
    close_rows(context.encode("dog", names), { { 0, 1 } })
    close_rows(context.encode("cat=0.3,dog", { label_names = names }), { { 0.3, 1 } })
    assert.are.same(names, context.names({ label_names = names }))
    assert.are.same(names, context.names({ metadata = { label_names = '["cat","dog"]' } }))
    assert.are.equal("dog", context.decode({ 0, 1 }, names))
  end)

  it("rejects unknown names, listing the known ones", function()
    assert.has_error(function() context.encode("heroo") end,
      "context: unknown label 'heroo' (known: hero, non-hero, food, spell, side-facing)")
    assert.has_error(function() context.encode({ "hero", "wizard" }) end,
      "context: unknown label 'wizard' (known: hero, non-hero, food, spell, side-facing)")
    assert.has_error(function() context.encode({ wizard = 1 }) end,
      "context: unknown label 'wizard' (known: hero, non-hero, food, spell, side-facing)")
    assert.has_error(function() context.encode("bird", { "cat", "dog" }) end,
      "context: unknown label 'bird' (known: cat, dog)")
  end)

  it("rejects malformed expressions", function()
    assert.has_error(function() context.encode("hero=x") end,
      "context: label 'hero' has weight 'x', expected a finite number")
    assert.has_error(function() context.encode("hero++food") end,
      "context: empty term in 'hero++food'")
    assert.has_error(function() context.encode("hero+hero") end,
      "context: label 'hero' is given twice")
    assert.has_error(function() context.encode({ 1, 0 }) end,
      "context: 2 weights given for 5 labels (hero, non-hero, food, spell, side-facing)")
    assert.has_error(function() context.encode(minisd.zeros({ 2, 3 })) end,
      "context: a tensor of shape [2,3] is not a row of 5 weights")
    assert.has_error(function() context.encode(true) end,
      "context: expected a string, a table or a tensor, got boolean")
    assert.has_error(function() context.names(42) end)
    assert.has_error(function() context.names({ "a", "a" }) end,
      "context: label name 'a' appears twice")
  end)

  it("decodes rows back into expressions", function()
    assert.are.equal("hero,food=0.6", context.decode(context.encode("hero,food=0.6")))
    assert.are.equal("none", context.decode(minisd.zeros({ 5 })))
    assert.are.equal("non-hero=-0.5,side-facing",
      context.decode({ 0, -0.5, 0, 0, 1 }))
    assert.are.same({ "hero", "spell=0.25" },
      context.decode(minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 0, 0, 0.25, 0 } })))
    for _, e in ipairs({ "hero", "food,spell=0.3", "non-hero=2,side-facing=-1", "none" }) do
      assert.are.equal(e, context.decode(context.encode(e)))
    end
    assert.has_error(function() context.decode({ 1, 0 }) end,
      "context.decode: 2 values for 5 labels")
  end)
end)
