-- minisd.data: the three file formats (fixtures made by tests/fixtures/gen_data.py with
-- numpy and PIL), channels and compositing, seeded shuffling, flips, batching, errors.
local minisd = require("minisd")
local data = require("minisd.data")
local H = require("helpers")

local FILES = H.root .. "/tests/fixtures/files/data"

-- the pixel formulas of gen_data.py
local function value(k, y, x, c)
  return (k * 53 + y * 17 + x * 29 + c * 71 + 7) % 256
end
local function alpha(k, y, x)
  return ({ 0, 128, 255 })[(k + y + x) % 3 + 1]
end

-- Expected (C,size,size) nested table of sprite k from the formulas; f(k,y,x,c) -> value
local function picture(C, size, f)
  local t = {}
  for c = 1, C do
    t[c] = {}
    for y = 1, size do
      t[c][y] = {}
      for x = 1, size do
        t[c][y][x] = f(y - 1, x - 1, c - 1)
      end
    end
  end
  return t
end

local function assert_picture(actual, expected, what)
  H.assert_close(actual, expected, 0, 2e-6, what)
end

local exists = H.exists

describe("data.load: the seed's npy pair", function()
  local dir = FILES .. "/npy4"

  it("converts uint8 HWC to CHW in [-1,1] with one-hot labels", function()
    local ds = assert(data.load(dir))
    assert.are.equal(4, ds.n)
    assert.are.equal(4, ds:size())
    assert.are.equal(3, ds.channels)
    assert.are.same({ 4, 3, 16, 16 }, ds.images:shape())
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" }, ds.label_names)
    local imgs = ds.images:totable()
    for k = 0, 3 do
      assert_picture(imgs[k + 1], picture(3, 16, function(y, x, c)
        return value(k, y, x, c) / 255 * 2 - 1
      end), "sprite " .. k)
    end
    local onehot = { { 1, 0, 0, 0, 0 }, { 0, 0, 0, 1, 0 }, { 0, 0, 0, 0, 1 }, { 0, 0, 1, 0, 0 } }
    assert.are.same(onehot, ds.labels:totable())
  end)

  it("finds the pair from either file", function()
    local a = assert(data.load(dir .. "/sprites_4_16x16.npy"))
    local b = assert(data.load(dir .. "/sprite_labels_nc_4_16x16.npy"))
    local c = assert(data.load(dir))
    assert.are.same(c.images:totable(), a.images:totable())
    assert.are.same(c.images:totable(), b.images:totable())
    assert.are.same(c.labels:totable(), b.labels:totable())
  end)

  it("keeps channels 4 on request with an opaque alpha", function()
    local ds = assert(data.load(dir, { channels = 4 }))
    assert.are.same({ 4, 4, 16, 16 }, ds.images:shape())
    assert.are.equal(1, ds.images:narrow(2, 4, 1):min())
  end)

  it("returns nil and a message when labels and images do not match", function()
    local ds, err = data.load(FILES .. "/npy_bad")
    assert.is_nil(ds)
    assert.truthy(err:find("sprite_labels_nc_4_16x16.npy: labels of shape [3,5] do not fit the 4 "
      .. "images of", 1, true), err)
  end)
end)

