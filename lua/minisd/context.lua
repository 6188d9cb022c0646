--- minisd.context: label names <-> context rows.
-- A context row has one weight per label name (K of them). Expressions:
--
-- * `"hero"`, `"hero+food"` (weight 1 each), `"hero,food=0.6"` (explicit weights; `+` and `,`
--   both separate terms, spaces are ignored), `"none"` or `""` (all zeros);
-- * a Lua table of names `{"hero", "food"}`, of weights `{hero = 1, food = 0.6}`, or a numeric
--   array of K weights `{1, 0, 0.6, 0, 0}`;
-- * a tensor of K values.
--
-- Names match exactly, or else ignoring case. An unknown name is an error that lists the
-- known ones.
-- @module minisd.context

local minisd = require("minisd")

local M = {}

--- The seed's five labels, in the order of its one-hot columns.
M.default_names = { "hero", "non-hero", "food", "spell", "side-facing" }

local function copy(list)
  local out = {}
  for i = 1, #list do
    out[i] = list[i]
  end
  return out
end

local function is_name_list(t)
  if type(t) ~= "table" or #t == 0 then
    return false
  end
  for k, v in pairs(t) do
    if type(k) ~= "number" or type(v) ~= "string" then
      return false
    end
  end
  return true
end

local function check_names(names, level)
  local seen = {}
  for i, name in ipairs(names) do
    if name == "" or name:find("[+,=%s]") then
      error(string.format("context: label name %d ('%s') must be non-empty and contain no "
        .. "'+', ',', '=' or spaces", i, name), level + 1)
    end
    if seen[name] then
      error("context: label name '" .. name .. "' appears twice", level + 1)
    end
    seen[name] = true
  end
  return names
end

--- The label names of a model, a dataset, or a list of names.
-- @param x nil (the default names), a list of names, or a table with `label_names` (a model
--   or a dataset; also looked up in `x.metadata` and `x.config`)
-- @return a new list of names
function M.names(x)
  if x == nil then
    return copy(M.default_names)
  end
  if is_name_list(x) then
    return check_names(copy(x), 2)
  end
  if type(x) == "table" then
    for _, holder in ipairs({ x, rawget(x, "metadata") or {}, rawget(x, "config") or {} }) do
      local names = type(holder) == "table" and holder.label_names
      if type(names) == "string" then
        names = require("minisd.json").decode(names)
      end
      if is_name_list(names) then
        return check_names(copy(names), 2)
      end
    end
  end
  error("context.names: expected nil, a list of names, or a model or dataset with "
    .. "label_names, got " .. type(x), 2)
end

local function index_of(names)
  local idx, lower = {}, {}
  for i, name in ipairs(names) do
    idx[name] = i
    local l = name:lower()
    lower[l] = lower[l] == nil and i or false -- false: ambiguous when case is ignored
  end
  return function(name)
    return idx[name] or lower[name:lower()] or nil
  end
end

local function unknown(name, names, level)
  error(string.format("context: unknown label '%s' (known: %s)", name,
    table.concat(names, ", ")), level + 1)
end

local function weight_of(v, what, level)
  local w = tonumber(v)
  if w == nil or w ~= w or w == math.huge or w == -math.huge then
    error("context: " .. what .. " has weight '" .. tostring(v) .. "', expected a finite number",
      level + 1)
  end
  return w
end

-- One expression -> a Lua array of K weights. level: for error().
local function row_of(expr, names, find, level)
  level = level + 1
  local K = #names
  local row = {}
  for i = 1, K do
    row[i] = 0
  end
  local given = {}
  local function set(name, w)
    local i = find(name)
    if not i then
      unknown(name, names, level + 1)
    end
    if given[i] then
      error("context: label '" .. names[i] .. "' is given twice", level + 1)
    end
    given[i] = true
    row[i] = w
  end
  local te = type(expr)
  if expr == nil or (te == "string" and expr:match("^%s*$")) then
    return row
  elseif te == "string" then
    local s = expr:gsub("%s+", "")
    if s:lower() == "none" then
      return row
    end
    for term in (s .. ","):gmatch("([^,+]*)[,+]") do
      if term == "" then
        error("context: empty term in '" .. expr .. "'", level)
      end
      local name, w = term:match("^([^=]+)=(.*)$")
      if name then
        set(name, weight_of(w, "label '" .. name .. "'", level))
      else
        set(term, 1)
      end
    end
    return row
  elseif minisd.is_tensor(expr) then
    if expr:numel() ~= K then
      error(string.format("context: a tensor of shape [%s] is not a row of %d weights",
        table.concat(expr:shape(), ","), K), level)
    end
    return expr:reshape({ K }):totable()
  elseif te == "table" then
    local n = #expr
    if n > 0 and type(expr[1]) == "number" then
      if n ~= K then
        error(string.format("context: %d weights given for %d labels (%s)", n, K,
          table.concat(names, ", ")), level)
      end
      for i = 1, K do
        row[i] = weight_of(expr[i], "entry " .. i, level)
      end
      for k in pairs(expr) do
        if type(k) ~= "number" then
          error("context: a weight array also has the key '" .. tostring(k) .. "'", level)
        end
      end
      return row
    end
    for k, v in pairs(expr) do
      if type(k) == "number" then
        if type(v) ~= "string" then
          error("context: entry " .. k .. " of a name list is a " .. type(v), level)
        end
        set(v, 1)
      elseif type(k) == "string" then
        set(k, weight_of(v, "label '" .. k .. "'", level))
      else
        error("context: bad key of type " .. type(k) .. " in a context table", level)
      end
    end
    return row
  end
  error("context: expected a string, a table or a tensor, got " .. te, level)
