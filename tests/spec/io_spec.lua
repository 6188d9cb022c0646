-- Tensor files from Lua: npy, safetensors and PNG round trips, files written by
-- numpy / an independent safetensors writer / a hand-made PNG encoder
-- (tests/fixtures/gen_files.py), and corrupt files that must raise errors.
local minisd = require("minisd")
local H = require("helpers")

local FIX = H.root .. "/tests/fixtures/files/"

local read = H.read_file

local write = H.write_file

local le64 = H.le64

-- an expected run-time failure (a missing or damaged file): nil and a message
local function fails(pattern, fn, ...)
  local res, err = fn(...)
  assert.is_nil(res)
  assert.is_truthy(tostring(err):find(pattern, 1, true), "message '" .. tostring(err)
    .. "' lacks '" .. pattern .. "'")
end

-- misuse: an error
local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.is_truthy(tostring(err):find(pattern, 1, true), "error '" .. tostring(err)
    .. "' lacks '" .. pattern .. "'")
end

describe("minisd io", function()
  local dir, expected
  setup(function()
    dir = H.tmpdir()
    expected = H.fixture("io_files")
  end)
  teardown(function()
    H.run("rm -rf '" .. dir .. "'")
  end)

  describe("npy", function()
    it("reads every dtype and header version numpy wrote", function()
      local n = 0
      for name, want in pairs(expected) do
        if name:match("%.npy$") then
          local t = minisd.load_npy(FIX .. name)
          assert.are.same(want:shape(), t:shape())
          H.assert_close(t, want, 1e-6, 0, name)
          n = n + 1
        end
      end
      assert.are.equal(14, n)
    end)

    it("round-trips tensors, 0-dim included", function()
      for _, shape in ipairs({ {}, { 7 }, { 2, 3, 4, 5 } }) do
        local t = minisd.randn(shape, minisd.Generator(3))
        minisd.save_npy(dir .. "/a.npy", t)
        local u = minisd.load_npy(dir .. "/a.npy")
        assert.are.same(t:shape(), u:shape())
        H.assert_close(u, t, 0, 0, "npy round trip")
      end
    end)

    it("explains Fortran order, big-endian data, missing and corrupt files (nil, message)",
      function()
      fails("fortran.npy' is Fortran-ordered; save it with np.ascontiguousarray",
        minisd.load_npy, FIX .. "fortran.npy")
      fails("big-endian", minisd.load_npy, FIX .. "bigendian.npy")
      fails("nope.npy", minisd.load_npy, dir .. "/nope.npy")
      local good = read(FIX .. "f4.npy")
      write(dir .. "/t.npy", good:sub(1, -2))
      fails("t.npy': truncated", minisd.load_npy, dir .. "/t.npy")
      local h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2147483647, 2147483647), }"
      write(dir .. "/huge.npy", "\147NUMPY\1\0" .. string.char(#h, 0) .. h .. "\0\0\0\0")
      fails("huge.npy", minisd.load_npy, dir .. "/huge.npy")
    end)
  end)

  describe("safetensors", function()
    it("writes tensors and metadata in name order: the same bytes for the same content",
      function()
        local names = { "zeta", "alpha", "mid", "beta", "omega", "kappa", "delta", "nu" }
        local ts, meta = {}, {}
        for i, name in ipairs(names) do
          ts[name] = minisd.full({ i }, i)
          meta["k_" .. name] = name
        end
        minisd.save_safetensors(dir .. "/order.safetensors", ts, meta)
        local header = read(dir .. "/order.safetensors"):sub(9, 600)
        table.sort(names)
        local at_t, at_m = 0, 0
        for _, name in ipairs(names) do
          local t = header:find('"' .. name .. '":{"dtype"', 1, true)
          local m = header:find('"k_' .. name .. '":', 1, true)
          assert.is_true(t ~= nil and t > at_t, name)
          assert.is_true(m ~= nil and m > at_m, "k_" .. name)
          at_t, at_m = t, m
        end
      end)

    it("reads the reference file: all dtypes and the metadata", function()
      local ts, meta = minisd.load_safetensors(FIX .. "ref.safetensors")
      local n = 0
      for name, want in pairs(expected) do
        local key = name:match("^st_(.*)")
        if key then
          assert.are.same(want:shape(), ts[key]:shape())
          H.assert_close(ts[key], want, 0, 0, key)
          n = n + 1
        end
      end
      assert.are.equal(8, n)
      assert.are.same({ format = "pt", note = "h\195\169llo \"q\"\n\226\152\131 \240\159\152\128" },
        meta)
    end)

    it("round-trips tensors, I64 tensors and metadata", function()
      local path = dir .. "/m.safetensors"
      local w = minisd.randn({ 2, 3 }, minisd.Generator(1))
      local steps = minisd.tensor({ 3, -4, 100000 })
      minisd.save_safetensors(path, { ["down.0.weight"] = w, steps = steps },
        { arch = "ContextUnet", labels = "hero,food" }, { dtypes = { steps = "I64" } })
      local ts, meta = minisd.load_safetensors(path)
      H.assert_close(ts["down.0.weight"], w, 0, 0, "weight")
      H.assert_close(ts.steps, steps, 0, 0, "steps")
      assert.are.same({ arch = "ContextUnet", labels = "hero,food" }, meta)
      -- the header says I64 for steps
      assert.is_truthy(read(path):find('"steps":{"dtype":"I64"', 1, true))
      local _, m2 = minisd.load_safetensors((function()
        minisd.save_safetensors(path, { x = w })
        return path
      end)())
      assert.are.same({}, m2)
    end)

    it("writes F16 and BF16, rounding as numpy and PyTorch do, half the bytes", function()
      local path = dir .. "/h.safetensors"
      local x = minisd.tensor({ 0.1, 1 / 3, 65519, 1e-8, 3e-8, -2.5, 1e-3 })
      -- numpy's astype(float16) and PyTorch's to(bfloat16) of the same float32 values
      local f16 = { 0.0999755859375, 0.333251953125, 65504.0, 0.0, 5.960464477539063e-08, -2.5,
        0.0010004043579101562 }
      local bf16 = { 0.10009765625, 0.333984375, 65536.0, 1.0011717677116394e-08,
        3.003515303134918e-08, -2.5, 0.00099945068359375 }
      minisd.save_safetensors(path, { a = x, b = x, c = x }, nil,
        { dtype = "F16", dtypes = { b = "BF16", c = "F32" } })
      local ts = minisd.load_safetensors(path)
      H.assert_close(ts.a, minisd.tensor(f16), 0, 0, "F16")
      H.assert_close(ts.b, minisd.tensor(bf16), 0, 0, "BF16")
      H.assert_close(ts.c, x, 0, 0, "F32")
      local header = read(path)
      assert.is_truthy(header:find('"a":{"dtype":"F16","shape":[7]', 1, true))
      assert.is_truthy(header:find('"b":{"dtype":"BF16","shape":[7]', 1, true))
      -- the data: 7 * 4 bytes for c, 7 * 2 for a and b
      local hlen = header:byte(1) + 256 * header:byte(2)
      assert.are.equal(8 + hlen + 28 + 14 + 14, #header)
      -- a finite value beyond float16's range is refused, not written as inf
      raises("holds 70000 at element 1, beyond the range of F16", minisd.save_safetensors,
        dir .. "/big.safetensors", { big = minisd.tensor({ 1, 70000 }) }, nil, { dtype = "F16" })
      raises("opts.dtype: expected", minisd.save_safetensors, path, { a = x }, nil,
        { dtype = "I64" })
    end)

    it("rejects bad arguments with messages naming the file and the problem", function()
      local path = dir .. "/bad.safetensors"
      local t = minisd.tensor({ 1.5 })
      raises("not an integer", minisd.save_safetensors, path, { s = t }, nil,
        { dtypes = { s = "I64" } })
      raises("metadata 'epoch' must be a string", minisd.save_safetensors, path, { s = t },
        { epoch = 3 })
      raises("opts.dtypes['s']", minisd.save_safetensors, path, { s = t }, nil,
        { dtypes = { s = "U8" } })
      raises("'q' is not a tensor", minisd.save_safetensors, path, { q = 1 })
      raises("bad.safetensors", minisd.save_safetensors, path, { __metadata__ = t })
      assert.is_nil(io.open(path, "rb"))
    end)

    it("returns nil and a message for corrupt files, without crashing", function()
      local path = dir .. "/c.safetensors"
      local function with_header(h, ndata)
        write(path, le64(#h) .. h .. string.rep("\0", ndata or 8))
      end
      local entry = '{"a":{"dtype":"F32","shape":%s,"data_offsets":%s}%s}'
      local cases = {
        { entry:format("[2]", "[0,16]", ""), "outside" },
        { entry:format("[2]", "[0,8]", ',"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}'),
          "overlap" },
        { entry:format("[2147483647,2147483647]", "[0,8]", ""), "elements" },
        { entry:format("[2]", "[0,8]", ""):sub(1, -3), "bad JSON" },
        { '{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}', "unsupported dtype 'Q4'" },
        { entry:format("[3]", "[0,8]", ""), "12 bytes expected" },
      }
      for _, c in ipairs(cases) do
        with_header(c[1])
        fails("c.safetensors", minisd.load_safetensors, path)
        fails(c[2], minisd.load_safetensors, path)
      end
      local good = read(FIX .. "ref.safetensors")
      write(path, good:sub(1, 100))
      fails("c.safetensors", minisd.load_safetensors, path)
      write(path, le64(1e12) .. good:sub(9))
      fails("past the end", minisd.load_safetensors, path)
      write(path, good:sub(1, -5))
      fails("outside", minisd.load_safetensors, path)
    end)
  end)

  describe("png", function()
    it("loads PNGs written by Python: gray, RGB, RGBA, gray+alpha, palette", function()
      for _, name in ipairs({ "gray.png", "rgb.png", "rgba.png", "gray_alpha.png",
        "palette.png" }) do
        local t = minisd.load_png(FIX .. name)
        assert.are.same(expected[name]:shape(), t:shape())
        H.assert_close(t, expected[name], 1e-6, 0, name)
      end
    end)

    it("loads PNG and npy files from their bytes as from the files", function()
      for _, name in ipairs({ "gray.png", "rgba.png", "palette.png" }) do
        local t = minisd.load_png_string(read(FIX .. name), name)
        H.assert_close(t, minisd.load_png(FIX .. name), 0, 0, name)
      end
      for _, name in ipairs({ "f4.npy", "u1.npy", "f4_v3.npy" }) do
        local t = minisd.load_npy_string(read(FIX .. name))
        H.assert_close(t, minisd.load_npy(FIX .. name), 0, 0, name)
      end
      -- errors name what the caller called the bytes
      fails("'game/tiles.png'", minisd.load_png_string, read(FIX .. "rgb.png"):sub(1, 40),
        "game/tiles.png")
      fails("'(PNG bytes)'", minisd.load_png_string, "not a png")
      fails("'(npy bytes)': not a .npy file", minisd.load_npy_string, "nope")
      fails("'x.npy': truncated", minisd.load_npy_string, read(FIX .. "f4.npy"):sub(1, -3),
        "x.npy")
    end)

    it("round-trips 1, 3 and 4 channels with clamping and rounding", function()
      for _, c in ipairs({ 1, 3, 4 }) do
        local t = minisd.rand({ c, 4, 5 }, minisd.Generator(c))
        minisd.save_png(dir .. "/x.png", t)
        local u = minisd.load_png(dir .. "/x.png")
        assert.are.same({ c, 4, 5 }, u:shape())
        H.assert_close(u, t, 0, 0.5 / 255 + 1e-6, "png round trip")
      end
      minisd.save_png(dir .. "/y.png", minisd.tensor({ { { -1, 2, 0.5 } } }))
      H.assert_close(minisd.load_png(dir .. "/y.png"), { { { 0, 1, 128 / 255 } } }, 1e-6, 0)
    end)

    it("names the file: nil and a message for a file it cannot use, an error for misuse",
      function()
        fails("nope.png", minisd.load_png, dir .. "/nope.png")
        fails("u1.npy", minisd.load_png, FIX .. "u1.npy")
        raises("z.png", minisd.save_png, dir .. "/z.png", minisd.zeros({ 2, 2, 2 }))
        -- every save returns true, or nil and a message naming the user's file (not a
        -- temporary name) when it cannot be written
        local img = minisd.zeros({ 3, 2, 2 })
        assert.is_true(minisd.save_png(dir .. "/ok.png", img))
        assert.is_true(minisd.save_npy(dir .. "/ok.npy", img))
        assert.is_true(minisd.save_safetensors(dir .. "/ok.safetensors", { a = img }))
        assert.is_true(minisd.save_gif(dir .. "/ok.gif", { img }, 1, 10, 0, 10))
        for _, c in ipairs({ { minisd.save_png, "x.png", img }, { minisd.save_npy, "x.npy", img },
          { minisd.save_safetensors, "x.safetensors", { a = img } },
          { minisd.save_gif, "x.gif", { img }, 1, 10, 0, 10 } }) do
          local target = dir .. "/no/such/dir/" .. c[2]
          local res, err = c[1](target, c[3], c[4], c[5], c[6], c[7])
          assert.is_nil(res)
          assert.truthy(err:find(target, 1, true), err)
          local plain = err:gsub(target:gsub("%p", "%%%0"), "")
          assert.falsy(plain:find("tmp", 1, true), err) -- no temporary name
          assert.falsy(err:find("%.c:%d+"), err)
        end
      end)
  end)
end)
