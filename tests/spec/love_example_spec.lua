-- The LÖVE example (examples/love) runs headless under LuaJIT with the smoke script's stubs
-- of the LÖVE API: it loads a tiny model, denoises three batches one step per frame, and
-- reacts to the keys.
local H = require("helpers")
local exists = H.exists

-- LuaJIT and the cpath of the core built for it.
local function luajit_setup()
  local bin, cpath = os.getenv("MINISD_LUA_BIN"), os.getenv("MINISD_CPATH")
  if not (bin and bin:find("luajit", 1, true) and cpath) then
    local build = os.getenv("MINISD_BUILD") or "build"
    bin, cpath = "luajit", build .. "/luajit/?.so"
    if not exists(build .. "/luajit/minisd/core.so") then
      return nil
    end
  end
  return bin, cpath
end

describe("examples/love", function()
  it("runs load/update/draw/keys headless under LuaJIT", function()
    local bin, cpath = luajit_setup()
    if not bin or not (os.execute(bin .. " -v >/dev/null 2>&1") == true
        or os.execute(bin .. " -v >/dev/null 2>&1") == 0) then
      pending("no LuaJIT build of the core (build/luajit/minisd/core.so)")
      return
    end
    local out_path = os.tmpname()
    local cmd = string.format("MINISD_CPATH='%s' '%s' examples/love/smoke.lua >'%s' 2>&1; echo $?",
      cpath, bin, out_path)
    local p = io.popen(cmd)
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    local f = io.open(out_path, "rb")
    local out = f:read("*a")
    f:close()
    os.remove(out_path)
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("smoke: batch 1: 25 frames, 25 steps", 1, true), out)
    assert.truthy(out:find("batch 3 done: 8 sprites", 1, true), out)
    assert.truthy(out:find("smoke: context food: 25 frames", 1, true), out)
    assert.truthy(out:find("smoke: ok", 1, true), out)
  end)
end)
