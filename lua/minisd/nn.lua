--- minisd.nn: a small Module system in the spirit of torch.nn.
-- Modules hold parameters, buffers and child modules in registration order;
-- parameter and buffer names are PyTorch's state_dict names for the same
-- structure ("0.weight", "conv1.1.running_mean"), so state dicts and
-- safetensors files move between the two.
--
--     local nn = require("minisd.nn")
--     local Net = nn.Module:extend("Net")
--     function Net:init(n)
--       self.body = nn.Sequential(nn.Linear(4, n), nn.GELU(), nn.Linear(n, 2))
--     end
--     function Net:forward(x) return self.body(x) end
--     local net = Net(16)
--
-- Assigning a module to a field registers it as a child (as in PyTorch);
-- tensors become parameters or buffers through `register_parameter` /
-- `register_buffer`, and are then readable as fields (`conv.weight`).
-- @module minisd.nn

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
  for _, p in ipairs(self:parameters()) do
    local g = p.grad
    if g then
      g:zero_()
    end
  end
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

-- ---- argument handling for the layers ------------------------------------

local REQUIRED = {}

-- A trailing plain table with no array part holds options.
local function is_opts(v)
  return type(v) == "table" and getmetatable(v) == nil and v[1] == nil
end

-- Reads positional arguments named `names` (then a trailing options table
-- that may give any of them, or one of `extra`) into a table, filling
-- `defaults`; REQUIRED marks a mandatory argument.
local function parse_args(layer, names, defaults, extra, ...)
  local n = select("#", ...)
  local args = { ... }
  local opts = {}
  if n > 0 and is_opts(args[n]) then
    opts, n = args[n], n - 1
  end
  if n > #names then
    error(string.format("%s: at most %d positional arguments (%s), got %d", layer, #names,
      table.concat(names, ", "), n), 4)
  end
  local allowed = {}
  for _, k in ipairs(names) do
    allowed[k] = true
  end
  for _, k in ipairs(extra or {}) do
    allowed[k] = true
  end
  for k in pairs(opts) do
    if not allowed[k] then
      local list = sorted_keys(allowed)
      error(string.format("%s: unknown option '%s' (allowed: %s)", layer, tostring(k),
        table.concat(list, ", ")), 4)
    end
  end
  local a = {}
  for i, k in ipairs(names) do
    local v = args[i]
    if i <= n and v ~= nil and opts[k] ~= nil then
      error(string.format("%s: '%s' given both as argument %d and as an option", layer, k, i), 4)
    end
    if v == nil or i > n then
      v = opts[k]
    end
    if v == nil then
      v = defaults[k]
    end
    if v == REQUIRED then
      error(string.format("%s: missing argument '%s'", layer, k), 4)
    end
    a[k] = v
  end
  for _, k in ipairs(extra or {}) do
    a[k] = opts[k]
  end
  return a
end

