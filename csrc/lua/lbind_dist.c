/* minisd.core.dist: data-parallel training over MPI (built with -DMINISD_MPI=ON), the
 * engine of lua/minisd/dist.lua. Only the thread that called init makes MPI calls
 * (MPI_THREAD_FUNNELED): the core's thread pool never does, and synchronised BatchNorm
 * calls its reducer on the thread that runs the op.
 *
 * Collectives run non-blocking and are polled against a deadline (set_timeout), so a peer
 * that hangs, or dies without the launcher noticing, ends in an error that names the wait
 * instead of a process blocked for ever. After a timeout a collective is still pending:
 * the job is broken, every later call fails at once, and the exit aborts the job rather
 * than finalizing. A timeout of 0 uses MPI's blocking collectives (no deadline).
 *
 * Communication failures return nil and a message (a reducer's, the op's error); misuse (not
 * a tensor, an unknown op, a root out of range, a call before init) raises. */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD, CPU_COUNT */
#include <dlfcn.h>
#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lbind.h"

/* Gradients are summed in buckets of at most this many bytes by default: one
 * collective per bucket instead of one per tensor. */
#define DEFAULT_BUCKET_BYTES (4 << 20)

static struct {
    int state; /* 0: not initialised; 1: running; 2: finalised */
    int broken;
    int rank, size, local_size;
    double timeout; /* seconds; <= 0: blocking collectives */
    char error[512];
} dist = { 0, 0, 0, 1, 1, 300.0, "" };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Records the message of a failed call in dist.error; returns -1. */
static int failed(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dist.error, sizeof dist.error, fmt, ap);
    va_end(ap);
    return -1;
}

static int mpi_failed(const char *what, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", rc);
    return failed("minisd.dist: %s failed (%d ranks): %s", what, dist.size, msg);
}

/* Waits for a request, polling (MPI progresses a non-blocking collective only
 * inside its calls): spinning for the first millisecond, which a collective
 * whose peers are there takes, then in 50 us naps, so that a rank waiting for
 * a late peer (a synchronised BatchNorm ahead of the other rank, rank 0
 * writing a checkpoint) leaves the core to others: on a shared machine or a
 * hyperthread sibling, a spinning rank slows the very rank it waits for. */
static int wait_for(MPI_Request *req, const char *what)
{
    double start = now();
    for (;;) {
        int done = 0, rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_failed(what, rc);
        if (done)
            return 0;
        double waited = now() - start;
        if (waited > dist.timeout) {
            dist.broken = 1;
            return failed("minisd.dist: %s: no answer from the other ranks within %g s (%d "
                          "ranks): a rank died or hangs (the timeout is "
                          "minisd.dist.set_timeout, train.lua --dist-timeout)",
                          what, dist.timeout, dist.size);
        }
        if (waited > 0.001) {
            struct timespec nap = { 0, 50000 };
            nanosleep(&nap, NULL);
        }
    }
}

/* Each collective: MPI's blocking call without a timeout, else the
 * non-blocking one and wait_for. Return 0 or -1 with dist.error set. */
static int sum_in_place(void *buf, int n, MPI_Datatype type, const char *what)
{
    int rc;
    if (dist.timeout <= 0) {
        rc = MPI_Allreduce(MPI_IN_PLACE, buf, n, type, MPI_SUM, MPI_COMM_WORLD);
    } else {
        MPI_Request req;
        rc = MPI_Iallreduce(MPI_IN_PLACE, buf, n, type, MPI_SUM, MPI_COMM_WORLD, &req);
        if (rc == MPI_SUCCESS)
            return wait_for(&req, what);
    }
    return rc == MPI_SUCCESS ? 0 : mpi_failed(what, rc);
}

static int bcast(void *buf, int n, MPI_Datatype type, int root, const char *what)
{
    int rc;
    if (dist.timeout <= 0) {
        rc = MPI_Bcast(buf, n, type, root, MPI_COMM_WORLD);
    } else {
        MPI_Request req;
        rc = MPI_Ibcast(buf, n, type, root, MPI_COMM_WORLD, &req);
        if (rc == MPI_SUCCESS)
            return wait_for(&req, what);
    }
    return rc == MPI_SUCCESS ? 0 : mpi_failed(what, rc);
}

/* Raises unless running; returns 0, or -1 (dist.error set) when broken. */
static int ready(lua_State *L, const char *fn)
{
    if (dist.state != 1)
        luaL_error(L, "minisd.dist.%s: %s", fn,
                   dist.state == 0 ? "call minisd.dist.init() first" : "MPI was finalised");
    if (dist.broken)
        return failed("minisd.dist.%s: the job is broken by an earlier failure (a collective "
                      "timed out; %d ranks); stop it", fn, dist.size);
    return 0;
}

