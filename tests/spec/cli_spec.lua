-- train.lua and sample.lua as a user runs them (tiny settings, a few seconds each).
local minisd = require("minisd")
local H = require("helpers")

local function sh(cmd)
  return H.run(H.lua_bin .. " " .. cmd)
end

local read_losses = H.read_losses

local read_all = H.read_file

local TINY = "--limit 24 --batch-size 8 --n-feat 8 --sample-every 0 --progress plain --quiet"

describe("train.lua", function()
  local tmp = H.tmpdir()

  it("prints --help with every option", function()
    local ok, _, out = sh("train.lua --help")
    assert.is_true(ok, out)
    for _, opt in ipairs({ "--data", "--context", "--epochs", "--batch-size", "--lr", "--n-feat",
      "--channels", "--background", "--seed", "--threads", "--out", "--resume", "--lr-schedule",
      "--warmup", "--loss-weighting", "--snr-gamma", "--context-drop", "--init", "--recipe",
      "--other-label" }) do
      assert.truthy(out:find(opt, 1, true), "missing " .. opt)
    end
  end)

  it("rejects bad arguments with a message and a non-zero exit", function()
    local cases = {
      { "--epochs 0", "--epochs must be an integer in 1..1000000, got 0" },
      { "--channels 5", "--channels must be 3 or 4" },
      { "--bogus", "unknown option '--bogus'" },
      { "--n-feat 12", "multiple of 8" },
      { "--data /nonexistent/sprites.png", "/nonexistent/sprites.png" },
      { "--resume " .. tmp .. "/nothing-here", "no checkpoint" },
      { TINY .. " --sample-every 1 --sample-steps 600 --out " .. tmp .. "/ss",
        "--sample-steps must be at most 500" },
    }
    for _, c in ipairs(cases) do
      local ok, code, out = sh("train.lua " .. c[1])
      assert.is_false(ok, c[1])
      assert.are_not.equal(0, code)
      assert.truthy(out:find(c[2], 1, true), c[1] .. " gave: " .. out)
    end
    assert.is_nil(io.open(tmp .. "/ss/checkpoint.safetensors", "rb")) -- refused before a step
  end)

  it("lowers the loss on a tiny run and writes a loadable model", function()
    local out_dir = tmp .. "/fit"
    local ok, _, out = sh("train.lua " .. TINY .. " --epochs 10 --lr 3e-3 --out " .. out_dir)
    assert.is_true(ok, out)
    local rows = read_losses(out_dir .. "/losses.tsv")
    assert.are.equal(30, #rows)
    local first, last = 0, 0
    for i = 1, 6 do
      first = first + tonumber(rows[i].loss) / 6
      last = last + tonumber(rows[#rows - 6 + i].loss) / 6
    end
    assert.is_true(last < 0.8 * first, string.format("loss %.4f -> %.4f", first, last))
    local model = assert(minisd.load_model(out_dir .. "/model.safetensors"))
    assert.are.equal(8, model.config.n_feat)
    assert.are.equal(4, model.config.in_channels) -- the bundled sheet is RGBA
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing" },
      model.config.label_names)
    assert.are.equal(30, model.training_summary.steps)
    -- the signal-leak statistics: the 24 sprites' channel means, summed here, all in "none"
    -- (trained without --context)
    local imgs = minisd.data.load(nil, { channels = 4 }).images:narrow(1, 1, 24):totable()
    local want = {}
    for _, img in ipairs(imgs) do
      for c = 1, 4 do
        local sum = 0
        for _, row in ipairs(img[c]) do
          for _, v in ipairs(row) do
            sum = sum + v
          end
        end
        want[#want + 1] = sum / 256
      end
    end
    local leak = model.config.signal_leak
    assert.are.same({ "none" }, require("minisd.util").sorted_keys(leak.groups))
    H.assert_close(minisd.tensor(leak.groups.none), minisd.tensor(want), 0, 5e-4 + 1e-6)
  end)

  it("resumes exactly: the same losses as an uninterrupted run", function()
    local a, b = tmp .. "/a", tmp .. "/b"
    assert.is_true((sh("train.lua " .. TINY .. " --context --epochs 3 --out " .. a)))
    local ok, _, out = sh("train.lua " .. TINY .. " --context --epochs 3 --stop-after 4 --out "
      .. b)
    assert.is_true(ok, out)
    assert.truthy(out:find("checkpoint saved", 1, true), out)
    assert.are.equal(4, #read_losses(b .. "/losses.tsv"))
    -- a crash after the checkpoint can leave logged steps that resume will redo
    local f = assert(io.open(b .. "/losses.tsv", "a"))
    f:write("2\t2\t9.99\t0.001\n2\t3\t9.98\t0.001\n")
    f:close()
    ok, _, out = sh("train.lua --resume " .. b .. " --quiet")
    assert.is_true(ok, out)
    assert.are.equal(read_all(a .. "/losses.tsv"), read_all(b .. "/losses.tsv"))
    local ma = minisd.load_safetensors(a .. "/model.safetensors")
    local mb = minisd.load_safetensors(b .. "/model.safetensors")
    for name, t in pairs(ma) do
      assert.are.same(t:totable(), mb[name]:totable(), name)
    end
  end)

  it("follows --lr-schedule and --warmup, keeps the recipe in the checkpoint, resumes exactly",
    function()
      -- 24 sprites in batches of 8: 3 steps an epoch, 4 epochs, 12 steps
      local opts = "train.lua " .. TINY .. " --context --epochs 4 --lr 2e-3 --lr-schedule cosine"
        .. " --warmup 5 --loss-weighting min-snr --snr-gamma 3 --context-drop 0.25"
      local a, b = tmp .. "/rc_a", tmp .. "/rc_b"
      local ok, _, out = sh(opts .. " --out " .. a)
      assert.is_true(ok, out)
      local rows = read_losses(a .. "/losses.tsv")
      assert.are.equal(12, #rows)
      for i, r in ipairs(rows) do -- step i comes after i - 1 done
        local done = i - 1
        local want = 2e-3 * 0.5 * (1 + math.cos(math.pi * done / 12)) * math.min(1, i / 5)
        H.assert_close(tonumber(r.lr), want, 1e-6, 0, "lr of step " .. i)
      end
      ok, _, out = sh(opts .. " --stop-after 5 --out " .. b)
      assert.is_true(ok, out)
      -- the recipe is the run's: changing it on resume is refused by name
      local bad, _, msg = sh("train.lua --resume " .. b .. " --loss-weighting uniform")
      assert.is_false(bad)
      assert.truthy(msg:find("--loss-weighting cannot change when resuming (the run has min-snr)",
        1, true), msg)
      ok, _, out = sh("train.lua --resume " .. b .. " --quiet")
      assert.is_true(ok, out)
      assert.are.equal(read_all(a .. "/losses.tsv"), read_all(b .. "/losses.tsv"))
      local model = assert(minisd.load_model(a .. "/model.safetensors"))
      local t = model.training_summary
      assert.are.same({ "cosine", 5, "min-snr", 3, 0.25 }, { t.lr_schedule, t.warmup,
        t.loss_weighting, t.snr_gamma, t.context_drop })
      -- the seed's schedule by default: one learning rate per epoch, decaying linearly; the
      -- default recipe weights the loss by Min-SNR, --recipe seed does not, an option wins
      local c = tmp .. "/rc_c"
      ok, _, out = sh("train.lua " .. TINY .. " --epochs 4 --out " .. c)
      assert.is_true(ok, out)
      for i, r in ipairs(read_losses(c .. "/losses.tsv")) do
        H.assert_close(tonumber(r.lr), 1e-3 * (1 - math.floor((i - 1) / 3) / 4), 1e-6, 0,
          "seed lr of step " .. i)
      end
      for _, case in ipairs({ { "", "minisd", "min-snr" }, { "--recipe seed", "seed", "uniform" },
        { "--recipe seed --loss-weighting min-snr", "seed", "min-snr" },
        { "--loss-weighting uniform", "minisd", "uniform" } }) do
        local dir = tmp .. "/rc_r"
        ok, _, out = sh("train.lua " .. TINY .. " --epochs 1 --stop-after 1 " .. case[1]
          .. " --out " .. dir)
        assert.is_true(ok, out)
        local info = assert(require("minisd.train").load_checkpoint(dir))
        assert.are.same({ case[2], case[3] }, { info.args.recipe, info.args.loss_weighting },
          case[1])
        os.remove(dir .. "/checkpoint.safetensors")
      end
      local okr, rerr = pcall(require("minisd.train").run, { recipe = "fast", limit = 8,
        batch_size = 8, n_feat = 8, epochs = 1, out = tmp .. "/rc_bad", quiet = true })
      assert.is_false(okr)
      assert.truthy(tostring(rerr):find("unknown recipe 'fast' (known: minisd, seed)", 1, true),
        rerr)
      -- the seed's recipe reproduces the seed's loss: its first step's loss is the plain MSE
      -- (the same draws with the two weightings give different first losses)
      local s1, s2 = tmp .. "/rc_s1", tmp .. "/rc_s2"
      assert.is_true((sh("train.lua " .. TINY .. " --epochs 1 --stop-after 1 --recipe seed --out "
        .. s1)))
      assert.is_true((sh("train.lua " .. TINY .. " --epochs 1 --stop-after 1 --out " .. s2)))
      assert.are_not.equal(read_losses(s1 .. "/losses.tsv")[1].text,
        read_losses(s2 .. "/losses.tsv")[1].text)
      for _, case in ipairs({ { "--warmup -1", "--warmup must be" },
        { "--snr-gamma 0", "--snr-gamma must be a positive number" },
        { "--context-drop 2", "--context-drop must be a number in [0, 1]" },
        { "--lr-schedule step", "--lr-schedule" } }) do
        local okc, _, msgc = sh("train.lua " .. TINY .. " " .. case[1] .. " --out " .. tmp
          .. "/rc_x")
        assert.is_false(okc, case[1])
        assert.truthy(msgc:find(case[2], 1, true), case[1] .. " gave: " .. msgc)
      end
    end)

  it("warns that --context-drop 0 leaves the null context untrained when every sprite has a "
    .. "label", function()
      -- a sheet of three 16x16 RGBA tiles; the labels file names two or all three
      local rows = {}
      for c = 1, 4 do
        rows[c] = {}
        for y = 1, 16 do
          rows[c][y] = {}
          for x = 1, 48 do
            rows[c][y][x] = c == 4 and 1 or ((x + y * c) % 5) / 4
          end
        end
      end
      local sheet = tmp .. "/cd0.png"
      assert(minisd.save_png(sheet, minisd.tensor(rows)))
      local train = "train.lua --data " .. sheet .. " --context --epochs 1 --batch-size 2 "
        .. "--n-feat 8 --sample-every 0 --progress plain --out " .. tmp .. "/cd0_run "
      local warning = "--context-drop 0 and no sprite without a label: the null context is "
        .. "never trained"
      for _, case in ipairs({
        { "index\thero\tfood\n0\t1\t0\n1\t0\t1\n", "--context-drop 0", true },
        { "index\thero\tfood\n0\t1\t0\n1\t0\t1\n", "--context-drop 0.1", false },
        { "index\thero\tfood\n0\t1\t0\n1\t0\t1\n2\t0\t0\n", "--context-drop 0", false },
      }) do
        H.write_file(tmp .. "/cd0_labels.tsv", case[1])
        local ok, _, out = sh(train .. case[2])
        assert.is_true(ok, out)
        assert.are.equal(case[3], out:find(warning, 1, true) ~= nil, case[2] .. ": " .. out)
      end
    end)

  it("fine-tunes from a model file with --init, and refuses one that does not fit", function()
    local base, tuned = tmp .. "/init_base", tmp .. "/init_tuned"
    local ok, _, out = sh("train.lua " .. TINY .. " --context --epochs 1 --out " .. base)
    assert.is_true(ok, out)
    local from = base .. "/model.safetensors"
    -- a guidance scale measured on these weights (tune_guidance.lua) is not the new model's
    ok, _, out = sh("scripts/tune_guidance.lua " .. from .. " --set ddpm=2.5")
    assert.is_true(ok, out)
    assert.are.same({ ddpm = 2.5 }, assert(minisd.load_model(from)).config.guidance)
    -- a learning rate of 1e-9: after 3 Adam steps every weight is within 3e-9 of the start
    ok, _, out = sh("train.lua " .. TINY .. " --context --epochs 1 --lr 1e-9 --seed 5 --init "
      .. from .. " --out " .. tuned)
    assert.is_true(ok, out)
    local a = minisd.load_safetensors(from)
    local b = minisd.load_safetensors(tuned .. "/model.safetensors")
    local w = "init_conv.conv1.0.weight"
    assert.is_true((a[w] - b[w]):abs():max() < 1e-8)
    assert.is_true((a[w] - b[w]):abs():max() > 0) -- it did train
    local m = assert(minisd.load_model(tuned .. "/model.safetensors"))
    assert.are.equal(from, m.training_summary.init)
    assert.are.equal(8, m.config.n_feat)
    assert.is_nil(m.config.guidance)
    for _, case in ipairs({
      { "--n-feat 16", "has n_feat 8; --n-feat 16 does not match" },
      { "--channels 3", "the model has in_channels 4, the data 3" },
      { "--data " .. tmp .. "/none.png", "none.png" } }) do
      local okc, _, msg = sh("train.lua " .. TINY .. " --init " .. from .. " " .. case[1]
        .. " --out " .. tmp .. "/init_x")
      assert.is_false(okc, case[1])
      assert.truthy(msg:find(case[2], 1, true), case[1] .. " gave: " .. msg)
    end
    -- --other-label: the model gets a sixth label, whose weights start at zero, so that at
    -- first it means what the null context means
    local wide = tmp .. "/init_wide"
    ok, _, out = sh("train.lua " .. TINY .. " --context --other-label --epochs 1 --lr 1e-9 --init "
      .. from .. " --out " .. wide)
    assert.is_true(ok, out)
    local mw = assert(minisd.load_model(wide .. "/model.safetensors"))
    assert.are.same({ "hero", "non-hero", "food", "spell", "side-facing", "other" },
      mw.config.label_names)
    -- the first 24 bundled sprites have no label: all "other" (label 6) for the leak now
    assert.are.same({ "6" }, require("minisd.util").sorted_keys(mw.config.signal_leak.groups))
    assert.are.equal(24 * 4, #mw.config.signal_leak.groups["6"])
    local cw = mw:named_parameters()["contextembed1.model.0.weight"]
    local cb = a["contextembed1.model.0.weight"]
    assert.are.same({ 16, 6 }, cw:shape())
    assert.is_true((cw:narrow(2, 1, 5) - cb):abs():max() < 1e-8)
    assert.is_true(cw:narrow(2, 6, 1):abs():max() < 1e-8)
    local arch = minisd.models.get("ContextUnet")
    local five = assert(minisd.load_model(from))
    local widened = minisd.models.ContextUnet({ in_channels = 4, n_feat = 8, n_cfeat = 6 })
    widened:load_state_dict(arch.widen_context(five:state_dict(), 6))
    widened:eval()
    local x = minisd.randn({ 2, 4, 16, 16 }, minisd.Generator(8))
    local tt = minisd.full({ 2, 1, 1, 1 }, 0.3)
    minisd.no_grad(function()
      local y_null = five(x, tt, minisd.zeros({ 2, 5 }))
      local y_other = widened(x, tt, minisd.tensor({ { 0, 0, 0, 0, 0, 1 }, { 0, 0, 0, 0, 0, 1 } }))
      H.assert_close(y_other:totable(), y_null:totable(), 1e-6, 1e-6, "other = null at first")
      local y_hero = five(x, tt, minisd.tensor({ { 1, 0, 0, 0, 0 }, { 0, 0, 1, 0, 0 } }))
      local y_hero6 = widened(x, tt, minisd.tensor({ { 1, 0, 0, 0, 0, 0 }, { 0, 0, 1, 0, 0, 0 } }))
      H.assert_close(y_hero6:totable(), y_hero:totable(), 1e-6, 1e-6, "the five labels kept")
    end)
    local bad, _, bmsg = sh("train.lua " .. TINY .. " --other-label --out " .. tmp .. "/init_x")
    assert.is_false(bad)
    assert.truthy(bmsg:find("--other-label needs --context", 1, true), bmsg)
    local okc, _, msg = sh("train.lua " .. TINY .. " --init " .. tmp .. "/none.safetensors --out "
      .. tmp .. "/init_x")
    assert.is_false(okc)
    assert.truthy(msg:find("--init: load_model: cannot open", 1, true), msg)
    okc, _, msg = sh("train.lua " .. TINY .. " --init models/sprite-classifier.safetensors --out "
      .. tmp .. "/init_x")
    assert.is_false(okc)
    assert.truthy(msg:find("not a diffusion model", 1, true), msg)
  end)

  it("keeps an EMA of the weights: in the model file, in the checkpoint, exact on resume",
    function()
      local opts = "train.lua " .. TINY .. " --context --epochs 2 --ema 0.9"
      local a, b = tmp .. "/ema_a", tmp .. "/ema_b"
      assert.is_true((sh(opts .. " --out " .. a)))
      local ok, _, out = sh(opts .. " --stop-after 4 --out " .. b)
      assert.is_true(ok, out)
      ok, _, out = sh("train.lua --resume " .. b .. " --quiet")
      assert.is_true(ok, out)
      local ma = minisd.load_safetensors(a .. "/model.safetensors")
      local mb = minisd.load_safetensors(b .. "/model.safetensors")
      local info = require("minisd.train").load_checkpoint(a)
      local n = 0
      for name, t in pairs(info.ema_state) do
        n = n + 1
        assert.are.same(t:totable(), ma[name]:totable(), name)
        assert.are.same(t:totable(), mb[name]:totable(), name)
      end
      assert.is_true(n > 10)
      -- after 6 steps with decay min(0.9, (1 + s) / (10 + s)) the average lags the weights
      local w = "init_conv.conv1.0.weight"
      local lag = (info.model_state[w] - ma[w]):abs():max()
      assert.is_true(lag > 1e-6, "EMA equals the trained weights")
      assert.is_true(lag < 0.05, "EMA far from the trained weights: " .. lag)
    end)

  it("trains in bf16, keeps the precision in the checkpoint and resumes it exactly", function()
    -- n_feat 32: the convolutions have 32 and 64 channels, the AMX tiles' shapes
    local opts = "train.lua " .. TINY:gsub("%-%-n%-feat 8", "--n-feat 32") .. " --epochs 2"
    local a, b, c = tmp .. "/bf_a", tmp .. "/bf_b", tmp .. "/fp_c"
    assert.is_true((sh(opts .. " --precision bf16 --out " .. a)))
    assert.is_true((sh(opts .. " --out " .. c)))
    local ok, _, out = sh(opts .. " --precision bf16 --stop-after 2 --out " .. b)
    assert.is_true(ok, out)
    ok, _, out = sh("train.lua --resume " .. b .. " --quiet")
    assert.is_true(ok, out)
    assert.are.equal(read_all(a .. "/losses.tsv"), read_all(b .. "/losses.tsv"))
    local la, lc = read_losses(a .. "/losses.tsv"), read_losses(c .. "/losses.tsv")
    assert.are.equal(#la, #lc)
    -- the same first batch; bf16 rounding moves the losses a little, not a lot
    local l1, l2 = tonumber(la[#la].loss), tonumber(lc[#lc].loss)
    assert.are_not.equal(la[#la].text, lc[#lc].text)
    assert.is_true(math.abs(l1 - l2) < 0.1 * l2, la[#la].text .. " vs " .. lc[#lc].text)
    -- without --quiet, a CPU with no bf16 hardware is told that fp32 is faster
    local loud = opts:gsub(" %-%-quiet", "") .. " --epochs 1 --precision bf16 --out " .. tmp
      .. "/bf_loud"
    ok, _, out = sh(loud)
    assert.is_true(ok, out)
    minisd.set_precision("bf16")
    local hw = select(2, minisd.get_precision())
    minisd.set_precision("fp32")
    assert.are.equal(not hw, out:find("neither AMX nor AVX512-BF16", 1, true) ~= nil, out)
  end)

  it("stops at the first non-finite loss, writing no model", function()
    local dir = tmp .. "/diverge"
    local ok, code, out = sh("train.lua " .. TINY .. " --epochs 3 --lr 1e30 --out " .. dir)
    assert.is_false(ok)
    assert.are.equal(1, code)
    -- NaN here; an overflow elsewhere may give an infinite loss instead
    assert.truthy(out:find("training diverged: the loss is [%+%-]?%a+ at epoch 1, step 2; no "
      .. "model written %(try a lower %-%-lr"), out)
    assert.is_nil(io.open(dir .. "/model.safetensors", "rb"))
    assert.are.equal(1, #read_losses(dir .. "/losses.tsv")) -- the one finite step
  end)

  it("saves a checkpoint and exits 130 on Ctrl-C", function()
    local dir = tmp .. "/int"
    local cmd = string.format([[%s train.lua --limit 400 --batch-size 8 --n-feat 8 --epochs 50 \
      --sample-every 0 --progress plain --out %s > %s/log 2>&1 & pid=$!
      for i in $(seq 1 200); do
        [ -f %s/losses.tsv ] && [ "$(wc -l < %s/losses.tsv)" -ge 3 ] && break; sleep 0.1
      done
      kill -INT $pid; wait $pid; echo "code=$?"]], H.lua_bin, dir, tmp, dir, dir)
    os.execute("mkdir -p " .. dir)
    local _, _, out = H.run(cmd)
    assert.truthy(out:find("code=130", 1, true), out .. read_all(tmp .. "/log"))
    local info = assert(require("minisd.train").load_checkpoint(dir))
    assert.is_true(info.global_step >= 2)
    assert.are.equal(info.global_step, #read_losses(dir .. "/losses.tsv"))
  end)
end)

describe("scripts/export_model.lua", function()
  it("writes the EMA (as train.lua's model file) or the trained weights of a checkpoint",
    function()
      local tmp = H.tmpdir()
      local run = tmp .. "/run"
      local ok, _, out = sh("train.lua " .. TINY .. " --epochs 1 --ema 0.9 --out " .. run)
      assert.is_true(ok, out)
      ok, _, out = sh("scripts/export_model.lua " .. run .. " " .. tmp .. "/ema.safetensors "
        .. "--weights ema")
      assert.is_true(ok, out)
      ok, _, out = sh("scripts/export_model.lua " .. run .. " " .. tmp .. "/tr.safetensors")
      assert.is_true(ok, out)
      local ema = assert(minisd.load_model(tmp .. "/ema.safetensors")):state_dict()
      local model = assert(minisd.load_model(run .. "/model.safetensors")):state_dict()
      local trained = assert(minisd.load_model(tmp .. "/tr.safetensors")):state_dict()
      local info = assert(require("minisd.train").load_checkpoint(run))
      local differs = false
      for k, v in pairs(model) do
        H.assert_close(ema[k], v, 0, 0, k)
        H.assert_close(trained[k], info.model_state[k], 0, 0, k)
        differs = differs or (trained[k] - v):abs():max() > 0
      end
      assert.is_true(differs, "the EMA equals the trained weights")
      -- the signal-leak statistics travel through the checkpoint into both files
      local leak = assert(minisd.load_model(run .. "/model.safetensors")).config.signal_leak
      assert.are.equal(24 * 4, #leak.groups.none)
      assert.are.same(leak, assert(minisd.load_model(tmp .. "/tr.safetensors")).config.signal_leak)
      assert.are.same(leak, assert(minisd.load_model(tmp .. "/ema.safetensors")).config.signal_leak)
      ok, _, out = sh("scripts/export_model.lua " .. run .. " " .. tmp .. "/x.bin")
      assert.is_false(ok)
      assert.truthy(out:find("must be a .safetensors file", 1, true), out)
    end)
end)

describe("scripts/signal_leak.lua", function()
  it("stores the data's statistics by label set, or removes them; the weights stay", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(3)
    local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    assert(m:save(tmp .. "/m.safetensors", { dtype = "F16" }))
    local ok, _, out = sh("scripts/signal_leak.lua " .. tmp .. "/m.safetensors -o " .. tmp
      .. "/leak.safetensors")
    assert.is_true(ok, out)
    assert.truthy(out:find("the means of 1806 sprites in 6 label sets", 1, true), out)
    local a = minisd.load_safetensors(tmp .. "/m.safetensors")
    local b = minisd.load_safetensors(tmp .. "/leak.safetensors")
    for k, v in pairs(a) do
      H.assert_close(b[k], v, 0, 0, k)
    end
    -- still half precision: the weights' dtype in the header
    local head = H.read_file(tmp .. "/leak.safetensors")
    assert.truthy(head:find('"dtype":"F16"', 1, true), "no F16 tensor")
    assert.falsy(head:find('"dtype":"F32"', 1, true))
    -- one set per label pattern of the bundled sprites, counted here
    local counts = {}
    for _, row in ipairs(minisd.data.load(nil, { channels = 4 }).labels:totable()) do
      local on = {}
      for j, v in ipairs(row) do
        if v >= 0.5 then
          on[#on + 1] = tostring(j)
        end
      end
      local key = #on > 0 and table.concat(on, "+") or "none"
      counts[key] = (counts[key] or 0) + 4
    end
    local leak = assert(minisd.load_model(tmp .. "/leak.safetensors")).config.signal_leak
    local got = {}
    for key, flat in pairs(leak.groups) do
      got[key] = #flat
    end
    assert.are.same(counts, got)
    ok, _, out = sh("scripts/signal_leak.lua " .. tmp .. "/leak.safetensors --remove")
    assert.is_true(ok, out)
    assert.is_nil(assert(minisd.load_model(tmp .. "/leak.safetensors")).config.signal_leak)
    ok, _, out = sh("scripts/signal_leak.lua " .. tmp .. "/m.safetensors --no-context -o "
      .. tmp .. "/u.safetensors")
    assert.is_true(ok, out)
    assert.truthy(out:find("the means of 1806 sprites in 1 label sets", 1, true), out)
    ok, _, out = sh("scripts/signal_leak.lua " .. tmp .. "/nothere.safetensors")
    assert.is_false(ok)
    assert.truthy(out:find("nothere.safetensors", 1, true), out)
  end)
end)

describe("sample.lua", function()
  local tmp = H.tmpdir()
  local model_path = tmp .. "/m.safetensors"

  setup(function()
    minisd.manual_seed(1)
    local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
    m:save(model_path)
  end)

  it("writes a PNG grid of the right size", function()
    local out = tmp .. "/grid.png"
    local ok, _, log = sh("sample.lua " .. model_path
      .. " -c hero -c 'food,spell=0.6' -n 3 --steps 3 --scale 2 -o " .. out)
    assert.is_true(ok, log)
    local img = minisd.load_png(out)
    -- 2 rows (contexts) x 3 columns, 16x16 sprites, 1-pixel padding, scaled by 2
    assert.are.same({ 4, 2 * (2 * 17 + 1), 2 * (3 * 17 + 1) }, img:shape())
  end)

  it("writes pixel-art alpha with --alpha-threshold, and refuses it for an RGB model", function()
    local out = tmp .. "/alpha.png"
    local ok, _, log = sh("sample.lua " .. model_path .. " -n 3 --steps 2 --scale 1 "
      .. "--alpha-threshold 0.5 -o " .. out)
    assert.is_true(ok, log)
    local img = minisd.load_png(out)
    local a = img:narrow(1, 4, 1)
    -- every alpha is 0 or 1: a (1 - a) is 0 everywhere
    assert.are.equal(0, (a * (a * -1 + 1)):abs():max())
    assert.is_true(a:max() == 1)
    local rgb = tmp .. "/rgb.safetensors"
    minisd.models.ContextUnet({ n_feat = 8, in_channels = 3 }):save(rgb)
    local code
    ok, code, log = sh("sample.lua " .. rgb .. " --alpha-threshold 0.5 --steps 2 -o " .. out)
    assert.is_false(ok)
    assert.are.equal(1, code)
    assert.truthy(log:find("--alpha-threshold needs an RGBA model; this one has 3 channels", 1,
      true), log)
  end)

  it("maps colours to --palette (only its colours, alpha 0 or 255) and to --colors k",
    function()
      local out = tmp .. "/pal.png"
      local pal = "#1a1c2c,#b13e53,#ffcd75,#38b764"
      local ok, _, log = sh("sample.lua " .. model_path .. " -n 3 --steps 2 --scale 1 "
        .. "--alpha-threshold 0.5 --palette '" .. pal .. "' -o " .. out)
      assert.is_true(ok, log)
      local allowed = { ["26,28,44"] = true, ["177,62,83"] = true, ["255,205,117"] = true,
        ["56,183,100"] = true }
      local img = minisd.load_png(out)
      local shape = img:shape()
      -- the sprites only: 1-pixel padding between them is black, transparent
      for k = 0, 2 do
        local sprite = img:narrow(2, 2, 16):narrow(3, 2 + 17 * k, 16)
        local bytes = require("minisd.image").rgba_bytes(sprite)
        for i = 1, #bytes, 4 do
          local r, g, b, a = bytes:byte(i, i + 3)
          assert.is_true(allowed[r .. "," .. g .. "," .. b], r .. "," .. g .. "," .. b)
          assert.is_true(a == 0 or a == 255, "alpha " .. a)
        end
      end
      assert.are.same({ 4, 18, 52 }, shape)
      -- a swatch PNG works the same way
      local swatch = tmp .. "/swatch.png"
      minisd.save_png(swatch, require("minisd.image").from_rgba_bytes(
        string.char(26, 28, 44, 255, 255, 205, 117, 255), 2, 1))
      ok, _, log = sh("sample.lua " .. model_path .. " -n 2 --steps 2 --scale 1 --palette "
        .. swatch .. " -o " .. out)
      assert.is_true(ok, log)
      ok, _, log = sh("sample.lua " .. model_path .. " -n 2 --steps 2 --scale 1 --colors 3 -o "
        .. out)
      assert.is_true(ok, log)
      ok, _, log = sh("sample.lua " .. model_path .. " --palette '#12' -o " .. out)
      assert.is_false(ok)
      assert.truthy(log:find("--palette: '#12' is not a colour", 1, true), log)
    end)

  it("samples with DDPM in 50 steps by default (diffusion.recommended_sampler), DDIM in 25",
    function()
      for _, case in ipairs({ { "", "ddpm", 50, "fixed_small" }, { "--sampler ddim", "ddim", 25 },
        { "--sampler ddpm --steps 7 --variance fixed_large", "ddpm", 7, "fixed_large" } }) do
        local sheet = tmp .. "/rs.png"
        local ok, _, log = sh("sample.lua " .. model_path .. " -c hero -n 1 " .. case[1]
          .. " --sheet " .. sheet .. " -o " .. tmp .. "/rs_grid.png")
        assert.is_true(ok, log)
        local idx = dofile(tmp .. "/rs.lua")
        assert.are.same({ case[2], case[3], case[4] }, { idx.sampler, idx.steps, idx.variance },
          case[1])
      end
      local ok, _, log = sh("sample.lua " .. model_path .. " --sampler ddim --variance "
        .. "fixed_small -o " .. tmp .. "/x.png")
      assert.is_false(ok)
      assert.truthy(log:find("--variance applies to ddpm only, not to ddim", 1, true), log)
    end)

  it("guides by default with a context (diffusion.recommended_guidance), not without", function()
    local sheet, index = tmp .. "/auto.png", tmp .. "/auto.lua"
    -- the untrained model of the other cases, marked as trained with contexts
    local trained = tmp .. "/ctx.safetensors"
    minisd.manual_seed(1)
    minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 }):save(trained,
      { ["minisd.training"] = '{"context": true}' })
    local ok, _, log = sh("sample.lua " .. model_path .. " -c hero -n 1 --steps 2 --sheet "
      .. sheet .. " -o " .. tmp .. "/auto_grid.png")
    assert.is_true(ok, log)
    assert.are.equal(0, dofile(index).guidance) -- not trained with contexts: off
    ok, _, log = sh("sample.lua " .. trained .. " -c hero -n 1 --steps 2 --sheet "
      .. sheet .. " -o " .. tmp .. "/auto_grid.png")
    assert.is_true(ok, log)
    assert.are.equal(3, minisd.diffusion.recommended_guidance)
    assert.are.equal(minisd.diffusion.recommended_guidance, dofile(index).guidance)
    -- per sampler: the deterministic ones take 6
    for _, case in ipairs({ { "ddim", 6 }, { "dpmpp_2m", 6 }, { "euler_a", 3 } }) do
      ok, _, log = sh("sample.lua " .. trained .. " -c hero -n 1 --steps 2 --sampler " .. case[1]
        .. " --sheet " .. sheet .. " -o " .. tmp .. "/auto_grid.png")
      assert.is_true(ok, log)
      assert.are.equal(case[2], dofile(index).guidance, case[1])
      assert.are.equal(case[2], minisd.diffusion.recommended_guidance_for(case[1]))
    end
    assert.is_false(dofile(index).signal_leak) -- the model has no statistics
    -- a model with them starts from them, unless told not to; the index says which
    local leaky = tmp .. "/leaky.safetensors"
    minisd.manual_seed(1)
    minisd.models.ContextUnet({ n_feat = 8, in_channels = 4, signal_leak = { channels = 4,
      groups = { none = { 0, 0, 0, -1 } } } }):save(leaky)
    for _, case in ipairs({ { "", true }, { " --no-signal-leak", false } }) do
      ok, _, log = sh("sample.lua " .. leaky .. " -n 1 --steps 2 --sheet " .. sheet .. " -o "
        .. tmp .. "/leak_grid.png" .. case[1])
      assert.is_true(ok, log)
      assert.are.equal(case[2], dofile(index).signal_leak, case[1])
    end
    ok, _, log = sh("sample.lua " .. trained .. " -c none -n 1 --steps 2 --sheet " .. sheet
      .. " -o " .. tmp .. "/auto_grid.png")
    assert.is_true(ok, log)
    assert.are.equal(0, dofile(index).guidance)
    ok, _, log = sh("sample.lua " .. trained .. " -c hero -n 1 --steps 2 --guidance 1.5 "
      .. "--negative food --sheet " .. sheet .. " -o " .. tmp .. "/auto_grid.png")
    assert.is_true(ok, log)
    assert.are.equal(1.5, dofile(index).guidance)
    ok, _, log = sh("sample.lua " .. trained .. " -c hero -n 1 --steps 2 --negative food "
      .. "--sheet " .. sheet .. " -o " .. tmp .. "/auto_grid.png") -- auto guides: negative works
    assert.is_true(ok, log)
    assert.are.equal(3, dofile(index).guidance)
    ok, _, log = sh("sample.lua " .. trained .. " -c hero --negative food --guidance 0 -o "
      .. tmp .. "/x.png")
    assert.is_false(ok)
    assert.truthy(log:find("--negative works through guidance: not with --guidance 0", 1, true),
      log)
    ok, _, log = sh("sample.lua " .. model_path .. " --guidance often -o " .. tmp .. "/x.png")
    assert.is_false(ok)
    assert.truthy(log:find("--guidance must be a number or auto, got 'often'", 1, true), log)
  end)

  it("writes a sprite sheet and its index; a sprite is made again from its seed", function()
    local sheet, index = tmp .. "/sheet.png", tmp .. "/sheet.lua"
    local ok, _, log = sh("sample.lua " .. model_path .. " -c hero -c food -n 3 --steps 3 "
      .. "--guidance 2 --alpha-threshold 0.5 --seed 40 --sheet " .. sheet .. " -o "
      .. tmp .. "/sg.png")
    assert.is_true(ok, log)
    local img = minisd.load_png(sheet)
    assert.are.same({ 4, 32, 48 }, img:shape()) -- 2 rows of 3, no padding
    local idx = dofile(index)
    assert.are.equal("sheet.png", idx.image)
    assert.are.same({ 16, 16, 3, 6 }, { idx.sprite_width, idx.sprite_height, idx.columns,
      #idx.sprites })
    local s5 = idx.sprites[5]
    assert.are.same({ x = 16, y = 16, w = 16, h = 16, context = "food", seed = 44 }, s5)
    -- the same options with --seeds 44 and context food give sprite 5 alone
    local one = tmp .. "/one.png"
    ok, _, log = sh("sample.lua " .. model_path .. " -c food --seeds 44 --steps 3 --guidance 2 "
      .. "--alpha-threshold 0.5 --scale 1 --nrow 1 -o " .. one)
    assert.is_true(ok, log)
    local alone = minisd.load_png(one):narrow(2, 2, 16):narrow(3, 2, 16)
    H.assert_close(alone, img:narrow(2, 17, 16):narrow(3, 17, 16), 0, 0, "sprite 5")
    -- a JSON index
    ok, _, log = sh("sample.lua " .. model_path .. " -n 2 --steps 2 --sheet " .. sheet
      .. " --sheet-index " .. tmp .. "/sheet.json -o " .. tmp .. "/sg.png")
    assert.is_true(ok, log)
    local j = require("minisd.json").decode(read_all(tmp .. "/sheet.json"))
    assert.are.equal(2, #j.sprites)
    assert.are.equal(1, j.sprites[2].seed)
  end)

  it("makes variations of a sprite and redraws part of it (--init, --strength, --mask)",
    function()
      local sheet = tmp .. "/src.png"
      local ok, _, log = sh("sample.lua " .. model_path .. " -n 1 --steps 3 --seeds 4 --sheet "
        .. sheet .. " -o " .. tmp .. "/g.png")
      assert.is_true(ok, log)
      local src = minisd.load_png(sheet) -- (4, 16, 16)
      -- strength 0: the input itself, for every sprite
      local out = tmp .. "/var.png"
      ok, _, log = sh("sample.lua " .. model_path .. " -n 2 --steps 4 --init " .. sheet
        .. " --strength 0 --sheet " .. out .. " -o " .. tmp .. "/g.png")
      assert.is_true(ok, log)
      local v = minisd.load_png(out)
      H.assert_close(v:narrow(3, 1, 16), src, 0, 0, "strength 0, sprite 1")
      H.assert_close(v:narrow(3, 17, 16), src, 0, 0, "strength 0, sprite 2")
      -- a mask: the left half kept exactly, the right half generated
      local rows = {}
      for c = 1, 3 do
        rows[c] = {}
        for y = 1, 16 do
          rows[c][y] = {}
          for x = 1, 16 do
            rows[c][y][x] = x > 8 and 1 or 0
          end
        end
      end
      local mask = tmp .. "/mask.png"
      assert(minisd.save_png(mask, minisd.tensor(rows)))
      ok, _, log = sh("sample.lua " .. model_path .. " -n 1 --steps 4 --init " .. sheet
        .. " --mask " .. mask .. " --jumps 1 --sheet " .. out .. " -o " .. tmp .. "/g.png")
      assert.is_true(ok, log)
      local ip = minisd.load_png(out)
      H.assert_close(ip:narrow(3, 1, 8), src:narrow(3, 1, 8), 0, 0, "kept half")
      assert.is_true((ip:narrow(3, 9, 8) - src:narrow(3, 9, 8)):abs():max() > 0.05)
      local idx = dofile(tmp .. "/var.lua")
      assert.are.equal(1, idx.strength)
      ok, _, log = sh("sample.lua " .. model_path .. " --init " .. tmp .. "/g.png -o "
        .. tmp .. "/x.png")
      assert.is_false(ok)
      assert.truthy(log:find("not a sprite or a sheet of 16x16 sprites", 1, true), log)
      ok, _, log = sh("sample.lua " .. model_path .. " --strength 0.5 -o " .. tmp .. "/x.png")
      assert.is_false(ok)
      assert.truthy(log:find("--strength and --mask go with --init", 1, true), log)
    end)

  it("interpolates between two seeds and contexts into a grid, a GIF and a sheet", function()
    local gif, sheet = tmp .. "/i.gif", tmp .. "/i.png"
    local ok, _, log = sh("sample.lua " .. model_path .. " --interpolate 4 --seeds 3,9 -c hero "
      .. "-c food --guidance 2 --steps 3 --animate " .. gif .. " --sheet " .. sheet .. " -o "
      .. tmp .. "/ig.png")
    assert.is_true(ok, log)
    assert.are.same({ 4, 16, 64 }, minisd.load_png(sheet):shape())
    local idx = dofile(tmp .. "/i.lua")
    assert.are.same({ seed = 3, context = "hero" }, idx.interpolate.from)
    assert.are.same({ seed = 9, context = "food" }, idx.interpolate.to)
    assert.are.equal("hero=0.666667,food=0.333333", idx.sprites[2].context)
    assert.are.equal("GIF89a", read_all(gif):sub(1, 6))
    -- the first frame is plain sampling of seed 3 with context hero, with the sampler that
    -- interpolation uses unless told otherwise (ddim: deterministic)
    assert.are.equal("ddim", idx.sampler)
    local one = tmp .. "/first.png"
    ok, _, log = sh("sample.lua " .. model_path .. " -c hero --seeds 3 --guidance 2 --steps 3 "
      .. "--sampler ddim --sheet " .. one .. " -o " .. tmp .. "/ig.png")
    assert.is_true(ok, log)
    H.assert_close(minisd.load_png(sheet):narrow(3, 1, 16), minisd.load_png(one), 0, 0)
    ok, _, log = sh("sample.lua " .. model_path .. " --interpolate 4 --seeds 1,2,3 -o "
      .. tmp .. "/ig.png")
    assert.is_false(ok)
    assert.truthy(log:find("give at most two --seeds", 1, true), log)
  end)

  it("refuses outputs it cannot write before sampling, and formats it does not write",
    function()
      local cases = {
        { "-o " .. tmp .. "/x.jpg", "--out must name a .png file, got " },
        { "--animate " .. tmp .. "/a.mp4", "--animate must name a .png or .gif file" },
        { "--sheet " .. tmp .. "/s.png --sheet-index " .. tmp .. "/s.txt",
          "--sheet-index must name a .lua or .json file" },
        { "--sheet-index " .. tmp .. "/s.lua", "--sheet-index goes with --sheet" },
        { "--palette '#000000' --colors 3", "give --palette or --colors, not both" },
        { "--seeds 1,x", "--seeds must be integers >= 0 separated by commas, got 'x'" },
        { "-o " .. tmp .. "/no/such/dir/g.png", "the folder " .. tmp .. "/no/such/dir does not "
          .. "exist or is not writable" },
        { "-o " .. tmp .. "/folder.png", "folder.png is a folder, not a file" },
        { "-c Dragon", "error: --context Dragon: unknown label 'Dragon' (known: hero, non-hero" },
        { "-c ''", "--context: an empty expression (write none for the null context)" },
      }
      assert(H.run("mkdir -p " .. tmp .. "/folder.png"))
      for _, c in ipairs(cases) do
        local ok, _, log = sh("sample.lua " .. model_path .. " --steps 500 " .. c[1])
        assert.is_false(ok, c[1])
        assert.truthy(log:find(c[2], 1, true), c[1] .. ": " .. log)
        assert.falsy(log:find("sampled", 1, true), "sampled before refusing: " .. c[1])
        assert.falsy(log:find("%.lua:%d+"), "a library position in the message: " .. log)
      end
    end)

  it("samples a row per label, with no --context, from a model trained with contexts",
    function()
      local m = minisd.models.ContextUnet({ n_feat = 8, in_channels = 4 })
      local with, without = tmp .. "/ctx.safetensors", tmp .. "/noctx.safetensors"
      m:save(with, { training = { context = true } })
      m:save(without, { training = { context = false } })
      for _, case in ipairs({ { with, 5 }, { without, 1 } }) do
        local out = tmp .. "/rows.png"
        local ok, _, log = sh("sample.lua " .. case[1] .. " -n 2 --steps 2 --scale 1 -o " .. out)
        assert.is_true(ok, log)
        assert.are.same({ 4, case[2] * 17 + 1, 2 * 17 + 1 }, minisd.load_png(out):shape())
      end
    end)

  it("writes one RGBA PNG per sprite and an animation strip", function()
    local each, anim = tmp .. "/each", tmp .. "/anim.png"
    local ok, _, log = sh("sample.lua " .. model_path .. " -n 2 --steps 4 --frames 4 --scale 1 -o "
      .. tmp .. "/g2.png --each " .. each .. " --animate " .. anim)
    assert.is_true(ok, log)
    for i = 1, 2 do
      assert.are.same({ 4, 16, 16 }, minisd.load_png(string.format("%s/sprite_%03d.png", each, i))
        :shape())
    end
    -- 4 frames of a 1x2 grid (18x35) side by side with 2-pixel padding
    local strip = minisd.load_png(anim)
    assert.are.same({ 4, 18 + 4, 4 * (35 + 2) + 2 }, strip:shape())
  end)

  it("lists the context labels", function()
    local ok, _, out = sh("sample.lua " .. model_path .. " --list-contexts")
    assert.is_true(ok, out)
    assert.truthy(out:find("side-facing", 1, true))
  end)

  it("rejects bad arguments with a message and a non-zero exit", function()
    local cases = {
      { tmp .. "/missing.safetensors", "cannot open" },
      { model_path .. " -c dragon", "dragon" },
      { model_path .. " --sampler euler", "must be one of 'ddim', 'ddpm'" },
      { model_path .. " -n 0", "--count must be an integer in 1..4096, got 0" },
    }
    for _, c in ipairs(cases) do
      local ok, code, out = sh("sample.lua " .. c[1])
      assert.is_false(ok, c[1])
      assert.are_not.equal(0, code)
      assert.truthy(out:find(c[2], 1, true), c[1] .. " gave: " .. out)
    end
    -- no model file given and none shipped where MINISD_DATA says
    local ok, code, out = H.run("MINISD_DATA=" .. tmp .. "/nowhere " .. H.lua_bin
      .. " sample.lua -o " .. tmp .. "/none.png")
    assert.is_false(ok)
    assert.are_not.equal(0, code)
    assert.truthy(out:find("no shipped model at " .. tmp .. "/models/sprites-context", 1, true),
      out)
  end)
end)

describe("examples/sample_custom.lua", function()
  it("runs as the README shows and writes its grid and strip", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(2)
    minisd.models.ContextUnet({ n_feat = 8 }):save(tmp .. "/m.safetensors")
    local ok, _, out = sh("examples/sample_custom.lua " .. tmp .. "/m.safetensors " .. tmp .. "/c")
    assert.is_true(ok, out)
    -- 10 sprites (2 per label) in rows of 2, 1-pixel padding, scaled by 4
    assert.are.same({ 3, 4 * (5 * 17 + 1), 4 * (2 * 17 + 1) },
      minisd.load_png(tmp .. "/c.png"):shape())
    -- 50 steps, every fifth kept: 10 frames side by side, upscaled by 2
    assert.are.same({ 3, 2 * (5 * 17 + 1 + 2), 2 * (10 * (2 * 17 + 1 + 1) + 1) },
      minisd.load_png(tmp .. "/c_strip.png"):shape())
  end)
end)

describe("sample.lua output errors", function()
  it("fails with a message when the output cannot be written", function()
    local tmp = H.tmpdir()
    minisd.manual_seed(3)
    minisd.models.ContextUnet({ n_feat = 8 }):save(tmp .. "/m.safetensors")
    local ok, code, out = sh("sample.lua " .. tmp .. "/m.safetensors -n 1 --steps 2 -o "
      .. tmp .. "/no/such/dir/x.png")
    assert.is_false(ok)
    assert.are.equal(1, code)
    assert.truthy(out:find("no/such/dir/x.png", 1, true), out)
    ok, code, out = sh("sample.lua " .. tmp .. "/m.safetensors -n 2 --steps 3 --frames 3 -o "
      .. tmp .. "/g.png --animate " .. tmp .. "/a.gif")
    assert.is_true(ok, out)
    assert.are.equal(0, code)
    local f = assert(io.open(tmp .. "/a.gif", "rb"))
    assert.are.equal("GIF89a", f:read(6))
    f:close()
  end)
end)
