rockspec_format = "3.0"
package = "minisd"
version = "scm-1"
source = {
  url = "git+file:///dev/null", -- built from a checkout: luarocks make rockspec/minisd-scm-1.rockspec
}
description = {
  summary = "A small, fast diffusion-model library in C for Lua: train and sample 16x16 sprites",
  detailed = [[
minisd implements tensors, layers, autograd, optimizers, DDPM/DDIM samplers and
safetensors/npy/PNG files in C11, and registers them as the Lua library `minisd`.
It trains and samples the "mini Stable Diffusion" ContextUnet for 16x16 pixel-art
sprites, and runs inside LÖVE games.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
}
external_dependencies = {
  -- found by CMake through pkg-config: libpng
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    MINISD_TESTS = "OFF",
    MINISD_TEST_LUAJIT = "OFF",
  },
}
