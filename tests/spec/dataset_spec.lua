-- The bundled sprite dataset (data/): format, documented counts, and that
-- scripts/build_dataset.lua rebuilds it byte for byte from the Debian packages.
-- Runs under Lua 5.4 and LuaJIT; the rebuild needs Lua 5.4 (the script's interpreter).
local minisd = require("minisd")
local H = require("helpers")

local SHEET = "data/sprites.png"
local LABELS_TSV = "data/sprites_labels.tsv"
local HEADER = "index\thero\tnon-hero\tfood\tspell\tside-facing\tsource"
local NAMES = { "hero", "non-hero", "food", "spell", "side-facing" }
-- the counts documented in data/README.md
local COUNTS = { hero = 284, ["non-hero"] = 407, food = 20, spell = 147, ["side-facing"] = 92 }
local ZERO_ROWS = 856
local TOTAL = 1806
local TILE, COLS = 16, 32

local SOURCES = { "/usr/share/angband/xtra/graf/16x16.png", "/etc/angband/pref/graf-new.prf" }

local read_file = H.read_file

-- a string of n zero bytes (Lua 5.1 patterns cannot hold "\0")
local function zeros(n)
  return string.rep(string.char(0), n)
end

local exists = H.exists

-- header line and rows of fields
local function read_tsv(path)
  local lines = {}
  for line in read_file(path):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line
  end
  local rows = {}
  for i = 2, #lines do
    local row = {}
    for field in (lines[i] .. "\t"):gmatch("([^\t]*)\t") do
      row[#row + 1] = field
    end
    rows[#rows + 1] = row
  end
  return lines[1], rows
end

describe("bundled sprite dataset", function()
  local header, rows = read_tsv(LABELS_TSV)
  local sheet = minisd.load_png(SHEET)

  it("has the header whose label columns are the context names", function()
    assert.are.equal(HEADER, header)
  end)

  it("is an RGBA sheet 32 tiles wide with a row of tiles per 32 sprites", function()
    local shape = sheet:shape()
    assert.are.equal(3, #shape)
    assert.are.equal(4, shape[1])
    assert.are.equal(COLS * TILE, shape[3])
    assert.are.equal(0, shape[2] % TILE)
    assert.are.equal(math.ceil(#rows / COLS) * TILE, shape[2])
  end)

  it("has one-hot or all-zero label rows, numbered from 0", function()
    for i, row in ipairs(rows) do
      assert.are.equal(7, #row, "row " .. i)
      assert.are.equal(tostring(i - 1), row[1])
      local ones = 0
      for k = 2, 6 do
        assert.is_true(row[k] == "0" or row[k] == "1", "row " .. i)
        if row[k] == "1" then ones = ones + 1 end
      end
      assert.is_true(ones <= 1, "row " .. i .. " has " .. ones .. " labels")
      assert.is_true(#row[7] > 0, "row " .. i .. " has no source")
    end
  end)

  it("has the class counts documented in data/README.md", function()
    local counts, zero = {}, 0
    for _, name in ipairs(NAMES) do counts[name] = 0 end
    for _, row in ipairs(rows) do
      local labelled = false
      for k, name in ipairs(NAMES) do
        if row[k + 1] == "1" then
          counts[name] = counts[name] + 1
          labelled = true
        end
      end
      if not labelled then zero = zero + 1 end
    end
    assert.are.same(COUNTS, counts)
    assert.are.equal(ZERO_ROWS, zero)
    assert.are.equal(TOTAL, #rows)
  end)

  it("has binary alpha", function()
    local rest = sheet:narrow(1, 4, 1):to_bytes():gsub("\255", "")
    assert.is_true(rest == zeros(#rest), "alpha values other than 0 and 1")
  end)

  it("has no empty sprite, no duplicate, and transparent padding", function()
    local seen, band = {}, nil
    local shape = sheet:shape()
    local plane = TILE * TILE
    for i = 0, math.floor(shape[2] / TILE) * COLS - 1 do
      local r, c = math.floor(i / COLS), i % COLS
      if c == 0 then band = sheet:narrow(2, r * TILE + 1, TILE) end
      local bytes = band:narrow(3, c * TILE + 1, TILE):to_bytes()
      local opaque = bytes:sub(3 * plane + 1) ~= zeros(plane)
      if i < #rows then
        assert.is_true(opaque, "sprite " .. i .. " is empty")
        assert.is_nil(seen[bytes], "sprite " .. i .. " duplicates " .. tostring(seen[bytes]))
        seen[bytes] = i
      else
        assert.is_true(bytes == zeros(4 * plane), "padding tile " .. i .. " is not blank")
      end
    end
  end)

  local have_sources = exists(SOURCES[1]) and exists(SOURCES[2])
  if have_sources and _VERSION == "Lua 5.4" and not rawget(_G, "jit") then
    it("is rebuilt byte for byte by scripts/build_dataset.lua", function()
      local mk = io.popen("mktemp -d")
      local dir = mk:read("*l")
      mk:close()
      assert.is_truthy(dir and dir ~= "", "mktemp -d failed")
      local lua = os.getenv("MINISD_LUA_BIN") or "lua5.4"
      local out = io.popen(lua .. " scripts/build_dataset.lua --out '" .. dir .. "' 2>&1")
      local log = out:read("a")
      local ok = out:close()
      local png = exists(dir .. "/sprites.png") and read_file(dir .. "/sprites.png")
      local tsv = exists(dir .. "/sprites_labels.tsv") and read_file(dir .. "/sprites_labels.tsv")
      os.execute("rm -rf '" .. dir .. "'")
      assert.is_true(ok, log)
      assert.is_true(tsv == read_file(LABELS_TSV), "sprites_labels.tsv differs")
      assert.is_true(png == read_file(SHEET), "sprites.png differs")
    end)
  elseif not have_sources then
    pending("rebuild from the Debian sources: " .. SOURCES[1] .. " or " .. SOURCES[2] ..
      " missing (apt-get install angband angband-data)")
  else
    pending("rebuild by scripts/build_dataset.lua: checked by the Lua 5.4 run of this spec")
  end
end)
