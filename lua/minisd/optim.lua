--- minisd.optim: Adam, AdamW, SGD and an EMA of weights, as torch.optim.
-- The per-element maths runs in C kernels (minisd.adam_step, sgd_step,
-- ema_update) on tensors updated in place; the state (moments, momentum
-- buffers, step counts) lives in tensors held here, indexed by the
-- parameter's position in the list given to the constructor.
--
--     local opt = optim.Adam(net:parameters(), { lr = 1e-3 })
--     opt:zero_grad(); loss:backward(); opt:step()
--
-- `state_dict()` returns a flat table of numbers and tensors (copies):
-- the hyperparameters under their names, and per parameter i
-- "state.<i>.<field>" ("step", "exp_avg", "exp_avg_sq" for Adam,
-- "momentum_buffer" for SGD); `load_state_dict` restores it so that a
-- resumed run produces the same numbers as an uninterrupted one.
-- @module minisd.optim

local minisd = require("minisd")
local util = require("minisd.util")

local M = {}

local sorted_keys = util.sorted_keys

-- The parameter list: an array of tensors, or a module's parameters().
local function read_params(name, params)
  if type(params) == "table" and type(params.parameters) == "function" then
    params = params:parameters()
  end
  if type(params) ~= "table" then
    error(string.format("%s: params must be a list of tensors, got %s", name, type(params)), 3)
  end
  if #params == 0 then
    error(name .. ": got an empty parameter list", 3)
  end
  local list = {}
  for i = 1, #params do
    if not minisd.is_tensor(params[i]) then
      error(string.format("%s: params[%d] is a %s, expected a tensor", name, i,
        type(params[i])), 3)
    end
    list[i] = params[i]
  end
  return list
end

local function check_number(name, what, v, ok, rule)
  if type(v) ~= "number" or not ok(v) then
    error(string.format("%s: invalid %s %s (%s)", name, what, tostring(v), rule), 3)
  end
end

local function nonneg(v)
  return v >= 0
end

-- ---- shared optimizer methods --------------------------------------------

local Optimizer = {}
Optimizer.__index = Optimizer

--- Zeros every existing `.grad` of the parameters, in place.
function Optimizer:zero_grad()
  require("minisd.util").zero_grads(self.params)
end

--- The learning rate (also the field `.lr`).
-- @return number
function Optimizer:get_lr()
  return self.lr
end

--- Sets the learning rate used by the next steps (same as `opt.lr = v`).
-- @param v number >= 0
function Optimizer:set_lr(v)
  check_number(self.name, "learning rate", v, nonneg, "must be >= 0")
  self.lr = v
end

