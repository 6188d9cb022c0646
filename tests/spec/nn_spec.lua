-- minisd.nn: Module machinery, layers, state dicts and files, against
-- PyTorch 1.13 reference values (tests/fixtures/gen_nn.py).
local minisd = require("minisd")
local nn = require("minisd.nn")
local H = require("helpers")

local FX = H.fixture("nn")
local STATE_FILE = H.root .. "/tests/fixtures/files/nn_state.safetensors"

-- PyTorch's state_dict order for the fixture network
local KEYS = { "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
  "1.num_batches_tracked", "4.weight", "4.bias", "5.weight", "5.bias", "9.weight", "9.bias" }

local function make_net()
  return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 4, 3, 1, 1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
    nn.Linear(16, 5))
end

local function fixture_state(prefix)
  local sd = {}
  for _, k in ipairs(KEYS) do
    sd[k] = FX[prefix .. k]
  end
  return sd
end

local function same_shape(a, b)
  return table.concat(a:shape(), ",") == table.concat(b:shape(), ",")
end

describe("minisd.nn", function()
  describe("state_dict", function()
    it("has PyTorch's names, order and shapes", function()
      local net = make_net()
      local sd, names = net:state_dict()
      assert.are.same(KEYS, names)
      for _, k in ipairs(KEYS) do
        assert.is_true(same_shape(sd[k], FX["sd." .. k]), k)
      end
      assert.are.same({}, sd["1.num_batches_tracked"]:shape())
    end)

    it("separates parameters from buffers", function()
      local net = make_net()
      local params, pnames = net:named_parameters()
      assert.are.same({ "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
        "5.weight", "5.bias", "9.weight", "9.bias" }, pnames)
      local _, bnames = net:named_buffers()
      assert.are.same({ "1.running_mean", "1.running_var", "1.num_batches_tracked" }, bnames)
      -- what a file stores as integers: asked of the module, not guessed from names
      assert.are.same({ ["1.num_batches_tracked"] = "I64" }, net:state_dtypes())
      assert.is_true(params["0.weight"].requires_grad)
      assert.is_false(net:state_dict()["1.running_mean"].requires_grad)
      -- parameters() are the same tensors, in the same order
      local list = net:parameters()
      assert.are.equal(#pnames, #list)
      for i, k in ipairs(pnames) do
        assert.is_true(rawequal(params[k], list[i]))
      end
      assert.are.equal(8 * 3 * 9 + 8 + 16 + 4 * 8 * 9 + 4 + 8 + 16 * 5 + 5, net:num_parameters())
    end)
  end)

  describe("against PyTorch", function()
    local net
    before_each(function()
      net = make_net()
      net:load_state_dict(fixture_state("sd."))
    end)

    it("matches the eval-mode output", function()
      net:eval()
      local out = minisd.no_grad(function()
        return net(FX.x)
      end)
      H.assert_close(out, FX.out_eval, 1e-4, 1e-5, "eval output")
      -- running stats untouched in eval mode
      H.assert_close(net["1"].running_mean, FX["sd.1.running_mean"], 0, 0, "running_mean")
      assert.are.equal(7, net:get(2).num_batches_tracked:item())
    end)

    it("matches the train-mode output, running stats and gradients", function()
      net:train()
      local out = net(FX.x)
      H.assert_close(out, FX.out_train, 1e-4, 1e-5, "train output")
      local loss = minisd.mse_loss(out, FX.y)
      H.assert_close(loss, FX.loss, 1e-4, 1e-6, "loss")
      loss:backward()
      for k, p in pairs(net:named_parameters()) do
        H.assert_close(p.grad, FX["grad." .. k], 1e-3, 1e-5, "grad " .. k)
      end
      local bufs = net:named_buffers()
      for k, b in pairs(bufs) do
        H.assert_close(b, FX["after_train." .. k], 1e-4, 1e-6, "buffer " .. k)
      end
      assert.are.equal(8, bufs["1.num_batches_tracked"]:item())
    end)

    it("runs ConvTranspose2d as PyTorch", function()
      local ct = nn.ConvTranspose2d(4, 3, 4, 2, 1)
      assert.are.same({ 4, 3, 4, 4 }, ct.weight:shape())
      ct:load_state_dict({ weight = FX["ct.weight"], bias = FX["ct.bias"] })
      local x = FX["ct.x"]:clone()
      x.requires_grad = true
      local out = ct(x)
      H.assert_close(out, FX["ct.out"], 1e-4, 1e-5, "conv_transpose output")
      minisd.mse_loss(out, FX["ct.target"]):backward()
      H.assert_close(x.grad, FX["ct.grad.x"], 1e-3, 1e-6, "grad x")
      H.assert_close(ct.weight.grad, FX["ct.grad.weight"], 1e-3, 1e-6, "grad weight")
      H.assert_close(ct.bias.grad, FX["ct.grad.bias"], 1e-3, 1e-6, "grad bias")
    end)
  end)

  describe("load_state_dict", function()
    it("copies in place, keeping the tensors", function()
      local net = make_net()
      local w = net:parameters()[1]
      net:load_state_dict(fixture_state("sd."))
      assert.is_true(rawequal(w, net:parameters()[1]))
      H.assert_close(w, FX["sd.0.weight"], 0, 0, "weight")
    end)

    it("lists missing, unexpected and mis-shaped keys in one error", function()
      local net = make_net()
      local before = net:parameters()[1]:clone()
      local sd = fixture_state("sd.")
      sd["4.bias"] = nil
      sd["1.running_var"] = nil
      sd["extra.weight"] = minisd.zeros({ 2 })
      sd["9.weight"] = minisd.zeros({ 5, 17 })
      local ok, err = pcall(net.load_state_dict, net, sd)
      assert.is_false(ok)
      assert.matches("missing keys: 1.running_var, 4.bias", err, 1, true)
      assert.matches("unexpected keys: extra.weight", err, 1, true)
      assert.matches("9.weight (shape [5,16] in the model, [5,17] given)", err, 1, true)
      -- nothing was copied
      H.assert_close(net:parameters()[1], before, 0, 0, "untouched")
    end)

    it("non-strict ignores missing and unexpected keys but not shapes", function()
      local net = make_net()
      local res = net:load_state_dict({ ["0.bias"] = FX["sd.0.bias"], other = minisd.zeros({ 1 }) },
        false)
      assert.are.same({ "other" }, res.unexpected_keys)
      assert.are.equal(#KEYS - 1, #res.missing_keys)
      H.assert_close(net:get(1).bias, FX["sd.0.bias"], 0, 0, "bias")
      assert.has_error(function()
        net:load_state_dict({ ["0.bias"] = minisd.zeros({ 3 }) }, false)
      end)
    end)
  end)

  describe("files", function()
    it("loads a safetensors file written outside minisd", function()
      local net = make_net()
      local meta = assert(net:load(STATE_FILE))
      assert.are.equal("nn_spec test net", meta.arch)
      net:eval()
      local out = minisd.no_grad(function()
        return net(FX.x)
      end)
      H.assert_close(out, FX.out_eval, 1e-4, 1e-5, "eval output after load")
      assert.are.equal(7, net:state_dict()["1.num_batches_tracked"]:item())
    end)

    it("round-trips through save and load with metadata and I64 counters", function()
      local dir = H.tmpdir()
      local path = dir .. "/net.safetensors"
      local a = make_net()
      a:load_state_dict(fixture_state("sd."))
      a(FX.x) -- one training step of the running stats: counter 8
      assert(a:save(path, { arch = "test", labels = "a,b" }))
      local f = assert(io.open(path, "rb"))
      local bytes = f:read("*a")
      f:close()
      local n = 0
      for i = 8, 1, -1 do
        n = n * 256 + bytes:byte(i)
      end
      local header = bytes:sub(9, 8 + n)
      assert.truthy(header:find('"1%.num_batches_tracked"%s*:%s*{[^}]*"I64"'), header)
      assert.truthy(header:find('"0%.weight"%s*:%s*{[^}]*"F32"'), header)

      local b = make_net()
      local meta = assert(b:load(path))
      assert.are.equal("test", meta.arch)
      assert.are.equal("a,b", meta.labels)
      local sa, sb = a:state_dict(), b:state_dict()
      for _, k in ipairs(KEYS) do
        H.assert_close(sb[k], sa[k], 0, 0, k)
      end
      assert.are.equal(8, sb["1.num_batches_tracked"]:item())
      os.remove(path)
      os.remove(dir)
    end)

    it("reports a missing file as nil and a message, a bad file strictly", function()
      local net = make_net()
      local ok, msg = net:load("/nonexistent/dir/none.safetensors")
      assert.is_nil(ok)
      assert.is_string(msg)
      local dir = H.tmpdir()
      local path = dir .. "/small.safetensors"
      assert(nn.Linear(2, 3):save(path))
      local ok2, err = pcall(net.load, net, path)
      assert.is_false(ok2)
      assert.matches("missing keys", err, 1, true)
      assert.matches("unexpected keys: bias, weight", err, 1, true)
      os.remove(path)
      os.remove(dir)
    end)

    it("rejects metadata that is not string -> string", function()
      assert.has_error(function()
        nn.Linear(2, 3):save("/tmp/never_written.safetensors", { epochs = 3 })
      end)
    end)
  end)

  describe("modes and gradients", function()
    it("switches train/eval recursively", function()
      local net = make_net()
      assert.is_true(net.training)
      net:eval()
      for _, m in pairs(net:named_modules()) do
        assert.is_false(m.training)
      end
      net:train()
      for _, m in pairs(net:named_modules()) do
        assert.is_true(m.training)
      end
      assert.are.equal(net, net:train(false))
      assert.is_false(net:get(2).training)
    end)

    it("zero_grad zeros the gradients in place", function()
      local net = make_net()
      minisd.mse_loss(net(FX.x), FX.y):backward()
      local g = net:get(10).weight.grad
      assert.is_true(g:abs():sum():item() > 0)
      net:zero_grad()
      assert.are.equal(0, g:abs():sum():item())
      assert.are.equal(0, net:get(1).weight.grad:abs():sum():item())
    end)
  end)

  describe("Sequential's fused ops", function()
    -- spies on the ops Sequential calls through the minisd table, and on GELU's forward
    local function spy(fn)
      local calls, saved = {}, {}
      local names = { "conv2d_bn_act", "batch_norm2d" }
      for _, name in ipairs(names) do
        saved[name] = minisd[name]
        minisd[name] = function(...)
          local a = table.pack(...)
          local g = a[name == "conv2d_bn_act" and 11 or 9]
          calls[#calls + 1] = { op = name, gelu = g and true or false }
          return saved[name](...)
        end
      end
      local gelu_forward = nn.GELU.forward
      nn.GELU.forward = function(self, x)
        calls[#calls + 1] = { op = "GELU" }
        return gelu_forward(self, x)
      end
      local ok, res = pcall(fn)
      for _, name in ipairs(names) do
        minisd[name] = saved[name]
      end
      nn.GELU.forward = gelu_forward
      assert(ok, res)
      return res, calls
    end

    local x = minisd.randn({ 2, 3, 6, 6 }, minisd.Generator(3))
    local function layers(with_gelu)
      minisd.manual_seed(4)
      local conv, bn = nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4)
      bn.running_mean:copy_(minisd.randn({ 4 }, minisd.Generator(5)))
      bn.running_var:copy_(minisd.rand({ 4 }, minisd.Generator(6)) + 0.5)
      local seq = with_gelu and nn.Sequential(conv, bn, nn.GELU()) or nn.Sequential(conv, bn)
      return seq, conv, bn
    end

    it("runs Conv2d, BatchNorm2d (eval), GELU as one op under no_grad, with the same bits",
      function()
        for _, with_gelu in ipairs({ true, false }) do
          local seq, conv, bn = layers(with_gelu)
          seq:eval()
          local y, calls = spy(function()
            return minisd.no_grad(function() return seq(x) end)
          end)
          assert.are.same({ { op = "conv2d_bn_act", gelu = with_gelu } }, calls)
          local want = minisd.no_grad(function()
            local z = bn(conv(x))
            return with_gelu and minisd.gelu(z) or z
          end)
          assert.are.same(want:totable(), y:totable()) -- a last BatchNorm gets no GELU
        end
      end)

    it("runs BatchNorm2d, GELU as one op in training, and no GELU after a last BatchNorm",
      function()
        for _, with_gelu in ipairs({ true, false }) do
          local seq, conv, bn = layers(with_gelu)
          local y, calls = spy(function() return seq(x) end)
          assert.are.same({ { op = "batch_norm2d", gelu = with_gelu } }, calls)
          local _, c2, b2 = layers(with_gelu)
          local z = b2(c2(x))
          local want = with_gelu and minisd.gelu(z) or z
          assert.are.same(want:totable(), y:totable())
          -- the running statistics moved the same way
          assert.are.same(b2.running_var:totable(), bn.running_var:totable())
          assert.are.same(c2.weight:totable(), conv.weight:totable())
        end
      end)
  end)

  describe("Module:extend", function()
    local Block = nn.Module:extend("Block")
    function Block:init(cin, cout)
      self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, { padding = 1 }), nn.GroupNorm(1, cout))
      self.head = nn.Linear(cout, 2)
      self:register_parameter("scale", minisd.ones({ 1 }))
      self:register_buffer("count", minisd.zeros({ 1 }))
    end
    function Block:forward(x)
      local h = minisd.relu(self.conv1(x))
      h = minisd.avg_pool2d(h, h:size(3)):reshape({ h:size(1), -1 })
      return self.head(h) * self.scale
    end

    it("registers children, parameters and buffers by assignment, in order", function()
      local b = Block(3, 4)
      local _, names = b:state_dict()
      assert.are.same({ "scale", "count", "conv1.0.weight", "conv1.0.bias", "conv1.1.weight",
        "conv1.1.bias", "head.weight", "head.bias" }, names)
      assert.are.equal(2, #b:children())
      local mods, mnames = b:named_modules()
      assert.are.same({ "", "conv1", "conv1.0", "conv1.1", "head" }, mnames)
      assert.are.equal(b, mods[""])
      assert.is_true(nn.is_module(b.head))
      local out = b(minisd.randn({ 2, 3, 5, 5 }))
      assert.are.same({ 2, 2 }, out:shape())
      out:sum():backward()
      assert.is_not_nil(b.scale.grad)
      assert.is_not_nil(b.conv1:get(1).weight.grad)
      assert.are.equal("class Block", tostring(Block))
      assert.matches("^Block%(\n  %(conv1%): Sequential%(\n    %(0%): Conv2d%(3, 4", tostring(b))
    end)

    it("constructs with new, supports subclassing and replacing children", function()
      local b = Block.new(2, 3)
      assert.are.equal(Block, getmetatable(b))
      local Sub = Block:extend("Sub")
      function Sub:init(...)
        Block.init(self, ...)
        self.extra = nn.Identity()
      end
      local s = Sub(2, 3)
      assert.are.equal(Block, Sub.super)
      local _, mnames = s:named_modules()
      assert.are.same({ "", "conv1", "conv1.0", "conv1.1", "head", "extra" }, mnames)
      s.head = nn.Linear(3, 7)
      assert.are.same({ 7, 3 }, s:state_dict()["head.weight"]:shape())
      s.extra = nil
      assert.are.equal(2, #s:children())
      assert.has_error(function()
        s.head = 3
      end)
    end)
  end)

  describe("layers", function()
    it("initialises weights and biases in U(-1/sqrt(fan_in), 1/sqrt(fan_in))", function()
      local gen = minisd.Generator(7)
      local cases = {
        { nn.Conv2d(8, 16, 3, { gen = gen }), 8 * 9 },
        { nn.ConvTranspose2d(4, 32, 2, 2, { gen = gen }), 32 * 4 }, -- fan_in from weight dim 2
        { nn.Linear(50, 20, { gen = gen }), 50 },
      }
      for _, c in ipairs(cases) do
        local m, bound = c[1], 1 / math.sqrt(c[2])
        for _, t in ipairs({ m.weight, m.bias }) do
          assert.is_true(t:max() <= bound and t:min() >= -bound, tostring(m))
          -- spread over most of the range, not constant
          assert.is_true(t:max() > 0.5 * bound and t:min() < -0.5 * bound, tostring(m))
        end
      end
      local bn = nn.BatchNorm2d(3)
      assert.are.same({ 1, 1, 1 }, bn.weight:totable())
      assert.are.same({ 0, 0, 0 }, bn.bias:totable())
      assert.are.same({ 1, 1, 1 }, bn.running_var:totable())
      assert.are.equal(0, bn.num_batches_tracked:item())
      local gn = nn.GroupNorm(2, 4)
      assert.are.same({ 1, 1, 1, 1 }, gn.weight:totable())
    end)

    it("draws the same weights from the same seed", function()
      local a = nn.Linear(4, 3, { gen = minisd.Generator(3) })
      local b = nn.Linear(4, 3, { gen = minisd.Generator(3) })
      H.assert_close(a.weight, b.weight, 0, 0, "same seed")
      local c = nn.Linear(4, 3, { gen = minisd.Generator(4) })
      assert.is_true((a.weight - c.weight):abs():sum():item() > 0)
    end)

    it("takes PyTorch's positional arguments or options", function()
      local c = nn.Conv2d(3, 8, 3, { stride = 2, padding = 1, bias = false })
      assert.is_nil(c.bias)
      assert.are.equal(2, c.stride)
      local _, names = c:state_dict()
      assert.are.same({ "weight" }, names)
      assert.are.equal("Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
        .. "bias=False)", tostring(c))
      local p = nn.MaxPool2d(2)
      assert.are.equal(2, p.stride)
      assert.are.equal("Linear(in_features=16, out_features=5, bias=True)",
        tostring(nn.Linear(16, 5)))
      assert.are.equal("BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, "
        .. "track_running_stats=True)", tostring(nn.BatchNorm2d(8)))
      assert.are.equal("GroupNorm(2, 4, eps=1e-05, affine=True)", tostring(nn.GroupNorm(2, 4)))
      assert.are.equal("GELU(approximate='none')", tostring(nn.GELU()))
      assert.are.equal("ReLU()", tostring(nn.ReLU()))
      local s = tostring(make_net())
      assert.matches("^Sequential%(\n  %(0%): Conv2d%(3, 8, kernel_size=%(3, 3%), stride=%(1, 1%), "
        .. "padding=%(1, 1%)%)\n", s)
      assert.matches("\n  %(9%): Linear%(in_features=16, out_features=5, bias=True%)\n%)$", s)
    end)

    it("rejects unknown options, listing the allowed ones", function()
      local ok, err = pcall(nn.Conv2d, 3, 8, 3, { strid = 2 })
      assert.is_false(ok)
      assert.matches("unknown option 'strid' (allowed: bias, gen, in_channels, kernel_size, "
        .. "out_channels, padding, stride)", err, 1, true)
      assert.has_error(function()
        nn.GroupNorm(3, 4)
      end)
      assert.has_error(function()
        nn.Linear(4)
      end)
    end)

    it("indexes Sequential children 1-based", function()
      local net = make_net()
      assert.are.equal(10, net:len())
      assert.are.equal("Conv2d", net[1].__name)
      assert.are.equal(net:get(10), net[10])
      assert.are.equal(net:get(2), net["1"])
      assert.is_nil(net:get(11))
      local s = nn.Sequential({ nn.ReLU(), nn.Identity() })
      assert.are.same({ "0", "1" }, select(2, s:named_children()))
    end)

    it("flattens like torch.nn.Flatten", function()
      local x = minisd.zeros({ 2, 3, 4, 5 })
      assert.are.same({ 2, 60 }, nn.Flatten()(x):shape())
      assert.are.same({ 2, 12, 5 }, nn.Flatten(2, 3)(x):shape())
      assert.are.same({ 120 }, nn.Flatten(1)(x):shape())
    end)

    it("uses batch statistics in training and running statistics in eval", function()
      local bn = nn.BatchNorm2d(2)
      local x = minisd.randn({ 4, 2, 3, 3 }, minisd.Generator(1)) * 3 + 5
      local y = bn(x) -- batch stats: output mean ~0
      assert.is_true(math.abs(y:mean():item()) < 1e-4)
      assert.are.equal(1, bn.num_batches_tracked:item())
      -- running_mean moved 10% of the way towards the batch mean (about 5)
      local rm = bn.running_mean:mean():item()
      assert.is_true(rm > 0.2 and rm < 0.8, rm)
      bn:eval()
      local y2 = bn(x)
      assert.is_true(y2:mean():item() > 1) -- not normalised by the batch
      assert.are.equal(1, bn.num_batches_tracked:item())
    end)

    it("fuses Conv2d, BatchNorm2d and GELU in eval under no_grad, to the same bits", function()
      local g = minisd.Generator(5)
      local net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, { gen = g }), nn.BatchNorm2d(8),
        nn.GELU(), nn.Conv2d(8, 4, 3, 1, 1, { gen = g }), nn.BatchNorm2d(4), nn.ReLU())
      net(minisd.randn({ 6, 3, 8, 8 }, g)) -- training: running stats move off 0 and 1
      net:eval()
      local x = minisd.randn({ 3, 3, 8, 8 }, g)
      local plain = net(x) -- grad mode: the layers one by one
      local calls = 0
      local fused_op = minisd.conv2d_bn_act
      minisd.conv2d_bn_act = function(...)
        calls = calls + 1
        return fused_op(...)
      end
      local fused = minisd.no_grad(function() return net(x) end)
      minisd.conv2d_bn_act = fused_op
      assert.are.equal(2, calls) -- conv+bn+gelu, then conv+bn (ReLU stays apart)
      assert.are.equal(0, ((fused - plain):abs()):max())
      net:train()
      calls = 0
      minisd.no_grad(function() return net(x) end) -- training BatchNorm: never fused
      assert.are.equal(0, calls)
    end)
  end)
end)
