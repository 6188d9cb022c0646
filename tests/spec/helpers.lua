-- Shared helpers for the busted specs.
local minisd = require("minisd")
local util = require("minisd.util")

local H = {}

H.root = os.getenv("MINISD_ROOT") or "."
H.lua_bin = os.getenv("MINISD_LUA_BIN") or "lua5.4"

--- Loads tests/fixtures/<name>.lua: a table name -> tensor.
function H.fixture(name)
  local path = H.root .. "/tests/fixtures/" .. name .. ".lua"
  local chunk = assert(loadfile(path))
  local raw = chunk()
  local out = {}
  for k, v in pairs(raw) do
    local t = minisd.zeros(v.shape)
    if #v.data > 0 then
      t:copy_(minisd.tensor(v.data))
    end
    out[k] = t
  end
  return out
end

local function flat(x)
  if minisd.is_tensor(x) then
    return minisd.tensor(x:totable()):reshape({ -1 }):totable(), x:shape()
  end
  return x, { #x }
end

local function flatten_table(t, acc)
  acc = acc or {}
  if type(t) == "number" then
    acc[#acc + 1] = t
  else
    for i = 1, #t do
      flatten_table(t[i], acc)
    end
  end
  return acc
end

--- Asserts |a - b| <= atol + rtol |b| elementwise; the failure message
-- names the largest difference and where it is.
function H.assert_close(actual, expected, rtol, atol, what)
  rtol, atol = rtol or 1e-4, atol or 1e-5
  local a = minisd.is_tensor(actual) and flatten_table(actual:totable()) or flatten_table(actual)
  local e = minisd.is_tensor(expected) and flatten_table(expected:totable())
    or flatten_table(expected)
  if #a ~= #e then
    error(string.format("%s: %d values, expected %d", what or "assert_close", #a, #e), 2)
  end
  local worst, wi = -math.huge, 0
  for i = 1, #a do
    local excess = math.abs(a[i] - e[i]) - (atol + rtol * math.abs(e[i]))
    if excess ~= excess then
      excess = math.huge -- NaN
    end
    if excess > worst then
      worst, wi = excess, i
    end
  end
  if worst > 0 then
    error(string.format("%s: largest difference at element %d: got %.9g, expected %.9g "
      .. "(|diff| %.3g > atol %.1g + rtol %.1g * |expected|)", what or "assert_close", wi, a[wi],
      e[wi], math.abs(a[wi] - e[wi]), atol, rtol), 2)
  end
  return true
end

--- Runs a shell command; returns ok, exit code, combined output.
function H.run(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"::exit=$?\"")
  local out = f:read("*a")
  f:close()
  local code = tonumber(out:match("::exit=(%d+)%s*$"))
  out = out:gsub("::exit=%d+%s*$", "")
  return code == 0, code, out
end

--- The whole content of a file (an error if it cannot be read): the library's own
-- util.read_file (one home for file helpers), asserted.
function H.read_file(path)
  return assert(util.read_file(path))
end

--- Writes s as the whole content of a file (util.write_file: atomic), asserted.
function H.write_file(path, s)
  assert(util.write_file(path, s))
end

--- Whether a file exists and can be opened.
function H.exists(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
  end
  return f ~= nil
end

--- The rows of a run's losses.tsv: {epoch =, step =, loss = (a number), lr =, text = (the loss
-- as written)}.
function H.read_losses(path)
  local rows = {}
  for line in io.lines(path) do
    local e, st, l, lr = line:match("^(%d+)\t(%d+)\t([^\t]+)\t?([^\t]*)")
    if e then
      rows[#rows + 1] = { epoch = tonumber(e), step = tonumber(st), loss = tonumber(l), text = l,
        lr = tonumber(lr) }
    end
  end
  return rows
end

--- A fresh temporary directory.
function H.tmpdir()
  local ok, _, out = H.run("mktemp -d")
  assert(ok, out)
  return (out:gsub("%s+$", ""))
end

--- n as 8 little-endian bytes (a safetensors header length).
function H.le64(n)
  local b = {}
  for i = 1, 8 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
end

H.flat = flat
return H
