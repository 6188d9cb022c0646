local minisd = require("minisd")
local H = require("helpers")

describe("tensor", function()
  it("creates zeros, ones, full and nested tables", function()
    local z = minisd.zeros({ 2, 3 })
    assert.are.same({ 2, 3 }, z:shape())
    assert.are.equal(6, z:numel())
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, z:totable())
    assert.are.same({ 1, 1 }, minisd.ones({ 2 }):totable())
    assert.are.same({ 0.5, 0.5 }, minisd.full({ 2 }, 0.5):totable())
    local t = minisd.tensor({ { 1, 2 }, { 3, 4 }, { 5, 6 } })
    assert.are.same({ 3, 2 }, t:shape())
    assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, t:totable())
    assert.are.equal(7, minisd.tensor(7):item())
  end)

  it("rejects ragged tables, negative sizes and too many dims", function()
    assert.has_error(function() minisd.tensor({ { 1, 2 }, { 3 } }) end,
      "tensor: ragged nested table: [2] has 1 entries, expected 2")
    local ok, err = pcall(minisd.zeros, { 2, -1 })
    assert.is_false(ok)
    assert.matches("negative size %-1", err)
    ok, err = pcall(minisd.zeros, { 1, 1, 1, 1, 1 })
    assert.is_false(ok)
    assert.matches("at most 4", err)
    ok, err = pcall(minisd.zeros, "x")
    assert.is_false(ok)
    assert.matches("table expected", err)
  end)

  it("reshapes, views and narrows", function()
    local t = minisd.tensor({ 1, 2, 3, 4, 5, 6 })
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:reshape({ 2, 3 }):totable())
    assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, t:view(3, -1):totable())
    local m = t:reshape(2, 3)
    assert.are.same({ { 4, 5, 6 } }, m:narrow(1, 2, 1):totable())
    assert.are.same({ { 2, 3 }, { 5, 6 } }, m:narrow(2, 2, 2):totable())
    -- a view along the first dim shares storage
    m:narrow(1, 1, 1):fill_(0)
    assert.are.same({ 0, 0, 0, 4, 5, 6 }, t:totable())
    local ok, err = pcall(function() return t:reshape(4, 2) end)
    assert.is_false(ok)
    assert.matches("cannot view %[6%]", err)
    ok, err = pcall(function() return m:narrow(2, 3, 2) end)
    assert.is_false(ok)
    assert.matches("out of range", err)
  end)

  it("clones and copies", function()
    local a = minisd.tensor({ 1, 2 })
    local b = a:clone()
    b:fill_(9)
    assert.are.same({ 1, 2 }, a:totable())
    a:copy_(b)
    assert.are.same({ 9, 9 }, a:totable())
    assert.has_error(function() a:copy_(minisd.zeros({ 3 })) end)
  end)

  it("reduces", function()
    local t = minisd.tensor({ { -1, 2 }, { 3, -4 } })
    assert.are.equal(-4, t:min())
    assert.are.equal(3, t:max())
    assert.are.equal(0, t:sum():item())
    assert.are.equal(0, t:mean():item())
    assert.are.same({ { 1, 2 }, { 3, 4 } }, t:abs():totable())
  end)

  it("does arithmetic with numbers and broadcast tensors", function()
    local x = minisd.tensor({ { 1, 2 }, { 3, 4 } })
    assert.are.same({ { 2, 3 }, { 4, 5 } }, (x + 1):totable())
    assert.are.same({ { 2, 3 }, { 4, 5 } }, (1 + x):totable())
    assert.are.same({ { 0, 1 }, { 2, 3 } }, (x - 1):totable())
    assert.are.same({ { 0, -1 }, { -2, -3 } }, (1 - x):totable())
    assert.are.same({ { 2, 4 }, { 6, 8 } }, (x * 2):totable())
    assert.are.same({ { 0.5, 1 }, { 1.5, 2 } }, (x / 2):totable())
    H.assert_close(4 / x, { 4, 2, 4 / 3, 1 }, 1e-6, 0, "4 / x")
    assert.are.same({ { -1, -2 }, { -3, -4 } }, (-x):totable())
    local col = minisd.tensor({ { 10 }, { 20 } })
    assert.are.same({ { 11, 12 }, { 23, 24 } }, (x + col):totable())
    local bc = minisd.ones({ 2, 3, 4, 4 }) * minisd.tensor({ 1, 2, 3 }):reshape(1, 3, 1, 1)
    assert.are.equal(2 * (1 + 2 + 3) * 16, bc:sum():item())
    local ok, err = pcall(function() return x + minisd.zeros({ 3 }) end)
    assert.is_false(ok)
    assert.matches("add: shapes %[2,2%] and %[3%] do not broadcast", err)
  end)

  it("concatenates along a dim", function()
    local a, b = minisd.tensor({ { 1, 2 } }), minisd.tensor({ { 3, 4 } })
    assert.are.same({ { 1, 2 }, { 3, 4 } }, minisd.cat({ a, b }, 1):totable())
    assert.are.same({ { 1, 2, 3, 4 } }, minisd.cat({ a, b }, 2):totable())
    assert.has_error(function() minisd.cat({ a, minisd.zeros({ 2, 3 }) }, 1) end)
    assert.has_error(function() minisd.cat({ a, 3 }, 1) end)
  end)

  it("prints shape and values", function()
    local s = tostring(minisd.tensor({ 1, 2, 3 }))
    assert.are.equal("tensor[3] {1, 2, 3}", s)
    assert.matches("tensor%[100%] {0, 0, 0, 0, 0, 0, %.%.%. %(100 values%)}",
      tostring(minisd.zeros({ 100 })))
  end)

  it("computes gradients and accumulates them", function()
    local a = minisd.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    a.requires_grad = true
    local b = minisd.tensor({ 10, 20, 30 })
    b.requires_grad = true
    local loss = ((a * b + 1) / 2 - a):sum()
    loss:backward()
    -- d/da = b/2 - 1, d/db = sum over rows of a/2
    assert.are.same({ { 4, 9, 14 }, { 4, 9, 14 } }, a.grad:totable())
    assert.are.same({ 2.5, 3.5, 4.5 }, b.grad:totable())
    local loss2 = ((a * b + 1) / 2 - a):sum()
    loss2:backward()
    assert.are.same({ { 8, 18, 28 }, { 8, 18, 28 } }, a.grad:totable())
    a.grad:zero_()
    assert.are.same({ 0, 0, 0 }, a.grad:narrow(1, 1, 1):reshape(3):totable())
    a.grad = nil
    assert.is_nil(a.grad)
  end)

  it("refuses backward on a non-scalar and on a freed graph", function()
    local a = minisd.ones({ 3 })
    a.requires_grad = true
    local y = a * 2
    local ok, err = pcall(function() y:backward() end)
    assert.is_false(ok)
    assert.matches("expected a scalar %(1 element%), got shape %[3%]", err)
    local l = y:sum()
    l:backward()
    ok, err = pcall(function() l:backward() end)
    assert.is_false(ok)
    assert.matches("already freed", err)
    -- retain_graph keeps it
    local l2 = (a * 3):sum()
    l2:backward(nil, true)
    l2:backward()
    assert.are.same({ 2 + 6, 2 + 6, 2 + 6 }, a.grad:totable())
  end)

  it("records nothing under no_grad and restores the mode after an error", function()
    local a = minisd.ones({ 2 })
    a.requires_grad = true
    local y = minisd.no_grad(function() return a * 2 end)
    assert.is_false(y.requires_grad)
    assert.has_error(function() minisd.no_grad(function() error("boom") end) end)
    assert.is_true(minisd.is_grad_enabled())
    assert.is_true((a * 2).requires_grad)
  end)

  it("rejects wrong argument types with a message naming the argument", function()
    local ok, err = pcall(minisd.conv2d, "x", minisd.zeros({ 1 }))
    assert.is_false(ok)
    assert.matches("tensor expected, got string", err)
    ok, err = pcall(function() return minisd.zeros({ 2 }) + "a" end)
    assert.is_false(ok)
    assert.matches("tensor expected, got string", err)
  end)

  it("closes tensors and then refuses to use them", function()
    local t = minisd.zeros({ 4 })
    t:close()
    t:close() -- idempotent
    assert.are.equal("tensor(closed)", tostring(t))
    assert.has_error(function() return t:sum() end)
  end)

  it("does not grow memory over 10,000 allocations", function()
    collectgarbage()
    local base = minisd.memory_stats().live_bytes
    for _ = 1, 10000 do
      local t = minisd.zeros({ 64, 64 }) + 1
      local _ = t * 2
    end
    collectgarbage()
    collectgarbage()
    local after = minisd.memory_stats().live_bytes
    -- every tensor from the loop has been freed once collected
    assert.is_true(after - base < 1024 * 1024, "live bytes grew by " .. (after - base))
    assert.is_true(collectgarbage("count") < 64 * 1024)
  end)

  it("sets and reads the thread count", function()
    local n = minisd.get_threads()
    minisd.set_threads(1)
    assert.are.equal(1, minisd.get_threads())
    minisd.set_threads(n)
    assert.has_error(function() minisd.set_threads(0) end)
  end)

  it("chooses the kernel level at run time and can be forced lower", function()
    local isa, best = minisd.get_isa()
    assert.is_truthy(({ generic = 1, avx2 = 1, avx512 = 1, avx512bf16 = 1, amx = 1 })[best])
    assert.are.equal(best, isa)
    local w = minisd.randn({ 8, 3, 3, 3 }, minisd.Generator(3))
    local x = minisd.randn({ 2, 3, 6, 6 }, minisd.Generator(4))
    local ref = minisd.conv2d(x, w, nil, 1, 1)
    minisd.set_isa("generic")
    assert.are.equal("generic", (minisd.get_isa()))
    local y = minisd.conv2d(x, w, nil, 1, 1)
    minisd.set_isa(best)
    assert.is_true(((y - ref):abs()):max() < 1e-5)
    local ok, err = pcall(minisd.set_isa, "sse9")
    assert.is_false(ok)
    assert.matches("unknown kernel level 'sse9'", err)
  end)

  it("computes convolutions in bf16 when asked, close to fp32 but not equal", function()
    assert.are.equal("fp32", (minisd.get_precision()))
    local g = minisd.Generator(5)
    local w = minisd.randn({ 32, 32, 3, 3 }, g) * 0.1
    local x = minisd.randn({ 2, 32, 8, 8 }, g)
    local ref = minisd.conv2d(x, w, nil, 1, 1)
    minisd.set_precision("bf16")
    local p, hw = minisd.get_precision()
    assert.are.equal("bf16", p)
    local isa = minisd.get_isa()
    assert.are.equal((isa == "amx" or isa == "avx512bf16") and isa or false, hw)
    local y = minisd.conv2d(x, w, nil, 1, 1)
    minisd.set_precision("fp32")
    -- 288 products of inputs with 8-bit significands: errors of about 2^-9 relative
    local d = (y - ref):abs():max()
    assert.is_true(d > 1e-4 and d < 0.05 * ref:abs():max(), "difference " .. d)
    local ok, err = pcall(minisd.set_precision, "fp16")
    assert.is_false(ok)
    assert.matches("unknown precision 'fp16' %(expected fp32 or bf16%)", err)
  end)
end)

describe("require", function()
  it("creates no globals, whichever module is loaded", function()
    local ok, code, out = H.run(string.format([[%s -e '
      local before = {}
      for k in pairs(_G) do before[k] = true end
      local m = require("minisd")
      local _ = m.nn, m.optim
      local n = 0
      local function walk(dir, prefix)
        for _, f in ipairs(m.list_dir(dir) or {}) do
          local mod = f:match("^(.*)%%.lua$")
          if mod then
            require(mod == "init" and prefix:sub(1, -2) or prefix .. mod)
            n = n + 1
          elseif not f:find(".", 1, true) then
            walk(dir .. "/" .. f, prefix .. f .. ".")
          end
        end
      end
      walk("%s/lua/minisd", "minisd.")
      if n < 20 then io.write("only ", n, " modules found\n") os.exit(1) end
      for k in pairs(_G) do
        if not before[k] then io.write("new global: ", k, "\n") os.exit(1) end
      end']], H.lua_bin, H.root))
    assert.is_true(ok, out)
    assert.are.equal(0, code)
  end)
end)
