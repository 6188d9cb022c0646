-- luacheck configuration (STYLE.md: 100 columns, no globals)
std = "max"
max_line_length = 100
codes = true
files["tests/spec"] = { std = "+busted" }
files["examples/love"] = { read_globals = { "love" } }
exclude_files = { "build/**", "build-*/**", "build.luarocks/**" }
