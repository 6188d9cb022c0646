#!/bin/sh
# The rock as users install it, each into a temporary tree:
#  - Lua 5.4: luarocks make, then minisd from the tree (the bundled data, the shipped
#    models), the installed commands minisd-sample and minisd-train, and luarocks test;
#  - Lua 5.1 (PUC headers): luarocks make, then one sample under lua5.1 and under LuaJIT
#    (LÖVE's Lua), which loads the same 5.1 module; Lua 5.3: luarocks make, one sample;
#  - a release: scripts/release.sh makes the tarball, the release rockspec and the source
#    rock, which installs offline.
# Needs luarocks, lua5.4 + liblua5.4-dev; the 5.1 part needs lua5.1 + liblua5.1-0-dev and
# luajit, the 5.3 part lua5.3 + liblua5.3-dev (CI installs them; each skipped with a
# message where missing).
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { echo "== $*"; }
fail() { echo "rockspec_check: FAILED: $*"; exit 1; }
make_rock() { # version tree
    rm -rf build.luarocks
    luarocks --lua-version "$1" --tree "$2" make --deps-mode=none \
        rockspec/minisd-scm-1.rockspec >"$work/log" 2>&1 || { cat "$work/log"; fail "make $1"; }
    rm -rf build.luarocks
}
# runs Lua code with the tree's paths: interpreter version tree code
use_tree() {
    LUA_PATH="$3/share/lua/$2/?.lua;$3/share/lua/$2/?/init.lua;;" \
        LUA_CPATH="$3/lib/lua/$2/?.so;;" "$1" -e "$4"
}
check='
  local minisd = require("minisd")
  local m = assert(minisd.load_model())
  local x = minisd.diffusion.sample(m, { n = 2, context = "food", steps = 3, guidance = 2 })
  assert(x:numel() == 2 * 4 * 16 * 16, "a sample from the shipped model")
  local ds = assert(minisd.data.load())
  assert(ds.n == 1806 and #ds.label_names == 5, "the bundled dataset from the installed rock")
  local cls = assert(minisd.classifier.load())
  assert(cls.training_summary.split.n == 1806, "the sprite classifier from the installed rock")
  print(_VERSION, rawget(_G, "jit") and jit.version or "", "ok:",
    package.searchpath and package.searchpath("minisd.core", package.cpath) or "")'

step "Lua 5.4: luarocks make"
t54=$work/t54
make_rock 5.4 "$t54"
use_tree lua5.4 5.4 "$t54" "$check"
step "Lua 5.4: the installed commands"
(
    cd "$work"
    eval "$(luarocks --lua-version 5.4 --tree "$t54" path)"
    PATH="$t54/bin:$PATH"
    minisd-sample -n 2 --steps 2 --sheet "$work/s.png" -o "$work/g.png" >/dev/null 2>&1 ||
        fail "minisd-sample"
    [ -s "$work/s.png" ] && [ -s "$work/s.lua" ] || fail "minisd-sample wrote no sheet"
    minisd-train --limit 16 --batch-size 8 --n-feat 8 --epochs 1 --sample-every 0 --quiet \
        --out "$work/run" >/dev/null || fail "minisd-train"
    [ -s "$work/run/model.safetensors" ] || fail "minisd-train wrote no model"
    echo "minisd-sample and minisd-train ok"
)
step "Lua 5.4: luarocks test"
rm -rf build.luarocks
luarocks --lua-version 5.4 --tree "$t54" make --deps-mode=none rockspec/minisd-scm-1.rockspec \
    >"$work/log" 2>&1 || { cat "$work/log"; fail "make for test"; }
luarocks --lua-version 5.4 --tree "$t54" test rockspec/minisd-scm-1.rockspec >"$work/log" 2>&1 ||
    { cat "$work/log"; fail "luarocks test"; }
rm -rf build.luarocks
tail -1 "$work/log"

if [ -f /usr/include/lua5.1/lua.h ] && command -v lua5.1 >/dev/null && command -v luajit >/dev/null
then
    step "Lua 5.1: luarocks make; lua5.1 and LuaJIT"
    t51=$work/t51
    make_rock 5.1 "$t51"
    use_tree lua5.1 5.1 "$t51" "$check"
    use_tree luajit 5.1 "$t51" "$check"
else
    echo "SKIPPED the Lua 5.1 / LuaJIT rock: apt-get install lua5.1 liblua5.1-0-dev luajit"
fi

if [ -f /usr/include/lua5.3/lua.h ] && command -v lua5.3 >/dev/null; then
    step "Lua 5.3: luarocks make"
    t53=$work/t53
    make_rock 5.3 "$t53"
    use_tree lua5.3 5.3 "$t53" "$check"
else
    echo "SKIPPED the Lua 5.3 rock: apt-get install lua5.3 liblua5.3-dev"
fi

step "release: scripts/release.sh, then the source rock installs offline"
git -c advice.detachedHead=false worktree add -q --detach "$work/src" HEAD 2>/dev/null ||
    fail "git worktree"
(
    cd "$work/src"
    sh scripts/release.sh HEAD --out "$work/dist" || fail "release.sh"
)
git worktree remove --force "$work/src"
v=$(sed -n 's/^M._VERSION = "\(.*\)"$/\1/p' lua/minisd/init.lua)
mv "$work/dist/minisd-$v.tar.gz" "$work/dist/moved-away.tar.gz" # the rock carries its source
(cd "$work" && luarocks --lua-version 5.4 --tree "$work/trel" install --deps-mode=none \
    "$work/dist/minisd-$v-1.src.rock" >"$work/log" 2>&1) || { cat "$work/log"; fail "install src.rock"; }
use_tree lua5.4 5.4 "$work/trel" "$check"
echo "rockspec_check: ok"
