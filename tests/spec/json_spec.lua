-- minisd.json: encoding rules, round trips, strict decoding with positioned errors.
local json = require("minisd.json")

local function deep_equal(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

describe("json.encode", function()
  it("writes arrays, objects with sorted keys, and literals", function()
    assert.are.equal('{"a":[1,2,3],"b":true,"c":null,"d":"x","z":false}',
      json.encode({ z = false, d = "x", b = true, a = { 1, 2, 3 }, c = json.null }))
    assert.are.equal("[]", json.encode({}))
    assert.are.equal("{}", json.encode(json.object()))
    assert.are.equal("null", json.encode(nil))
  end)

  it("writes integral numbers as integers and others so they read back exactly", function()
    assert.are.equal("[3,-7,0,1024,4503599627370496]",
      json.encode({ 3, -7.0, 0, 2 ^ 10, 2 ^ 52 }))
    assert.are.equal("0.1", json.encode(0.1))
    assert.are.equal("-2.5", json.encode(-2.5))
    assert.are.equal("1e+300", json.encode(1e300))
    local xs = { 0.1, 1 / 3, math.pi, -1e-310, 123456.789e10, 2 ^ -40, 0.6000000238418579 }
    for _, x in ipairs(xs) do
      local s = json.encode(x)
      assert.are.equal(x, tonumber(s), s)
      assert.is_true(#s <= 24, s)
    end
  end)

  it("escapes quotes, backslashes and control characters", function()
    assert.are.equal([["a\"b\\c\n\t\r\b\f\u0001\u0000\u007f/é"]],
      json.encode("a\"b\\c\n\t\r\b\f\1\0\127/é"))
  end)

  it("indents on request", function()
    assert.are.equal('{\n  "a": [\n    1,\n    {\n      "b": 2\n    }\n  ]\n}',
      json.encode({ a = { 1, { b = 2 } } }, { indent = 2 }))
  end)

  it("rejects what JSON cannot hold, naming where", function()
    local cases = {
      { { 1, nil, 3 }, "value is a sparse array" },
      { { 1, x = 2 }, "value mixes string keys and array indices" },
      { { a = { [true] = 1 } }, "value.a has a key of type boolean" },
      { { a = { 1, 0 / 0 } }, "NaN cannot be written" },
      { math.huge, "inf cannot be written" },
      { { f = print }, "value.f is a function" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(json.encode, c[1])
      assert.is_false(ok)
      assert.truthy(err:find(c[2], 1, true), err)
    end
    local t = {}
    t.self = t
    local ok, err = pcall(json.encode, t)
    assert.is_false(ok)
    assert.truthy(err:find("value.self contains itself", 1, true), err)
    assert.has_error(function() json.encode({}, { pretty = true }) end,
      "json.encode: unknown option 'pretty' (allowed options: indent)")
  end)
end)

describe("json.decode", function()
  it("reads every kind of value", function()
    local v = assert(json.decode(' {"a": [1, -2.5e2, 0, 3E+1, 0.125], "b": {"c": null},'
      .. ' "t": true, "f": false, "s": "x\\u00e9\\ud83d\\ude00\\/\\n"} '))
    assert.are.same({ 1, -250, 0, 30, 0.125 }, v.a)
    assert.are.equal(json.null, v.b.c)
    assert.is_true(v.t)
    assert.is_false(v.f)
    assert.are.equal("x\195\169\240\159\152\128/\n", v.s)
  end)

  it("round-trips values and keeps empty objects and arrays apart", function()
    local values = {
      { name = "ContextUnet", config = { n_feat = 64, height = 16, in_channels = 3 },
        label_names = { "hero", "non-hero", "food", "spell", "side-facing" },
        betas = { 1e-4, 0.02 }, loss = 0.0123456789, tags = {}, extra = json.object(),
        nested = { { { 1 } } }, s = "tab\there \"quoted\"" },
      { 1, "two", false, json.null, -0.5 },
      "just a string",
      42,
    }
    for _, v in ipairs(values) do
      local text = json.encode(v)
      local back = assert(json.decode(text))
      assert.is_true(deep_equal(v, back), text)
      assert.are.equal(text, json.encode(back))
    end
    assert.are.equal("{}", json.encode(json.decode("{}")))
    assert.are.equal("[]", json.encode(json.decode("[]")))
    assert.are.equal('{"a":{},"b":[]}', json.encode(json.decode('{"b":[],"a":{}}')))
  end)

  it("reports the line, column and byte of each error", function()
    local cases = {
      { "[1,]", "unexpected character ']' at line 1, column 4 (byte 4)" },
      { '{"a":1,\n "b" 2}', "expected ':' after object key at line 2, column 6 (byte 14)" },
      { "[1 2]", "expected ',' or ']' in array at line 1, column 4" },
      { '{"a":1 "b":2}', "expected ',' or '}' in object at line 1, column 8" },
      { "{a:1}", "expected a string key in object at line 1, column 2" },
      { "01", "leading zero" },
      { "1.", "digits must follow '.'" },
      { "1e", "digits must follow the exponent" },
      { "-", "a digit must follow '-'" },
      { ".5", "unexpected character '.'" },
      { "+1", "unexpected character '+'" },
      { '"abc', "unterminated string at line 1, column 1" },
      { '"a\nb"', "control character in string" },
      { '"\\x"', "bad escape '\\x'" },
      { '"\\u12"', "bad \\u escape" },
      { '"\\ud800x"', "high surrogate not followed by a low surrogate" },
      { '"\\udc00"', "lone low surrogate" },
      { "[1] x", "trailing characters after the JSON value at line 1, column 5" },
      { "tru", "unknown literal" },
      { "NaN", "unexpected character 'N'" },
      { "", "unexpected end of text" },
      { "[1, 2", "expected ',' or ']' in array" },
      { '{"a":1,"a":2}', "duplicate key 'a'" },
      { "[1] // c", "trailing characters" },
    }
    for _, c in ipairs(cases) do
      local v, err = json.decode(c[1])
      assert.is_nil(v, c[1])
      assert.truthy(err:find(c[2], 1, true), c[1] .. " -> " .. tostring(err))
      assert.truthy(err:find("^json%.decode: "), err)
    end
    assert.has_error(function() json.decode(42) end, "json.decode: expected a string, got number")
  end)

  it("limits nesting depth instead of overflowing the stack", function()
    local v, err = json.decode(string.rep("[", 100000))
    assert.is_nil(v)
    assert.truthy(err:find("nested deeper than", 1, true), err)
    assert.are.same({ { { {} } } }, json.decode("[[[[]]]]"))
  end)
end)
