/* The thread pool (threads.h): persistent workers, chunks claimed from one
 * atomic ticket, passive waits.
 *
 * One thread at a time owns the pool (the `owner` try-lock): it posts a job,
 * runs chunks itself, waits for the chunks others took, and alone starts and
 * stops workers. Whoever finds the pool owned runs inline, which makes
 * nested calls and concurrent callers safe without a queue.
 *
 * A job is published through `ticket` = generation << 32 | chunks not yet
 * claimed. A thread claims a chunk by a compare-and-swap that decrements the
 * count only while the generation is still the job's, so a worker that
 * wakes late can never claim a chunk of a later job. The job's fields
 * (fn, ctx, nchunks) are plain variables: a thread reads them only while it
 * holds a claimed, unfinished chunk, and the owner rewrites them only after
 * `left` (chunks not yet finished) has dropped to 0, so the two never
 * overlap. The owner waits for `left` only: a worker that never woke (no
 * core for it) costs nothing, its chunks are taken by the others.
 *
 * Waiting threads spin for SPIN_NS (a loop issued right after another
 * rarely has to wake anyone), then sleep on a condition variable. Both
 * sides of each condition variable follow the usual rule: the waiter checks
 * under the mutex, the notifier changes the atomic before taking the mutex,
 * so no wake-up is lost.
 *
 * A shared CPU: when another process holds a core, a worker that claimed a
 * chunk may be descheduled in the middle of it and the owner waits for it.
 * The owner keeps a moving average of the share of each parallel loop it
 * spent waiting; past WAIT_SHARE it runs the next BACKOFF_LOOPS loops
 * inline (one thread, as fast as the pool could be then) and tries again.
 * Chunks are the same either way, so results do not change.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "threads.h"

/* How long an idle thread spins before it sleeps, in ns: about what a
 * sleep and a wake-up cost (past that, sleeping is the cheaper bet), and
 * far less than a scheduler time slice, so a spinning thread takes little
 * from another process. */
#ifndef SPIN_NS
#define SPIN_NS 20000L
#endif

/* The owner's wait share (moving average over about 8 loops) past which
 * the pool steps aside, and for how many loops. */
#define WAIT_SHARE 0.35
#define BACKOFF_LOOPS 256

typedef struct worker {
    pthread_t thread;
    int tid;        /* 1..; the owner is 0 */
    uint32_t start; /* the generation at creation: jobs before it are not its own */
} worker;

static atomic_flag owner = ATOMIC_FLAG_INIT;
static atomic_int wanted = 1; /* msd_set_threads; the constructor sets the default */

/* Touched by the owner only. */
static worker workers[MSD_MAX_THREADS - 1];
static int nworkers;
static int started_for; /* the thread count the workers were started for; 0: none */
static uint32_t generation;
static double wait_share; /* moving average of the owner's waiting share */
static int backoff;       /* loops still to run inline */

/* The current job. */
static _Atomic uint64_t ticket;
static atomic_int team; /* threads with tid < team may take chunks */
static atomic_int left; /* chunks not finished */
static atomic_bool quit;
static msd_chunk_fn job_fn;
static void *job_ctx;
static int job_n;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_posted = PTHREAD_COND_INITIALIZER; /* ticket's generation or quit */
static pthread_cond_t job_done = PTHREAD_COND_INITIALIZER;   /* left reached 0 */

static inline void cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A bounded spin: start zeroed; keep_spinning returns 0 once about SPIN_NS
 * have passed. The clock is read every 32 steps only, first at step 32. */
typedef struct spin {
    unsigned n;
    struct timespec t0;
} spin;

static int keep_spinning(spin *s)
{
    cpu_relax();
    if ((++s->n & 31) != 0)
        return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (s->n == 32) {
        s->t0 = now;
        return 1;
    }
    return (now.tv_sec - s->t0.tv_sec) * 1000000000L + (now.tv_nsec - s->t0.tv_nsec) < SPIN_NS;
}

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline uint32_t gen_of(uint64_t t)
{
    return (uint32_t)(t >> 32);
}

/* Claims and runs chunks of job g until none is left unclaimed; the thread
 * that finishes the job's last chunk wakes the owner. */
