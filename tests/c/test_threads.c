/* The thread pool (threads.h): every chunk runs exactly once whatever the
 * thread count (more threads than cores included), tids stay in range and
 * are never shared by two running chunks, nested and concurrent calls run,
 * the pool shrinks and grows, and kernels give bitwise the same results on
 * 1 and 4 threads. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "minisd.h"
#include "test.h"

#define MAX_CHUNKS 1000

/* Counts the runs of each chunk and checks the tids seen: below `bound`,
 * and not in use by another running chunk. */
typedef struct count_job {
    atomic_int runs[MAX_CHUNKS];
    atomic_int tid_busy[MSD_MAX_THREADS];
    atomic_int bad_tid, shared_tid, max_tid;
    int bound;
} count_job;

static void count_reset(count_job *j, int bound)
{
    for (int i = 0; i < MAX_CHUNKS; i++)
        atomic_init(&j->runs[i], 0);
    for (int i = 0; i < MSD_MAX_THREADS; i++)
        atomic_init(&j->tid_busy[i], 0);
    atomic_init(&j->bad_tid, 0);
    atomic_init(&j->shared_tid, 0);
    atomic_init(&j->max_tid, 0);
    j->bound = bound;
}

static void count_chunk(void *ctx, int chunk, int tid)
{
    count_job *j = ctx;
    if (tid < 0 || tid >= j->bound) {
        atomic_store(&j->bad_tid, 1);
        return;
    }
    if (atomic_exchange(&j->tid_busy[tid], 1))
        atomic_store(&j->shared_tid, 1);
    int m = atomic_load(&j->max_tid);
    while (tid > m && !atomic_compare_exchange_weak(&j->max_tid, &m, tid))
        ;
    /* a little work, so that chunks overlap */
    volatile double acc = 0;
    for (int i = 0; i < 200 * (chunk % 7 + 1); i++)
        acc = acc + i;
    atomic_fetch_add(&j->runs[chunk], 1);
    atomic_store(&j->tid_busy[tid], 0);
}

/* 1 if each of chunks [0, n) ran once and none beyond n ran. */
static int each_once(count_job *j, int n)
{
    for (int i = 0; i < MAX_CHUNKS; i++)
        if (atomic_load(&j->runs[i]) != (i < n ? 1 : 0))
            return 0;
    return 1;
}

static count_job job; /* large: not on the stack */

static void test_every_chunk_once(void)
{
    static const int threads[] = {1, 2, 3, 8};
    static const int nchunks[] = {0, 1, 2, 3, 7, 64, MAX_CHUNKS};
    static const int caps[] = {MSD_ALL_THREADS, 1, 2, 5};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        msd_set_threads(threads[t]);
        CHECK(msd_get_threads() == threads[t]);
        for (size_t c = 0; c < sizeof nchunks / sizeof *nchunks; c++)
            for (size_t k = 0; k < sizeof caps / sizeof *caps; k++) {
                int bound = caps[k] > 0 && caps[k] < threads[t] ? caps[k] : threads[t];
                count_reset(&job, bound);
                msd_parallel_for(nchunks[c], caps[k], count_chunk, &job);
                CHECK(each_once(&job, nchunks[c]));
                CHECK(!atomic_load(&job.bad_tid));
                CHECK(!atomic_load(&job.shared_tid));
            }
    }
}

/* Many short loops back to back: a worker waking late must never take a
 * chunk of a later loop. */
static void test_many_short_loops(void)
{
    msd_set_threads(3);
    for (int rep = 0; rep < 3000; rep++) {
        int n = 1 + rep % 5;
        count_reset(&job, 3);
        msd_parallel_for(n, MSD_ALL_THREADS, count_chunk, &job);
        CHECK(each_once(&job, n));
        CHECK(!atomic_load(&job.bad_tid) && !atomic_load(&job.shared_tid));
    }
}

/* The outer loop's chunk c runs an inner loop of 10 + c chunks. */
typedef struct nested_job {
    atomic_int inner_runs[16][32];
} nested_job;

typedef struct inner_ctx {
    nested_job *outer;
    int c;
} inner_ctx;

static void inner_chunk(void *ctx, int chunk, int tid)
{
    inner_ctx *ic = ctx;
    (void)tid;
    atomic_fetch_add(&ic->outer->inner_runs[ic->c][chunk], 1);
}