describe("data.load: a sprite sheet with a labels file", function()
  local png = FILES .. "/sheet/tiles.png"
  local tsv = FILES .. "/sheet/tiles_labels.tsv"
  local order = { 2, 0, 1, 4, 3 } -- the tile index of each row of the tsv

  it("cuts the tiles named by the rows, keeping RGBA", function()
    local ds = assert(data.load(png, { tile = 4 }))
    assert.are.equal(5, ds.n)
    assert.are.equal(4, ds.channels)
    assert.are.same({ 5, 4, 4, 4 }, ds.images:shape())
    assert.are.same({ "round", "square", "small" }, ds.label_names)
    assert.are.same({ "tile2", "tile0", "tile1", "tile4", "tile3" }, ds.sources)
    assert.are.same({ { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 0.5 }, { 1, 1, 0 }, { 0, 0, 0 } },
      ds.labels:totable())
    local imgs = ds.images:totable()
    for r, k in ipairs(order) do
      assert_picture(imgs[r], picture(4, 4, function(y, x, c)
        local v = c < 3 and value(k, y, x, c) or alpha(k, y, x)
        return v / 255 * 2 - 1
      end), "row " .. r)
    end
  end)

  it("finds the sheet from the labels file or the folder", function()
    local a = assert(data.load(png, { tile = 4 }))
    local b = assert(data.load(tsv, { tile = 4 }))
    local c = assert(data.load(FILES .. "/sheet", { tile = 4, columns = 3 }))
    assert.are.same(a.images:totable(), b.images:totable())
    assert.are.same(a.images:totable(), c.images:totable())
    assert.are.same(a.labels:totable(), c.labels:totable())
  end)

  it("composites over a background for 3 channels", function()
    for _, bg in ipairs({ { nil, { 1, 1, 1 } }, { "#336699", { 0x33 / 255, 0x66 / 255, 0.6 } },
      { { 0, 0.5, 1 }, { 0, 0.5, 1 } } }) do
      local ds = assert(data.load(png, { tile = 4, channels = 3, background = bg[1] }))
      assert.are.same({ 5, 3, 4, 4 }, ds.images:shape())
      local imgs = ds.images:totable()
      for r, k in ipairs(order) do
        assert_picture(imgs[r], picture(3, 4, function(y, x, c)
          local a = alpha(k, y, x) / 255
          return (value(k, y, x, c) / 255 * a + bg[2][c + 1] * (1 - a)) * 2 - 1
        end), "row " .. r)
      end
    end
  end)

  it("returns nil and a message for a mismatched sheet", function()
    local ds, err = data.load(png) -- 16-pixel tiles do not fit a 12x8 sheet
    assert.is_nil(ds)
    assert.truthy(err:find("tiles.png: a 12x8 sheet is not a whole number of 16x16 tiles", 1,
      true), err)
    ds, err = data.load(png, { tile = 4, columns = 1 }) -- 2 tiles: rows name tiles up to 4
    assert.is_nil(ds)
    assert.truthy(err:find("tiles_labels.tsv: line 2: index '2' is not a tile of", 1, true), err)
    -- a labels file with more rows than the sheet has tiles, and one with a short row
    local dir = H.tmpdir()
    minisd.save_png(dir .. "/s.png", minisd.zeros({ 4, 4, 8 }))
    local f = assert(io.open(dir .. "/s_labels.tsv", "w"))
    f:write("index\ta\tb\tsource\n0\t1\t0\tx\n1\t0\t1\ty\n2\t0\t0\tz\n")
    f:close()
    ds, err = data.load(dir .. "/s.png", { tile = 4 })
    assert.is_nil(ds)
    assert.truthy(err:find("s_labels.tsv: line 4: index '2' is not a tile of " .. dir
      .. "/s.png (0..1)", 1, true), err)
    f = assert(io.open(dir .. "/s_labels.tsv", "w"))
    f:write("index\ta\tb\tsource\n0\t1\t0\tx\n1\t0\n")
    f:close()
    ds, err = data.load(dir, { tile = 4 })
    assert.is_nil(ds)
    assert.truthy(err:find("s_labels.tsv: line 3 has 2 fields, the header has 4", 1, true), err)
    f = assert(io.open(dir .. "/s_labels.tsv", "w"))
    f:write("index\ta\tb\tsource\n0\t1\tyes\tx\n")
    f:close()
    ds, err = data.load(dir .. "/s_labels.tsv", { tile = 4 })
    assert.is_nil(ds)
    assert.truthy(err:find("line 2: label 2 is 'yes', not a finite number", 1, true), err)
    os.remove(dir .. "/s_labels.tsv")
    ds, err = data.load(dir .. "/s.png", { tile = 4 })
    assert.is_nil(ds)
    assert.truthy(err:find("no labels file", 1, true), err)
    os.remove(dir .. "/s.png")
    os.remove(dir)
  end)
end)

