--- minisd.dist: data-parallel training over MPI, in the manner of torch.distributed.
--
-- Built with MPI (CMake's MINISD_MPI, on when MPI is found), `init()` starts MPI and the
-- collectives run over every process of the job (`mpirun -np N lua script.lua`, `srun`).
-- Without MPI it is a single process: `init()` returns 0, 1, the collectives check their
-- arguments and change nothing, so a script runs unchanged on one machine.
--
-- The rules are those of MPI: every rank calls the same collectives in the same order,
-- with tensors of the same shapes. Only the thread that called `init()` may call them.
-- Collectives wait at most `set_timeout` seconds (300 by default) for the other ranks; a
-- failure (a timeout, an MPI error) returns `nil, message`, after which the job is broken
-- and should end (`abort()`). Misuse (not a tensor, an unknown op, a root out of range, a
-- collective before `init()`) raises.
-- @module minisd.dist

local C = require("minisd.core").dist -- nil in a build without MPI

local M = {}

--- True when minisd was built with MPI.
M.available = C ~= nil

local started = false -- init() was called (the single-process implementation too)

local function check_tensors(fn, value)
  local core = require("minisd.core")
  if core.is_tensor(value) then
    return
  end
  if type(value) ~= "table" or #value < 1 then
    error(string.format("minisd.dist.%s: expected a tensor or a non-empty list of tensors, "
      .. "got %s", fn, type(value) == "table" and "an empty table" or type(value)), 3)
  end
  for i, t in ipairs(value) do
    if not core.is_tensor(t) then
      error(string.format("minisd.dist.%s: entry %d is a %s, expected a tensor", fn, i, type(t)),
        3)
    end
  end
end

local function check_started(fn)
  if not started then
    error("minisd.dist." .. fn .. ": call minisd.dist.init() first", 3)
  end
end

--- Whether this process was started by an MPI launcher (mpirun / mpiexec, or srun with
-- more than one task), so that a program can call `init()` only then.
-- @return boolean
function M.launched()
  for _, var in ipairs({ "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE" }) do
    if os.getenv(var) then
      return true
    end
  end
  return (tonumber(os.getenv("SLURM_NTASKS") or "") or 1) > 1
end

--- Starts the job (MPI_Init_thread with MPI_THREAD_FUNNELED); again returns the same.
-- @param opts optional {timeout = seconds}: see set_timeout
-- @return rank (0-based), size; or nil, message
function M.init(opts)
  opts = require("minisd.util").check_options("minisd.dist.init", opts, { "timeout" }, 2)
  if opts.timeout ~= nil then
    M.set_timeout(opts.timeout)
  end
  if not C then
    -- a launcher that started several processes, and no MPI to join them: each would
    -- train alone (and write the same files)
    local n = 1
    for _, var in ipairs({ "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS" }) do
      n = math.max(n, tonumber(os.getenv(var) or "") or 1)
    end
    if n > 1 then
      return nil, string.format("minisd.dist.init: started as one of %d processes, but this "
        .. "minisd was built without MPI, so each would run alone; rebuild with MPI "
        .. "(libopenmpi-dev; CMake's MINISD_MPI), or run one process", n)
    end
    started = true
    return 0, 1
  end
  started = true
  local rank, size = C.init()
  if not rank then
    return nil, size
  end
  local tasks = tonumber(os.getenv("SLURM_NTASKS") or "") or 1
  if size == 1 and tasks > 1 and os.getenv("SLURM_PROCID") then
    return nil, string.format("minisd.dist.init: srun started %d tasks but MPI sees one: they "
      .. "would train alone, each; start them with MPI's plug-in (srun --mpi=pmix, see "
      .. "srun --mpi=list)", tasks)
  end
  return rank, size
end

--- Whether init() was called.
function M.initialized()
  return started
end

local function info()
  return C and started and C.info() or nil
end

--- This process's rank, 0-based (0 before init and without MPI).
function M.rank()
  local i = info()
  return i and i.rank or 0
end

--- The number of processes in the job (1 before init and without MPI).
function M.size()
  local i = info()
  return i and i.size or 1
end

--- The number of processes of the job on this machine.
function M.local_size()
  local i = info()
  return i and i.local_size or 1
end

--- The state of the job: {state=, rank=, size=, local_size=, timeout=, broken=, version=}
-- (without MPI: state "single", version "none").
function M.info()
  return info() or { state = "single", rank = 0, size = 1, local_size = 1,
    timeout = M.timeout or 300, broken = false, version = "none" }
end

--- How long a collective waits for the other ranks, in seconds (300 by default); 0 waits
-- for ever, with MPI's blocking collectives.
-- @param seconds number >= 0
function M.set_timeout(seconds)
  if type(seconds) ~= "number" or not (seconds >= 0 and seconds <= 1e9) then
    error("minisd.dist.set_timeout: seconds must be a number in [0, 1e9], got "
      .. tostring(seconds), 2)
  end
  M.timeout = seconds
  if C then
    C.set_timeout(seconds)
  end
end

--- Sums (or averages) tensors over the ranks, in place: every rank ends with the same
-- values. A list is reduced in buckets (the small tensors copied into one buffer of at
-- most bucket_bytes, one collective each).
-- @param t a tensor or a list of tensors (the same shapes on every rank)
-- @param op "sum" or "mean"
-- @param opts optional {bucket_bytes = 4 MiB}
-- @return true, or nil and a message
function M.allreduce(t, op, opts)
  check_tensors("allreduce", t)
  if op ~= "sum" and op ~= "mean" then
    error("minisd.dist.allreduce: op must be \"sum\" or \"mean\", got " .. tostring(op), 2)
  end
  opts = require("minisd.util").check_options("minisd.dist.allreduce", opts, { "bucket_bytes" },
    2)
  check_started("allreduce")
  if not C then
    return true
  end
  return C.allreduce(t, op, opts.bucket_bytes)
end

local function check_root(fn, root)
  if type(root) ~= "number" or root ~= math.floor(root) or root < 0 or root >= M.size() then
    error(string.format("minisd.dist.%s: root must be a rank in 0..%d, got %s", fn,
      M.size() - 1, tostring(root)), 3)
  end
end

--- Copies root's values into every rank's tensors, in place.
-- @param t a tensor or a list of tensors (the same shapes on every rank)
-- @param root the rank whose values are sent (0-based)
-- @return true, or nil and a message
function M.broadcast(t, root)
  check_tensors("broadcast", t)
  check_root("broadcast", root)
  check_started("broadcast")
  if not C then
    return true
  end
  return C.broadcast(t, root)
end

--- Root's string on every rank (a file's bytes that only root can read, an error message).
-- @param s the string on root (ignored elsewhere; may be nil there)
-- @param root rank
-- @return the string, or nil and a message
function M.broadcast_string(s, root)
  check_root("broadcast_string", root)
  check_started("broadcast_string")
  if M.rank() == root and type(s) ~= "string" then
    error("minisd.dist.broadcast_string: the root's value must be a string, got " .. type(s), 2)
  end
  if not C then
    return s
  end
  return C.broadcast_string(s, root)