static int push_failure(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, dist.error);
    return 2;
}

/* ---- the job ------------------------------------------------------------ */

static void at_exit(void)
{
    if (dist.state != 1)
        return;
    dist.state = 2;
    if (dist.broken) /* a collective is pending: MPI_Finalize would wait for it */
        MPI_Abort(MPI_COMM_WORLD, 1);
    else
        MPI_Finalize();
}

/* init() -> rank, size (or nil, message). MPI_Init_thread with FUNNELED. Lua
 * opens this module with RTLD_LOCAL, which hides libmpi's symbols from the
 * plugins Open MPI loads at init: libmpi is promoted to RTLD_GLOBAL first
 * (found from one of its functions, so no library name is assumed). Open MPI
 * may still abort the process when it cannot start at all. */
static int l_dist_init(lua_State *L)
{
    if (dist.state == 2)
        return luaL_error(L, "minisd.dist.init: MPI was finalised; it cannot start again");
    if (dist.state == 0) {
        int flag = 0, provided = 0, rc;
        MPI_Initialized(&flag);
        if (!flag) {
            Dl_info info;
            if (dladdr((void *)MPI_Init_thread, &info) && info.dli_fname)
                dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
            rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
            if (rc != MPI_SUCCESS) {
                mpi_failed("MPI_Init_thread", rc);
                return push_failure(L);
            }
            if (provided < MPI_THREAD_FUNNELED) {
                failed("minisd.dist.init: this MPI gives thread level %d, minisd needs "
                       "MPI_THREAD_FUNNELED (%d)", provided, MPI_THREAD_FUNNELED);
                MPI_Finalize();
                dist.state = 2;
                return push_failure(L);
            }
        }
        /* errors come back as codes (MPI's default aborts the job) */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank);
        MPI_Comm_size(MPI_COMM_WORLD, &dist.size);
        MPI_Comm local;
        if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL,
                                &local) == MPI_SUCCESS) {
            MPI_Comm_size(local, &dist.local_size);
            MPI_Comm_free(&local);
        }
        dist.state = 1;
        atexit(at_exit);
    }
    lua_pushinteger(L, dist.rank);
    lua_pushinteger(L, dist.size);
    return 2;
}

static int l_dist_finalize(lua_State *L)
{
    (void)L;
    at_exit();
    return 0;
}

/* abort([code=1]): ends every rank of the job (MPI_Abort); returns only when MPI is not
 * running. */