describe("data.load: a folder of PNGs", function()
  local dir = FILES .. "/folder"

  it("stacks the files in name order, with labels.tsv", function()
    local ds = assert(data.load(dir))
    assert.are.equal(3, ds.n)
    assert.are.equal(4, ds.channels) -- a.png has alpha
    assert.are.same({ "big", "red" }, ds.label_names)
    assert.are.same({ { 1, 0 }, { 0.25, 0.75 }, { 0, 1 } }, ds.labels:totable())
    local imgs = ds.images:totable()
    -- a.png: sprite 0 RGBA; b.png: sprite 1 RGB (opaque); c.png: sprite 2, grey from red
    assert_picture(imgs[1], picture(4, 4, function(y, x, c)
      return (c < 3 and value(0, y, x, c) or alpha(0, y, x)) / 255 * 2 - 1
    end), "a.png")
    assert_picture(imgs[2], picture(4, 4, function(y, x, c)
      return c < 3 and value(1, y, x, c) / 255 * 2 - 1 or 1
    end), "b.png")
    assert_picture(imgs[3], picture(4, 4, function(y, x, c)
      return c < 3 and value(2, y, x, 0) / 255 * 2 - 1 or 1
    end), "c.png")
  end)

  it("gives zero labels without a labels file, and composites on request", function()
    local tmp = H.tmpdir()
    local a = minisd.load_png(dir .. "/a.png")
    minisd.save_png(tmp .. "/z.png", a)
    minisd.save_png(tmp .. "/y.png", minisd.full({ 4, 4, 4 }, 0.2)) -- bytes 51
    local ds = assert(data.load(tmp, { channels = 3, background = "#000000" }))
    assert.are.equal(2, ds.n)
    assert.are.same({ 2, 5 }, ds.labels:shape())
    assert.are.equal(0, ds.labels:abs():sum():item())
    local imgs = ds.images:totable()
    -- over black: 0.2 * 0.2
    assert_picture(imgs[1], picture(3, 4, function() return 0.04 * 2 - 1 end), "y.png")
    assert_picture(imgs[2], picture(3, 4, function(y, x, c)
      return value(0, y, x, c) / 255 * alpha(0, y, x) / 255 * 2 - 1
    end), "z.png")
    minisd.save_png(tmp .. "/x.png", minisd.zeros({ 3, 2, 2 }))
    local bad, err = data.load(tmp)
    assert.is_nil(bad)
    assert.truthy(err:find("y.png: 4x4 pixels, but " .. tmp .. "/x.png is 2x2", 1, true), err)
    for _, name in ipairs({ "x.png", "y.png", "z.png" }) do
      os.remove(tmp .. "/" .. name)
    end
    os.remove(tmp)
  end)
end)

