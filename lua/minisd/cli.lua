--- What the command-line programs share (train.lua, sample.lua, the scripts, and the
-- minisd-train / minisd-sample commands a rock installs).
-- @module minisd.cli

local M = {}

--- Runs fn(...) and reports an error as "program: error: message" on stderr with exit
-- status 1 (MINISD_DEBUG=1 keeps the traceback and the position of the error). In a job of
-- several processes (minisd.dist) the message names the rank, and the error ends every
-- rank (minisd.dist.abort), since the others would wait for this one; an error that every
-- rank raises alike (minisd.dist.collective_error) is reported once, by rank 0.
-- @param program the program's name, for messages
-- @param fn the program's body
function M.run_main(program, fn, ...)
  local args = { n = select("#", ...), ... }
  local unpack = table.unpack or unpack -- luacheck: ignore (Lua 5.1's global)
  -- (Lua 5.1's xpcall passes no arguments to fn)
  local ok, err = xpcall(function() return fn(unpack(args, 1, args.n)) end, debug.traceback)
  if not ok then
    local dist = package.loaded["minisd.dist"]
    if type(err) == "table" and err.collective then -- every rank has it: rank 0 reports
      if dist.rank() == 0 then
        io.stderr:write(program, ": error: ", tostring(err), "\n")
      end
      os.exit(1)
    end
    local msg = tostring(err)
    if os.getenv("MINISD_DEBUG") == nil then
      -- the user's problem, not where in the library it was noticed: no traceback and
      -- no "file.lua:123:" in front
      msg = msg:gsub("\nstack traceback:.*$", ""):gsub("^[^\n:]*%.lua:%d+: ", "")
    end
    if dist and dist.size() > 1 then
      msg = string.format("rank %d of %d: %s", dist.rank(), dist.size(), msg)
    end
    io.stderr:write(program, ": error: ", msg, "\n")
    if dist then
      dist.abort(1)
    end
    os.exit(1)
  end
end

--- Loads a diffusion model file (a ContextUnet) for a program, or raises a message for the
-- user (run_main reports it): the file's own problem, or what else it is.
-- @param path the model file
-- @return the model
function M.load_context_unet(path)
  local model, err = require("minisd").load_model(path)
  if not model then
    error(err, 0)
  end
  if model.__name ~= "ContextUnet" then
    error(path .. " is a " .. tostring(model.__name) .. ", not a ContextUnet", 0)
  end
  return model
end

return M