static void outer_chunk(void *ctx, int c, int tid)
{
    inner_ctx ic = {ctx, c};
    (void)tid;
    msd_parallel_for(10 + c, MSD_ALL_THREADS, inner_chunk, &ic);
}

static void test_nested(void)
{
    static nested_job nj;
    msd_set_threads(4);
    for (int c = 0; c < 16; c++)
        for (int i = 0; i < 32; i++)
            atomic_init(&nj.inner_runs[c][i], 0);
    msd_parallel_for(16, MSD_ALL_THREADS, outer_chunk, &nj);
    for (int c = 0; c < 16; c++)
        for (int i = 0; i < 32; i++)
            CHECK(atomic_load(&nj.inner_runs[c][i]) == (i < 10 + c ? 1 : 0));
}

static void test_resize(void)
{
    static const int seq[] = {4, 1, 2, 8, 1, 3};
    for (size_t s = 0; s < sizeof seq / sizeof *seq; s++) {
        msd_set_threads(seq[s]);
        CHECK(msd_get_threads() == seq[s]);
        count_reset(&job, seq[s]);
        msd_parallel_for(100, MSD_ALL_THREADS, count_chunk, &job);
        CHECK(each_once(&job, 100));
        CHECK(!atomic_load(&job.bad_tid) && !atomic_load(&job.shared_tid));
    }
    msd_set_threads(0);
    CHECK(msd_get_threads() == 1);
    msd_set_threads(100000);
    CHECK(msd_get_threads() == MSD_MAX_THREADS);
}

/* Two application threads call at once: one gets the pool, the other
 * runs inline; both complete. */
static count_job job2;

static void *other_caller(void *arg)
{
    (void)arg;
    for (int rep = 0; rep < 200; rep++)
        msd_parallel_for(50, MSD_ALL_THREADS, count_chunk, &job2);
    return NULL;
}

static void test_concurrent_callers(void)
{
    msd_set_threads(3);
    count_reset(&job, 3);
    count_reset(&job2, 3);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, other_caller, NULL) == 0);
    for (int rep = 0; rep < 200; rep++)
        msd_parallel_for(50, MSD_ALL_THREADS, count_chunk, &job);
    pthread_join(th, NULL);
    for (int i = 0; i < 50; i++)
        CHECK(atomic_load(&job.runs[i]) == 200 && atomic_load(&job2.runs[i]) == 200);
    /* the two loops share tids 0..2 but not their buffers; each job's own
     * chunks must still never share one */
    CHECK(!atomic_load(&job.bad_tid) && !atomic_load(&job2.bad_tid));
    CHECK(!atomic_load(&job.shared_tid) && !atomic_load(&job2.shared_tid));
}

static float *random_floats(msd_rng *g, size_t n)
{
    float *p = malloc(n * sizeof *p);
    if (p)
        msd_rng_normal(g, p, n);
    return p;
}

/* conv2d backward with a batch cut into several groups (so partial weight
 * gradients are reduced) and BatchNorm backward, on 1 and on 4 threads:
 * bitwise equal. */
