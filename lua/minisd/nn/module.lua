--- minisd internal (minisd.nn): the Module class (parameters, buffers, children in
-- registration order, state dicts, files, train/eval). Use it as minisd.nn.Module.
-- @module minisd.nn.module

-- luacheck: ignore 212/self
local minisd = require("minisd")

local M = {}

local is_tensor = minisd.is_tensor

-- ---- ordered dictionaries (names in insertion order) --------------------

local function odict()
  return { keys = {}, map = {} }
end

local function oset(d, k, v)
  if v == nil then
    if d.map[k] ~= nil then
      d.map[k] = nil
      for i, name in ipairs(d.keys) do
        if name == k then
          table.remove(d.keys, i)
          break
        end
      end
    end
    return
  end
  if d.map[k] == nil then
    d.keys[#d.keys + 1] = k
  end
  d.map[k] = v
end

local function shape_str(t)
  return "[" .. table.concat(t:shape(), ",") .. "]"
end

local function same_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then
    return false
  end
  for i = 1, #sa do
    if sa[i] ~= sb[i] then
      return false
    end
  end
  return true
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do
    ks[#ks + 1] = k
  end
  table.sort(ks)
  return ks
end

-- ---- the Module class ----------------------------------------------------

--- Base class of all layers and models.
-- @type Module
local Module = {}
M.Module = Module

--- Whether v is a Module instance.
-- @param v any value
-- @return boolean
local function is_module(v)
  return type(v) == "table" and rawget(v, "_modules") ~= nil
end
M.is_module = is_module

-- Instance field lookup: class members first (methods), then parameters,
-- buffers and child modules by name; a number i gives the i-th child.
local function make_index(cls)
  return function(self, k)
    local v = cls[k]
    if v ~= nil then
      return v
    end
    local mods = rawget(self, "_modules")
    if not mods then
      return nil
    end
    if type(k) == "number" then
      local name = mods.keys[k]
      return name and mods.map[name]
    end
    v = rawget(self, "_parameters").map[k]
    if v ~= nil then
      return v
    end
    v = rawget(self, "_buffers").map[k]
    if v ~= nil then
      return v
    end
    return mods.map[k]
  end
end

-- Field assignment: a module becomes a child; assigning to the name of a
-- parameter, buffer or child replaces it (nil removes it).
local function newindex(self, k, v)
  if is_module(v) then
    self:add_module(k, v)
    return
  end
  if rawget(self, "_parameters").map[k] ~= nil then
    self:register_parameter(k, v)
  elseif rawget(self, "_buffers").map[k] ~= nil then
    if v ~= nil and not is_tensor(v) then
      error(string.format("cannot assign a %s to buffer '%s' (tensor or nil expected)",
        type(v), tostring(k)), 2)
    end
    self:register_buffer(k, v)
  elseif rawget(self, "_modules").map[k] ~= nil then
    if v ~= nil then
      error(string.format("cannot assign a %s to child module '%s' (module or nil expected)",
        type(v), tostring(k)), 2)
    end
    oset(rawget(self, "_modules"), k, nil)
  else
    rawset(self, k, v)
  end
end

local function construct(cls, ...)
  local self = setmetatable({}, cls)
  rawset(self, "_parameters", odict())
  rawset(self, "_buffers", odict())
  rawset(self, "_modules", odict())
  rawset(self, "_buffer_meta", {})
  rawset(self, "training", true)
  cls.init(self, ...)
  return self
end

--- Makes a subclass: `local Net = nn.Module:extend("Net")`, then define
-- `Net:init(...)` and `Net:forward(...)`; create instances with `Net(...)`
-- or `Net.new(...)`. `Net.super` is the parent class.
-- @param name class name, used by tostring
-- @return the new class
function Module:extend(name)
  if type(name) ~= "string" or name == "" then
    error("extend: expected a class name (string), got " .. type(name), 2)
  end
  local cls = {}
  for k, v in pairs(self) do
    if type(k) == "string" and k:sub(1, 2) == "__" and k ~= "__index" then
      cls[k] = v
    end
  end
  cls.__name = name
  cls.__index = make_index(cls)
  cls.super = self
  cls.new = function(...)
    return construct(cls, ...)
  end
  return setmetatable(cls, {
    __index = self,
    __call = construct,
    __tostring = function()
      return "class " .. name
    end,
  })
end

--- Called with the constructor's arguments on a new instance.
function Module:init() end

--- The computation; subclasses override it. `module(...)` calls it.
function Module:forward()
  error(self.__name .. ": forward is not implemented", 2)
end

local function check_name(what, name)
  if type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    error(string.format("%s: name must be a non-empty string without '.', got %s", what,
      type(name) == "string" and string.format("%q", name) or type(name)), 3)
  end
end

local function check_free(self, what, name, own)
  local taken = rawget(self, name) ~= nil and "attribute"
    or (own ~= "_parameters" and rawget(self, "_parameters").map[name] ~= nil and "parameter")
    or (own ~= "_buffers" and rawget(self, "_buffers").map[name] ~= nil and "buffer")
    or (own ~= "_modules" and rawget(self, "_modules").map[name] ~= nil and "child module")
  if taken then
    error(string.format("%s: '%s' is already a %s of this %s", what, name, taken, self.__name), 3)
  end
end

--- Registers (or replaces, or with nil removes) a parameter. The tensor
-- is marked requires_grad and is returned.
-- @param name parameter name (no '.')
-- @param t a leaf tensor, or nil
-- @return t
function Module:register_parameter(name, t)
  check_name("register_parameter", name)
  check_free(self, "register_parameter", name, "_parameters")
  if t ~= nil then
    if not is_tensor(t) then
      error(string.format("register_parameter: '%s' must be a tensor, got %s", name, type(t)), 2)
    end
    if not t.is_leaf then
      error(string.format("register_parameter: '%s' is the result of an op; parameters must "
        .. "be leaf tensors (use :detach() or :clone())", name), 2)
    end
    t.requires_grad = true
  end
  oset(rawget(self, "_parameters"), name, t)
  return t
end

--- Registers a buffer: state saved in the state_dict but not trained.
-- @param name buffer name (no '.')
-- @param t tensor, or nil to remove
-- @param opts optional: `dtype` (safetensors dtype when saved, e.g. "I64"),
--   `persistent` (default true; false keeps it out of the state_dict)
-- @return t
function Module:register_buffer(name, t, opts)
  check_name("register_buffer", name)
  check_free(self, "register_buffer", name, "_buffers")
  if t ~= nil and not is_tensor(t) then
    error(string.format("register_buffer: '%s' must be a tensor, got %s", name, type(t)), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "dtype" and k ~= "persistent" then
      error(string.format("register_buffer: unknown option '%s' (allowed: dtype, persistent)",
        tostring(k)), 2)
    end
  end
  oset(rawget(self, "_buffers"), name, t)
  rawget(self, "_buffer_meta")[name] = t ~= nil
      and { dtype = opts.dtype, persistent = opts.persistent ~= false }
    or nil
  return t
end

--- Registers (or replaces, or with nil removes) a child module.
-- @param name child name (no '.')
-- @param m a Module, or nil
-- @return m
function Module:add_module(name, m)
  if type(name) == "number" then
    name = tostring(name)
  end
  check_name("add_module", name)
  check_free(self, "add_module", name, "_modules")
  if m ~= nil and not is_module(m) then
    error(string.format("add_module: '%s' must be a Module, got %s", name, type(m)), 2)
  end
  oset(rawget(self, "_modules"), name, m)
  return m
end

-- Calls fn(prefix, module) for self and every descendant, parents first,
-- children in registration order; each module once.
local function walk(m, prefix, fn, seen)
  if seen then
    if seen[m] then
      return
    end
    seen[m] = true
  end
  fn(prefix, m)
  local mods = rawget(m, "_modules")
  for _, name in ipairs(mods.keys) do
    walk(mods.map[name], prefix == "" and name or prefix .. "." .. name, fn, seen)
  end
end

local function join(prefix, name)
  return prefix == "" and name or prefix .. "." .. name
end

--- All modules, self included under the name "".
-- @return table name -> module, and the names in order
function Module:named_modules()
  local map, names = {}, {}
  walk(self, "", function(prefix, m)
    map[prefix] = m
    names[#names + 1] = prefix
  end, {})
  return map, names
end

--- The direct children in order.
-- @return array of modules
function Module:children()
  local mods, out = rawget(self, "_modules"), {}
  for i, name in ipairs(mods.keys) do
    out[i] = mods.map[name]
  end
  return out
end

--- The direct children by name.
-- @return table name -> module, and the names in order
function Module:named_children()
  local mods, map, names = rawget(self, "_modules"), {}, {}
  for i, name in ipairs(mods.keys) do
    map[name], names[i] = mods.map[name], name
  end
  return map, names
end

local function named_members(self, field)
  local map, names, seen = {}, {}, {}
  walk(self, "", function(prefix, m)
    local d = rawget(m, field)
    for _, name in ipairs(d.keys) do
      local t = d.map[name]
      if not seen[t] then
        seen[t] = true
        local full = join(prefix, name)
        map[full] = t
        names[#names + 1] = full
      end
    end
  end, {})
  return map, names
end

--- Parameters by PyTorch name: the tensors themselves (so `.grad` is
-- reachable). A tensor shared by two modules appears once.
-- @return table name -> tensor, and the names in order
function Module:named_parameters()
  return named_members(self, "_parameters")
end

--- Buffers by PyTorch name (running stats...).
-- @return table name -> tensor, and the names in order
function Module:named_buffers()
  return named_members(self, "_buffers")
end

--- All parameters in registration order (depth first), each once.
-- @return array of tensors
function Module:parameters()
  local map, names = self:named_parameters()
  local out = {}
  for i, name in ipairs(names) do
    out[i] = map[name]
  end
  return out
end

--- Number of scalar parameters.
-- @return integer
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do
    n = n + p:numel()
  end
  return n
end

--- Parameters and persistent buffers by PyTorch name, in PyTorch's order
-- (each module's parameters, then its buffers, then its children). The
-- values are the module's own tensors, not copies.
-- @return table name -> tensor, and the names in order
function Module:state_dict()
  local map, names = {}, {}
  walk(self, "", function(prefix, m)
    local p = rawget(m, "_parameters")
    for _, name in ipairs(p.keys) do
      local full = join(prefix, name)
      map[full], names[#names + 1] = p.map[name], full
    end
    local b, meta = rawget(m, "_buffers"), rawget(m, "_buffer_meta")
    for _, name in ipairs(b.keys) do
      if meta[name].persistent then
        local full = join(prefix, name)
        map[full], names[#names + 1] = b.map[name], full
      end
    end
  end)
  return map, names
end

--- Copies tensors into the parameters and buffers, in place (optimizers
-- keep their references). Mis-shaped entries are always an error; with
-- strict (the default) missing and unexpected names are too. All problems
-- are reported in one error.
-- @param sd table name -> tensor
-- @param strict boolean, default true
-- @return table with missing_keys and unexpected_keys (arrays)
function Module:load_state_dict(sd, strict)
  if type(sd) ~= "table" then
    error("load_state_dict: expected a table name -> tensor, got " .. type(sd), 2)
  end
  if strict == nil then
    strict = true
  end
  local own, names = self:state_dict()
  local missing, unexpected, bad = {}, {}, {}
  for _, k in ipairs(names) do
    local v = sd[k]
    if v == nil then
      missing[#missing + 1] = k
    elseif not is_tensor(v) then
      bad[#bad + 1] = string.format("%s (a %s, expected a tensor)", k, type(v))
    elseif not same_shape(v, own[k]) then
      bad[#bad + 1] = string.format("%s (shape %s in the model, %s given)", k,
        shape_str(own[k]), shape_str(v))
    end
  end
  for _, k in ipairs(sorted_keys(sd)) do
    if own[k] == nil then
      unexpected[#unexpected + 1] = tostring(k)
    end
  end
  local problems = {}
  if strict and #missing > 0 then
    problems[#problems + 1] = "missing keys: " .. table.concat(missing, ", ")
  end
  if strict and #unexpected > 0 then
    problems[#problems + 1] = "unexpected keys: " .. table.concat(unexpected, ", ")
  end
  if #bad > 0 then
    problems[#problems + 1] = "mis-shaped keys: " .. table.concat(bad, ", ")
  end
  if #problems > 0 then
    error(string.format("load_state_dict: %s: %s", self.__name, table.concat(problems, "; ")), 2)
  end
  for _, k in ipairs(names) do
    if sd[k] ~= nil then
      own[k]:copy_(sd[k])
    end
  end
  return { missing_keys = missing, unexpected_keys = unexpected }
end

local SAVE_DTYPES = { F32 = true, F16 = true, BF16 = true }

--- The state_dict entries that a file stores in another dtype than float32: buffers
-- registered with a dtype (BatchNorm's num_batches_tracked: "I64"), by state_dict name.
-- Checkpoints and `save` ask this rather than guess from names.
-- @return table name -> dtype (e.g. "I64")
function Module:state_dtypes()
  local dtypes = {}
  walk(self, "", function(prefix, m)
    for name, meta in pairs(rawget(m, "_buffer_meta")) do
      if meta.dtype and meta.persistent then
        dtypes[join(prefix, name)] = meta.dtype
      end
    end
  end)
  return dtypes
end

--- Saves the state_dict as a safetensors file (buffers registered with a
-- dtype, such as BatchNorm's num_batches_tracked, keep it: I64).
-- @param path file name
-- @param metadata optional table of string -> string, stored in __metadata__
-- @param opts optional {dtype = "F32" (default), "F16" or "BF16"}: how the float tensors
--   are stored (half the size in F16 or BF16, rounded to nearest even; loading gives
--   float32 back)
-- @return true, or nil and a message when the file cannot be written
function Module:save(path, metadata, opts)
  if type(path) ~= "string" then
    error("save: expected a file name, got " .. type(path), 2)
  end
  opts = require("minisd.util").check_options("save", opts, { "dtype" })
  local dtype = opts.dtype or "F32"
  if not SAVE_DTYPES[dtype] then
    error("save: dtype must be \"F32\", \"F16\" or \"BF16\", got " .. tostring(dtype), 2)
  end
  if metadata ~= nil then
    if type(metadata) ~= "table" then
      error("save: metadata must be a table of strings, got " .. type(metadata), 2)
    end
    for k, v in pairs(metadata) do
      if type(k) ~= "string" or type(v) ~= "string" then
        error(string.format("save: metadata entries must be string -> string, got %s -> %s",
          type(k), type(v)), 2)
      end
    end
  end
  local sd = self:state_dict()
  local ok, res, err = pcall(minisd.save_safetensors, path, sd, metadata or {},
    { dtypes = self:state_dtypes(), dtype = dtype })
  if not ok or not res then
    return nil, tostring(ok and err or res)
  end
  return true
end

--- Loads a safetensors file written by `save` (or by PyTorch) into the
-- module, strictly by default (a mismatch with the module is an error).
-- @param path file name
-- @param strict boolean, default true
-- @return the file's metadata table, or nil and a message if the file
--   cannot be read or parsed
function Module:load(path, strict)
  if type(path) ~= "string" then
    error("load: expected a file name, got " .. type(path), 2)
  end
  local okr, tensors, meta = pcall(minisd.load_safetensors, path)
  if not okr or not tensors then
    return nil, tostring(okr and meta or tensors)
  end
  local ok, err = pcall(self.load_state_dict, self, tensors, strict)
  if not ok then
    error("load " .. path .. ": " .. tostring(err), 2)
  end
  return meta or {}
end

--- Sets training mode (default true) on the module and all descendants.
-- @param mode boolean
-- @return self
function Module:train(mode)
  if mode == nil then
    mode = true
  end
  walk(self, "", function(_, m)
    rawset(m, "training", mode and true or false)
  end)
  return self
end

--- Evaluation mode: `train(false)`.
-- @return self
function Module:eval()
  return self:train(false)
end

--- Zeros every existing `.grad` of the parameters, in place.
function Module:zero_grad()
  require("minisd.util").zero_grads(self:parameters())
end

--- The part of tostring between the parentheses; layers override it.
-- @return string
function Module:extra_repr()
  return ""
end

Module.__name = "Module"
Module.__index = make_index(Module)
Module.__newindex = newindex
Module.__call = function(self, ...)
  return self:forward(...)
end
Module.__tostring = function(self)
  local lines = {}
  local extra = self:extra_repr()
  if extra ~= "" then
    lines[1] = extra
  end
  local mods = rawget(self, "_modules")
  for _, name in ipairs(mods.keys) do
    local s = tostring(mods.map[name]):gsub("\n", "\n  ")
    lines[#lines + 1] = "(" .. name .. "): " .. s
  end
  if #mods.keys == 0 then
    return self.__name .. "(" .. extra .. ")"
  end
  return self.__name .. "(\n  " .. table.concat(lines, "\n  ") .. "\n)"
end
Module.new = function(...)
  return construct(Module, ...)
end
setmetatable(Module, { __call = construct })

M.shape_str = shape_str

return M