local function check_int(layer, what, v, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(string.format("%s: %s must be an integer >= %d, got %s", layer, what, min,
      tostring(v)), 4)
  end
  return v
end

local function check_bool(layer, what, v)
  if type(v) ~= "boolean" then
    error(string.format("%s: %s must be a boolean, got %s", layer, what, tostring(v)), 4)
  end
  return v
end

local function check_num(layer, what, v, min)
  if type(v) ~= "number" or v ~= v or v < min then
    error(string.format("%s: %s must be a number >= %g, got %s", layer, what, min,
      tostring(v)), 4)
  end
  return v
end

-- A kernel size: n or {kh, kw}.
local function check_kernel(layer, v)
  if type(v) == "table" then
    if #v ~= 2 then
      error(layer .. ": kernel_size must be a number or {kh, kw}", 4)
    end
    return check_int(layer, "kernel_size", v[1], 1), check_int(layer, "kernel_size", v[2], 1)
  end
  local k = check_int(layer, "kernel_size", v, 1)
  return k, k
end

-- U(-bound, bound), drawn with minisd.rand from gen (the default generator
-- when nil), as torch.nn.init.uniform_.
local function uniform(shape, bound, gen)
  if not minisd.rand then
    error("minisd.nn: minisd.rand is not available in this build", 3)
  end
  return minisd.rand(shape, gen) * (2 * bound) + (-bound)
end

local function pybool(b)
  return b and "True" or "False"
end

local function fmt_num(v)
  return string.format("%g", v)
end

-- ---- layers ----------------------------------------------------------------

--- 2-D convolution: `Conv2d(in_channels, out_channels, kernel_size,
-- stride=1, padding=0, bias=true [, {gen=...}])`. Weight
-- (out, in, kh, kw) and bias (out) start U(-1/sqrt(fan_in), 1/sqrt(fan_in))
-- with fan_in = in*kh*kw, as PyTorch's default init.
local Conv2d = Module:extend("Conv2d")
M.Conv2d = Conv2d

function Conv2d:init(...)
  local a = parse_args("Conv2d", { "in_channels", "out_channels", "kernel_size", "stride",
    "padding", "bias" }, { in_channels = REQUIRED, out_channels = REQUIRED,
    kernel_size = REQUIRED, stride = 1, padding = 0, bias = true }, { "gen" }, ...)
  local cin = check_int("Conv2d", "in_channels", a.in_channels, 1)
  local cout = check_int("Conv2d", "out_channels", a.out_channels, 1)
  local kh, kw = check_kernel("Conv2d", a.kernel_size)
  self.in_channels, self.out_channels, self.kernel_size = cin, cout, { kh, kw }
  self.stride = check_int("Conv2d", "stride", a.stride, 1)
  self.padding = check_int("Conv2d", "padding", a.padding, 0)
  check_bool("Conv2d", "bias", a.bias)
  local bound = 1 / math.sqrt(cin * kh * kw)
  self:register_parameter("weight", uniform({ cout, cin, kh, kw }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ cout }, bound, a.gen))
  end
end

--- @param x tensor (N, in, H, W)
-- @return tensor (N, out, H', W')
function Conv2d:forward(x)
  return minisd.conv2d(x, self.weight, self.bias, self.stride, self.padding)
end

local function conv_repr(self)
  local k = self.kernel_size
  local s = string.format("%d, %d, kernel_size=(%d, %d), stride=(%d, %d)", self.in_channels,
    self.out_channels, k[1], k[2], self.stride, self.stride)
  if self.padding ~= 0 then
    s = s .. string.format(", padding=(%d, %d)", self.padding, self.padding)
  end
  if self.bias == nil then
    s = s .. ", bias=False"
  end
  return s
end
Conv2d.extra_repr = conv_repr

--- Transposed 2-D convolution: `ConvTranspose2d(in_channels, out_channels,
-- kernel_size, stride=1, padding=0, bias=true [, {gen=...}])`. Weight
-- (in, out, kh, kw); PyTorch's init with fan_in = out*kh*kw (weight dim 2).
local ConvTranspose2d = Module:extend("ConvTranspose2d")
M.ConvTranspose2d = ConvTranspose2d

function ConvTranspose2d:init(...)
  local L = "ConvTranspose2d"
  local a = parse_args(L, { "in_channels", "out_channels", "kernel_size", "stride", "padding",
    "bias" }, { in_channels = REQUIRED, out_channels = REQUIRED, kernel_size = REQUIRED,
    stride = 1, padding = 0, bias = true }, { "gen" }, ...)
  local cin = check_int(L, "in_channels", a.in_channels, 1)
  local cout = check_int(L, "out_channels", a.out_channels, 1)
  local kh, kw = check_kernel(L, a.kernel_size)
  self.in_channels, self.out_channels, self.kernel_size = cin, cout, { kh, kw }
  self.stride = check_int(L, "stride", a.stride, 1)
  self.padding = check_int(L, "padding", a.padding, 0)
  check_bool(L, "bias", a.bias)
  local bound = 1 / math.sqrt(cout * kh * kw)
  self:register_parameter("weight", uniform({ cin, cout, kh, kw }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ cout }, bound, a.gen))
  end
end

--- @param x tensor (N, in, H, W)
-- @return tensor (N, out, (H-1)s-2p+kh, (W-1)s-2p+kw)
function ConvTranspose2d:forward(x)
  return minisd.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)
end
ConvTranspose2d.extra_repr = conv_repr

