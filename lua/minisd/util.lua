--- Helpers shared by the minisd modules: option tables checked against the
-- allowed names, so every function rejects an unknown option the same way.
-- @module minisd.util

local M = {}

--- The keys of t as sorted strings.
-- @param t table
-- @return list of strings
function M.sorted_keys(t)
  local ks = {}
  for k in pairs(t) do
    ks[#ks + 1] = tostring(k)
  end
  table.sort(ks)
  return ks
end

-- The allowed names: a list keeps its order, a set is sorted.
local function names_of(allowed)
  if allowed[1] ~= nil then
    return allowed
  end
  return M.sorted_keys(allowed)
end

--- Checks that `opts` (nil or a table) names only allowed options.
-- @param who the function's name, for messages
-- @param opts nil or a table
-- @param allowed a list of names, or a table whose keys are the names
-- @param level error level as Lua's `error` counts it from the calling function
--   (default 2: blame the caller's caller, i.e. the user of the calling function)
-- @return opts, or a new empty table when opts is nil
function M.check_options(who, opts, allowed, level)
  level = (level or 2) + 1
  if opts == nil then
    return {}
  end
  local names = names_of(allowed)
  if type(opts) ~= "table" then
    error(string.format("%s: options must be a table, got %s (allowed: %s)", who, type(opts),
      table.concat(names, ", ")), level)
  end
  local set = {}
  for _, k in ipairs(names) do
    set[k] = true
  end
  for k in pairs(opts) do
    if not set[k] then
      error(string.format("%s: unknown option '%s' (allowed: %s)", who, tostring(k),
        table.concat(names, ", ")), level)
    end
  end
  return opts
end

--- Checks `opts` against the keys of `defaults` (or against `allowed`) and returns a new
-- table with the defaults filled in.
-- @param who the function's name, for messages
-- @param opts nil or a table
-- @param defaults table name -> default value
-- @param level as for check_options
-- @param allowed (optional) the allowed names, when some have no default
-- @return the merged options
function M.options(who, opts, defaults, level, allowed)
  opts = M.check_options(who, opts, allowed or defaults, (level or 2) + 1)
  local out = {}
  for k, v in pairs(defaults) do
    out[k] = v
  end
  for k, v in pairs(opts) do
    out[k] = v
  end
  return out
end

--- For command-line programs: a parser error unless v is an integer >= min.
-- @param parser the argparse parser (its `error` prints the usage and exits)
-- @param name the option as the user typed it, e.g. "--steps"
-- @param v the converted value (nil when the text was not a number)
-- @param min the smallest value allowed
-- @param optional when true, nil (the option not given) passes
-- @param max (optional) the largest value allowed: every size a user can ask for has a
--   limit that fits sprites, so that a typo cannot ask for gigabytes
function M.check_int_arg(parser, name, v, min, optional, max)
  if v == nil and optional then
    return
  end
  if v == nil or v ~= math.floor(v) or v < min or (max and v > max) then
    local got = type(v) == "number" and string.format("%.10g", v) or tostring(v)
    if max then
      parser:error(string.format("%s must be an integer in %d..%d, got %s", name, min, max, got))
    end
    parser:error(string.format("%s must be an integer >= %d, got %s", name, min, got))
  end
end

--- The command line with each option's negative number attached to it ("--seed", "-5" ->
-- "--seed=-5", "-n", "-5" -> "-n-5"): argparse takes a word that starts with "-" for an
-- option, so `--seed -5` would end in "did you mean -c?" instead of the option's own check.
-- @param args the command line (arg)
-- @return a new list
function M.negative_numbers(args)
  local out = {}
  local i = 1
  while i <= #args do
    local a, nxt = args[i], args[i + 1]
    if nxt and (nxt:match("^%-%d") or nxt:match("^%-%.%d")) and a:match("^%-%-?[%w][%w-]*$") then
      out[#out + 1] = a:match("^%-%-") and (a .. "=" .. nxt) or (a .. nxt)
      i = i + 2
    else
      out[#out + 1] = a
      i = i + 1
    end
  end
  return out
end

--- Zeros every existing `.grad` of a list of parameters, in place (what Module:zero_grad
-- and Optimizer:zero_grad both do).
-- @param params list of tensors
function M.zero_grads(params)
  for _, p in ipairs(params) do
    local g = p.grad
    if g then
      g:zero_()
    end
  end
end

--- The folder part of a path ("a/b/c.png" -> "a/b"; "c.png" -> ".").
function M.dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

--- The file part of a path ("a/b/c.png" -> "c.png").
function M.basename(path)
  return path:match("([^/]*)$")
end

--- dir/name, without a doubled "/" and without "./" for the current folder.
function M.join_path(dir, name)
  return dir == "." and name or (dir:gsub("/$", "") .. "/" .. name)
end

--- Creates a folder and its parents (`mkdir -p`).
-- @return true, or nil and a message naming the folder
function M.mkdir_p(dir)
  local ok = os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  if ok ~= true and ok ~= 0 then
    return nil, "cannot create the folder " .. dir
  end
  return true
end

--- The whole content of a file, or nil and io.open's message.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local s = f:read("*a")
  f:close()
  return s
end

--- Whether path names a readable regular file (a folder opens on Linux, but reading it
-- fails with an error where a file, even an empty one, gives data or a plain end of file).
-- @param path string
-- @return boolean
function M.is_file(path)
  local f = io.open(path, "rb")
  if not f then
    return false
  end
  local data, err = f:read(0)
  f:close()
  return data ~= nil or err == nil
end

--- package.searchpath (Lua 5.2 and later, LuaJIT), written out for PUC Lua 5.1.
-- @param name a module name ("minisd.data")
-- @param path a search path (package.path's form)
-- @return the first file that exists, or nil
function M.searchpath(name, path)
  if package.searchpath then
    return (package.searchpath(name, path))
  end
  local file = name:gsub("%.", "/")
  for pattern in path:gmatch("[^;]+") do
    local candidate = pattern:gsub("%?", file)
    if M.is_file(candidate) then
      return candidate
    end
  end
  return nil
end

--- Whether a file can be written at path, checked before long work so that it does not end
-- in a failed save: the folder must exist and take a new file (a probe file is created
-- there and removed), and path must not be a folder.
-- @param path string
-- @return true, or nil and a message naming path
function M.check_writable(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir == "" then
    dir = "/"
  end
  local f = io.open(path, "rb")
  if f then
    local data, err = f:read(0)
    f:close()
    if data == nil and err ~= nil then
      return nil, path .. " is a folder, not a file"
    end
  end
  local probe = string.format("%s/.minisd-write-check-%d", dir, math.random(1, 2 ^ 30))
  local p = io.open(probe, "wb")
  if not p then
    return nil, string.format("cannot write %s: the folder %s does not exist or is not "
      .. "writable", path, dir)
  end
  p:close()
  os.remove(probe)
  return true
end

--- Writes text as the whole of a file, atomically: a temporary file beside it, then a
-- rename over it, so that a failure leaves the old file (or none) in place.
-- @return true, or nil and a message naming path
function M.write_file(path, text)
  local tmp = string.format("%s.tmp-%d", path, math.random(1, 2 ^ 30))
  local f = io.open(tmp, "wb")
  if not f then
    return nil, "cannot write " .. path
  end
  local ok = f:write(text)
  ok = f:close() and ok
  if not ok then
    os.remove(tmp)
    return nil, "error writing " .. path
  end
  local renamed, err = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    return nil, "cannot write " .. path .. ": " .. tostring(err):gsub("^[^:]*: ", "")
  end
  return true
end

local function literal(v, indent, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = string.format("%q", v)
  elseif t == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      out[#out + 1] = string.format("%d", v)
    elseif v ~= v or v == math.huge or v == -math.huge then
      error("lua_literal: no literal for " .. tostring(v), 3)
    else
      local text -- the shortest form that reads back the same number
      for digits = 15, 17 do
        text = string.format("%." .. digits .. "g", v)
        if tonumber(text) == v then
          break
        end
      end
      out[#out + 1] = text
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" then
    local inner = indent .. "  "
    if #v > 0 then -- a list: one item per line
      out[#out + 1] = "{\n"
      for _, item in ipairs(v) do
        out[#out + 1] = inner
        literal(item, inner, out)
        out[#out + 1] = ",\n"
      end
      out[#out + 1] = indent .. "}"
    else
      local keys = M.sorted_keys(v)
      local flat = true
      for _, k in ipairs(keys) do
        flat = flat and type(v[k]) ~= "table"
      end
      out[#out + 1] = flat and "{ " or "{\n"
      for i, k in ipairs(keys) do
        local key = k:match("^[%a_][%w_]*$") and k or string.format("[%q]", k)
        out[#out + 1] = (flat and "" or inner) .. key .. " = "
        literal(v[k], inner, out)
        out[#out + 1] = flat and (i < #keys and ", " or " ") or ",\n"
      end
      out[#out + 1] = flat and "}" or indent .. "}"
    end
  else
    error("lua_literal: no literal for a " .. t, 3)
  end
end

--- Removes the temporary files that minisd's atomic writes leave in `dir` when killed
-- mid-write ("NAME.tmp.PID.N" from the C core, "NAME.tmp-N" from write_file): the files
-- they were for are intact. Only names of that form are touched.
-- @param dir a folder
-- @return the number of files removed
function M.remove_stale_temps(dir)
  local names = require("minisd").list_dir(dir) or {}
  local removed = 0
  for _, name in ipairs(names) do
    if name:match("^.+%.tmp%.%d+%.%d+$") or name:match("^.+%.tmp%-%d+$") then
      if os.remove(dir .. "/" .. name) then
        removed = removed + 1
      end
    end
  end
  return removed
end

--- Lua source for a value made of tables (string keys, or lists), strings, numbers and
-- booleans; `load("return " .. s)()` gives the value back. Keys are sorted, so the same
-- value always gives the same text.
-- @param v the value
-- @return string
function M.lua_literal(v)
  local out = {}
  literal(v, "", out)
  return table.concat(out)
end

--- A path without "dir/../" steps and "./" segments: "scripts/../models/x" -> "models/x".
-- Purely textual (symbolic links are not followed).
-- @param path string
-- @return the shorter path
function M.normalize_path(path)
  path = path:gsub("/%./", "/"):gsub("^%./(.)", "%1")
  local prev
  repeat
    prev = path
    path = path:gsub("([^/]+)/%.%./", function(seg)
      if seg ~= ".." and seg ~= "." then
        return ""
      end
    end)
  until path == prev
  return path
end

return M