static void run_chunks(uint32_t g, int tid)
{
    uint64_t t = atomic_load_explicit(&ticket, memory_order_acquire);
    while (gen_of(t) == g && (uint32_t)t != 0) {
        if (!atomic_compare_exchange_weak_explicit(&ticket, &t, t - 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* claimed: the job cannot end before this chunk does, so its
         * fields are stable; chunks go out in increasing order */
        job_fn(job_ctx, job_n - (int)(uint32_t)t, tid);
        if (atomic_fetch_sub_explicit(&left, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&lock);
            pthread_cond_signal(&job_done);
            pthread_mutex_unlock(&lock);
        }
        t = atomic_load_explicit(&ticket, memory_order_acquire);
    }
}

/* Waits until the ticket's generation differs from seen, or quit; returns
 * the new generation. */
static uint32_t next_job(uint32_t seen)
{
    spin sp = {0};
    uint32_t g;
    while ((g = gen_of(atomic_load_explicit(&ticket, memory_order_acquire))) == seen &&
           !atomic_load_explicit(&quit, memory_order_acquire))
        if (!keep_spinning(&sp)) {
            pthread_mutex_lock(&lock);
            while ((g = gen_of(atomic_load_explicit(&ticket, memory_order_acquire))) == seen &&
                   !atomic_load_explicit(&quit, memory_order_acquire))
                pthread_cond_wait(&job_posted, &lock);
            pthread_mutex_unlock(&lock);
            break;
        }
    return g;
}

static void *worker_main(void *arg)
{
    const worker *w = arg;
    uint32_t seen = w->start;
    for (;;) {
        seen = next_job(seen);
        if (atomic_load_explicit(&quit, memory_order_acquire))
            return NULL;
        /* team is read after the generation: it is this job's or, if the
         * job is over already, a later one's, and then no claim succeeds */
        if (w->tid < atomic_load_explicit(&team, memory_order_relaxed))
            run_chunks(seen, w->tid);
    }
}

/* (owner) Stops and joins every worker. */
static void stop_workers(void)
{
    if (nworkers == 0)
        return;
    atomic_store_explicit(&quit, 1, memory_order_release);
    pthread_mutex_lock(&lock);
    pthread_cond_broadcast(&job_posted);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    atomic_store_explicit(&quit, 0, memory_order_release);
    nworkers = 0;
    started_for = 0;
}

/* (owner) Makes the pool match the wanted count; returns the threads it has,
 * the owner included. Workers block all signals, which go to the
 * application's threads (Lua's SIGINT handler expects the main thread). A
 * worker that cannot be created is done without until the count changes. */
static int pool_threads(void)
{
    int want = atomic_load_explicit(&wanted, memory_order_relaxed);
    if (want == started_for)
        return nworkers + 1;
    stop_workers();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < want - 1; i++) {
        workers[i].tid = i + 1;
        workers[i].start = generation;
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0)
            break;
        nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    started_for = want;
    return nworkers + 1;
}

void msd_parallel_for(int nchunks, int max_threads, msd_chunk_fn fn, void *ctx)
{
    int nthr = atomic_load_explicit(&wanted, memory_order_relaxed);
    if (max_threads > 0 && max_threads < nthr)
        nthr = max_threads;
    if (nchunks < nthr)
        nthr = nchunks;
    if (nthr > 1 && !atomic_flag_test_and_set_explicit(&owner, memory_order_acquire)) {
        int have = pool_threads();
        if (nthr > have)
            nthr = have;
        if (backoff > 0) { /* the CPU is shared: this loop runs inline */
            backoff--;
            nthr = 1;
        }
        if (nthr > 1) {
            double t0 = seconds();
            job_fn = fn;
            job_ctx = ctx;
            job_n = nchunks;
            atomic_store_explicit(&team, nthr, memory_order_relaxed);
            atomic_store_explicit(&left, nchunks, memory_order_relaxed);
            generation++;
            atomic_store_explicit(&ticket, (uint64_t)generation << 32 | (uint32_t)nchunks,
                                  memory_order_release);
            pthread_mutex_lock(&lock);
            pthread_cond_broadcast(&job_posted);
            pthread_mutex_unlock(&lock);

            run_chunks(generation, 0);
            /* only chunks being run by others remain: wait for them */
            double t1 = seconds();
            spin sp = {0};
            while (atomic_load_explicit(&left, memory_order_acquire) != 0)
                if (!keep_spinning(&sp)) {
                    pthread_mutex_lock(&lock);
                    while (atomic_load_explicit(&left, memory_order_acquire) != 0)
                        pthread_cond_wait(&job_done, &lock);
                    pthread_mutex_unlock(&lock);
                }
            double t2 = seconds();
            if (t2 > t0) {
                wait_share += ((t2 - t1) / (t2 - t0) - wait_share) / 8.0;
                if (wait_share > WAIT_SHARE) {
                    backoff = BACKOFF_LOOPS;
                    wait_share = 0.0;
                }
            }
            atomic_flag_clear_explicit(&owner, memory_order_release);
            return;
        }
        atomic_flag_clear_explicit(&owner, memory_order_release);
    }
    for (int c = 0; c < nchunks; c++)
        fn(ctx, c, 0);
}

__attribute__((constructor)) static void threads_init(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    atomic_store(&wanted, n < 1 ? 1 : n > MSD_MAX_THREADS ? MSD_MAX_THREADS : (int)n);
}

void msd_set_threads(int n)
{
    n = n < 1 ? 1 : n > MSD_MAX_THREADS ? MSD_MAX_THREADS : n;
    atomic_store(&wanted, n);
    /* stop surplus workers now if the pool is free; else the next loop will */
    if (!atomic_flag_test_and_set_explicit(&owner, memory_order_acquire)) {
        if (nworkers > 0 && started_for != n)
            stop_workers();
        atomic_flag_clear_explicit(&owner, memory_order_release);
    }
}

int msd_get_threads(void)
{
    return atomic_load(&wanted);
}