function Optimizer:__tostring()
  local parts = {}
  for _, k in ipairs(self._hyper) do
    local v = self[k]
    if type(v) == "table" then
      v = "(" .. table.concat(v, ", ") .. ")"
    end
    parts[#parts + 1] = k .. "=" .. tostring(v)
  end
  return string.format("%s(%d params, %s)", self.name, #self.params, table.concat(parts, ", "))
end

-- Runs the optional closure (re-evaluating the loss) with grad enabled.
local function run_closure(closure)
  if closure == nil then
    return nil
  end
  local prev = minisd.set_grad_enabled(true)
  local ok, loss = pcall(closure)
  minisd.set_grad_enabled(prev)
  if not ok then
    error(loss, 0)
  end
  return loss
end

-- Flat state dict: hyperparameters (numbers) and per-parameter state
-- fields (numbers as numbers, tensors cloned).
local function flat_state(self, hyper)
  local t = {}
  for k, v in pairs(hyper) do
    t[k] = v
  end
  for i, st in pairs(self.state) do
    for _, f in ipairs(self._fields) do
      local v = st[f]
      if v ~= nil then
        t["state." .. i .. "." .. f] = minisd.is_tensor(v) and v:clone() or v
      end
    end
  end
  return t
end

-- Reads back a flat state dict: every hyperparameter in `hyper_names`
-- must be present, state keys must name a parameter index and a field,
-- tensors must have the parameter's shape. All problems in one error.
local function read_flat_state(self, t, hyper_names)
  if type(t) ~= "table" then
    error(self.name .. ": load_state_dict expects a table, got " .. type(t), 3)
  end
  local problems, state, known = {}, {}, {}
  for _, k in ipairs(hyper_names) do
    known[k] = true
    if t[k] == nil then
      problems[#problems + 1] = "missing '" .. k .. "'"
    elseif type(t[k]) ~= "number" and type(t[k]) ~= "boolean" then
      problems[#problems + 1] = "'" .. k .. "' must be a number, got " .. type(t[k])
    end
  end
  local fields = {}
  for _, f in ipairs(self._fields) do
    fields[f] = true
  end
  for _, k in ipairs(sorted_keys(t)) do
    if not known[k] then
      local i, f = k:match("^state%.(%d+)%.([%w_]+)$")
      i = tonumber(i)
      local v = t[k]
      if not i or not fields[f] or not self.params[i] then
        problems[#problems + 1] = "unexpected '" .. k .. "'"
      elseif f == "step" then
        if type(v) ~= "number" or v < 0 or v ~= math.floor(v) then
          problems[#problems + 1] = "'" .. k .. "' must be a count, got " .. tostring(v)
        end
      elseif not minisd.is_tensor(v) then
        problems[#problems + 1] = "'" .. k .. "' must be a tensor, got " .. type(v)
      elseif table.concat(v:shape(), ",") ~= table.concat(self.params[i]:shape(), ",") then
        problems[#problems + 1] = string.format("'%s' has shape [%s], the parameter [%s]", k,
          table.concat(v:shape(), ","), table.concat(self.params[i]:shape(), ","))
      end
      if i and self.params[i] and fields[f] then
        state[i] = state[i] or {}
        state[i][f] = minisd.is_tensor(v) and v:clone() or v
      end
    end
  end
  if #problems > 0 then
    error(self.name .. ": load_state_dict: " .. table.concat(problems, "; "), 3)
  end
  return state
end

-- ---- Adam / AdamW ---------------------------------------------------------

local Adam = setmetatable({}, { __index = Optimizer })
Adam.__index = Adam
Adam.__tostring = Optimizer.__tostring

local function new_adam(name, params, opts, decoupled, default_wd)
  local o = util.options(name, opts, { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8,
    weight_decay = default_wd }, 3)
  check_number(name, "learning rate", o.lr, nonneg, "must be >= 0")
  check_number(name, "eps", o.eps, nonneg, "must be >= 0")
  check_number(name, "weight_decay", o.weight_decay, nonneg, "must be >= 0")
  local b = o.betas
  local function beta_ok(v)
    return type(v) == "number" and v >= 0 and v < 1
  end
  if type(b) ~= "table" or #b ~= 2 or not beta_ok(b[1]) or not beta_ok(b[2]) then
    error(string.format("%s: invalid betas (expected {beta1, beta2}, each in [0, 1))", name), 3)
  end
  return setmetatable({
    name = name, params = read_params(name, params), lr = o.lr, betas = { b[1], b[2] },
    eps = o.eps, weight_decay = o.weight_decay, decoupled = decoupled, state = {},
    _fields = { "step", "exp_avg", "exp_avg_sq" },
    _hyper = { "lr", "betas", "eps", "weight_decay" },
  }, Adam)
end

--- Adam (torch.optim.Adam: bias correction, weight_decay added to the
-- gradient).
-- @param params list of tensors (or a module)
-- @param opts {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=0}
-- @return optimizer
function M.Adam(params, opts)
  return new_adam("Adam", params, opts, false, 0)
end

--- AdamW (torch.optim.AdamW: decoupled weight decay p *= 1 - lr wd).
-- @param params list of tensors (or a module)
-- @param opts {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=1e-2}
-- @return optimizer
function M.AdamW(params, opts)
  return new_adam("AdamW", params, opts, true, 1e-2)
end

--- One update of every parameter that has a gradient.
-- @param closure optional function re-evaluating the loss
-- @return the closure's result, if any
function Adam:step(closure)
  local loss = run_closure(closure)
  local b1, b2 = self.betas[1], self.betas[2]
  for i, p in ipairs(self.params) do
    local g = p.grad
    if g then
      local st = self.state[i]
      if not st then
        local shape = p:shape()
        st = { step = 0, exp_avg = minisd.zeros(shape), exp_avg_sq = minisd.zeros(shape) }
        self.state[i] = st
      end
      minisd.adam_step(p, g, st.exp_avg, st.exp_avg_sq, st.step + 1, self.lr, b1, b2, self.eps,
        self.weight_decay, self.decoupled)
      st.step = st.step + 1
    end
  end
  return loss
end

--- The optimizer state: a flat table of numbers and tensor copies
-- (lr, beta1, beta2, eps, weight_decay, state.<i>.step / exp_avg / exp_avg_sq).
-- @return table
function Adam:state_dict()
  return flat_state(self, { lr = self.lr, beta1 = self.betas[1], beta2 = self.betas[2],
    eps = self.eps, weight_decay = self.weight_decay })
end

--- Restores a table from `state_dict` (hyperparameters included).
-- @param t table
function Adam:load_state_dict(t)
  local state = read_flat_state(self, t, { "lr", "beta1", "beta2", "eps", "weight_decay" })
  for i, st in pairs(state) do
    if st.step == nil or st.exp_avg == nil or st.exp_avg_sq == nil then
      error(string.format("%s: load_state_dict: state of parameter %d is incomplete (needs "
        .. "step, exp_avg, exp_avg_sq)", self.name, i), 2)
    end
  end
  self.lr, self.betas, self.eps, self.weight_decay = t.lr, { t.beta1, t.beta2 }, t.eps,
    t.weight_decay
  self.state = state
end

-- ---- SGD ------------------------------------------------------------------

local SGD = setmetatable({}, { __index = Optimizer })
SGD.__index = SGD
SGD.__tostring = Optimizer.__tostring

--- SGD with momentum, dampening, Nesterov momentum and weight decay, as
-- torch.optim.SGD (the momentum buffer starts as the first gradient).
-- @param params list of tensors (or a module)
-- @param opts {lr=(required), momentum=0, dampening=0, weight_decay=0, nesterov=false}
-- @return optimizer
function M.SGD(params, opts)
  local o = util.options("SGD", opts, { lr = false, momentum = 0, dampening = 0,
    weight_decay = 0, nesterov = false })
  if o.lr == false then
    error("SGD: the learning rate option 'lr' is required", 2)
  end
  check_number("SGD", "learning rate", o.lr, nonneg, "must be >= 0")
  check_number("SGD", "momentum", o.momentum, nonneg, "must be >= 0")
  check_number("SGD", "dampening", o.dampening, function()
    return true
  end, "must be a number")
  check_number("SGD", "weight_decay", o.weight_decay, nonneg, "must be >= 0")
  if type(o.nesterov) ~= "boolean" then
    error("SGD: nesterov must be a boolean, got " .. type(o.nesterov), 2)
  end
  if o.nesterov and (o.momentum <= 0 or o.dampening ~= 0) then
    error("SGD: nesterov momentum requires a momentum and zero dampening", 2)
  end
  return setmetatable({
    name = "SGD", params = read_params("SGD", params), lr = o.lr, momentum = o.momentum,
    dampening = o.dampening, weight_decay = o.weight_decay, nesterov = o.nesterov, state = {},
    _fields = { "momentum_buffer" },
    _hyper = { "lr", "momentum", "dampening", "weight_decay", "nesterov" },
  }, SGD)
end

--- One update of every parameter that has a gradient.
-- @param closure optional function re-evaluating the loss
-- @return the closure's result, if any
function SGD:step(closure)
  local loss = run_closure(closure)
  local use_buf = self.momentum ~= 0
  for i, p in ipairs(self.params) do
    local g = p.grad
    if g then
      local buf, first = nil, false
      if use_buf then
        local st = self.state[i]
        if not st or not st.momentum_buffer then
          st = { momentum_buffer = minisd.zeros(p:shape()) }
          self.state[i] = st
          first = true
        end
        buf = st.momentum_buffer
      end
      minisd.sgd_step(p, g, buf, first, self.lr, self.momentum, self.dampening,
        self.weight_decay, self.nesterov)
    end
  end
  return loss
end

--- The optimizer state: lr, momentum, dampening, weight_decay, nesterov
-- (1 or 0) and state.<i>.momentum_buffer (copies).
-- @return table
function SGD:state_dict()
  return flat_state(self, { lr = self.lr, momentum = self.momentum, dampening = self.dampening,
    weight_decay = self.weight_decay, nesterov = self.nesterov and 1 or 0 })
end

--- Restores a table from `state_dict` (hyperparameters included).
-- @param t table
function SGD:load_state_dict(t)
  local state = read_flat_state(self, t, { "lr", "momentum", "dampening", "weight_decay",
    "nesterov" })
  self.lr, self.momentum, self.dampening, self.weight_decay = t.lr, t.momentum, t.dampening,
    t.weight_decay
  self.nesterov = t.nesterov == true or t.nesterov == 1
  self.state = state
end

-- ---- EMA of weights ----------------------------------------------------------

local EMA = {}
EMA.__index = EMA

--- Exponential moving average of parameters: a shadow copy updated by
-- `:update()` as shadow = decay shadow + (1 - decay) param.
-- @param params list of tensors (or a module)
-- @param opts {decay=0.999}
-- @return EMA object with fields decay, shadow (list of tensors), num_updates
function M.EMA(params, opts)
  local o = util.options("EMA", opts, { decay = 0.999 })
  check_number("EMA", "decay", o.decay, function(v)
    return v >= 0 and v <= 1
  end, "must be in [0, 1]")
  local list = read_params("EMA", params)
  local shadow = {}
  for i, p in ipairs(list) do
    shadow[i] = p:clone()
  end
  return setmetatable({ name = "EMA", params = list, decay = o.decay, shadow = shadow,
    num_updates = 0 }, EMA)
end

--- Moves the shadow weights towards the current parameters.
function EMA:update()
  for i, p in ipairs(self.params) do
    minisd.ema_update(self.shadow[i], p, self.decay)
  end
  self.num_updates = self.num_updates + 1
end

--- Copies the shadow weights into params (default: the tracked ones).
-- @param params optional list of tensors (or a module) of the same shapes
function EMA:copy_to(params)
  local list = params and read_params("EMA:copy_to", params) or self.params
  if #list ~= #self.shadow then
    error(string.format("EMA:copy_to: %d tensors given, %d tracked", #list, #self.shadow), 2)
  end
  for i, p in ipairs(list) do
    if table.concat(p:shape(), ",") ~= table.concat(self.shadow[i]:shape(), ",") then
      error(string.format("EMA:copy_to: tensor %d has shape [%s], the average [%s]", i,
        table.concat(p:shape(), ","), table.concat(self.shadow[i]:shape(), ",")), 2)
    end
  end
  for i, p in ipairs(list) do
    p:copy_(self.shadow[i])
  end
end

--- The state: decay, num_updates and shadow.<i> (copies).
-- @return table
function EMA:state_dict()
  local t = { decay = self.decay, num_updates = self.num_updates }
  for i, s in ipairs(self.shadow) do
    t["shadow." .. i] = s:clone()
  end
  return t
end

--- Restores a table from `state_dict`.
-- @param t table
function EMA:load_state_dict(t)
  if type(t) ~= "table" then
    error("EMA: load_state_dict expects a table, got " .. type(t), 2)
  end
  local problems, shadow = {}, {}
  for _, k in ipairs(sorted_keys(t)) do
    local i = tonumber(k:match("^shadow%.(%d+)$"))
    if k ~= "decay" and k ~= "num_updates" and not (i and self.params[i]) then
      problems[#problems + 1] = "unexpected '" .. k .. "'"
    end
  end
  if type(t.decay) ~= "number" then
    problems[#problems + 1] = "missing 'decay'"
  end
  for i, p in ipairs(self.params) do
    local s = t["shadow." .. i]
    if not minisd.is_tensor(s) then
      problems[#problems + 1] = "missing 'shadow." .. i .. "'"
    elseif table.concat(s:shape(), ",") ~= table.concat(p:shape(), ",") then
      problems[#problems + 1] = string.format("'shadow.%d' has shape [%s], the parameter [%s]",
        i, table.concat(s:shape(), ","), table.concat(p:shape(), ","))
    else
      shadow[i] = s:clone()
    end
  end
  if #problems > 0 then
    error("EMA: load_state_dict: " .. table.concat(problems, "; "), 2)
  end
  self.decay, self.num_updates, self.shadow = t.decay, t.num_updates or 0, shadow
end

function EMA:__tostring()
  return string.format("EMA(%d params, decay=%s)", #self.params, tostring(self.decay))
end

return M
