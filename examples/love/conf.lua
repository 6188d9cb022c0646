-- LÖVE 11 configuration for the minisd sprite generator example.
-- luacheck: std luajit, globals love
function love.conf(t)
  t.version = "11.0"
  t.identity = "minisd-sprites"
  t.window.title = "minisd: sprites denoising live"
  t.window.width = 800
  t.window.height = 480
  t.modules.joystick = false
  t.modules.physics = false
end
