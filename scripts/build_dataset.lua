--- build_dataset.lua: regenerates data/sprites.png and data/sprites_labels.tsv from
-- Adam Bolt's public-domain 16x16 tiles as Debian ships them (packages angband and
-- angband-data). The labelling rules are written up in data/README.md; keep the two in
-- agreement.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     lua5.4 scripts/build_dataset.lua [--out data]

local argparse = require("argparse")

local LABELS = { "hero", "non-hero", "food", "spell", "side-facing" }

-- A tile named by several entries (or several copies of one tile) takes the label that
-- comes first here; "none" is a named tile in no class (zero context row).
local PRIORITY = { "spell", "food", "hero", "side-facing", "non-hero", "none" }

-- Monster families (the T: line of monster.txt, an entry of monster_base.txt) chosen by
-- looking at contact sheets of their tiles.
-- People drawn standing and facing the viewer.
local HERO_FAMILIES = { person = true, townsfolk = true, humanoid = true, ainu = true }
-- Families whose tiles are (nearly) all drawn in profile.
local SIDE_FAMILIES = {
  ant = true, canine = true, feline = true, rodent = true, quadruped = true,
  ["zephyr hound"] = true, dragon = true,
}
-- Monsters drawn as the item they imitate (potion, scroll, ring, chest): no class.
local ITEM_FAMILIES = { mimic = true }

-- Object kinds (K: tval, flavor kind) that are food or spell icons.
local FOOD_KINDS = { food = true }
local SPELL_KINDS = { ["magic book"] = true, ["prayer book"] = true, scroll = true }
-- Terrain drawn as a magic rune: glyph of warding, the two strange runes (summon,
-- teleport), and the trap-detected floor, which uses the glyph's circle.
local SPELL_TERRAIN = { [3] = true, [20] = true, [21] = true, [64] = true }

-- Tiles that no pref line names but that clearly show a class, chosen by looking at
-- upscaled contact sheets of the unnamed tiles (data/README.md lists what was left out and
-- why). Rows and columns are 0-based positions in the Angband sheet; `cols` is a list of
-- inclusive ranges and `except` lists "r<row>c<col>" cells left out. These names are used
-- only for a tile (or a merged group of copies) that no pref line names; the source is
-- "position:r<row>c<col>:<what>".
local POSITIONAL = {
  -- the race x class block: more races and classes than xtra-new.prf names. Columns 0-16
  -- and 18-20 are people facing the viewer; columns 17 and 21-30 are insect-like, winged,
  -- tentacled, demonic, golem, undead, ghostly, fairy and beast-headed figures. The cells
  -- left out are too dark, noisy or swamped by a spell aura to read as a person.
  { rows = { 18, 28 }, cols = { { 0, 16 }, { 18, 20 } }, class = "hero", what = "player figure",
    except = { "r19c14", "r21c16", "r25c3", "r25c4", "r25c5", "r25c12", "r25c13", "r25c14",
               "r25c16", "r25c18", "r25c19", "r26c16", "r28c14" } },
  -- mushrooms among the food flavours (r5c23 is too dark to read)
  { rows = { 5, 5 }, cols = { { 18, 18 }, { 27, 27 } }, class = "food", what = "mushroom" },
  -- spell books in the colours of the named ones
  { rows = { 12, 12 }, cols = { { 26, 31 } }, class = "spell", what = "book" },
  { rows = { 13, 13 }, cols = { { 0, 3 }, { 8, 19 } }, class = "spell", what = "book" },
  -- a third copy of the glyph-of-warding rune (r13c21, r13c22 are named terrain)
  { rows = { 13, 13 }, cols = { { 23, 23 } }, class = "spell", what = "rune" },
  -- bolts at the four angles, and balls (r17c24 is a dark speckled square: left out)
  { rows = { 15, 15 }, cols = { { 0, 3 } }, class = "spell", what = "bolt" },
  { rows = { 17, 17 }, cols = { { 0, 7 }, { 28, 31 } }, class = "spell", what = "bolt" },
  { rows = { 17, 17 }, cols = { { 25, 26 } }, class = "spell", what = "ball" },
}

local TILE = 16
local SHEET_COLS = 32
local INSTALL_HINT = "apt-get install angband angband-data"

local function fail(msg)
  io.stderr:write("build_dataset: ", msg, "\n")
  os.exit(1)
