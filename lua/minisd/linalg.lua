--- minisd.linalg: small dense matrices in double precision, as Lua tables of rows (`A[i][j]`),
-- for the statistics of `minisd.quality` (a covariance of a few dozen features, its matrix
-- square root). Nothing here touches pixels: the sizes are the feature dimension.
-- @module minisd.linalg

local M = {}

local function check_square(fn, A)
  if type(A) ~= "table" or #A == 0 then
    error(fn .. ": expected a non-empty square matrix (a table of rows)", 3)
  end
  local n = #A
  for i = 1, n do
    if type(A[i]) ~= "table" or #A[i] ~= n then
      error(string.format("%s: row %d has %s entries, expected %d (a square matrix)", fn, i,
        type(A[i]) == "table" and tostring(#A[i]) or "no", n), 3)
    end
  end
  return n
end

--- A copy of a matrix.
-- @param A matrix
-- @return a new matrix
function M.copy(A)
  local out = {}
  for i, row in ipairs(A) do
    local r = {}
    for j, v in ipairs(row) do
      r[j] = v
    end
    out[i] = r
  end
  return out
end

--- The matrix product A B.
-- @param A matrix (n x k)
-- @param B matrix (k x m)
-- @return matrix (n x m)
function M.matmul(A, B)
  local k, m = #B, #B[1]
  if #A[1] ~= k then
    error(string.format("linalg.matmul: A is %dx%d, B is %dx%d", #A, #A[1], k, m), 2)
  end
  local out = {}
  for i, a in ipairs(A) do
    local r = {}
    for j = 1, m do
      r[j] = 0
    end
    for p = 1, k do
      local v, b = a[p], B[p]
      if v ~= 0 then
        for j = 1, m do
          r[j] = r[j] + v * b[j]
        end
      end
    end
    out[i] = r
  end
  return out
end

--- The trace.
-- @param A square matrix
-- @return number
function M.trace(A)
  local n = check_square("linalg.trace", A)
  local s = 0
  for i = 1, n do
    s = s + A[i][i]
  end
  return s
end

--- Eigenvalues and eigenvectors of a symmetric matrix by the cyclic Jacobi method (Golub and
-- Van Loan, Matrix Computations, section 8.5; the rotation formulas of Numerical Recipes,
-- 3rd ed., section 11.1): sweeps of plane rotations zero the off-diagonal entries one pair at
-- a time until they are negligible. A is not modified.
-- @param A symmetric matrix (n x n)
-- @return eigenvalues (list, ascending), eigenvectors (matrix whose column j goes with value j)
function M.eigh(A)
  local n = check_square("linalg.eigh", A)
  local a = M.copy(A)
  local V = {}
  for i = 1, n do
    V[i] = {}
    for j = 1, n do
      V[i][j] = (i == j) and 1 or 0
    end
  end
  for _ = 1, 100 do
    local off, diag = 0, 0
    for p = 1, n do
      diag = diag + a[p][p] * a[p][p]
      for q = p + 1, n do
        off = off + a[p][q] * a[p][q]
      end
    end
    -- converged: the off-diagonal part is below double rounding of the diagonal
    if off <= 1e-32 * diag or off == 0 then
      break
    end
    for p = 1, n - 1 do
      for q = p + 1, n do
        local apq = a[p][q]
        if apq ~= 0 then
          -- t = tan(angle) of the rotation that zeroes a[p][q]: the smaller root of
          -- t^2 + 2 theta t - 1 = 0 (the stable choice)
          local theta = (a[q][q] - a[p][p]) / (2 * apq)
          local t
          if math.abs(theta) > 1e150 then
            t = 1 / (2 * theta)
          else
            t = 1 / (math.abs(theta) + math.sqrt(theta * theta + 1))
            if theta < 0 then
              t = -t
            end
          end
          local c = 1 / math.sqrt(t * t + 1)
          local s = t * c
          -- A <- J^T A J with J the identity but J[p][p] = J[q][q] = c, J[p][q] = s, J[q][p] = -s
          for k = 1, n do
            local akp, akq = a[k][p], a[k][q]
            a[k][p], a[k][q] = c * akp - s * akq, s * akp + c * akq
          end
          local rp, rq = a[p], a[q]
          for k = 1, n do
            local apk, aqk = rp[k], rq[k]
            rp[k], rq[k] = c * apk - s * aqk, s * apk + c * aqk
          end
          rp[q], rq[p] = 0, 0
          for k = 1, n do
            local vkp, vkq = V[k][p], V[k][q]
            V[k][p], V[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
          end
        end
      end
    end
  end
  local order = {}
  for i = 1, n do
    order[i] = i
  end
  table.sort(order, function(i, j)
    return a[i][i] < a[j][j]
  end)
  local values, vectors = {}, {}
  for i = 1, n do
    vectors[i] = {}
  end
  for j, src in ipairs(order) do
    values[j] = a[src][src]
    for i = 1, n do
      vectors[i][j] = V[i][src]
    end
  end
  return values, vectors
end

--- The symmetric square root of a symmetric positive semi-definite matrix:
-- V diag(sqrt(max(l, 0))) V^T from `eigh` (eigenvalues that rounding made slightly
-- negative count as 0).
-- @param A symmetric PSD matrix
-- @return matrix S with S S = A
function M.sqrtm_psd(A)
  local n = check_square("linalg.sqrtm_psd", A)
  local values, V = M.eigh(A)
  local out = {}
  for i = 1, n do
    out[i] = {}
    for j = 1, n do
      out[i][j] = 0
    end
  end
  for k = 1, n do
    local r = math.sqrt(math.max(values[k], 0))
    if r > 0 then
      for i = 1, n do
        local vi = V[i][k] * r
        if vi ~= 0 then
          local row = out[i]
          for j = 1, n do
            row[j] = row[j] + vi * V[j][k]
          end
        end
      end
    end
  end
  return out
end

return M
