-- The API snippet of the engine issue, run as written by a separate interpreter
-- in a temporary folder holding the files it reads; then its outputs are checked.
-- luacheck: ignore 631 (the snippet keeps the issue's long lines)
local minisd = require("minisd")
local H = require("helpers")

local SNIPPET = [[
local minisd = require "minisd"
local nn = minisd.nn
local net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2))
net:load("w.safetensors")                  -- strict
net:train()                                -- or net:eval()
local x = minisd.load_npy("x.npy")
local y = net(x)
local loss = minisd.mse_loss(y, minisd.load_npy("target.npy"))
loss:backward(); print(loss:item())
local opt = minisd.optim.Adam(net:parameters(), { lr = 1e-3 })
for name, p in pairs(net:named_parameters()) do print(name, p.grad) end
minisd.save_safetensors("g.safetensors", { w = net:named_parameters()["0.weight"].grad }, { note = "x" })
opt:step(); opt:zero_grad()
minisd.no_grad(function() minisd.save_npy("y.npy", net(x)) end)
local t = minisd.full({ 2 }, 0.5); local r = minisd.randn({ 4, 3, 16, 16 }, minisd.Generator(42))
print(t:sum():item(), r:numel())
]]

describe("the engine API as scripts use it", function()
  it("runs the documented snippet", function()
    local tmp = H.tmpdir()
    local root = io.popen("pwd"):read("*l")
    local nn = minisd.nn
    minisd.manual_seed(11)
    local ref = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.GELU(),
      nn.MaxPool2d(2))
    ref:save(tmp .. "/w.safetensors")
    minisd.save_npy(tmp .. "/x.npy", minisd.randn({ 4, 3, 8, 8 }))
    minisd.save_npy(tmp .. "/target.npy", minisd.randn({ 4, 8, 4, 4 }))
    local f = assert(io.open(tmp .. "/snippet.lua", "w"))
    f:write(SNIPPET)
    f:close()
    local cpath = os.getenv("MINISD_CPATH") or (root .. "/build/?.so")
    if cpath:sub(1, 1) ~= "/" then
      cpath = root .. "/" .. cpath
    end
    local ok, _, out = H.run(string.format(
      "cd %s && LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;;' LUA_CPATH='%s;;' %s snippet.lua",
      tmp, root, root, cpath, H.lua_bin))
    assert.is_true(ok, out)
    -- the loss, four parameters with gradients, then the sum and the count
    assert.truthy(out:match("^%d[%d.e-]*\n"), out)
    for _, name in ipairs({ "0.weight", "0.bias", "1.weight", "1.bias" }) do
      assert.truthy(out:find(name .. "\ttensor%[", 1), name .. " in: " .. out)
    end
    assert.truthy(out:find("1.0\t3072", 1, true) or out:find("1\t3072", 1, true), out)
    assert.are.same({ 4, 8, 4, 4 }, minisd.load_npy(tmp .. "/y.npy"):shape())
    local g, meta = minisd.load_safetensors(tmp .. "/g.safetensors")
    assert.are.same({ 8, 3, 3, 3 }, g.w:shape())
    assert.is_true(g.w:abs():max() > 0)
    assert.are.equal("x", meta.note)
  end)
end)

describe("load_model", function()
  it("says a file's metadata is damaged instead of loading a default model", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(3)
    local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    local sd = m:state_dict()
    local cases = {
      { { ["minisd.config"] = '{"n_feat": 8, "in_channels": 4' }, "minisd.config" },
      { { ["minisd.config"] = minisd.json.encode(m.config), ["minisd.training"] = "{steps" },
        "minisd.training" },
    }
    for i, c in ipairs(cases) do
      local path = tmp .. "/bad" .. i .. ".safetensors"
      minisd.save_safetensors(path, sd, c[1])
      local model, err = minisd.load_model(path)
      assert.is_nil(model, "case " .. i)
      assert.truthy(err:find(c[2] .. " metadata is not a JSON object", 1, true), err)
      assert.truthy(err:find("damaged", 1, true), err)
    end
  end)
end)

describe("loading from bytes", function()
  it("gives the same model as the file, and names the bytes in errors", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(4)
    local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    local path = tmp .. "/m.safetensors"
    assert(m:save(path, { training = { context = true } }))
    local bytes = H.read_file(path)
    local a = assert(minisd.load_model(path))
    local b = assert(minisd.load_model(bytes))
    local sa, sb = a:state_dict(), b:state_dict()
    for name, t in pairs(sa) do
      assert.are.same(t:totable(), sb[name]:totable(), name)
    end
    assert.are.same(a.config, b.config)
    assert.is_true(b.training_summary.context)
    local ts, meta = minisd.load_safetensors_string(bytes)
    assert.are.same(sa["init_conv.conv1.0.weight"]:totable(), ts["init_conv.conv1.0.weight"]:totable())
    assert.are.equal("ContextUnet", meta["minisd.arch"])
    -- a damaged copy: the message names what the caller called the bytes
    local model, err = minisd.load_model(bytes:sub(1, 200), "game/sprites.safetensors")
    assert.is_nil(model)
    assert.truthy(err:find("game/sprites.safetensors", 1, true), err)
    local none, e2 = minisd.load_safetensors_string(bytes:sub(1, 5))
    assert.is_nil(none)
    assert.truthy(tostring(e2):find("(bytes)': truncated", 1, true), tostring(e2))
  end)
end)

