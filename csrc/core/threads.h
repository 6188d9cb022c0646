/* minisd: the thread pool that runs the core's parallel loops.
 *
 * A loop is cut into a fixed number of chunks by its caller, and the pool
 * runs every chunk exactly once. The chunks are claimed one at a time from
 * a shared counter by whichever thread is free, the calling thread
 * included: when a worker has no core (a game's main loop or another job
 * holds it) the others take its share, so a shared CPU does not make more
 * threads slower than one. Idle threads spin for a few microseconds, then
 * sleep; nobody spins at a barrier for a thread that is not running.
 *
 * Results never depend on the thread count as long as a chunk's result
 * depends only on its index: callers that reduce keep one partial result
 * per chunk and combine them in chunk order. */
#ifndef MSD_THREADS_H
#define MSD_THREADS_H

/* Cap of the thread count; msd_set_threads clamps to it. */
#define MSD_MAX_THREADS 256

/* "No cap other than the pool's size", for msd_parallel_for's max_threads. */
#define MSD_ALL_THREADS 0

/* One chunk of a parallel loop: chunk in [0, nchunks); tid in
 * [0, team size) is the index of the thread running it (0: the caller),
 * for picking per-call scratch: two chunks of one call never run at the
 * same time with the same tid. ctx is the caller's pointer, passed through. */
typedef void (*msd_chunk_fn)(void *ctx, int chunk, int tid);

/* Runs fn(ctx, c, tid) once for every c in [0, nchunks) and returns when
 * all have finished. The chunks may run in any order and at the same time
 * on up to min(nchunks, max_threads, msd_get_threads()) threads, the calling
 * thread included (max_threads <= 0, i.e. MSD_ALL_THREADS: no cap of its
 * own), so tid < max_threads whenever max_threads > 0. Inline, on the
 * calling thread with tid 0 and no synchronisation, when that number is 1.
 * Also inline when the pool is busy: a call from inside a chunk (nested)
 * or from another thread while a loop runs. Never fails: if worker threads
 * cannot be created, the loop runs on those that could be, or inline. fn
 * must return normally (no longjmp, so no Lua error); it cannot return a
 * status, so a chunk that can fail records its failure in ctx. */
void msd_parallel_for(int nchunks, int max_threads, msd_chunk_fn fn, void *ctx);

/* Thread count for everything (the core's parallel loops), n >= 1 (smaller
 * values mean 1, larger than MSD_MAX_THREADS mean MSD_MAX_THREADS). The
 * default is the number of online cores. Workers are started by the first
 * loop that can use them and stopped or added when the count changes;
 * safe to call at any time from any thread, and it never blocks on a
 * running loop (the change then takes effect at the next one). */
void msd_set_threads(int n);
/* The thread count set by msd_set_threads (or the default). */
int msd_get_threads(void);

#endif