describe("data.load: the bundled dataset and misuse", function()
  it("loads data/sprites.png with its labels when given no path", function()
    assert.truthy(data.data_dir():match("data$"))
    if not exists(data.data_dir() .. "/sprites.png") then
      pending("the bundled dataset is not in " .. data.data_dir())
      return
    end
    local ds = assert(data.load())
    assert.are.equal(1806, ds.n)
    assert.are.same({ 1806, 4, 16, 16 }, ds.images:shape())
    assert.are.same({ 1806, 5 }, ds.labels:shape())
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" }, ds.label_names)
    assert.is_true(ds.images:min() >= -1 and ds.images:max() <= 1)
    -- per-class counts equal those of the labels file, read here with plain Lua
    -- (dataset_spec checks them against data/README.md)
    local sums, want = {}, { 0, 0, 0, 0, 0 }
    for _, row in ipairs(ds.labels:totable()) do
      for k = 1, 5 do
        sums[k] = (sums[k] or 0) + row[k]
      end
    end
    local first = true
    for line in io.lines(data.data_dir() .. "/sprites_labels.tsv") do
      if not first then
        local fields = {}
        for f in (line .. "\t"):gmatch("([^\t]*)\t") do
          fields[#fields + 1] = f
        end
        for k = 1, 5 do -- index, five labels, source
          want[k] = want[k] + tonumber(fields[k + 1])
        end
      end
      first = false
    end
    assert.are.same(want, sums)
    assert.is_true(want[1] > 0 and want[3] > 0)
  end)

  it("returns nil and a message for a missing path", function()
    local ds, err = data.load("/nonexistent/sprites.npy")
    assert.is_nil(ds)
    assert.are.equal("/nonexistent/sprites.npy: no such file or folder", err)
  end)

  it("rejects bad options, listing the allowed ones", function()
    assert.has_error(function() data.load(FILES .. "/npy4", { chanels = 3 }) end,
      "data.load: unknown option 'chanels' (allowed: channels, background, tile, columns, "
      .. "label_names, labels)")
    assert.has_error(function() data.load(FILES .. "/npy4", { channels = 2 }) end,
      "data.load: channels must be 3 or 4, got 2")
    assert.has_error(function() data.load(FILES .. "/npy4", { background = "white" }) end,
      "data.load: background 'white' is not a \"#rrggbb\" colour")
    local ds = assert(data.load(FILES .. "/npy4"))
    assert.has_error(function() ds:batches(2, { shufle = true }) end,
      "Dataset:batches: unknown option 'shufle' (allowed: shuffle, generator, flip, drop_last, "
      .. "share)")
    assert.has_error(function() ds:batches(0) end,
      "Dataset:batches: batch_size must be an integer >= 1, got 0")
  end)
end)

describe("data.add_other_label", function()
  it("gives the rows with no label a column of their own, and nothing else changes", function()
    local images = minisd.zeros({ 4, 3, 16, 16 })
    local labels = minisd.tensor({ { 1, 0 }, { 0, 0 }, { 0, 0.5 }, { 0, 0 } })
    local ds = data.from_tensors(images, labels, { "cat", "dog" })
    assert.are.equal(ds, data.add_other_label(ds))
    assert.are.same({ "cat", "dog", "other" }, ds.label_names)
    assert.are.same({ { 1, 0, 0 }, { 0, 0, 1 }, { 0, 0.5, 0 }, { 0, 0, 1 } }, ds.labels:totable())
    local ok, err = pcall(data.add_other_label, ds)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("already has a label 'other'", 1, true), err)
    data.add_other_label(ds, "misc")
    assert.are.same({ "cat", "dog", "other", "misc" }, ds.label_names)
    assert.are.same({ 0, 0, 0, 0 }, ds.labels:narrow(2, 4, 1):reshape(-1):totable())
  end)

  it("labels 856 of the 1806 bundled sprites 'other'", function()
    local ds = data.add_other_label(assert(data.load()))
    assert.are.equal(6, #ds.label_names)
    assert.are.equal(856, ds.labels:narrow(2, 6, 1):sum():item())
    assert.are.equal(1806, ds.labels:sum():item()) -- one label per sprite now
  end)
end)

describe("Dataset:batches", function()
  -- 50 samples: image n is a 1x2x3 ramp offset by n (not mirror-symmetric, exact in
  -- float32), label n
  local N = 50
  local nested, labels = {}, {}
  for n = 1, N do
    nested[n] = { { { n, n + 0.125, n + 0.25 }, { n + 0.375, n + 0.5, n + 0.625 } } }
    labels[n] = { n }
  end
  local ds = data.from_tensors(minisd.tensor(nested), minisd.tensor(labels), { "id" })

  local function epoch(opts, bs)
    local ids, imgs, sizes = {}, {}, {}
    for x, c in ds:batches(bs or 16, opts) do
      sizes[#sizes + 1] = x:shape()[1]
      for _, row in ipairs(c:totable()) do
        ids[#ids + 1] = row[1]
      end
      for _, img in ipairs(x:totable()) do
        imgs[#imgs + 1] = img
      end
    end
    return ids, imgs, sizes
  end

  it("visits samples in order without shuffle, with a short last batch", function()
    local ids, imgs, sizes = epoch({ shuffle = false })
    assert.are.same({ 16, 16, 16, 2 }, sizes)
    for i = 1, N do
      assert.are.equal(i, ids[i])
      assert.are.same(nested[i], imgs[i])
    end
    local _, _, dropped = epoch({ shuffle = false, drop_last = true })
    assert.are.same({ 16, 16, 16 }, dropped)
  end)

  it("shuffles with randperm from the given generator", function()
    local ids = epoch({ generator = minisd.Generator(7) })
    assert.are.same(minisd.randperm(N, minisd.Generator(7)), ids)
    assert.are.same(ids, epoch({ generator = minisd.Generator(7) }))
    assert.are_not.same(ids, epoch({ generator = minisd.Generator(8) }))
    local sorted = {}
    for i, v in ipairs(ids) do
      sorted[i] = v
    end
    table.sort(sorted)
    for i = 1, N do
      assert.are.equal(i, sorted[i])
    end
    -- images travel with their labels
    local ids2, imgs = epoch({ generator = minisd.Generator(3) })
    for i = 1, N do
      assert.are.same(nested[ids2[i]], imgs[i])
    end
  end)

  it("flips each sample with a draw of the generator", function()
    local ids, imgs = epoch({ generator = minisd.Generator(11), flip = true }, 16)
    -- the same draws, made independently: the permutation, then one rand per batch
    local g = minisd.Generator(11)
    assert.are.same(minisd.randperm(N, g), ids)
    local expect_flip = {}
    for start = 1, N, 16 do
      local b = math.min(16, N - start + 1)
      for _, u in ipairs(minisd.rand({ b }, g):totable()) do
        expect_flip[#expect_flip + 1] = u < 0.5
      end
    end
    local flipped = 0
    for i = 1, N do
      local src = nested[ids[i]][1]
      local want = src
      if expect_flip[i] then
        want = { { src[1][3], src[1][2], src[1][1] }, { src[2][3], src[2][2], src[2][1] } }
        flipped = flipped + 1
      end
      assert.are.same({ want }, imgs[i])
    end
    assert.is_true(flipped > 10 and flipped < 40, "flipped " .. flipped .. " of 50")
    local _, again = epoch({ generator = minisd.Generator(11), flip = true }, 16)
    assert.are.same(imgs, again)
  end)

  it("gets one sample", function()
    local img, lab = ds:get(5)
    assert.are.same(nested[5], img:totable())
    assert.are.same({ 5 }, lab:totable())
    assert.has_error(function() ds:get(51) end, "Dataset:get: index 51 out of range 1..50")
  end)
end)

describe("data.register_format", function()
  it("adds a format: files it claims and folders it finds load through data.load", function()
    assert.are.same({ "npy", "sheet", "pngs" }, data.format_names())
    local seen = {}
    data.register_format({
      name = "blank",
      claims = function(lname) return lname:match("%.blank$") ~= nil end,
      load_file = function(path)
        seen[#seen + 1] = path
        return data.from_tensors(minisd.zeros({ 2, 3, 4, 4 }))
      end,
      find = function(_, names)
        for _, n in ipairs(names) do
          if n:match("%.blank$") then
            return function() return data.from_tensors(minisd.zeros({ 3, 3, 4, 4 })) end
          end
        end
      end,
    })
    local dir = H.tmpdir()
    H.write_file(dir .. "/a.blank", "")
    local ds = assert(data.load(dir .. "/a.blank"))
    assert.are.equal(2, ds.n)
    assert.are.same({ dir .. "/a.blank" }, seen)
    assert.are.equal(3, assert(data.load(dir)).n)
    assert.are.same({ "npy", "sheet", "pngs", "blank" }, data.format_names())
    H.run("rm -rf '" .. dir .. "'")
  end)
end)