end

--- Waits until every rank has called it.
-- @return true, or nil and a message
function M.barrier()
  check_started("barrier")
  if not C then
    return true
  end
  return C.barrier()
end

--- Ends every rank of the job at once (MPI_Abort) with exit status `code`, after a failure
-- that leaves the job unable to go on; does nothing (and returns) in a single process.
-- @param code exit status (default 1)
function M.abort(code)
  if C and started and M.size() > 1 then
    io.stdout:flush()
    io.stderr:flush()
    C.abort(code or 1)
  end
end

local Collective = { __tostring = function(e) return e.message end }

--- Raises msg (without a position) as an error that every rank raises at the same point,
-- from the same values (an option, data every rank received, a loss summed over the
-- ranks): `minisd.cli.run_main` reports it once, on rank 0, and every rank exits with
-- status 1 without aborting the job. In a job of one process, a plain error.
-- @param msg the message
function M.collective_error(msg)
  if M.size() == 1 then
    error(msg, 0)
  end
  error(setmetatable({ message = msg, collective = true }, Collective), 0)
end

--- Ends MPI (also done at exit). No collective may follow.
function M.finalize()
  if C and started then
    C.finalize()
  end
end

--- The reducer that synchronises BatchNorm over the job (for `minisd.batch_norm2d`'s `sync`
-- argument and `BatchNorm2d.sync`), or nil in a job of one process.
function M.reducer()
  if not C or M.size() == 1 then
    return nil
  end
  return C.reducer()
end

--- Synchronised BatchNorm (PyTorch's SyncBatchNorm): every BatchNorm2d of the model
-- normalises, in training, with the statistics of the global batch (each rank's share
-- together), so that N ranks compute what one process computes on the whole batch.
-- Nothing changes in a job of one process.
-- @param model a minisd.nn Module
-- @param on false to undo (default true)
-- @return the number of BatchNorm2d layers
function M.sync_batch_norm(model, on)
  local BatchNorm2d = require("minisd.nn").BatchNorm2d
  local r = on ~= false and M.reducer() or nil
  local n = 0
  local mods, names = model:named_modules()
  for _, name in ipairs(names) do
    local m = mods[name]
    if getmetatable(m) == BatchNorm2d then
      m.sync = r
      n = n + 1
    end
  end
  return n
end

--- A thread count for this rank: the cores it may run on (its affinity: mpirun binds each
-- of 1 or 2 ranks to one core by default), shared with the other ranks on its machine;
-- nil without MPI or before init.
-- @return integer or nil
function M.default_threads()
  if not (C and started) then
    return nil
  end
  local mine, online = C.cpus()
  return math.max(1, math.min(mine, math.floor(online / M.local_size())))
end

return M
