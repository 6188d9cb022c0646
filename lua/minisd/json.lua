--- minisd.json: a small, strict JSON encoder and decoder (for model-file metadata).
-- Pure Lua; the same results on Lua 5.4 and LuaJIT.
--
-- Encoding: a table whose keys are exactly 1..n is an array, a table whose keys are all
-- strings is an object (keys sorted, so the output is deterministic); an empty table is an
-- array unless it is `json.object()`. Integral numbers are written as integers, others with
-- the fewest digits (at most 17) that read back to the same double. `json.null` stands for
-- null.
--
-- Decoding is strict RFC 8259: one value, no trailing commas, no comments, no NaN. Errors
-- return nil and a message with the line, column and byte position.
-- @module minisd.json

local M = {}

local object_mt = { __name = "minisd.json.object" }
local array_mt = { __name = "minisd.json.array" }

--- The value that stands for JSON null (decoded nulls are this value, never nil).
M.null = setmetatable({}, {
  __name = "minisd.json.null",
  __tostring = function() return "null" end,
})

--- A table that encodes as an object even when empty.
-- @param t table (default a new one)
-- @return t, marked as an object
function M.object(t)
  return setmetatable(t or {}, object_mt)
end

--- A table that encodes as an array even when empty.
-- @param t table (default a new one)
-- @return t, marked as an array
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

local MAX_DEPTH = 500

-- ---- encoding ------------------------------------------------------------------------------

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
  return escapes[c] or string.format("\\u%04x", c:byte())
end

local function encode_string(s)
  return '"' .. s:gsub('[%z\1-\31"\\\127]', escape_char) .. '"'
end

local function encode_number(x)
  if x ~= x or x == math.huge or x == -math.huge then
    error("json.encode: " .. (x ~= x and "NaN" or tostring(x)) .. " cannot be written as JSON", 0)
  end
  if math.type and math.type(x) == "integer" then
    return string.format("%d", x)
  end
  if x == math.floor(x) and math.abs(x) < 2 ^ 63 then
    return string.format("%.0f", x)
  end
  for digits = 15, 16 do
    local s = string.format("%." .. digits .. "g", x)
    if tonumber(s) == x then
      return s
    end
  end
  return string.format("%.17g", x)
end

-- "array", n | "object", sorted keys; errors on mixed or unsupported keys
local function classify(t, path)
  local n, nkeys, has_string = 0, 0, false
  for k in pairs(t) do
    nkeys = nkeys + 1
    if type(k) == "string" then
      has_string = true
    elseif type(k) == "number" and k >= 1 and k == math.floor(k) then
      if k > n then n = k end
    else
      error(string.format("json.encode: %s has a key of type %s (%s): keys must be strings, "
        .. "or 1..n for an array", path, type(k), tostring(k)), 0)
    end
  end
  if nkeys == 0 then
    return getmetatable(t) == object_mt and "object" or "array", 0
  end
  if has_string then
    if n > 0 then
      error("json.encode: " .. path .. " mixes string keys and array indices", 0)
    end
    local keys = {}
    for k in pairs(t) do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    return "object", keys
  end
  if n ~= nkeys then
    error(string.format("json.encode: %s is a sparse array (%d entries, largest index %d); use "
      .. "json.null for holes", path, nkeys, n), 0)
  end
  return "array", n
end

local encode_value