static int l_dist_abort(lua_State *L)
{
    int code = lbind_opt_int(L, 1, 1);
    if (dist.state == 1) {
        fflush(NULL);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
    return 0;
}

/* info() -> {state=, rank=, size=, local_size=, timeout=, broken=, version=} */
static int l_dist_info(lua_State *L)
{
    static const char *states[] = { "new", "running", "finalised" };
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    version[strcspn(version, ",\n")] = '\0';
    lua_createtable(L, 0, 7);
    lua_pushstring(L, states[dist.state]);
    lua_setfield(L, -2, "state");
    lua_pushinteger(L, dist.rank);
    lua_setfield(L, -2, "rank");
    lua_pushinteger(L, dist.size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, dist.local_size);
    lua_setfield(L, -2, "local_size");
    lua_pushnumber(L, dist.timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushboolean(L, dist.broken);
    lua_setfield(L, -2, "broken");
    lua_pushstring(L, version);
    lua_setfield(L, -2, "version");
    return 1;
}

static int l_dist_set_timeout(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    if (!(s >= 0 && s <= 1e9))
        return luaL_argerror(L, 1, lua_pushfstring(L, "timeout must be in [0, 1e9] seconds, "
                                                   "got %f", (double)s));
    dist.timeout = s;
    return 0;
}

/* cpus() -> the cores this process may run on (its affinity mask), and the online cores */
static int l_dist_cpus(lua_State *L)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int mine = (int)(online > 0 ? online : 1);
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        mine = CPU_COUNT(&set);
#endif
    lua_pushinteger(L, mine);
    lua_pushinteger(L, online > 0 ? online : 1);
    return 2;
}

/* ---- collectives ---------------------------------------------------------- */

/* The tensors of argument i: one tensor (in *one), or a list of them (1 or
 * more, in an array the GC frees). */
static int check_tensors(lua_State *L, int i, msd_tensor **one, msd_tensor ***out)
{
    if (!lua_istable(L, i)) {
        *one = lbind_check_tensor(L, i);
        *out = one;
        return 1;
    }
    int n = (int)lua_rawlen(L, i);
    if (n < 1)
        luaL_argerror(L, i, "tensor or non-empty list of tensors expected, got an empty table");
    msd_tensor **ts = lbind_newuserdata(L, (size_t)n * sizeof *ts);
    for (int k = 0; k < n; k++) {
        lua_rawgeti(L, i, k + 1);
        msd_tensor **box = luaL_testudata(L, -1, LBIND_TENSOR_MT);
        if (!box || !*box)
            luaL_argerror(L, i, lua_pushfstring(L, "entry %d is a %s, expected a tensor", k + 1,
                                                box ? "closed tensor" : luaL_typename(L, -1)));
        ts[k] = *box;
        lua_pop(L, 1);
    }
    *out = ts;
    return n;
}

static int check_int_count(lua_State *L, size_t n)
{
    if (n > 0x7fffffff)
        luaL_error(L, "minisd.dist: a tensor of %zu values is too large for one message", n);
    return (int)n;
}

/* allreduce(tensor or {tensors}, "sum"|"mean" [, bucket_bytes]) -> true | nil, message.
 * In place. A list is summed in buckets of at most bucket_bytes: the small
 * tensors copied together into one buffer (one collective), a tensor larger
 * than a bucket in place on its own. "mean" is the sum times 1/size (MPI has
 * no mean). */
static int l_dist_allreduce(lua_State *L)
{
    msd_tensor *one, **ts;
    int n = check_tensors(L, 1, &one, &ts);
    const char *op = luaL_checkstring(L, 2);
    int mean = strcmp(op, "mean") == 0;
    if (!mean && strcmp(op, "sum") != 0)
        return luaL_argerror(L, 2, lua_pushfstring(L, "op must be \"sum\" or \"mean\", got "
                                                   "\"%s\"", op));
    lua_Number bb = luaL_optnumber(L, 3, DEFAULT_BUCKET_BYTES);
    if (!(bb >= 4 && bb <= 1 << 30))
        return luaL_argerror(L, 3, "bucket_bytes must be in [4, 2^30]");
    size_t cap = (size_t)bb / sizeof(float);
    for (int k = 0; k < n; k++)
        check_int_count(L, msd_tensor_numel(ts[k]));
    if (ready(L, "allreduce") != 0)
        return push_failure(L);
    float *bucket = NULL;
    if (n > 1 && !(bucket = malloc(cap * sizeof *bucket)))
        return luaL_error(L, "minisd.dist.allreduce: out of memory for a bucket of %zu bytes",
                          cap * sizeof *bucket);
    char what[96];
    int rc = 0, k = 0;
    float scale = 1.0f / (float)dist.size;
    while (k < n && rc == 0) {
        size_t numel = msd_tensor_numel(ts[k]);
        if (n == 1 || numel >= cap) { /* alone, in place */
            snprintf(what, sizeof what, "allreduce of %zu floats", numel);
            rc = sum_in_place(msd_tensor_data(ts[k]), (int)numel, MPI_FLOAT, what);
            for (size_t i = 0; rc == 0 && mean && i < numel; i++)
                msd_tensor_data(ts[k])[i] *= scale;
            k++;
            continue;
        }
        int first = k;
        size_t used = 0;
        for (; k < n && used + msd_tensor_numel(ts[k]) <= cap; k++) {
            memcpy(bucket + used, msd_tensor_data(ts[k]), msd_tensor_numel(ts[k]) * sizeof(float));
            used += msd_tensor_numel(ts[k]);
        }
        snprintf(what, sizeof what, "allreduce of a bucket of %d tensors (%zu floats)",
                 k - first, used);
        rc = sum_in_place(bucket, (int)used, MPI_FLOAT, what);
        for (size_t i = 0; rc == 0 && mean && i < used; i++)
            bucket[i] *= scale;
        for (int j = first, off = 0; rc == 0 && j < k; j++) {
            memcpy(msd_tensor_data(ts[j]), bucket + off, msd_tensor_numel(ts[j]) * sizeof(float));
            off += (int)msd_tensor_numel(ts[j]);
        }
    }
    free(bucket);
    if (rc != 0)
        return push_failure(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int check_root(lua_State *L, int i)
{
    int root = lbind_check_int(L, i);
    if (dist.state == 1 && (root < 0 || root >= dist.size))
        luaL_argerror(L, i, lua_pushfstring(L, "root must be a rank in 0..%d, got %d",
                                            dist.size - 1, root));
    return root;
}

/* broadcast(tensor or {tensors}, root) -> true | nil, message: root's values
 * into every rank's tensors (the same shapes on all), in place. */
static int l_dist_broadcast(lua_State *L)
{
    msd_tensor *one, **ts;
    int n = check_tensors(L, 1, &one, &ts);
    int root = check_root(L, 2);
    for (int k = 0; k < n; k++)
        check_int_count(L, msd_tensor_numel(ts[k]));
    if (ready(L, "broadcast") != 0)
        return push_failure(L);
    char what[96];
    for (int k = 0; k < n; k++) {
        snprintf(what, sizeof what, "broadcast of %zu floats from rank %d",
                 msd_tensor_numel(ts[k]), root);
        if (bcast(msd_tensor_data(ts[k]), (int)msd_tensor_numel(ts[k]), MPI_FLOAT, root, what))
            return push_failure(L);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* broadcast_string(s, root) -> root's string on every rank (s is ignored
 * elsewhere and may be nil) | nil, message */
static int l_dist_broadcast_string(lua_State *L)
{
    int root = check_root(L, 2);
    size_t len = 0;
    const char *s = NULL;
    if (dist.state == 1 && dist.rank == root)
        s = luaL_checklstring(L, 1, &len);
    if (ready(L, "broadcast_string") != 0)
        return push_failure(L);
    double n = (double)len; /* doubles carry any length below 2^53 */
    if (bcast(&n, 1, MPI_DOUBLE, root, "broadcast of a string's length") != 0)
        return push_failure(L);
    if (n > 0x7fffffff)
        return luaL_error(L, "minisd.dist.broadcast_string: %.0f bytes is too long", n);
    char *buf = NULL;
    if (dist.rank != root && !(buf = malloc(n > 0 ? (size_t)n : 1)))
        return luaL_error(L, "minisd.dist.broadcast_string: out of memory for %.0f bytes", n);
    char what[64];
    snprintf(what, sizeof what, "broadcast of a string of %.0f bytes", n);
    int rc = bcast(buf ? buf : (char *)s, (int)n, MPI_BYTE, root, what);
    if (rc == 0)
        lua_pushlstring(L, buf ? buf : s, (size_t)n);
    free(buf);
    return rc == 0 ? 1 : push_failure(L);
}

/* barrier() -> true | nil, message */
static int l_dist_barrier(lua_State *L)
{
    if (ready(L, "barrier") != 0)
        return push_failure(L);
    int rc;
    if (dist.timeout <= 0) {
        rc = MPI_Barrier(MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_failed("barrier", rc), push_failure(L);
    } else {
        MPI_Request req;
        rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
        if (rc != MPI_SUCCESS)
            return mpi_failed("barrier", rc), push_failure(L);
        if (wait_for(&req, "barrier") != 0)
            return push_failure(L);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The reducer of synchronised BatchNorm: a sum over MPI_COMM_WORLD. */
static int sum_world(double *buf, int n, void *ud)
{
    (void)ud;
    if (dist.state != 1)
        return msd_error(MSD_ERR_STATE, "synchronised BatchNorm: minisd.dist is not running");
    if (dist.broken)
        return msd_error(MSD_ERR_STATE, "synchronised BatchNorm: the job is broken by an "
                         "earlier failure (a collective timed out; %d ranks)", dist.size);
    char what[80];
    snprintf(what, sizeof what, "synchronised BatchNorm (a sum of %d values)", n);
    if (sum_in_place(buf, n, MPI_DOUBLE, what) != 0)
        return msd_error(MSD_ERR_STATE, "%s", dist.error);
    return MSD_OK;
}

static const msd_reducer world = { sum_world, NULL };

/* reducer() -> the reducer batch_norm2d takes to synchronise over the job */
static int l_dist_reducer(lua_State *L)
{
    lbind_push_reducer(L, &world);
    return 1;
}

static const luaL_Reg functions[] = {
    { "init", l_dist_init },
    { "finalize", l_dist_finalize },
    { "abort", l_dist_abort },
    { "info", l_dist_info },
    { "set_timeout", l_dist_set_timeout },
    { "cpus", l_dist_cpus },
    { "allreduce", l_dist_allreduce },
    { "broadcast", l_dist_broadcast },
    { "broadcast_string", l_dist_broadcast_string },
    { "barrier", l_dist_barrier },
    { "reducer", l_dist_reducer },
    { NULL, NULL },
};

void lbind_open_dist(lua_State *L)
{
    lua_newtable(L);
    luaL_setfuncs(L, functions, 0);
    lua_setfield(L, -2, "dist");
}
