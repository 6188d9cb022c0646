-- Shared start-up for the command-line programs (train.lua, sample.lua, scripts/*.lua):
-- makes `require "minisd"` find the source tree and its build next to the program,
-- and reruns the program under lua5.4 when started by plain Lua 5.1 (Debian's
-- `lua` once luarocks is installed) that finds no core built for it (a checkout builds
-- for 5.4 and LuaJIT; a rock installed for 5.1 has its own).
-- Returns run_main(program, fn, ...), which runs fn and reports an error as
-- "program: error: message" with exit status 1 (MINISD_DEBUG=1 keeps the traceback).
local root = ...
-- MINISD_CPATH (a cpath pattern) names another build, e.g. in the test suite
local jit_build = rawget(_G, "jit") and "/build/luajit/?.so;" or "/build/?.so;"
local cpath = os.getenv("MINISD_CPATH")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (cpath and (cpath .. ";") or (root .. jit_build)) .. package.cpath
-- PUC Lua 5.1 that finds no core built for it (a checkout builds for 5.4): run under 5.4
if _VERSION == "Lua 5.1" and not rawget(_G, "jit") and not pcall(require, "minisd.core") then
  local function q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
  end
  local cmd = { "lua5.4", q(arg[0]) }
  for i = 1, #arg do
    cmd[#cmd + 1] = q(arg[i])
  end
  local code = os.execute(table.concat(cmd, " "))
  if type(code) == "number" and code > 255 then
    code = math.floor(code / 256)
  end
  os.exit(code)
end

return require("minisd.cli").run_main
