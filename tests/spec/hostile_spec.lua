-- Hostile and damaged input (issue 11): each is refused with a message that names the file
-- and the problem, before any large allocation. The small files come from
-- tests/fixtures/gen_hostile.py; the large ones and the damaged models are made here.
local minisd = require("minisd")
local H = require("helpers")

local HOST = H.root .. "/tests/fixtures/files/hostile/"

local function fails(pattern, res, err)
  assert.is_nil(res)
  assert.truthy(tostring(err):find(pattern, 1, true), "message '" .. tostring(err)
    .. "' lacks '" .. pattern .. "'")
end

local le64 = H.le64

describe("hostile files", function()
  local dir
  setup(function()
    dir = H.tmpdir()
  end)
  teardown(function()
    H.run("rm -rf '" .. dir .. "'")
  end)

  it("PNG: a chunk past the end of the file, a huge picture, a truncated chunk", function()
    fails("chunk 'zTXt' at byte 33 declares 2147483632 bytes, past the end of the 41-byte file",
      minisd.load_png(HOST .. "png_chunk_bomb.png"))
    fails("16384x16384 pixels; minisd reads pictures of at most 8192 pixels a side",
      minisd.load_png(HOST .. "png_huge.png"))
    fails("png_truncated_chunk.png': truncated chunk at byte 33",
      minisd.load_png(HOST .. "png_truncated_chunk.png"))
    fails("not a PNG file (bad signature)", minisd.load_png_string("GIF89a......"))
  end)

  it("safetensors: duplicate names, many tensors and metadata keys, a header past the limit",
    function()
    fails("duplicate key", minisd.load_safetensors(HOST .. "st_dup_key.safetensors"))
    -- 40000 tensors: a valid file, read (the duplicate check sorts the keys)
    local n, parts, data = 40000, {}, {}
    for i = 0, n - 1 do
      parts[#parts + 1] = string.format(
        '"t%05d":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}', i, 4 * i, 4 * i + 4)
      data[#data + 1] = "\0\0\128\63" -- 1.0f
    end
    local h = "{" .. table.concat(parts, ",") .. "}"
    local path = dir .. "/many.safetensors"
    H.write_file(path, le64(#h) .. h .. table.concat(data))
    local t = assert(minisd.load_safetensors(path))
    assert.are.equal(1, t.t39999:item())
    -- as many metadata keys: kept, each appended once (no lookup per key)
    local mk = {}
    for i = 1, n do
      mk[i] = string.format('"k%05d":"v"', i)
    end
    local mh = '{"__metadata__":{' .. table.concat(mk, ",") .. "}}"
    H.write_file(path, le64(#mh) .. mh)
    local _, meta = assert(minisd.load_safetensors(path))
    assert.are.equal("v", meta.k40000)
    -- a header larger than minisd reads: refused before it is parsed
    local big = '{"__metadata__":{"pad":"' .. string.rep("x", 4200000) .. '"}}'
    H.write_file(path, le64(#big) .. big)
    fails("header is more than minisd reads (4194304 bytes", minisd.load_safetensors(path))
  end)

  it("npy: a shape with no elements whose other sizes overflow the strides", function()
    fails("its sizes other than 0 multiply to 286419269136, more than the limit",
      minisd.load_npy(HOST .. "npy_zero_huge.npy"))
  end)

  it("datasets with NaN or infinite numbers are refused at load", function()
    fails("sprite_labels_nc_1788_16x16.npy: the labels hold NaN or infinite values",
      minisd.data.load(HOST .. "npy_nan_labels/sprites_1788_16x16.npy"))
    fails("sprites_1788_16x16.npy: the images hold NaN or infinite values",
      minisd.data.load(HOST .. "npy_nan_images/sprites_1788_16x16.npy"))
    fails("sheet_nan_labels.tsv: line 3: label 2 is 'nan', not a finite number",
      minisd.data.load(HOST .. "sheet_nan.png"))
  end)

  it("a model whose config does not match its tensors is refused before it is built", function()
    local path = dir .. "/m.safetensors"
    minisd.manual_seed(1)
    assert(minisd.models.ContextUnet({ n_feat = 8 }):save(path))
    local tensors, meta = assert(minisd.load_safetensors(path))
    local json = require("minisd.json")
    local cfg = json.decode(meta["minisd.config"])
    cfg.n_feat = 8192 -- would be gigabytes of weights
    meta["minisd.config"] = json.encode(cfg)
    assert(minisd.save_safetensors(path, tensors, meta))
    local m, err = minisd.load_model(path)
    assert.is_nil(m)
    assert.truthy(err:find("its minisd.config (in_channels 3, n_feat 8192, n_cfeat 5, height 16) "
      .. "does not match tensor init_conv.conv1.0.weight ([8, 3, 3, 3])", 1, true), err)
    -- sizes past what sprites need are refused by the constructor, naming the limit
    assert.has_error(function() minisd.models.ContextUnet({ n_feat = 4096 }) end,
      "ContextUnet: n_feat must be an integer in 1..1024, got 4096")
  end)
end)

describe("command-line options", function()
  local function sh(cmd)
    return H.run(H.lua_bin .. " " .. cmd)
  end

  it("have limits that fit sprites, and negative numbers get the option's own message",
    function()
      local cases = {
        { "sample.lua --count 1e9", "--count must be an integer in 1..4096, got 1000000000" },
        { "sample.lua --scale 300", "--scale must be an integer in 1..64, got 300" },
        { "sample.lua --seed -5", "--seed must be an integer >= 0, got -5" },
        { "sample.lua -n -2", "--count must be an integer in 1..4096, got -2" },
        { "sample.lua --threads 999", "--threads must be an integer in 1..256, got 999" },
        { "train.lua --n-feat 4096", "--n-feat must be an integer in 8..1024, got 4096" },
        { "train.lua --epochs -3", "--epochs must be an integer in 1..1000000, got -3" },
        { "train.lua --batch-size 100000", "--batch-size must be an integer in 1..4096" },
      }
      for _, c in ipairs(cases) do
        local ok, _, out = sh(c[1])
        assert.is_false(ok, c[1])
        assert.truthy(out:find(c[2], 1, true), c[1] .. ": " .. out)
      end
    end)

  it("a resumed run takes corrected per-invocation options and refuses the others", function()
    local dir = H.tmpdir()
    local run = dir .. "/run"
    local tiny = "--limit 16 --batch-size 8 --n-feat 8 --sample-every 0 --progress plain --quiet"
    local ok, _, out = sh("train.lua " .. tiny .. " --epochs 2 --stop-after 1 --out " .. run)
    assert.is_true(ok, out)
    -- a temporary file left by a killed write is cleaned up on the next start
    H.write_file(run .. "/checkpoint.safetensors.tmp.4242.0", "partial")
    ok, _, out = sh("train.lua --resume " .. run .. " --lr 0.5")
    assert.is_false(ok)
    assert.truthy(out:find("--lr cannot change when resuming (the run has 0.001)", 1, true), out)
    ok, _, out = sh("train.lua --resume " .. run .. " --sample-every 2 --sample-steps 2 --quiet")
    assert.is_true(ok, out)
    assert.is_true(H.exists(run .. "/samples_epoch002.png"))
    assert.is_false(H.exists(run .. "/checkpoint.safetensors.tmp.4242.0"))
    ok, _, out = sh("train.lua --resume " .. run .. " --quiet")
    assert.is_true(ok, out)
    assert.truthy(out:find("nothing to do: the run has finished its 2 epochs (4 steps)", 1,
      true), out)
    -- damaged checkpoints: what is wrong, in the user's terms
    local ckpt = run .. "/checkpoint.safetensors"
    local tensors, meta = assert(minisd.load_safetensors(ckpt))
    local cases = {
      { function(m) m["minisd.checkpoint"] = m["minisd.checkpoint"]:sub(1, 50) end, {},
        "its minisd.checkpoint metadata is not a JSON object" },
      { function(_, t) t["model.out.3.weight"] = nil end, {},
        "the model in it does not load (load_state_dict: ContextUnet: missing keys: "
          .. "out.3.weight)" },
    }
    for _, c in ipairs(cases) do
      local t2, m2 = {}, {}
      for k, v in pairs(tensors) do
        t2[k] = v
      end
      for k, v in pairs(meta) do
        m2[k] = v
      end
      c[1](m2, t2)
      local bad = dir .. "/bad"
      H.run("mkdir -p " .. bad)
      assert(minisd.save_safetensors(bad .. "/checkpoint.safetensors", t2, m2))
      ok, _, out = sh("train.lua --resume " .. bad)
      assert.is_false(ok)
      assert.truthy(out:find(c[3], 1, true), out)
      assert.truthy(out:find("the checkpoint is damaged", 1, true), out)
    end
    H.run("rm -rf '" .. dir .. "'")
  end)
end)
