-- Shared start-up for the command-line programs (train.lua, sample.lua, scripts/*.lua):
-- makes `require "minisd"` find the source tree and its build next to the program,
-- and reruns the program under lua5.4 when started by plain Lua 5.1 (Debian's
-- `lua` once luarocks is installed), since the module is built for 5.4 or LuaJIT.
-- Returns run_main(program, fn, ...), which runs fn and reports an error as
-- "program: error: message" with exit status 1 (MINISD_DEBUG=1 keeps the traceback).
local root = ...
if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
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
-- MINISD_CPATH (a cpath pattern) names another build, e.g. in the test suite
local jit_build = rawget(_G, "jit") and "/build/luajit/?.so;" or "/build/?.so;"
local cpath = os.getenv("MINISD_CPATH")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = (cpath and (cpath .. ";") or (root .. jit_build)) .. package.cpath

return function(program, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then
    local msg = tostring(err)
    if os.getenv("MINISD_DEBUG") == nil then
      msg = msg:gsub("\nstack traceback:.*$", "")
    end
    io.stderr:write(program, ": error: ", msg, "\n")
    os.exit(1)
  end
end