--- Fully connected layer: `Linear(in_features, out_features, bias=true
-- [, {gen=...}])`; weight (out, in), PyTorch's default init.
local Linear = Module:extend("Linear")
M.Linear = Linear

function Linear:init(...)
  local a = parse_args("Linear", { "in_features", "out_features", "bias" },
    { in_features = REQUIRED, out_features = REQUIRED, bias = true }, { "gen" }, ...)
  local fin = check_int("Linear", "in_features", a.in_features, 1)
  local fout = check_int("Linear", "out_features", a.out_features, 1)
  check_bool("Linear", "bias", a.bias)
  self.in_features, self.out_features = fin, fout
  local bound = 1 / math.sqrt(fin)
  self:register_parameter("weight", uniform({ fout, fin }, bound, a.gen))
  if a.bias then
    self:register_parameter("bias", uniform({ fout }, bound, a.gen))
  end
end

--- @param x tensor (..., in)
-- @return tensor (..., out)
function Linear:forward(x)
  return minisd.linear(x, self.weight, self.bias)
end

function Linear:extra_repr()
  return string.format("in_features=%d, out_features=%d, bias=%s", self.in_features,
    self.out_features, pybool(self.bias ~= nil))
end

--- Batch normalisation over (N, H, W): `BatchNorm2d(num_features,
-- eps=1e-5, momentum=0.1, affine=true, track_running_stats=true)`.
-- Training uses batch statistics and updates running_mean / running_var
-- and num_batches_tracked (a 0-dim buffer saved as I64); eval uses the
-- running statistics.
local BatchNorm2d = Module:extend("BatchNorm2d")
M.BatchNorm2d = BatchNorm2d

function BatchNorm2d:init(...)
  local L = "BatchNorm2d"
  local a = parse_args(L, { "num_features", "eps", "momentum", "affine", "track_running_stats" },
    { num_features = REQUIRED, eps = 1e-5, momentum = 0.1, affine = true,
      track_running_stats = true }, nil, ...)
  local c = check_int(L, "num_features", a.num_features, 1)
  self.num_features = c
  self.eps = check_num(L, "eps", a.eps, 0)
  self.momentum = check_num(L, "momentum", a.momentum, 0)
  self.affine = check_bool(L, "affine", a.affine)
  self.track_running_stats = check_bool(L, "track_running_stats", a.track_running_stats)
  if self.affine then
    self:register_parameter("weight", minisd.ones({ c }))
    self:register_parameter("bias", minisd.zeros({ c }))
  end
  if self.track_running_stats then
    self:register_buffer("running_mean", minisd.zeros({ c }))
    self:register_buffer("running_var", minisd.ones({ c }))
    self:register_buffer("num_batches_tracked", minisd.zeros({}), { dtype = "I64" })
  end
end

--- @param x tensor (N, C, H, W)
-- @param gelu (optional) apply GELU to the result in the same op (what
--   Sequential does for a BatchNorm2d followed by a GELU)
-- @return tensor (N, C, H, W)
function BatchNorm2d:forward(x, gelu)
  local track = self.track_running_stats
  if self.training and track then
    local nbt = self.num_batches_tracked
    nbt:fill_(nbt:item() + 1)
  end
  return minisd.batch_norm2d(x, track and self.running_mean or nil,
    track and self.running_var or nil, self.weight, self.bias,
    self.training or not track, self.momentum, self.eps, gelu)
end

function BatchNorm2d:extra_repr()
  return string.format("%d, eps=%s, momentum=%s, affine=%s, track_running_stats=%s",
    self.num_features, fmt_num(self.eps), fmt_num(self.momentum), pybool(self.affine),
    pybool(self.track_running_stats))
end

--- Group normalisation: `GroupNorm(num_groups, num_channels, eps=1e-5,
-- affine=true)`; weight 1, bias 0.
local GroupNorm = Module:extend("GroupNorm")
M.GroupNorm = GroupNorm

