-- minisd.image and the C image helpers (minisd.image_*): every result is checked pixel by
-- pixel against a plain Lua construction of the same picture.
local minisd = require("minisd")
local image = require("minisd.image")
local H = require("helpers")

-- A tensor of the given shape whose element at 0-based flat position i is f(i).
local function iota(shape, f)
  local n = 1
  for _, s in ipairs(shape) do
    n = n * s
  end
  local flat = {}
  for i = 0, n - 1 do
    flat[i + 1] = f and f(i) or i
  end
  return minisd.tensor(flat):reshape(shape)
end

local function flat(t)
  return t:reshape({ -1 }):totable()
end

describe("image helpers in C", function()
  it("hwc_to_chw transposes and maps", function()
    local x = iota({ 2, 3, 4, 2 }) -- N,H,W,C
    local y = minisd.image_hwc_to_chw(x, 0.5, -1)
    assert.are.same({ 2, 2, 3, 4 }, y:shape())
    local xv, yv = x:totable(), y:totable()
    for n = 1, 2 do
      for c = 1, 2 do
        for h = 1, 3 do
          for w = 1, 4 do
            assert.are.equal(xv[n][h][w][c] * 0.5 - 1, yv[n][c][h][w])
          end
        end
      end
    end
    assert.are.same({ 2, 3, 4 }, minisd.image_hwc_to_chw(iota({ 3, 4, 2 })):shape())
    assert.has_error(function() minisd.image_hwc_to_chw(minisd.zeros({ 4, 2 })) end,
      "hwc_to_chw: x [4,2]: expected (N,H,W,C) or (H,W,C)")
  end)

  it("flip reverses one dim", function()
    local x = iota({ 2, 3, 4 })
    local v = x:totable()
    local f3, f2 = minisd.image_flip(x, 3):totable(), minisd.image_flip(x, 2):totable()
    for a = 1, 2 do
      for b = 1, 3 do
        for c = 1, 4 do
          assert.are.equal(v[a][b][5 - c], f3[a][b][c])
          assert.are.equal(v[a][4 - b][c], f2[a][b][c])
        end
      end
    end
    assert.has_error(function() minisd.image_flip(x, 4) end,
      "flip: dim 4 out of range 1..3 for [2,3,4]")
  end)

  it("gather picks rows and mirrors the flagged ones", function()
    local x = iota({ 3, 2, 2, 3 })
    local v = x:totable()
    local g = minisd.image_gather(x, { 3, 1, 3 }, { true, false, 1 }):totable()
    local src, flips = { 3, 1, 3 }, { true, false, true }
    for i = 1, 3 do
      for c = 1, 2 do
        for h = 1, 2 do
          for w = 1, 3 do
            local ww = flips[i] and 4 - w or w
            assert.are.equal(v[src[i]][c][h][ww], g[i][c][h][w])
          end
        end
      end
    end
    assert.are.same({ { 1, 0 }, { 2, 3 }, { 5, 4 } },
      minisd.image_gather(iota({ 3, 2 }), { 1, 2, 3 }, { true, false, true }):totable())
    assert.has_error(function() minisd.image_gather(x, { 4 }) end,
      "gather: index 4 (entry 1) out of range 1..3 for [3,2,2,3]")
  end)

  it("composite blends straight alpha over a background", function()
    -- one pixel per case: (r, g, b, a) over (0.2, 0.4, 1)
    local px = { { 1, 0.5, 0, 1 }, { 1, 0.5, 0, 0 }, { 0.8, 0.6, 0.2, 0.25 } }
    local nested = {}
    for n = 1, 3 do
      nested[n] = {}
      for c = 1, 4 do
        nested[n][c] = { { px[n][c] } }
      end
    end
    local x = minisd.tensor(nested)
    local bg = { 0.2, 0.4, 1 }
    local y = minisd.image_composite(x, bg)
    assert.are.same({ 3, 3, 1, 1 }, y:shape())
    local expect = {}
    for n = 1, 3 do
      local a = px[n][4]
      for c = 1, 3 do
        expect[#expect + 1] = px[n][c] * a + bg[c] * (1 - a)
      end
    end
    H.assert_close(flat(y), expect, 0, 1e-6, "composite")
    -- by hand: 0.8*0.25 + 0.2*0.75 = 0.35; 0.6*0.25 + 0.4*0.75 = 0.45; 0.2*0.25 + 0.75 = 0.8
    H.assert_close(flat(y:narrow(1, 3, 1)), { 0.35, 0.45, 0.8 }, 0, 1e-6, "by hand")
    assert.has_error(function() minisd.image_composite(minisd.zeros({ 3, 2, 2 }), bg) end,
      "composite: x [3,2,2]: expected (4,H,W) or (N,4,H,W)")
  end)

  it("tiles cuts a sheet row-major", function()
    -- sheet (2, 4, 6): 2 rows x 3 columns of 2x2 tiles
    local sheet = iota({ 2, 4, 6 })
    local sv = sheet:totable()
    local t = minisd.image_tiles(sheet, 2, 3, { 6, 1, 4 }):totable()
    for i, k in ipairs({ 6, 1, 4 }) do
      local r, col = math.floor((k - 1) / 3), (k - 1) % 3
      for c = 1, 2 do
        for y = 1, 2 do
          for x = 1, 2 do
            assert.are.equal(sv[c][r * 2 + y][col * 2 + x], t[i][c][y][x])
          end
        end
      end
    end
    assert.are.same({ 5, 2, 2, 2 }, minisd.image_tiles(sheet, 2, 3, 5):shape())
    assert.has_error(function() minisd.image_tiles(sheet, 4, 1, 1) end,
      "tiles: sheet [2,4,6] is not a whole number of 4x4 tiles")
    assert.has_error(function() minisd.image_tiles(sheet, 2, 3, { 7 }) end,
      "tiles: tile 6 (entry 1) out of range 0..5 of sheet [2,4,6] (3 columns of 2x2 tiles)")
  end)
end)

-- the distinct {r, g, b} of RGBA bytes (as "r,g,b" keys) and the set of alpha values
local function colours_of(bytes)
  local cols, alphas = {}, {}
  for i = 1, #bytes, 4 do
    local r, g, b, a = bytes:byte(i, i + 3)
    cols[r .. "," .. g .. "," .. b] = true
    alphas[a] = true
  end
  return cols, alphas
end

local function count(set)
  local n = 0
  for _ in pairs(set) do
    n = n + 1
  end
  return n
end

describe("pixel-art colours", function()
  it("palette reads hex strings, tables and swatch pictures", function()
    assert.are.same({ { 0, 0, 0 }, { 255, 128, 1 } }, image.palette("#000000, ff8001"))
    assert.are.same({ { 1, 2, 3 }, { 16, 32, 48 } }, image.palette({ { 1, 2, 3 }, "#102030" }))
    -- a swatch: 2x2 RGBA with a repeated colour and a transparent pixel
    local sw = image.from_rgba_bytes(string.char(10, 20, 30, 255, 40, 50, 60, 255,
      10, 20, 30, 255, 99, 99, 99, 0), 2, 2)
    assert.are.same({ { 10, 20, 30 }, { 40, 50, 60 } }, image.palette(sw))
    assert.has_error(function() image.palette("#12345") end,
      "image.palette: '#12345' is not a colour (#rrggbb)")
    assert.has_error(function() image.palette({}) end, "image.palette: the palette has no colours")
    assert.has_error(function() image.palette({ { 1, 2, 300 } }) end)
  end)

  it("quantize gives each pixel its nearest palette colour and keeps alpha", function()
    -- 4 pixels by hand (RGBA bytes), palette black / white / pure red
    local bytes = string.char(20, 10, 0, 255, 200, 220, 240, 255, 180, 60, 40, 0,
      120, 130, 125, 77)
    local x = image.from_unit(image.from_rgba_bytes(bytes, 2, 2))
    local q = image.quantize(x, "#000000,#ffffff,#ff0000")
    local out = image.rgba_bytes(image.to_unit(q))
    -- (20,10,0) -> black; (200,220,240) -> white; (180,60,40) -> red (squared distance
    -- 75^2+60^2+40^2 = 10825 against black's 37600); (120,130,125) -> black (46925 against
    -- 50750 for white and for red)
    assert.are.equal(string.char(0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 77),
      out)
    -- a batch of random RGBA samples: only palette colours, alpha untouched
    local s = minisd.randn({ 3, 4, 16, 16 }, minisd.Generator(5))
    local pal = { "#1a1c2c", "#5d275d", "#b13e53", "#ef7d57", "#ffcd75" }
    local qs = image.quantize(image.binary_alpha(s, 0.5), pal)
    local allowed = {}
    for _, c in ipairs(image.palette(pal)) do
      allowed[table.concat(c, ",")] = true
    end
    for i = 1, 3 do
      local b = image.rgba_bytes(image.to_unit(qs:narrow(1, i, 1):reshape(4, 16, 16)))
      local cols, alphas = colours_of(b)
      for k in pairs(cols) do
        assert.is_true(allowed[k], "colour " .. k)
      end
      assert.are.same({ [0] = true, [255] = true }, alphas)
    end
    assert.has_error(function() image.quantize(minisd.zeros({ 2, 4, 4 }), "#000000") end,
      "image.quantize: expected RGB or RGBA pictures, got 2 channels")
  end)

  it("reduce_colors leaves at most k colours per sprite, and k-colour sprites as they are",
    function()
      local s = minisd.randn({ 2, 4, 16, 16 }, minisd.Generator(6))
      local r = image.reduce_colors(s, 4)
      for i = 1, 2 do
        local cols = colours_of(image.rgba_bytes(image.to_unit(r:narrow(1, i, 1)
          :reshape(4, 16, 16))))
        assert.is_true(count(cols) <= 4, count(cols) .. " colours")
        assert.is_true(count(cols) >= 2)
      end
      -- a 3-colour picture keeps its colours with k = 3 (or more)
      local q = image.quantize(s, "#102030,#a0b0c0,#ff0000")
      for _, k in ipairs({ 3, 8 }) do
        local back = image.reduce_colors(q, k)
        assert.are.equal(image.rgba_bytes(image.to_unit(q:narrow(1, 1, 1):reshape(4, 16, 16))),
          image.rgba_bytes(image.to_unit(back:narrow(1, 1, 1):reshape(4, 16, 16))))
      end
      assert.has_error(function() image.reduce_colors(s, 0) end,
        "image.reduce_colors: k must be an integer >= 1, got 0")
    end)
end)

describe("minisd.image", function()
  it("from_rgba_bytes reads what rgba_bytes writes, byte / 255", function()
    -- 2x3 pixels by hand: row-major, R,G,B,A each
    local bytes = string.char(0, 51, 255, 255, 10, 20, 30, 0, 1, 2, 3, 4,
      255, 0, 0, 128, 7, 8, 9, 10, 200, 100, 50, 25)
    local t = image.from_rgba_bytes(bytes, 3, 2)
    assert.are.same({ 4, 2, 3 }, t:shape())
    local want = {
      { { 0, 10, 1 }, { 255, 7, 200 } }, { { 51, 20, 2 }, { 0, 8, 100 } },
      { { 255, 30, 3 }, { 0, 9, 50 } }, { { 255, 0, 4 }, { 128, 10, 25 } },
    }
    for c = 1, 4 do
      for y = 1, 2 do
        for x = 1, 3 do
          want[c][y][x] = want[c][y][x] / 255
        end
      end
    end
    H.assert_close(t, minisd.tensor(want), 1e-7, 0)
    assert.are.equal(bytes, (image.rgba_bytes(t)))
    assert.has_error(function() image.from_rgba_bytes(bytes, 2, 2) end,
      "image.from_rgba_bytes: 2x2 RGBA needs 16 bytes, got 24")
    assert.has_error(function() image.from_rgba_bytes(bytes, 0, 2) end)
    assert.has_error(function() image.from_rgba_bytes(5, 1, 1) end)
  end)

  it("to_unit maps [-1,1] to [0,1] and clamps", function()
    local y = image.to_unit(minisd.tensor({ -3, -1, -0.5, 0, 0.5, 1, 7, 0 / 0 }))
    assert.are.same({ 0, 0, 0.25, 0.5, 0.75, 1, 1, 0 }, y:totable())
  end)

  it("grid lays pictures out as torchvision's make_grid", function()
    local N, C, h, w, nrow, pad, pv = 5, 2, 2, 3, 2, 1, -1
    local x = iota({ N, C, h, w }, function(i) return i + 1 end)
    local g = image.grid(x, { nrow = nrow, padding = pad, pad_value = pv })
    local rows, cols = 3, 2
    local GH, GW = rows * (h + pad) + pad, cols * (w + pad) + pad
    assert.are.same({ C, GH, GW }, g:shape())
    -- the same picture built naively
    local expect = {}
    for c = 1, C do
      expect[c] = {}
      for y = 1, GH do
        expect[c][y] = {}
        for xx = 1, GW do
          expect[c][y][xx] = pv
        end
      end
    end
    local xv = x:totable()
    for k = 0, N - 1 do
      local r, col = math.floor(k / cols), k % cols
      for c = 1, C do
        for y = 1, h do
          for xx = 1, w do
            expect[c][pad + r * (h + pad) + y][pad + col * (w + pad) + xx] = xv[k + 1][c][y][xx]
          end
        end
      end
    end
    assert.are.same(expect, g:totable())
    -- fewer pictures than nrow: one row as wide as the pictures; defaults nrow 8, padding 1
    assert.are.same({ 2, 4, 9 }, image.grid(x:narrow(1, 1, 2)):shape())
    assert.are.same({ 2, 2, 3 }, image.grid(x:narrow(1, 1, 1), { padding = 0 }):shape())
    assert.are.same(flat(x:narrow(1, 3, 1)), flat(image.grid(x:narrow(1, 3, 1),
      { padding = 0 })))
  end)

  it("grid takes a list of pictures and rejects bad options", function()
    local a, b = iota({ 1, 1, 1 }, function() return 3 end), iota({ 1, 1, 1 }, function()
      return 4 end)
    assert.are.same({ { { 0, 0, 0, 0, 0 }, { 0, 3, 0, 4, 0 }, { 0, 0, 0, 0, 0 } } },
      image.grid({ a, b }):totable())
    assert.has_error(function() image.grid({ a }, { rows = 2 }) end,
      "image.grid: unknown option 'rows' (allowed: nrow, padding, pad_value)")
    assert.has_error(function() image.grid({ a }, { nrow = 0 }) end,
      "image.grid: nrow must be an integer >= 1, got 0")
    assert.has_error(function() image.grid(minisd.zeros({ 2, 2 })) end,
      "image.grid: images has shape [2,2], expected (N,C,H,W) or (C,H,W)")
  end)

  it("upscale repeats pixels", function()
    local x = iota({ 2, 2, 3 })
    local y = image.upscale(x, 3)
    assert.are.same({ 2, 6, 9 }, y:shape())
    local xv, yv = x:totable(), y:totable()
    for c = 1, 2 do
      for i = 1, 6 do
        for j = 1, 9 do
          assert.are.equal(xv[c][math.floor((i - 1) / 3) + 1][math.floor((j - 1) / 3) + 1],
            yv[c][i][j])
        end
      end
    end
    assert.are.same(flat(x), flat(image.upscale(x, 1)))
    assert.has_error(function() image.upscale(x, 0) end,
      "image.upscale: factor must be an integer >= 1, got 0")
    -- an empty side gives an empty picture (it divided by zero once)
    assert.are.same({ 2, 0, 6 }, minisd.image_upscale(minisd.zeros({ 2, 0, 3 }), 2):shape())
    assert.are.same({ 2, 4, 0 }, minisd.image_upscale(minisd.zeros({ 2, 2, 0 }), 2):shape())
  end)

  it("strip puts frames side by side", function()
    local frames = {}
    for k = 1, 3 do
      frames[k] = iota({ 1, 2, 2 }, function(i) return k * 10 + i end)
    end
    local s = image.strip(frames, { padding = 0 })
    assert.are.same({ { { 10, 11, 20, 21, 30, 31 }, { 12, 13, 22, 23, 32, 33 } } }, s:totable())
    assert.are.same({ 1, 4, 10 }, image.strip(frames):shape())
  end)

  it("rgba_bytes interleaves RGBA bytes, alpha 255 without an alpha channel", function()
    -- 1x2 pictures: values chosen so that round(v*255) is clear
    local rgba = minisd.tensor({ { { 0, 1 } }, { { 0.5, 2 } }, { { -1, 0.2 } }, { { 1, 0 } } })
    local bytes, w, h = image.rgba_bytes(rgba)
    assert.are.equal(2, w)
    assert.are.equal(1, h)
    assert.are.same({ 0, 128, 0, 255, 255, 255, 51, 0 }, { bytes:byte(1, -1) })
    local rgb = rgba:narrow(1, 1, 3)
    assert.are.same({ 0, 128, 0, 255, 255, 255, 51, 255 }, { image.rgba_bytes(rgb):byte(1, -1) })
    local grey = rgba:narrow(1, 2, 1)
    assert.are.same({ 128, 128, 128, 255, 255, 255, 255, 255 },
      { image.rgba_bytes(grey):byte(1, -1) })
    assert.has_error(function() image.rgba_bytes(minisd.zeros({ 2, 1, 1 })) end)
  end)

  it("save_grid writes [-1,1] pictures as a scaled PNG", function()
    local dir = H.tmpdir()
    local path = dir .. "/grid.png"
    -- two RGB pictures of 1x1 pixel: (-1, 0, 1) and (1, 1, -1)
    local x = minisd.tensor({ { { { -1 } }, { { 0 } }, { { 1 } } }, { { { 1 } }, { { 1 } },
      { { -1 } } } })
    assert.is_true(image.save_grid(path, x, { padding = 1, pad_value = 0.2, scale = 2 }))
    local back = minisd.load_png(path)
    -- grid 3 x 5 (1 + 2 pictures + 3 pads wide), upscaled by 2
    assert.are.same({ 3, 6, 10 }, back:shape())
    local v = back:totable()
    local function px(y, x0)
      return { v[1][y][x0], v[2][y][x0], v[3][y][x0] }
    end
    local p = 51 / 255
    H.assert_close(px(1, 1), { p, p, p }, 0, 1e-6, "pad")
    H.assert_close(px(3, 3), { 0, 128 / 255, 1 }, 0, 1e-6, "first picture")
    H.assert_close(px(4, 4), { 0, 128 / 255, 1 }, 0, 1e-6, "first picture, scaled")
    H.assert_close(px(3, 7), { 1, 1, 0 }, 0, 1e-6, "second picture")
    H.assert_close(px(3, 5), { p, p, p }, 0, 1e-6, "pad between")
    os.remove(path)
    os.remove(dir)
    local ok, err = image.save_grid(dir .. "/no/such/folder/g.png", x)
    assert.is_nil(ok)
    assert.truthy(err:find("no/such/folder/g.png", 1, true), err)
    assert.has_error(function() image.save_grid(path, x, { scale = 1.5 }) end,
      "image.save_grid: scale must be an integer >= 1, got 1.5")
  end)
end)

describe("image.binary_alpha", function()
  it("makes alpha 0 or 1 at the threshold and keeps the colours", function()
    -- alpha values in [-1, 1]: (a + 1) / 2 = 0, 0.25, 0.5, 0.75, 1, 0.4999
    local alpha = { { -1, -0.5, 0 }, { 0.5, 1, -0.0002 } }
    local x = minisd.tensor({ { { 0.1, 0.2, 0.3 }, { 0.4, 0.5, 0.6 } },
      { { 1, 1, 1 }, { 1, 1, 1 } }, { { -1, -1, -1 }, { -1, -1, -1 } }, alpha })
    local y = image.binary_alpha(x):totable()
    assert.are.same({ { -1, -1, 1 }, { 1, 1, -1 } }, y[4])
    assert.are.same(x:totable()[1], y[1])
    local b = image.binary_alpha(minisd.cat({ x:reshape(1, 4, 2, 3), x:reshape(1, 4, 2, 3) }, 1),
      0.75):totable()
    assert.are.same({ { -1, -1, -1 }, { 1, 1, -1 } }, b[2][4])
    assert.has_error(function() image.binary_alpha(minisd.zeros({ 3, 2, 2 })) end,
      "image.binary_alpha: expected RGBA pictures (4 channels), got 3")
    assert.has_error(function() image.binary_alpha(x, 2) end,
      "image.binary_alpha: threshold must be a number in [0, 1], got 2")
  end)
end)
