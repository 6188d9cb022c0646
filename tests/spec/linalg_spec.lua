-- minisd.linalg: Jacobi eigen-decomposition and the matrix square root, against hand-checked
-- matrices and numpy (tests/fixtures/gen_quality.py).
local linalg = require("minisd.linalg")
local H = require("helpers")

local function max_abs_diff(A, B)
  local worst = 0
  for i = 1, #A do
    for j = 1, #A[i] do
      worst = math.max(worst, math.abs(A[i][j] - B[i][j]))
    end
  end
  return worst
end

local function matrix(shape, data)
  local out = {}
  for i = 1, shape[1] do
    out[i] = {}
    for j = 1, shape[2] do
      out[i][j] = data[(i - 1) * shape[2] + j]
    end
  end
  return out
end

local fixture = assert(loadfile(H.root .. "/tests/fixtures/quality.lua"))()

describe("linalg.eigh", function()
  it("finds the eigenvalues of the second-difference matrix: 2 - sqrt 2, 2, 2 + sqrt 2", function()
    local A = { { 2, -1, 0 }, { -1, 2, -1 }, { 0, -1, 2 } }
    local values, V = linalg.eigh(A)
    local s = math.sqrt(2)
    H.assert_close(values, { 2 - s, 2, 2 + s }, 0, 1e-14, "eigenvalues")
    -- A v = l v for each column; the vector of 2 is (1, 0, -1) / sqrt 2 up to sign
    for k = 1, 3 do
      local v = { V[1][k], V[2][k], V[3][k] }
      local Av = linalg.matmul(A, { { v[1] }, { v[2] }, { v[3] } })
      for i = 1, 3 do
        assert.is_true(math.abs(Av[i][1] - values[k] * v[i]) < 1e-14)
      end
    end
    assert.is_true(math.abs(math.abs(V[1][2]) - 1 / s) < 1e-14)
    assert.is_true(math.abs(V[2][2]) < 1e-14)
    assert.is_true(math.abs(V[1][2] + V[3][2]) < 1e-14)
  end)

  it("leaves a diagonal matrix as it is, sorted, and does not modify its input", function()
    local A = { { 3, 0 }, { 0, -1 } }
    local values, V = linalg.eigh(A)
    assert.are.same({ -1, 3 }, values)
    assert.are.same({ { 0, 1 }, { 1, 0 } }, V)
    assert.are.same({ { 3, 0 }, { 0, -1 } }, A)
  end)

  it("matches numpy's eigenvalues of a 6 x 6 SPD matrix", function()
    local values = linalg.eigh(matrix(fixture.spd.shape, fixture.spd.data))
    -- the fixture holds 9 significant digits
    H.assert_close(values, fixture.spd_eigenvalues.data, 1e-8, 0, "eigenvalues")
  end)

  it("rejects a matrix that is not square", function()
    local ok, err = pcall(linalg.eigh, { { 1, 2 }, { 3 } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("row 2 has 1 entries, expected 2", 1, true), err)
  end)
end)

describe("linalg.sqrtm_psd", function()
  it("gives [[2, 1], [1, 2]] for [[5, 4], [4, 5]]", function()
    local S = linalg.sqrtm_psd({ { 5, 4 }, { 4, 5 } })
    assert.is_true(max_abs_diff(S, { { 2, 1 }, { 1, 2 } }) < 1e-14)
  end)

  it("handles a singular matrix: sqrt([[1, 1], [1, 1]]) = [[1, 1], [1, 1]] / sqrt 2", function()
    local S = linalg.sqrtm_psd({ { 1, 1 }, { 1, 1 } })
    local r = 1 / math.sqrt(2)
    assert.is_true(max_abs_diff(S, { { r, r }, { r, r } }) < 1e-14)
  end)

  it("matches numpy on a 6 x 6 SPD matrix, and S S gives it back", function()
    local A = matrix(fixture.spd.shape, fixture.spd.data)
    local S = linalg.sqrtm_psd(A)
    local expected = matrix(fixture.spd_sqrt.shape, fixture.spd_sqrt.data)
    assert.is_true(max_abs_diff(S, expected) < 1e-7, "vs numpy: " .. max_abs_diff(S, expected))
    assert.is_true(max_abs_diff(linalg.matmul(S, S), A) < 1e-12)
  end)
end)
