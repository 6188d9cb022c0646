-- minisd.util helpers.
local util = require("minisd.util")

describe("util.normalize_path", function()
  it("drops dir/../ and ./ steps, keeping leading ../", function()
    local cases = {
      { "scripts/../models/x.safetensors", "models/x.safetensors" },
      { "/a/b/../c", "/a/c" },
      { "a/b/../../c", "c" },
      { "../../x/../y", "../../y" },
      { "./a/./b", "a/b" },
      { "dir../../c", "c" }, -- "dir.." is a folder name, not a step up
      { "/plain/path", "/plain/path" },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[2], util.normalize_path(c[1]), c[1])
    end
  end)
end)

describe("util.options with allowed names and util.check_int_arg", function()
  it("merges defaults and accepts allowed names that have no default", function()
    local o = util.options("f", { b = 5, extra = "x" }, { a = 1, b = 2 }, nil,
      { "a", "b", "extra" })
    assert.are.same({ a = 1, b = 5, extra = "x" }, o)
    assert.has_error(function() util.options("f", { c = 1 }, { a = 1 }, nil, { "a", "extra" }) end)
  end)

  it("lets integers at or above min through and reports the rest through the parser", function()
    local parser = { error = function(_, msg) error(msg, 0) end }
    util.check_int_arg(parser, "--n", 3, 1)
    util.check_int_arg(parser, "--n", nil, 1, true)
    local cases = { { 0, "--n must be an integer >= 1, got 0" },
      { 1.5, "--n must be an integer >= 1, got 1.5" },
      { nil, "--n must be an integer >= 1, got nil" } }
    for _, c in ipairs(cases) do
      local ok, err = pcall(util.check_int_arg, parser, "--n", c[1], 1)
      assert.is_false(ok)
      assert.are.equal(c[2], err)
    end
  end)

  it("writes Lua literals that load back to the same value, keys in order", function()
    local v = { b = 1, a = "x\n\"q\"", list = { 1, 2.5, -3, { k = true } }, ["not id"] = 1e-9 }
    local text = util.lua_literal(v)
    local back = assert(load("return " .. text))()
    assert.are.same(v, back)
    assert.are.equal(text, util.lua_literal(back))
    assert.truthy(text:find('^{\n  a = "x'), text)
    assert.truthy(text:find('\n  b = 1,\n  list = {\n    1,\n', 1, true), text)
    assert.truthy(text:find('\n  %["not id"%] = 1e%-09,\n}$'), text)
    -- numbers in their shortest form that reads back the same
    assert.are.equal("{ a = 0.8, b = 0.30000000000000004 }", util.lua_literal({ a = 0.8,
      b = 0.1 + 0.2 }))
    assert.has_error(function() util.lua_literal({ f = print }) end)
    assert.has_error(function() util.lua_literal(0 / 0) end)
  end)

  it("writes files whole and checks that outputs can be written", function()
    local dir = require("helpers").tmpdir()
    local path = dir .. "/f.txt"
    assert.is_true(util.write_file(path, "one"))
    assert.is_true(util.write_file(path, "two"))
    assert.are.equal("two", require("helpers").read_file(path))
    local ok, _, out = require("helpers").run("ls -A " .. dir)
    assert.is_true(ok)
    assert.are.equal("f.txt\n", out) -- no temporary file left behind
    local nok, msg = util.write_file(dir .. "/none/f.txt", "x")
    assert.is_nil(nok)
    assert.truthy(msg:find("none/f.txt", 1, true))
    assert.is_true(util.check_writable(dir .. "/new.png"))
    local bad, why = util.check_writable(dir .. "/none/new.png")
    assert.is_nil(bad)
    assert.truthy(why:find("the folder " .. dir .. "/none does not exist", 1, true), why)
    local _, why2 = util.check_writable(dir)
    assert.truthy(why2:find("is a folder", 1, true), why2)
    ok, _, out = require("helpers").run("ls -A " .. dir)
    assert.is_true(ok)
    assert.are.equal("f.txt\n", out) -- the probe is gone too
  end)
end)