function GroupNorm:init(...)
  local L = "GroupNorm"
  local a = parse_args(L, { "num_groups", "num_channels", "eps", "affine" },
    { num_groups = REQUIRED, num_channels = REQUIRED, eps = 1e-5, affine = true }, nil, ...)
  local g = check_int(L, "num_groups", a.num_groups, 1)
  local c = check_int(L, "num_channels", a.num_channels, 1)
  if c % g ~= 0 then
    error(string.format("GroupNorm: num_channels %d is not divisible by num_groups %d", c, g), 3)
  end
  self.num_groups, self.num_channels = g, c
  self.eps = check_num(L, "eps", a.eps, 0)
  self.affine = check_bool(L, "affine", a.affine)
  if self.affine then
    self:register_parameter("weight", minisd.ones({ c }))
    self:register_parameter("bias", minisd.zeros({ c }))
  end
end

--- @param x tensor (N, C, ...)
-- @return tensor of the same shape
function GroupNorm:forward(x)
  return minisd.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
end

function GroupNorm:extra_repr()
  return string.format("%d, %d, eps=%s, affine=%s", self.num_groups, self.num_channels,
    fmt_num(self.eps), pybool(self.affine))
end

--- GELU, exact erf form: `GELU()` (approximate="none" only).
local GELU = Module:extend("GELU")
M.GELU = GELU

function GELU:init(...)
  local a = parse_args("GELU", { "approximate" }, { approximate = "none" }, nil, ...)
  if a.approximate ~= "none" then
    error(string.format("GELU: approximate='%s' is not supported (allowed: none)",
      tostring(a.approximate)), 3)
  end
end

function GELU:forward(x)
  return minisd.gelu(x)
end

function GELU:extra_repr()
  return "approximate='none'"
end

--- ReLU: `ReLU()`. (`inplace` is accepted for PyTorch compatibility; the
-- result is always a new tensor.)
local ReLU = Module:extend("ReLU")
M.ReLU = ReLU

function ReLU:init(...)
  parse_args("ReLU", { "inplace" }, { inplace = false }, nil, ...)
end

function ReLU:forward(x)
  return minisd.relu(x)
end

local function pool_init(L, self, ...)
  local a = parse_args(L, { "kernel_size", "stride", "padding" },
    { kernel_size = REQUIRED, padding = 0 }, nil, ...)
  self.kernel_size = check_int(L, "kernel_size", a.kernel_size, 1)
  self.stride = check_int(L, "stride", a.stride == nil and a.kernel_size or a.stride, 1)
  if a.padding ~= 0 then
    error(L .. ": only padding=0 is supported, got " .. tostring(a.padding), 4)
  end
end

--- Max pooling: `MaxPool2d(kernel_size, stride=kernel_size)`.
local MaxPool2d = Module:extend("MaxPool2d")
M.MaxPool2d = MaxPool2d

function MaxPool2d:init(...)
  pool_init("MaxPool2d", self, ...)
end

function MaxPool2d:forward(x)
  return minisd.max_pool2d(x, self.kernel_size, self.stride)
end

function MaxPool2d:extra_repr()
  return string.format("kernel_size=%d, stride=%d, padding=0, dilation=1, ceil_mode=False",
    self.kernel_size, self.stride)
end

--- Average pooling: `AvgPool2d(kernel_size, stride=kernel_size)`.
local AvgPool2d = Module:extend("AvgPool2d")
M.AvgPool2d = AvgPool2d

function AvgPool2d:init(...)
  pool_init("AvgPool2d", self, ...)
end

function AvgPool2d:forward(x)
  return minisd.avg_pool2d(x, self.kernel_size, self.stride)
end

function AvgPool2d:extra_repr()
  return string.format("kernel_size=%d, stride=%d, padding=0", self.kernel_size, self.stride)
end

--- The identity: returns its input.
local Identity = Module:extend("Identity")
M.Identity = Identity

function Identity:init() end

function Identity:forward(x)
  return x
end