end

local function parse_args()
  local parser = argparse("build_dataset.lua",
    "Builds the bundled sprite dataset (sprites.png + sprites_labels.tsv) from Adam " ..
    "Bolt's public-domain 16x16 Angband tiles, installed by `" .. INSTALL_HINT .. "`.")
  parser:option("--tiles", "Tile sheet (PNG, 32 x 60 tiles of 16x16).",
    "/usr/share/angband/xtra/graf/16x16.png")
  parser:option("--graf-pref", "Monster, object, effect and terrain tiles.",
    "/etc/angband/pref/graf-new.prf")
  parser:option("--xtra-pref", "Player race x class tiles.", "/etc/angband/pref/xtra-new.prf")
  parser:option("--flavor-pref", "Flavoured object tiles (mushrooms, potions, ...).",
    "/etc/angband/pref/flvr-new.prf")
  parser:option("--monsters", "Monster names and families.", "/etc/angband/edit/monster.txt")
  parser:option("--flavors", "Flavour kinds and names.", "/etc/angband/edit/flavor.txt")
  parser:option("--terrain", "Terrain names.", "/etc/angband/edit/terrain.txt")
  parser:option("-o --out", "Output directory.", "data")
  return parser:parse()
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function split(s, sep)
  local out = {}
  for field in (s .. sep):gmatch("(.-)" .. sep) do
    out[#out + 1] = field
  end
  return out
end

local function read_lines(path)
  local f = assert(io.open(path, "rb"))
  local lines = {}
  for line in f:lines() do
    lines[#lines + 1] = trim(line)
  end
  f:close()
  return lines
end

-- monster.txt: number -> {name, family}
local function read_monsters(path)
  local monsters, cur = {}, nil
  for _, line in ipairs(read_lines(path)) do
    local n, name = line:match("^N:(%d+):(.*)$")
    if n then
      cur = { name = name }
      monsters[tonumber(n)] = cur
    elseif cur and line:sub(1, 2) == "T:" then
      cur.family = line:sub(3)
    end
  end
  return monsters
end

-- flavor.txt: flavour index -> {kind, text}; scroll flavours have no text
local function read_flavors(path)
  local flavors, kind = {}, nil
  for _, line in ipairs(read_lines(path)) do
    local f = split(line, ":")
    if f[1] == "kind" then
      kind = f[2]
    elseif f[1] == "flavor" or f[1] == "fixed" then
      local first = f[1] == "flavor" and 4 or 5
      local text = table.concat(f, ":", first)
      flavors[tonumber(f[2])] = { kind = kind, text = text ~= "" and text or f[2] }
    end
  end
  return flavors
end

local function read_terrain(path)
  local names = {}
  for _, line in ipairs(read_lines(path)) do
    local n, name = line:match("^N:(%d+):(.*)$")
    if n then names[tonumber(n)] = name end
  end
  return names
end

--- Collects every pref entry as {label, source} under its tile position, in file order.
local Names = {}
Names.__index = Names

function Names.new(rows, cols)
  return setmetatable({ rows = rows, cols = cols, at = {} }, Names)
end

-- attr/char as written in a pref file ("0x8E" or "182"); the tile is at row attr-0x80,
-- column char-0x80.
function Names:add(attr, char, label, source)
  local r, c = tonumber(attr) - 0x80, tonumber(char) - 0x80
  if r < 0 or r >= self.rows or c < 0 or c >= self.cols then return end
  local key = r * self.cols + c
  local list = self.at[key] or {}
  list[#list + 1] = { label = label, source = source }
  self.at[key] = list
end

local function monster_label(family)
  if HERO_FAMILIES[family] then return "hero" end
  if SIDE_FAMILIES[family] then return "side-facing" end
  if ITEM_FAMILIES[family] then return "none" end
  return "non-hero"
end

local function kind_label(kind)
  if FOOD_KINDS[kind] then return "food" end
  if SPELL_KINDS[kind] then return "spell" end
  return "none"
end

-- graf-new.prf: R (monster), K (object kind), GF (spell effect), F (terrain), L (flavour).
-- The %: include lines are ignored: the caller parses xtra and flavour files itself.
function Names:parse_graf(path, src)
  for _, line in ipairs(read_lines(path)) do
    local f = split(line, ":")
    local tag, n = f[1], #f
    if tag == "R" then
      local mon = src.monsters[tonumber(f[2])]
      -- R:0 is the player picture (named by xtra-new.prf); some R lines refer to
      -- monsters this Angband no longer has
      if tonumber(f[2]) ~= 0 and mon then
        self:add(f[3], f[4], monster_label(mon.family), "monster:" .. mon.name)
      end
    elseif tag == "K" then
      local kind, name = f[2], table.concat(f, ":", 3, n - 2)
      local label = kind_label(kind)
      -- the special artifact lights (numeric svals) are drawn as glowing orbs
      if kind == "light" and name:match("^%d+$") then label = "spell" end
      self:add(f[n - 1], f[n], label, "object:" .. kind .. ":" .. name)
    elseif tag == "GF" then
      local types = {}
      for t in f[2]:gmatch("[^|]+") do types[#types + 1] = trim(t) end
      local shape = f[3] == "static" and "ball" or ("bolt " .. f[3])
      self:add(f[4], f[5], "spell",
        "effect:" .. table.concat(types, "/") .. " " .. shape)
    elseif tag == "F" then
      local idx = tonumber(f[2])
      self:add(f[4], f[5], SPELL_TERRAIN[idx] and "spell" or "none",
        "feature:" .. (src.terrain[idx] or f[2]) .. ":" .. f[3])
    elseif tag == "L" then
      self:parse_flavor_line(f, src)
    end
  end
end

function Names:parse_flavor_line(f, src)
  local flavor = src.flavors[tonumber(f[2])]
  if flavor then
    self:add(f[3], f[4], kind_label(flavor.kind),
      "flavor:" .. flavor.kind .. ":" .. flavor.text)
  end
end

-- xtra-new.prf: "?:[AND [EQU $CLASS Warrior] [EQU $RACE Human] ]" then "R:0:attr:char"
function Names:parse_xtra(path)
  local who
  for _, line in ipairs(read_lines(path)) do
    if line:sub(1, 2) == "?:" then
      local class, race = line:match("%$CLASS ([^%]]+)%].-%$RACE ([^%]]+)%]")
      who = class and (race .. " " .. class) or nil
    elseif line:sub(1, 2) == "R:" and who then
      local f = split(line, ":")
      self:add(f[3], f[4], "hero", "player:" .. who)
    end
  end
end

function Names:parse_flavors(path, src)
  for _, line in ipairs(read_lines(path)) do
    local f = split(line, ":")
    if f[1] == "L" then self:parse_flavor_line(f, src) end
  end
end

-- The positional name of each cell of POSITIONAL: key r * cols + c -> {label, source}.
local function positional_names(cols)
  local at = {}
  for _, entry in ipairs(POSITIONAL) do
    local skip = {}
    for _, cell in ipairs(entry.except or {}) do skip[cell] = true end
    for r = entry.rows[1], entry.rows[2] do
      for _, span in ipairs(entry.cols) do
        for c = span[1], span[2] do
          local cell = string.format("r%dc%d", r, c)
          if not skip[cell] then
            assert(not at[r * cols + c], "POSITIONAL names " .. cell .. " twice")
            at[r * cols + c] = { label = entry.class,
                                 source = "position:" .. cell .. ":" .. entry.what }
          end
        end
      end
    end
  end
  return at
end

local RANK = {}
for i, label in ipairs(PRIORITY) do RANK[label] = i end

-- The best of a list of {label, source}: highest priority, then first in list order.
local function best(cands)
  local pick
  for _, cand in ipairs(cands) do
    if not pick or RANK[cand.label] < RANK[pick.label] then pick = cand end
  end
  return pick
end

local function check_sources(args)
  for _, key in ipairs({ "tiles", "graf_pref", "xtra_pref", "flavor_pref", "monsters",
                         "flavors", "terrain" }) do
    local f = io.open(args[key], "rb")
    if not f then
      fail("missing source file " .. args[key] .. " (install it with `" .. INSTALL_HINT ..
        "`, or pass --" .. key:gsub("_", "-") .. ")")
    end
    f:close()
  end
end

local function open_out(dir, name)
  local path = dir .. "/" .. name
  local f = io.open(path, "wb")
  if not f then
    os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
    local err
    f, err = io.open(path, "wb")
    if not f then fail("cannot write " .. err) end
  end
  return f, path
end

local function main()
  local args = parse_args()
  check_sources(args)
  local ok, minisd = pcall(require, "minisd")
  if not ok then
    fail("cannot load the minisd module (build it with `cmake -S . -B build && cmake " ..
      "--build build`, and run with LUA_PATH=\"lua/?.lua;lua/?/init.lua;;\" " ..
      "LUA_CPATH=\"build/?.so;;\"):\n" .. tostring(minisd))
  end

  local sheet = assert(minisd.load_png(args.tiles))
  local shape = sheet:shape()
  if #shape ~= 3 or shape[1] ~= 4 or shape[2] % TILE ~= 0 or shape[3] % TILE ~= 0 then
    fail(args.tiles .. ": expected an RGBA sheet of 16x16 tiles, got shape {" ..
      table.concat(shape, ",") .. "}")
  end
  local rows, cols = shape[2] // TILE, shape[3] // TILE

  local src = {
    monsters = read_monsters(args.monsters),
    flavors = read_flavors(args.flavors),
    terrain = read_terrain(args.terrain),
  }
  local names = Names.new(rows, cols)
  names:parse_graf(args.graf_pref, src)
  names:parse_xtra(args.xtra_pref)
  names:parse_flavors(args.flavor_pref, src)

  -- Group identical tiles in row-major order; a group keeps its first position and the
  -- names of all its copies, and the positional name of its first copy that has one.
  local positional = positional_names(cols)
  local groups, by_bytes = {}, {}
  local alpha_at = 3 * TILE * TILE + 1
  for r = 0, rows - 1 do
    local band = sheet:narrow(2, r * TILE + 1, TILE)
    for c = 0, cols - 1 do
      local tile = band:narrow(3, c * TILE + 1, TILE):clone()
      local bytes = tile:to_bytes()
      if bytes:find("[^\0]", alpha_at) then
        local g = by_bytes[bytes]
        if not g then
          g = { tile = tile, r = r, c = c, cands = {} }
          by_bytes[bytes] = g
          groups[#groups + 1] = g
        end
        for _, cand in ipairs(names.at[r * cols + c] or {}) do
          g.cands[#g.cands + 1] = cand
        end
        g.positional = g.positional or positional[r * cols + c]
      end
    end
  end

  local tsv, tsv_path = open_out(args.out, "sprites_labels.tsv")
  tsv:write("index\t", table.concat(LABELS, "\t"), "\tsource\n")
  local counts, zero_named, zero_unnamed, by_position = {}, 0, 0, 0
  for _, label in ipairs(LABELS) do counts[label] = 0 end
  for i, g in ipairs(groups) do
    -- a pref name always wins over a positional one
    local pick = best(g.cands) or g.positional
    if pick and pick == g.positional then by_position = by_position + 1 end
    local label = pick and pick.label or "none"
    local source = pick and pick.source or string.format("unnamed:r%dc%d", g.r, g.c)
    local row = {}
    for k, name in ipairs(LABELS) do row[k] = name == label and "1" or "0" end
    tsv:write(i - 1, "\t", table.concat(row, "\t"), "\t", source, "\n")
    if counts[label] then
      counts[label] = counts[label] + 1
    elseif pick then
      zero_named = zero_named + 1
    else
      zero_unnamed = zero_unnamed + 1
    end
  end
  tsv:close()

  local blank = minisd.zeros({ 4, TILE, TILE })
  local bands = {}
  for first = 1, #groups, SHEET_COLS do
    local line = {}
    for k = first, first + SHEET_COLS - 1 do
      line[#line + 1] = groups[k] and groups[k].tile or blank
    end
    bands[#bands + 1] = minisd.cat(line, 3)
  end
  local f, png_path = open_out(args.out, "sprites.png")
  f:close()
  assert(minisd.save_png(png_path, minisd.cat(bands, 2)))

  for _, label in ipairs(LABELS) do
    print(string.format("%-12s %5d", label, counts[label]))
  end
  print(string.format("%-12s %5d  (%d named in no class, %d unnamed)", "zero-context",
    zero_named + zero_unnamed, zero_named, zero_unnamed))
  print(string.format("%-12s %5d  -> %s, %s", "total", #groups, png_path, tsv_path))
  print(string.format("(%d sprites are labelled by position)", by_position))
end

main()
