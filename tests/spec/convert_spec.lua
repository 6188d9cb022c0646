-- scripts/convert_pth.py: course checkpoints of the seed's ContextUnet (made
-- here by tests/fixtures/make_seed_pth.py with PyTorch) converted into minisd
-- model files and loaded with minisd.load_model. Needs Debian's
-- /usr/bin/python3 with PyTorch; pending otherwise (CI installs no torch).
local minisd = require("minisd")
local H = require("helpers")

local PY = "/usr/bin/python3"
local CONVERT = H.root .. "/scripts/convert_pth.py"
local MAKE = H.root .. "/tests/fixtures/make_seed_pth.py"

local has_torch = H.run(PY .. " -c 'import torch'")

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function convert(args)
  return H.run(PY .. " " .. q(CONVERT) .. " " .. args)
end

local function tensor_of(v)
  return minisd.tensor(v.data):reshape(v.shape)
end

local function listdir(dir)
  local _, _, out = H.run("ls -A " .. q(dir))
  local names = {}
  for line in out:gmatch("[^\n]+") do
    names[#names + 1] = line
  end
  table.sort(names)
  return names
end

describe("convert_pth.py", function()
  if not has_torch then
    pending("PyTorch is not importable by /usr/bin/python3 (apt-get install python3-torch): "
      .. "scripts/convert_pth.py is not tested")
    return
  end

  local dir, ref
  setup(function()
    dir = H.tmpdir()
    local ok, _, out = H.run(PY .. " " .. q(MAKE) .. " " .. q(dir))
    assert(ok, out)
    ref = dofile(dir .. "/ref.lua")
  end)
  teardown(function()
    if dir then
      H.run("rm -rf " .. q(dir))
    end
  end)

  it("documents itself and the shortcut choice in --help", function()
    local ok, _, out = convert("--help")
    assert.is_true(ok, out)
    for _, word in ipairs({ "--shortcut", "zero", "random", "expected value", "--label-names" }) do
      assert.truthy(out:find(word, 1, true), word .. " missing in:\n" .. out)
    end
  end)

  it("converts a course state_dict into a model file that reproduces the seed", function()
    local dst = dir .. "/sd.safetensors"
    local ok, _, out = convert(q(dir .. "/sd.pth") .. " " .. q(dst))
    assert.is_true(ok, out)
    assert.truthy(out:find("n_feat=8", 1, true), out)
    assert.truthy(out:find("init_conv.shortcut = 0", 1, true), out)
    -- written atomically: no temporary file is left behind
    for _, name in ipairs(listdir(dir)) do
      assert.is_nil(name:find("tmp", 1, true), name)
    end

    local tensors, meta = minisd.load_safetensors(dst)
    assert.are.equal("ContextUnet", meta["minisd.arch"])
    assert.are.equal("1", meta["minisd.format"])
    local cfg = minisd.json.decode(meta["minisd.config"])
    assert.are.same({
      in_channels = 3, n_feat = 8, n_cfeat = 5, height = 16, background = "#ffffff",
      label_names = { "hero", "non-hero", "food", "spell", "side-facing" },
      schedule = { num_train_timesteps = 500, beta_start = 1e-4, beta_end = 0.02,
        beta_schedule = "linear" },
    }, cfg)

    local m = assert(minisd.load_model(dst))
    assert.are.same(cfg, m.config)
    assert.is_false(m.training)
    local sd, names = m:state_dict()
    assert.are.equal(158, #names)
    -- weights are copied exactly; num_batches_tracked (I64) survives
    assert.are.same(tensor_of(ref.w):totable(), sd["init_conv.conv1.0.weight"]:totable())
    assert.are.equal(11, sd["init_conv.conv1.1.num_batches_tracked"]:item())
    assert.are.equal(0, sd["init_conv.shortcut.weight"]:abs():max())
    assert.are.equal(0, sd["init_conv.shortcut.bias"]:abs():max())
    assert.are.same({ 8, 3, 1, 1 }, tensors["init_conv.shortcut.weight"]:shape())
    -- the eval-mode output of the seed's forward with the skip at its expected value 0
    local y = minisd.no_grad(function()
      return m(tensor_of(ref.x), tensor_of(ref.t), tensor_of(ref.c))
    end)
    local want = tensor_of(ref.y)
    H.assert_close(y, want, 0, 1e-5 * want:abs():max(), "converted model output")
  end)

  it("accepts a whole pickled model and a {model = state_dict} dict", function()
    local base = minisd.load_safetensors(dir .. "/sd.safetensors")
    if not base then
      assert(convert(q(dir .. "/sd.pth") .. " " .. q(dir .. "/sd.safetensors")))
      base = minisd.load_safetensors(dir .. "/sd.safetensors")
    end
    for _, src in ipairs({ "model", "wrapped" }) do
      local dst = dir .. "/" .. src .. ".safetensors"
      local ok, _, out = convert(q(dir .. "/" .. src .. ".pth") .. " " .. q(dst))
      assert.is_true(ok, src .. ": " .. out)
      local t = minisd.load_safetensors(dst)
      local n = 0
      for name, v in pairs(base) do
        assert(t[name], src .. ": " .. name .. " missing")
        assert.are.same(v:totable(), t[name]:totable())
        n = n + 1
      end
      assert.are.equal(158, n)
    end
  end)

  it("draws a seeded random shortcut on request, and takes label names", function()
    local a, b = dir .. "/ra.safetensors", dir .. "/rb.safetensors"
    local ok, _, out = convert("--shortcut random --seed 5 --label-names a,b,c,d,e "
      .. q(dir .. "/sd.pth") .. " " .. q(a))
    assert.is_true(ok, out)
    assert.is_true((convert("--shortcut random --seed 5 " .. q(dir .. "/sd.pth") .. " " .. q(b))))
    local ta, tb = minisd.load_safetensors(a), minisd.load_safetensors(b)
    local w = ta["init_conv.shortcut.weight"]
    assert.are.same(w:totable(), tb["init_conv.shortcut.weight"]:totable())
    local bound = 1 / math.sqrt(3)
    assert.is_true(w:abs():max() <= bound and w:abs():max() > 0.1 * bound)
    assert.is_true(ta["init_conv.shortcut.bias"]:abs():max() <= bound)
    local m = assert(minisd.load_model(a))
    assert.are.same({ "a", "b", "c", "d", "e" }, m.config.label_names)

    ok, _, out = convert("--label-names a,b " .. q(dir .. "/sd.pth") .. " " .. q(dir .. "/x.st"))
    assert.is_false(ok)
    assert.truthy(out:find("n_cfeat = 5", 1, true), out)
  end)

  it("rejects a file that is not a ContextUnet state_dict, naming what is missing", function()
    local dst = dir .. "/bad.safetensors"
    local ok, code, out = convert(q(dir .. "/bad.pth") .. " " .. q(dst))
    local _
    assert.is_false(ok)
    assert.are.equal(1, code)
    assert.truthy(out:find("not a ContextUnet state_dict", 1, true), out)
    assert.truthy(out:find("init_conv.conv1.0.weight", 1, true), out)
    assert.is_nil(io.open(dst, "rb"))

    ok, _, out = convert(q(dir .. "/partial.pth") .. " " .. q(dst))
    assert.is_false(ok)
    assert.truthy(out:find("missing keys: out.3.weight, out.3.bias", 1, true), out)
    assert.truthy(out:find("unexpected keys: extra.weight", 1, true), out)
    assert.is_nil(io.open(dst, "rb"))

    ok, _, out = convert(q(dir .. "/nothing.pth") .. " " .. q(dst))
    assert.is_false(ok)
    assert.truthy(out:find("cannot open", 1, true), out)
  end)
end)
