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
end)