--- Flattens dims start_dim..end_dim into one: `Flatten(start_dim=2,
-- end_dim=-1)`; dims are 1-based (PyTorch's default start_dim=1 is 2 here),
-- negative ones count from the end.
local Flatten = Module:extend("Flatten")
M.Flatten = Flatten

function Flatten:init(...)
  local a = parse_args("Flatten", { "start_dim", "end_dim" }, { start_dim = 2, end_dim = -1 },
    nil, ...)
  self.start_dim, self.end_dim = a.start_dim, a.end_dim
end

function Flatten:forward(x)
  local shape = x:shape()
  local nd = #shape
  local s = self.start_dim < 0 and nd + 1 + self.start_dim or self.start_dim
  local e = self.end_dim < 0 and nd + 1 + self.end_dim or self.end_dim
  if s < 1 or e > nd or s > e then
    error(string.format("Flatten: dims %d..%d out of range for shape %s", self.start_dim,
      self.end_dim, shape_str(x)), 2)
  end
  local out, prod = {}, 1
  for d = 1, nd do
    if d < s or d > e then
      out[#out + 1] = shape[d]
    else
      prod = prod * shape[d]
      if d == e then
        out[#out + 1] = prod
      end
    end
  end
  return x:reshape(out)
end

function Flatten:extra_repr()
  return string.format("start_dim=%d, end_dim=%d", self.start_dim, self.end_dim)
end

--- A chain of modules: `Sequential(m1, m2, ...)` or `Sequential{m1, m2}`.
-- Children are named "0", "1", ... as in PyTorch; `seq[i]` and `seq:get(i)`
-- give the i-th (1-based) module.
local Sequential = Module:extend("Sequential")
M.Sequential = Sequential

function Sequential:init(...)
  local n, mods = select("#", ...), { ... }
  if n == 1 and type(mods[1]) == "table" and not is_module(mods[1]) then
    mods = mods[1]
    n = #mods
  end
  for i = 1, n do
    if not is_module(mods[i]) then
      error(string.format("Sequential: argument %d is a %s, expected a Module", i,
        type(mods[i])), 3)
    end
    self:append(mods[i])
  end
end

--- Appends a module (named by its 0-based position).
-- @param m Module
-- @return self
function Sequential:append(m)
  self:add_module(tostring(#rawget(self, "_modules").keys), m)
  return self
end

--- The i-th module (1-based).
-- @param i index
-- @return Module or nil
function Sequential:get(i)
  local mods = rawget(self, "_modules")
  local name = mods.keys[i]
  return name and mods.map[name]
end

--- Number of modules.
-- @return integer
function Sequential:len()
  return #rawget(self, "_modules").keys
end
Sequential.__len = Sequential.len

--- Runs the modules in order.
-- @param x input
-- @return the last module's output
function Sequential:forward(x)
  local mods = rawget(self, "_modules")
  local keys, map = mods.keys, mods.map
  local fuse = not minisd.is_grad_enabled()
  local i = 1
  while i <= #keys do
    local m = map[keys[i]]
    local bn = fuse and map[keys[i + 1]]
    -- Conv2d, BatchNorm2d in eval [, GELU] under no_grad: one fused pass, same bits
    if bn and getmetatable(m) == Conv2d and getmetatable(bn) == BatchNorm2d
      and not bn.training and bn.track_running_stats then
      local gelu = getmetatable(map[keys[i + 2]]) == M.GELU
      x = minisd.conv2d_bn_act(x, m.weight, m.bias, m.stride, m.padding, bn.weight, bn.bias,
        bn.running_mean, bn.running_var, bn.eps, gelu)
      i = i + (gelu and 3 or 2)
    elseif getmetatable(m) == BatchNorm2d and getmetatable(map[keys[i + 1]]) == M.GELU then
      -- BatchNorm2d, GELU (training): one op, the same bits, no BatchNorm output kept
      x = m:forward(x, true)
      i = i + 2
    else
      x = m(x)
      i = i + 1
    end
  end
  return x
end

--- A list of modules registered as children "0", "1", ... (no forward).
local ModuleList = Module:extend("ModuleList")
M.ModuleList = ModuleList

function ModuleList:init(list)
  for i, m in ipairs(list or {}) do
    if not is_module(m) then
      error(string.format("ModuleList: entry %d is a %s, expected a Module", i, type(m)), 3)
    end
    self:append(m)
  end
end

ModuleList.append = Sequential.append
ModuleList.get = Sequential.get
ModuleList.len = Sequential.len
ModuleList.__len = Sequential.len

return M
