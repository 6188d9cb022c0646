-- minisd.image.save_gif: the file is checked by an external decoder when one is installed
-- (gifsicle, ImageMagick's identify, or Python's imageio), and always by a GIF parser and
-- LZW decoder written here in Lua: header, logical screen, palette, loop extension, frame
-- count, delays, disposal, transparency and every pixel.
local minisd = require("minisd")
local image = require("minisd.image")
local H = require("helpers")

local read = H.read_file

local function u16(s, i)
  return s:byte(i) + 256 * s:byte(i + 1)
end

-- LZW-decodes a code stream (a string) into a list of npix indices.
local function lzw_decode(data, mcs, npix)
  local clear, eoi = 2 ^ mcs, 2 ^ mcs + 1
  local size, nxt, prev = mcs + 1, clear + 2, nil
  local dict = {}
  for i = 0, clear - 1 do
    dict[i] = { i }
  end
  local out, bit = {}, 0
  while true do
    local code = 0
    for k = 0, size - 1 do
      local byte = data:byte(math.floor(bit / 8) + 1)
      assert(byte, "LZW data ended before the end code")
      if math.floor(byte / 2 ^ (bit % 8)) % 2 == 1 then
        code = code + 2 ^ k
      end
      bit = bit + 1
    end
    if code == clear then
      size, nxt, prev = mcs + 1, clear + 2, nil
      for k in pairs(dict) do
        if k >= clear then
          dict[k] = nil
        end
      end
    elseif code == eoi then
      break
    else
      local str
      if dict[code] then
        str = dict[code]
      else
        assert(prev and code == nxt, "code " .. code .. " not in the table")
        str = {}
        for i, v in ipairs(dict[prev]) do
          str[i] = v
        end
        str[#str + 1] = dict[prev][1]
      end
      for _, v in ipairs(str) do
        out[#out + 1] = v
      end
      if prev and nxt < 4096 then
        local e = {}
        for i, v in ipairs(dict[prev]) do
          e[i] = v
        end
        e[#e + 1] = str[1]
        dict[nxt] = e
        nxt = nxt + 1
        if nxt == 2 ^ size and size < 12 then
          size = size + 1
        end
      end
      prev = code
    end
  end
  assert(#out == npix, string.format("%d pixels decoded, %d expected", #out, npix))
  return out
end

-- Parses a GIF file into {w, h, palette = {{r,g,b}, ...}, loop, frames = {{delay, disposal,
-- transparent, pixels}}}.
local function parse_gif(s)
  assert(s:sub(1, 6) == "GIF89a", "not a GIF89a file")
  local g = { w = u16(s, 7), h = u16(s, 9), palette = {}, frames = {} }
  local flags = s:byte(11)
  assert(flags >= 128, "no global colour table")
  local n = 2 ^ (flags % 8 + 1)
  local at = 14
  for k = 0, n - 1 do
    g.palette[k] = { s:byte(at + 3 * k, at + 3 * k + 2) }
  end
  at = at + 3 * n
  local gce
  while true do
    local b = s:byte(at)
    at = at + 1
    if b == 0x3b then
      break
    elseif b == 0x21 then
      local label = s:byte(at)
      at = at + 1
      if label == 0xff and s:sub(at, at + 11) == "\11NETSCAPE2.0" then
        assert(s:byte(at + 12) == 3 and s:byte(at + 13) == 1)
        g.loop = u16(s, at + 14)
      elseif label == 0xf9 then
        local p = s:byte(at + 1)
        gce = { disposal = math.floor(p / 4) % 8, delay = u16(s, at + 2),
          transparent = p % 2 == 1 and s:byte(at + 4) or nil }
      end
      while s:byte(at) ~= 0 do
        at = at + 1 + s:byte(at)
      end
      at = at + 1
    elseif b == 0x2c then
      assert(u16(s, at) == 0 and u16(s, at + 2) == 0, "frame not at the origin")
      local w, h = u16(s, at + 4), u16(s, at + 6)
      assert(w == g.w and h == g.h and s:byte(at + 8) == 0)
      local mcs = s:byte(at + 9)
      at = at + 10
      local parts = {}
      while s:byte(at) ~= 0 do
        local len = s:byte(at)
        parts[#parts + 1] = s:sub(at + 1, at + len)
        at = at + 1 + len
      end
      at = at + 1
      local fr = gce or {}
      fr.pixels = lzw_decode(table.concat(parts), mcs, w * h)
      g.frames[#g.frames + 1] = fr
      gce = nil
    else
      error("unexpected block " .. tostring(b))
    end
  end
  return g
end

local function tmpgif()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".gif"
end

local function has_cmd(cmd)
  return os.execute(cmd .. " >/dev/null 2>&1") == true or os.execute(cmd .. " >/dev/null 2>&1")
    == 0
end

-- Two colours and a transparent corner: frame k is red with a green pixel at (k, 0).
local function frames_rgba(n, h, w)
  local frames = {}
  for k = 1, n do
    local data = {}
    for c = 1, 4 do
      for y = 1, h do
        for x = 1, w do
          local green = (x == k and y == 1)
          local v
          if c == 1 then
            v = green and 0 or 1
          elseif c == 2 then
            v = green and 1 or 0
          elseif c == 3 then
            v = 0
          else
            v = (x == w and y == h) and 0.2 or 1
          end
          data[#data + 1] = v
        end
      end
    end
    frames[k] = minisd.tensor(data):reshape({ 4, h, w })
  end
  return frames
end

describe("image.save_gif", function()
  it("writes a looping animation whose structure and pixels decode", function()
    local path = tmpgif()
    local frames = frames_rgba(3, 2, 4)
    assert.is_true(image.save_gif(path, frames, { scale = 2, delay = 10 }))
    local g = parse_gif(read(path))
    assert.are.equal(8, g.w)
    assert.are.equal(4, g.h)
    assert.are.equal(0, g.loop)
    assert.are.equal(3, #g.frames)
    -- in order of first appearance: green (frame 1's first pixel), red; then the
    -- transparent index
    assert.are.same({ 0, 255, 0 }, g.palette[0])
    assert.are.same({ 255, 0, 0 }, g.palette[1])
    for k, fr in ipairs(g.frames) do
      assert.are.equal(k == 3 and 100 or 10, fr.delay)
      assert.are.equal(2, fr.disposal)
      assert.are.equal(2, fr.transparent)
      for y = 0, g.h - 1 do
        for x = 0, g.w - 1 do
          local sx, sy = math.floor(x / 2) + 1, math.floor(y / 2) + 1
          local want = (sx == 4 and sy == 2) and 2 or ((sx == k and sy == 1) and 0 or 1)
          assert.are.equal(want, fr.pixels[y * g.w + x + 1])
        end
      end
    end
    os.remove(path)
  end)

  it("takes the options and the (N,C,H,W) form", function()
    local path = tmpgif()
    local x = minisd.rand({ 4, 3, 5, 6 }, minisd.Generator(3))
    assert.is_true(image.save_gif(path, x, { delay = 4, loop = 2, last_delay = 50 }))
    local g = parse_gif(read(path))
    assert.are.equal(6, g.w)
    assert.are.equal(5, g.h)
    assert.are.equal(2, g.loop)
    assert.are.equal(4, #g.frames)
    for k, fr in ipairs(g.frames) do
      assert.are.equal(k == 4 and 50 or 4, fr.delay)
      assert.are.equal(1, fr.disposal)
      assert.is_nil(fr.transparent)
    end
    -- 120 random colours fit the palette exactly
    local xv = x:totable()
    for k, fr in ipairs(g.frames) do
      for y = 1, 5 do
        for xx = 1, 6 do
          local rgb = g.palette[fr.pixels[(y - 1) * 6 + xx]]
          for c = 1, 3 do
            assert.are.equal(math.floor(xv[k][c][y][xx] * 255 + 0.5), rgb[c])
          end
        end
      end
    end
    os.remove(path)
  end)

  it("checks its arguments and reports unwritable files", function()
    local frames = frames_rgba(2, 2, 2)
    assert.has_error(function() image.save_gif(tmpgif(), frames, { fps = 3 }) end)
    assert.has_error(function() image.save_gif(tmpgif(), {}, nil) end)
    assert.has_error(function() image.save_gif(tmpgif(), frames, { scale = 0 }) end)
    assert.has_error(function() image.save_gif(tmpgif(), { 1, 2 }) end)
    local ok, err = image.save_gif("/nonexistent-dir/x.gif", frames)
    assert.is_nil(ok)
    assert.truthy(err:find("/nonexistent-dir/x.gif", 1, true))
    local ok2, err2 = image.save_gif(tmpgif(), { frames[1], minisd.zeros({ 3, 3, 2 }) })
    assert.is_nil(ok2)
    assert.truthy(err2:find("frame 2", 1, true))
  end)

  it("is read by an external decoder when one is installed", function()
    local path = tmpgif()
    image.save_gif(path, frames_rgba(3, 2, 4), { scale = 3 })
    local cmd
    if has_cmd("gifsicle --version") then
      cmd = "gifsicle --info '" .. path .. "' 2>&1"
    elseif has_cmd("identify -version") then
      cmd = "identify '" .. path .. "' 2>&1"
    elseif has_cmd("/usr/bin/python3 -c 'import imageio'") then
      cmd = "/usr/bin/python3 -c \"import imageio,sys; r=imageio.mimread(sys.argv[1]); "
        .. "print(len(r), 'images', r[0].shape)\" '" .. path .. "' 2>&1"
    end
    if not cmd then
      os.remove(path)
      pending("no gifsicle, identify or imageio here: the Lua decoder above checks the file")
      return
    end
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    os.remove(path)
    -- gifsicle and imageio say "3 images", identify prints a line per frame
    local count = tonumber(out:match("(%d+) images")) or select(2, out:gsub("GIF 12x6", ""))
    assert.are.equal(3, count, out)
  end)
end)
