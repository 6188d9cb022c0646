rockspec_format = "3.0"
package = "minisd"
version = "scm-1"
source = {
  -- built from a checkout: luarocks make rockspec/minisd-scm-1.rockspec
  -- (a release rockspec, whose source is a release tarball, comes from scripts/release.sh)
  url = "git+file:///dev/null",
}
description = {
  summary = "A small, fast diffusion-model library in C for Lua: train and sample 16x16 sprites",
  detailed = [[
minisd implements tensors, layers, autograd, optimizers, DDPM/DDIM samplers and
safetensors/npy/PNG files in C11, and registers them as the Lua library `minisd`.
It trains and samples the "mini Stable Diffusion" ContextUnet for 16x16 pixel-art
sprites, and runs inside LÖVE games. Ships a trained sprite model.
]],
  license = "MIT",
}
supported_platforms = { "linux" }
dependencies = {
  "lua >= 5.1, < 5.5",
  -- the minisd-train and minisd-sample commands parse their options with argparse
  -- (Debian's lua-argparse serves too: install with --deps-mode=none)
  "argparse >= 0.6",
}
external_dependencies = {
  PNG = { header = "png.h", library = "png16" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    PNG_INCDIR = "$(PNG_INCDIR)",
    PNG_LIBDIR = "$(PNG_LIBDIR)",
    MINISD_TESTS = "OFF",
    MINISD_TEST_LUAJIT = "OFF",
  },
  install = {
    bin = {
      ["minisd-train"] = "train.lua",
      ["minisd-sample"] = "sample.lua",
    },
  },
}
test = {
  -- runs busted (Debian's lua-busted or the rock) on the quick specs, against this build
  type = "command",
  script = "tests/rock_test.lua",
}