end

local function names_arg(names, level)
  if names == nil then
    return M.default_names
  end
  if is_name_list(names) then
    return check_names(names, level + 1)
  end
  return M.names(names)
end

-- Whether expr is a list of expressions rather than one expression: a non-empty array
-- whose entries are all tables or tensors.
local function is_expr_list(expr)
  if type(expr) ~= "table" or minisd.is_tensor(expr) or #expr == 0 then
    return false
  end
  for k, v in pairs(expr) do
    if type(k) ~= "number" or not (type(v) == "table" or minisd.is_tensor(v)) then
      return false
    end
  end
  return true
end

local function encode_rows(exprs, names, level)
  local find = index_of(names)
  local rows = {}
  for i = 1, #exprs do
    rows[i] = row_of(exprs[i], names, find, level + 1)
  end
  return minisd.tensor(rows)
end

--- Encodes expressions into context rows.
-- @param exprs a list of expressions (each any form that `encode` takes)
-- @param names label names (default `context.default_names`), or a model or dataset
-- @return tensor (N, K)
function M.encode_list(exprs, names)
  names = names_arg(names, 2)
  if type(exprs) ~= "table" or minisd.is_tensor(exprs) or #exprs == 0 then
    error("context.encode_list: expected a non-empty list of expressions", 2)
  end
  return encode_rows(exprs, names, 2)
end

--- Encodes one expression into a context row, or a list of tables into rows.
-- A list whose entries are all tables or tensors (`{{"hero"}, {food = 1}}`, a list of weight
-- arrays) gives one row each; for a list of strings use `encode_list` (a list of strings is
-- one expression: a table of names).
-- @param expr an expression (see the module doc), or a list of table expressions
-- @param names label names (default `context.default_names`), or a model or dataset
-- @return tensor (1, K), or (N, K) for a list
function M.encode(expr, names)
  names = names_arg(names, 2)
  if is_expr_list(expr) then
    return encode_rows(expr, names, 2)
  end
  return minisd.tensor({ row_of(expr, names, index_of(names), 2) })
end

local function format_weight(w)
  return string.format("%.6g", w)
end

--- Writes a context row as an expression: non-zero labels in label order, `name` for weight
-- 1 and `name=w` for others, joined by ','; "none" for an all-zero row.
-- @param row tensor (K) or (1, K), (N, K) for several rows, or a Lua array of K numbers
-- @param names label names (default `context.default_names`), or a model or dataset
-- @return a string, or a list of N strings for an (N, K) tensor with N > 1
function M.decode(row, names)
  names = names_arg(names, 2)
  local K = #names
  local rows
  if minisd.is_tensor(row) then
    local shape = row:shape()
    if shape[#shape] ~= K or #shape > 2 then
      error(string.format("context.decode: a tensor of shape [%s] is not (K) or (N, K) with "
        .. "K = %d", table.concat(shape, ","), K), 2)
    end
    rows = row:reshape({ -1, K }):totable()
  elseif type(row) == "table" then
    if #row ~= K then
      error(string.format("context.decode: %d values for %d labels", #row, K), 2)
    end
    rows = { row }
  else
    error("context.decode: expected a tensor or a table, got " .. type(row), 2)
  end
  local out = {}
  for r, values in ipairs(rows) do
    local terms = {}
    for i = 1, K do
      local w = values[i]
      if w ~= 0 then
        terms[#terms + 1] = format_weight(w) == "1" and names[i]
          or names[i] .. "=" .. format_weight(w)
      end
    end
    out[r] = #terms > 0 and table.concat(terms, ",") or "none"
  end
  if #out == 1 then
    return out[1]
  end
  return out
end

return M
