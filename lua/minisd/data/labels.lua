--- minisd internal (minisd.data): the labels files of the sheet and PNG-folder formats
-- (tab-separated, a header line, one row per sprite).
-- @module minisd.data.labels

local minisd = require("minisd")
local util = require("minisd.util")
local read_file = util.read_file

local M = {}

-- Reads a tab-separated file: header fields and rows of fields (blank lines skipped).
local function read_tsv(path)
  local text, err = read_file(path)
  if not text then
    return nil, err
  end
  local rows, header = {}, nil
  local lineno = 0
  for line in (text:gsub("\r\n", "\n") .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line ~= "" then
      local fields = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do
        fields[#fields + 1] = field
      end
      if not header then
        header = fields
      elseif #fields ~= #header then
        return nil, string.format("%s: line %d has %d fields, the header has %d", path, lineno,
          #fields, #header)
      else
        fields.line = lineno
        rows[#rows + 1] = fields
      end
    end
  end
  if not header then
    return nil, path .. ": empty file (expected a header line)"
  end
  return header, rows
end

-- Label columns 2..K+1 of a row as numbers.
local function label_values(path, row, first, K)
  local values = {}
  for k = 1, K do
    local v = tonumber(row[first + k - 1])
    if not v or v ~= v or v == math.huge or v == -math.huge then
      return nil, string.format("%s: line %d: label %d is '%s', not a finite number", path,
        row.line, k, row[first + k - 1])
    end
    values[k] = v
  end
  return values
end

local function labels_tensor(values, n, K)
  if K == 0 or n == 0 then
    return minisd.zeros({ n, K })
  end
  return minisd.tensor(values)
end

local function check_names(path, names, K)
  if #names ~= K then
    return nil, string.format("%s: %d label names for %d label columns", path, #names, K)
  end
  return true
end

M.read_tsv = read_tsv
M.label_values = label_values
M.labels_tensor = labels_tensor
M.check_names = check_names

return M
