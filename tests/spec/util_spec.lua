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
