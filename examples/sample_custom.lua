-- run from the repository root: lua examples/sample_custom.lua [MODEL [OUT_PREFIX]]
-- (MODEL: default the shipped models/sprites-context.safetensors)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = (rawget(_G, "jit") and "build/luajit/?.so;" or "build/?.so;") .. package.cpath
local minisd = require("minisd")
local image = minisd.image

local model = assert(minisd.load_model(arg[1]))
local names = model.config.label_names
local n = 2 * #names
local rows = {}
for i = 1, #names do rows[#rows + 1] = names[i]; rows[#rows + 1] = names[i] end
local c = minisd.context.encode_list(rows, names)          -- (n, K)

local g = minisd.Generator(123)
local s = minisd.sched.get("ddim").new(minisd.diffusion.schedule_of(model))
s:set_timesteps(50)
local C, H = model.config.in_channels, model.config.height
local x = minisd.randn({ n, C, H, H }, g)
local frames = {}
minisd.no_grad(function()
  for i, t in ipairs(s.timesteps) do
    local eps = model(x, minisd.full({ n, 1, 1, 1 }, t / s.num_train_timesteps), c)
    x = s:step(eps, t, x, { generator = g }).prev_sample
    if i % 5 == 0 then frames[#frames + 1] = image.grid(image.to_unit(x), { nrow = 2 }) end
  end
end)
local out = arg[2] or "custom"
assert(image.save_grid(out .. ".png", x, { nrow = 2, scale = 4 }))
assert(minisd.save_png(out .. "_strip.png", image.upscale(image.strip(frames), 2)))
print("wrote " .. out .. ".png and " .. out .. "_strip.png")
