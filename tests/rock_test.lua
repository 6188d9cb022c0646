-- The rockspec's test section (`luarocks test`): busted on the quick specs, under the Lua
-- the rock is built for, against the core LuaRocks just built (build.luarocks/) and the
-- Lua files of this source tree.
local lua = arg and arg[-1] or "lua"
local specs = { "api", "tensor", "nn", "image", "io", "worker", "sched", "diffusion", "util",
  "context" }
local files = {}
for i, s in ipairs(specs) do
  files[i] = "tests/spec/" .. s .. "_spec.lua"
end
local cpath = os.getenv("MINISD_CPATH") or "build.luarocks/?.so"
local cmd = string.format("LUA_PATH='lua/?.lua;lua/?/init.lua;tests/spec/?.lua;;' "
  .. "LUA_CPATH='%s;;' MINISD_CPATH='%s' MINISD_LUA_BIN='%s' busted --lua='%s' "
  .. "--output=plainTerminal %s", cpath, cpath, lua, lua, table.concat(files, " "))
print(cmd)
local ok = os.execute(cmd)
os.exit((ok == true or ok == 0) and 0 or 1)
