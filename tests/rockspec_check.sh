#!/bin/sh
# Installs minisd with LuaRocks into a temporary tree and uses it from there:
# checks that the rockspec builds the core and installs every Lua file.
set -eu
cd "$(dirname "$0")/.."
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
luarocks --lua-version 5.4 --tree "$tree" make rockspec/minisd-scm-1.rockspec >"$tree/log" 2>&1 ||
    { cat "$tree/log"; exit 1; }
cd "$tree"
LUA_PATH="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua" \
LUA_CPATH="$tree/lib/lua/5.4/?.so" lua5.4 -e '
  local minisd = require("minisd")
  local m = minisd.models.ContextUnet({ n_feat = 8 })
  local y = minisd.no_grad(function()
    return m(minisd.zeros({ 1, 3, 16, 16 }), minisd.full({ 1, 1, 1, 1 }, 0.5))
  end)
  local ds = assert(minisd.data.load())
  assert(ds.n == 1806 and #ds.label_names == 5, "the bundled dataset from the installed rock")
  local cls = assert(minisd.classifier.load())
  assert(cls.training_summary.split.n == 1806, "the sprite classifier from the installed rock")
  assert(y:numel() == 768, "forward from the installed rock")
  local s = minisd.sched.get("ddim").new({})
  s:set_timesteps(5)
  print("installed rock ok:", package.searchpath("minisd.core", package.cpath))'