describe("half-precision model files", function()
  it("store the weights in F16 or BF16 at half the size and load back as float32", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(6)
    local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    m:train()
    m(minisd.randn({ 2, 4, 16, 16 }), minisd.rand({ 2, 1, 1, 1 }), minisd.rand({ 2, 5 }))
    local f32, f16, bf16 = tmp .. "/a.safetensors", tmp .. "/b.safetensors", tmp .. "/c.safetensors"
    assert(m:save(f32))
    assert(m:save(f16, { dtype = "F16", training = { context = true } }))
    assert(m:save(bf16, { dtype = "BF16" }))
    local s32, s16 = #H.read_file(f32), #H.read_file(f16)
    assert.is_true(s16 < 0.6 * s32, s16 .. " bytes against " .. s32) -- the header is the rest
    local a = assert(minisd.load_model(f32))
    local rel = { [f16] = 2 ^ -11, [bf16] = 2 ^ -8 } -- half an ulp, relative
    for path, tol in pairs(rel) do
      local b = assert(minisd.load_model(path))
      local sa, sb = a:state_dict(), b:state_dict()
      for name, t in pairs(sa) do
        local x, y = t:reshape(-1):totable(), sb[name]:reshape(-1):totable()
        for i = 1, #x do
          local err = math.abs(x[i] - y[i])
          assert.is_true(err <= tol * math.abs(x[i]) + 2 ^ -25, -- F16 subnormals: 2^-24 apart
            string.format("%s %s[%d]: %g -> %g", path, name, i, x[i], y[i]))
        end
      end
      -- the step counter stays an integer tensor
      assert.is_truthy(H.read_file(path):find('"down1.model.0.conv1.1.num_batches_tracked":{"dtype":"I64"',
        1, true))
    end
    assert.is_true(assert(minisd.load_model(f16)).training_summary.context)
    assert.has_error(function() m:save(tmp .. "/d.safetensors", { dtype = "F8" }) end,
      'save: dtype must be "F32", "F16" or "BF16", got F8')
  end)
end)

describe("load_model and bad numbers", function()
  it("refuses NaN or infinite weights and a negative BatchNorm variance, naming the tensor",
    function()
      local tmp = H.tmpdir()
      minisd.manual_seed(5)
      local m = minisd.models.ContextUnet({ n_feat = 8 })
      local cases = {
        { "out.3.weight", 1, 0 / 0, "tensor out.3.weight holds NaN or infinite values" },
        { "up0.0.weight", 2, math.huge, "tensor up0.0.weight holds NaN or infinite values" },
        { "init_conv.conv1.1.running_var", 3, -0.5,
          "tensor init_conv.conv1.1.running_var (a BatchNorm variance) holds a negative value" },
      }
      for i, c in ipairs(cases) do
        local sd = {}
        for name, t in pairs(m:state_dict()) do
          sd[name] = t
        end
        local flat = sd[c[1]]:reshape(sd[c[1]]:numel()):totable()
        flat[c[2]] = c[3]
        sd[c[1]] = minisd.tensor(flat):reshape(table.unpack(sd[c[1]]:shape()))
        local path = tmp .. "/bad" .. i .. ".safetensors"
        minisd.save_safetensors(path, sd, { ["minisd.config"] = minisd.json.encode(m.config) })
        local model, err = minisd.load_model(path)
        assert.is_nil(model, c[1])
        assert.truthy(err:find(c[4], 1, true), err)
      end
    end)
end)

describe("the architecture registry", function()
  it("lists ContextUnet and SpriteClassifier, and loads a registered architecture's files",
    function()
      local models = minisd.models
      assert.are.same({ "ContextUnet" }, models.names("diffusion"))
      assert.are.same({ "ContextUnet", "SpriteClassifier" }, models.names())
      -- a new architecture: a ContextUnet under another name, registered here only
      models.register({ name = "TestUnet", kind = "diffusion",
        new = function(cfg) return models.ContextUnet(cfg) end,
        config_for = function() return { n_feat = 8 } end })
      local tmp = H.tmpdir()
      local m = models.from_config({ n_feat = 8 }, "TestUnet")
      local path = tmp .. "/t.safetensors"
      assert(m:save(path, { ["minisd.arch"] = "TestUnet" }))
      local back = assert(minisd.load_model(path))
      assert.are.equal(8, back.config.n_feat)
      assert.has_error(function() models.get("Nope") end,
        "unknown architecture 'Nope' (known: ContextUnet, SpriteClassifier, TestUnet)")
      assert.has_error(function() models.register({ name = "X", new = print }) end)
      -- a file naming an unknown architecture
      assert(m:save(path, { ["minisd.arch"] = "Nope" }))
      local none, err = minisd.load_model(path)
      assert.is_nil(none)
      assert.truthy(err:find("unknown architecture 'Nope'", 1, true), err)
    end)
end)