local function encode_table(t, out, path, depth, indent, seen)
  if seen[t] then
    error("json.encode: " .. path .. " contains itself", 0)
  end
  if depth > MAX_DEPTH then
    error("json.encode: " .. path .. " is nested deeper than " .. MAX_DEPTH .. " levels", 0)
  end
  seen[t] = true
  local kind, what = classify(t, path)
  local sep, nl = ",", indent and ("\n" .. string.rep(indent, depth + 1)) or ""
  local close_nl = indent and ("\n" .. string.rep(indent, depth)) or ""
  if kind == "array" then
    if what == 0 then
      out[#out + 1] = "[]"
    else
      out[#out + 1] = "["
      for i = 1, what do
        if i > 1 then out[#out + 1] = sep end
        out[#out + 1] = nl
        encode_value(t[i], out, path .. "[" .. i .. "]", depth + 1, indent, seen)
      end
      out[#out + 1] = close_nl .. "]"
    end
  else
    if what == 0 then
      out[#out + 1] = "{}"
    else
      out[#out + 1] = "{"
      for i, k in ipairs(what) do
        if i > 1 then out[#out + 1] = sep end
        out[#out + 1] = nl .. encode_string(k) .. (indent and ": " or ":")
        encode_value(t[k], out, path .. "." .. k, depth + 1, indent, seen)
      end
      out[#out + 1] = close_nl .. "}"
    end
  end
  seen[t] = nil
end

encode_value = function(v, out, path, depth, indent, seen)
  local tv = type(v)
  if v == M.null or v == nil then
    out[#out + 1] = "null"
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif tv == "number" then
    out[#out + 1] = encode_number(v)
  elseif tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "table" then
    encode_table(v, out, path, depth, indent, seen)
  else
    error("json.encode: " .. path .. " is a " .. tv .. ", which JSON cannot hold", 0)
  end
end

--- Encodes a Lua value as JSON text.
-- @param value nil/json.null, boolean, number (finite), string, or table of these
-- @param opts optional table: `indent` (number of spaces or a string) for readable output
-- @return the JSON text
function M.encode(value, opts)
  local indent
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("json.encode: opts must be a table (allowed options: indent)", 2)
    end
    for k in pairs(opts) do
      if k ~= "indent" then
        error("json.encode: unknown option '" .. tostring(k) .. "' (allowed options: indent)", 2)
      end
    end
    indent = opts.indent
    if type(indent) == "number" then
      indent = string.rep(" ", indent)
    elseif indent ~= nil and type(indent) ~= "string" then
      error("json.encode: indent must be a number or a string", 2)
    end
  end
  local out = {}
  local ok, err = pcall(encode_value, value, out, "value", 0, indent, {})
  if not ok then
    error(err, 2)
  end
  return table.concat(out)
end

-- ---- decoding ------------------------------------------------------------------------------

-- A decode error carries its message in a table so pcall can tell it from a bug.
local function fail(s, pos, msg)
  local line, i = 1, 1
  while true do
    local nl = s:find("\n", i, true)
    if not nl or nl >= pos then break end
    line = line + 1
    i = nl + 1
  end
  local col = pos - i + 1
  local near = pos <= #s and string.format(" near '%s'", s:sub(pos, pos + 9):gsub("%c", " "))
    or " at the end of the text"
  error({ msg = string.format("json.decode: %s at line %d, column %d (byte %d)%s", msg, line,
    col, pos, near) }, 0)
end

local function skip_ws(s, pos)
  return s:find("[^ \t\r\n]", pos) or #s + 1
end

local function utf8_char(cp)
  if cp < 0x80 then
    return string.char(cp)
  elseif cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64,
      0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local simple_escapes = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}

local function decode_string(s, pos)
  -- pos is at the opening quote
  local parts = {}
  local i = pos + 1
  while true do
    local j = s:find('["\\%z\1-\31]', i)
    if not j then
      fail(s, pos, "unterminated string")
    end
    parts[#parts + 1] = s:sub(i, j - 1)
    local c = s:sub(j, j)
    if c == '"' then
      return table.concat(parts), j + 1
    elseif c ~= "\\" then
      fail(s, j, "control character in string (escape it)")
    end
    local e = s:sub(j + 1, j + 1)
    if simple_escapes[e] then
      parts[#parts + 1] = simple_escapes[e]
      i = j + 2
    elseif e == "u" then
      local hex = s:match("^%x%x%x%x", j + 2)
      if not hex then
        fail(s, j, "bad \\u escape (expected 4 hex digits)")
      end
      local cp = tonumber(hex, 16)
      i = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = s:match("^\\u(%x%x%x%x)", i)
        local lcp = lo and tonumber(lo, 16)
        if not lcp or lcp < 0xDC00 or lcp > 0xDFFF then
          fail(s, j, "high surrogate not followed by a low surrogate")
        end
        cp = 0x10000 + (cp - 0xD800) * 1024 + (lcp - 0xDC00)
        i = i + 6
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        fail(s, j, "lone low surrogate")
      end
      parts[#parts + 1] = utf8_char(cp)
    else
      fail(s, j, "bad escape '\\" .. e .. "'")
    end
  end
end

local function decode_number(s, pos)
  local i = pos
  if s:sub(i, i) == "-" then
    i = i + 1
  end
  local int = s:match("^%d+", i)
  if not int then
    fail(s, pos, "malformed number (a digit must follow '-')")
  elseif #int > 1 and int:sub(1, 1) == "0" then
    fail(s, pos, "malformed number (leading zero)")
  end
  i = i + #int
  if s:sub(i, i) == "." then
    local frac = s:match("^%d+", i + 1)
    if not frac then
      fail(s, pos, "malformed number (digits must follow '.')")
    end
    i = i + 1 + #frac
  end
  local exp = s:match("^[eE][-+]?%d*", i)
  if exp then
    if not exp:match("%d$") then
      fail(s, pos, "malformed number (digits must follow the exponent)")
    end
    i = i + #exp
  end
  return tonumber(s:sub(pos, i - 1)), i
end

local decode_value

local function decode_array(s, pos, depth)
  local t = {}
  local n = 0
  pos = skip_ws(s, pos + 1)
  if s:sub(pos, pos) == "]" then
    return M.array(t), pos + 1
  end
  while true do
    local v
    v, pos = decode_value(s, pos, depth + 1)
    n = n + 1
    t[n] = v
    pos = skip_ws(s, pos)
    local c = s:sub(pos, pos)
    if c == "]" then
      return t, pos + 1
    elseif c ~= "," then
      fail(s, pos, "expected ',' or ']' in array")
    end
    pos = skip_ws(s, pos + 1)
  end
end

local function decode_object(s, pos, depth)
  local t = {}
  pos = skip_ws(s, pos + 1)
  if s:sub(pos, pos) == "}" then
    return M.object(t), pos + 1
  end
  while true do
    if s:sub(pos, pos) ~= '"' then
      fail(s, pos, "expected a string key in object")
    end
    local k
    k, pos = decode_string(s, pos)
    pos = skip_ws(s, pos)
    if s:sub(pos, pos) ~= ":" then
      fail(s, pos, "expected ':' after object key")
    end
    local v
    v, pos = decode_value(s, skip_ws(s, pos + 1), depth + 1)
    if t[k] ~= nil then
      fail(s, pos, "duplicate key '" .. k .. "'")
    end
    t[k] = v
    pos = skip_ws(s, pos)
    local c = s:sub(pos, pos)
    if c == "}" then
      return t, pos + 1
    elseif c ~= "," then
      fail(s, pos, "expected ',' or '}' in object")
    end
    pos = skip_ws(s, pos + 1)
  end
end

local literals = { t = { "true", true }, f = { "false", false }, n = { "null", M.null } }

decode_value = function(s, pos, depth)
  if depth > MAX_DEPTH then
    fail(s, pos, "nested deeper than " .. MAX_DEPTH .. " levels")
  end
  local c = s:sub(pos, pos)
  if c == "{" then
    return decode_object(s, pos, depth)
  elseif c == "[" then
    return decode_array(s, pos, depth)
  elseif c == '"' then
    return decode_string(s, pos)
  elseif c == "-" or c:match("%d") then
    return decode_number(s, pos)
  elseif literals[c] then
    local word, value = literals[c][1], literals[c][2]
    if s:sub(pos, pos + #word - 1) ~= word then
      fail(s, pos, "unknown literal")
    end
    return value, pos + #word
  elseif c == "" then
    fail(s, pos, "unexpected end of text")
  end
  fail(s, pos, "unexpected character '" .. c .. "'")
end

--- Decodes JSON text.
-- Objects and arrays become Lua tables (empty ones marked, so they encode back the same),
-- null becomes `json.null`, numbers become Lua numbers (integers on Lua 5.4 when written
-- without fraction or exponent).
-- @param s the JSON text
-- @return the value, or nil and a message naming the line, column and byte of the problem
function M.decode(s)
  if type(s) ~= "string" then
    error("json.decode: expected a string, got " .. type(s), 2)
  end
  local ok, value = pcall(function()
    local v, p = decode_value(s, skip_ws(s, 1), 0)
    p = skip_ws(s, p)
    if p <= #s then
      fail(s, p, "trailing characters after the JSON value")
    end
    return v
  end)
  if not ok then
    if type(value) == "table" and value.msg then
      return nil, value.msg
    end
    error(value, 0)
  end
  return value
end

return M