static void test_same_bits_any_thread_count(void)
{
    enum { N = 40, Cin = 16, H = 16, W = 16, Cout = 8, K = 3, C = 32, HW = 64 };
    size_t nx = (size_t)N * Cin * H * W, nw = (size_t)Cout * Cin * K * K;
    size_t ny = (size_t)N * Cout * H * W, nb = (size_t)N * C * HW;
    msd_rng g;
    msd_rng_seed(&g, 7);
    float *x = random_floats(&g, nx), *w = random_floats(&g, nw), *dy = random_floats(&g, ny);
    float *bx = random_floats(&g, nb), *bdy = random_floats(&g, nb);
    float *gamma = random_floats(&g, C), *mean = random_floats(&g, C), *rstd = random_floats(&g, C);
    float *dx[2], *dw[2], *db[2], *bdx[2], *dgamma[2], *dbeta[2];
    int ok = x && w && dy && bx && bdy && gamma && mean && rstd;
    for (int r = 0; r < 2; r++) {
        dx[r] = calloc(nx, sizeof(float));
        dw[r] = calloc(nw, sizeof(float));
        db[r] = calloc(Cout, sizeof(float));
        bdx[r] = calloc(nb, sizeof(float));
        dgamma[r] = calloc(C, sizeof(float));
        dbeta[r] = calloc(C, sizeof(float));
        ok = ok && dx[r] && dw[r] && db[r] && bdx[r] && dgamma[r] && dbeta[r];
    }
    for (int c = 0; ok && c < C; c++)
        rstd[c] = 0.5f + rstd[c] * rstd[c];
    int rc[2] = {-1, -1};
    for (int r = 0; ok && r < 2; r++) {
        msd_set_threads(r == 0 ? 1 : 4);
        rc[r] = msd_conv2d_backward(dx[r], dw[r], db[r], dy, x, w, N, Cin, H, W, Cout, K, K, 1,
                                    1);
        msd_batchnorm_backward(bdx[r], dgamma[r], dbeta[r], bdy, bx, gamma, mean, rstd, 1, N, C,
                               HW);
    }
    int same = ok && rc[0] == MSD_OK && rc[1] == MSD_OK &&
               memcmp(dx[0], dx[1], nx * sizeof(float)) == 0 &&
               memcmp(dw[0], dw[1], nw * sizeof(float)) == 0 &&
               memcmp(db[0], db[1], Cout * sizeof(float)) == 0 &&
               memcmp(bdx[0], bdx[1], nb * sizeof(float)) == 0 &&
               memcmp(dgamma[0], dgamma[1], C * sizeof(float)) == 0 &&
               memcmp(dbeta[0], dbeta[1], C * sizeof(float)) == 0;
    free(x), free(w), free(dy), free(bx), free(bdy), free(gamma), free(mean), free(rstd);
    for (int r = 0; r < 2; r++)
        free(dx[r]), free(dw[r]), free(db[r]), free(bdx[r]), free(dgamma[r]), free(dbeta[r]);
    CHECK(ok);
    CHECK(same);
}

/* A worker that is slow to finish its chunks (as one without a core is):
 * the owner, left waiting for most of each loop, steps aside and runs the
 * following loops inline on tid 0, every chunk still exactly once. */
typedef struct slow_ctx {
    atomic_int runs[8];
    atomic_int off_owner;
} slow_ctx;

/* every chunk takes 1 ms, on a worker 20 ms */
static void slow_chunk(void *ctx, int chunk, int tid)
{
    slow_ctx *c = ctx;
    atomic_fetch_add(&c->runs[chunk], 1);
    if (tid != 0)
        atomic_fetch_add(&c->off_owner, 1);
    struct timespec ts = { 0, tid != 0 ? 20000000 : 1000000 };
    nanosleep(&ts, NULL);
}

static void test_steps_aside_for_a_slow_worker(void)
{
    int saved = msd_get_threads();
    msd_set_threads(2);
    int helped = 0, inline_tail = 0;
    for (int loop = 0; loop < 40; loop++) {
        slow_ctx c;
        memset(&c, 0, sizeof c);
        msd_parallel_for(8, MSD_ALL_THREADS, slow_chunk, &c);
        for (int k = 0; k < 8; k++)
            CHECK(atomic_load(&c.runs[k]) == 1);
        if (atomic_load(&c.off_owner) > 0) {
            helped++;
            inline_tail = 0;
        } else {
            inline_tail++;
        }
    }
    msd_set_threads(saved);
    if (helped == 0) { /* the worker never got a core: nothing to step aside for */
        printf("     (the worker never ran a chunk here)\n");
        return;
    }
    /* the owner runs 7 chunks in 7 ms and waits 13 ms for the worker's:
     * once the moving average of that share passes 0.35 (about 6 loops),
     * it runs the next 256 loops inline, the last 10 of these 40 at least */
    CHECK(inline_tail >= 10);
}

int main(void)
{
    RUN(test_every_chunk_once);
    RUN(test_many_short_loops);
    RUN(test_nested);
    RUN(test_resize);
    RUN(test_concurrent_callers);
    RUN(test_same_bits_any_thread_count);
    RUN(test_steps_aside_for_a_slow_worker);
    msd_set_threads(1); /* stops the workers: nothing left running at exit */
    return TEST_SUMMARY();
}
