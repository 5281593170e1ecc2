/*
 * threads.c -- the pool of fastrnn_threads.h: pthreads, C11 atomics, a generation counter.
 *
 * A job is published like a seqlock: `generation` turns odd, the job's fields are stored,
 * and it turns even again; a worker reads the fields between two reads of `generation` and
 * keeps them only if it did not change. (Plain stores bumped only once let a worker that
 * woke late for a job it had no share in read the next job's fields, run that job's share
 * as its own and then again: it signed off twice, and the caller returned while another
 * share was still running -- missing gradient rows, or a crash in a freed buffer, seen
 * under AddressSanitizer with 3 threads on 2 cores.) Workers that see a new generation run
 * their share and count it off `pending`. Waiting is a spin of 0.5 ms on the counter (timed),
 * then a sleep on the condition variable.
 */
#include "fastrnn_threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spins at a barrier before yielding the core: the partner normally arrives within a step
   (~0.1-20 us); a yield only matters when more threads run than there are cores. */
#define BARRIER_SPINS 4000

/* How long a worker waiting for the next job, or the caller waiting for the workers, spins
   before it sleeps: long enough to chain the regions of one call, and a training step's
   forward and backward passes, without a sleep; a job after a longer gap finds the worker
   asleep and waits longer for it (~27 us on Zen 4, with gaps of 0.8 and 2 ms). Timed, not
   counted: a pause takes 10 ns on the 2-core Xeon and 24.7 ns on Zen 4, and the 20000
   pauses this was once counted in spun 0.5 ms there but 0.2 ms here. Measured here, 2
   threads, timed / counted: LSTM (500, 1, 3, 32) training (one job a call, the weight
   gradients) 0.868, GRU (1000, 1, 32, 32) 0.922, LSTM (100, 16, 128, 128) 0.990 (2.8 futex
   calls a step before, 0.3 after); level at batch 64 (in-process A/B, 8 rounds). */
#define SPIN_NS 500000LL
#define SPIN_CHECK 32 /* pauses between two readings of the clock (~0.3-0.8 us) */

static atomic_long sleeps; /* for the tests: proof that idle workers stop spinning */

long fastrnn_pool_sleeps(void) { return atomic_load_explicit(&sleeps, memory_order_relaxed); }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* One pause of a bounded wait (start it zeroed): 0 once SPIN_NS have passed since about its
   first pause. A wait that ends within SPIN_CHECK pauses never reads the clock. */
typedef struct {
    long long deadline;
    unsigned pauses;
} spin_wait;

static inline int spin_on(spin_wait *w)
{
    CPU_RELAX();
    if (++w->pauses % SPIN_CHECK)
        return 1;
    long long t = now_ns();
    if (w->pauses == SPIN_CHECK)
        w->deadline = t + SPIN_NS;
    return t < w->deadline;
}

static struct {
    pthread_mutex_t lock;  /* held by the caller for a whole job; guards the sleeps too */
    pthread_cond_t wake;   /* workers sleep here between jobs */
    pthread_cond_t finish; /* the caller sleeps here until the job is done */
    atomic_uint generation; /* even: a job's fields are complete; odd: being written */
    atomic_int pending;    /* shares of the current job not yet finished */
    int sleeping_caller;
    int workers;           /* started so far */
    _Atomic(fastrnn_task) task;
    _Atomic(void *) ctx;
    atomic_int nt;
    atomic_int by_workers; /* shares 1..by_workers run on workers, the rest on the caller */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER,
            .wake = PTHREAD_COND_INITIALIZER,
            .finish = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

static void finish_share(void)
{
    if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_lock(&pool.lock);
        if (pool.sleeping_caller)
            pthread_cond_signal(&pool.finish);
        pthread_mutex_unlock(&pool.lock);
    }
}

/* What a worker is started with: its share index and the generation before its first job
   (read by the creator, so that a worker that starts late still sees that job as new). */
static struct {
    int t;
    unsigned seen;
} start_args[FASTRNN_MAX_THREADS];

static void *worker_main(void *arg)
{
    int t = ((int *)arg)[0]; /* this worker's share index */
    unsigned seen = start_args[t].seen;
    for (;;) {
        unsigned now;
        spin_wait wait = {0, 0};
        while ((now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen &&
               spin_on(&wait))
            ;
        if (now == seen) {
            atomic_fetch_add_explicit(&sleeps, 1, memory_order_relaxed);
            pthread_mutex_lock(&pool.lock);
            while ((now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        /* the fields of job `now`, or look again if a newer one is being published */
        if (now & 1u) {
            CPU_RELAX();
            continue;
        }
        fastrnn_task task = atomic_load_explicit(&pool.task, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        int nt = atomic_load_explicit(&pool.nt, memory_order_relaxed);
        int by_workers = atomic_load_explicit(&pool.by_workers, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&pool.generation, memory_order_relaxed) != now)
            continue;
        seen = now;
        if (t <= by_workers) {
            task(ctx, t, nt);
            finish_share();
        }
    }
    return NULL;
}

/* Start workers so that shares 1..nt-1 have one each, as far as the system allows. */
static void ensure_workers(int nt)
{
    while (pool.workers < nt - 1) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int t = pool.workers + 1;
        start_args[t].t = t;
        start_args[t].seen = atomic_load_explicit(&pool.generation, memory_order_relaxed);
        int failed = pthread_create(&id, &attr, worker_main, &start_args[t].t);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        ++pool.workers;
    }
}

/* After fork() only the forking thread exists: the child starts a pool of its own. */
static void reset_in_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.finish, NULL);
    pthread_mutex_init(&job_lock, NULL);
    pool.workers = 0;
    pool.sleeping_caller = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, reset_in_child); }

/* team: the shares must run at the same time (they meet at barriers); when they cannot,
   run one share, task(ctx, 0, 1), instead of nt in turn. */
static void run_job(int nt, fastrnn_task task, void *ctx, int team)
{
    if (nt > FASTRNN_MAX_THREADS)
        nt = FASTRNN_MAX_THREADS;
    if (nt <= 1 || pthread_mutex_trylock(&job_lock) != 0) {
        if (team)
            nt = 1;
        for (int t = 0; t < (nt < 1 ? 1 : nt); ++t) /* alone, or the pool is busy */
            task(ctx, t, nt < 1 ? 1 : nt);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    ensure_workers(nt);
    if (team && pool.workers < nt - 1) {
        pthread_mutex_unlock(&job_lock);
        task(ctx, 0, 1);
        return;
    }
    int by_workers = pool.workers < nt - 1 ? pool.workers : nt - 1;
    unsigned gen = atomic_load_explicit(&pool.generation, memory_order_relaxed);
    atomic_store_explicit(&pool.generation, gen + 1u, memory_order_relaxed); /* odd */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&pool.task, task, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.nt, nt, memory_order_relaxed);
    atomic_store_explicit(&pool.by_workers, by_workers, memory_order_relaxed);
    atomic_store_explicit(&pool.pending, by_workers + 1, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock);
    atomic_store_explicit(&pool.generation, gen + 2u, memory_order_release); /* even */
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);

    task(ctx, 0, nt);
    for (int t = by_workers + 1; t < nt; ++t) /* shares no worker could be started for */
        task(ctx, t, nt);
    finish_share();

    spin_wait wait = {0, 0};
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0 && spin_on(&wait))
        ;
    if (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&pool.lock);
        pool.sleeping_caller = 1;
        while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0)
            pthread_cond_wait(&pool.finish, &pool.lock);
        pool.sleeping_caller = 0;
        pthread_mutex_unlock(&pool.lock);
    }
    pthread_mutex_unlock(&job_lock);
}

void fastrnn_parallel(int nt, fastrnn_task task, void *ctx) { run_job(nt, task, ctx, 0); }

void fastrnn_parallel_team(int nt, fastrnn_task task, void *ctx) { run_job(nt, task, ctx, 1); }

void fastrnn_barrier_init(fastrnn_barrier *b)
{
    for (int t = 0; t < FASTRNN_MAX_THREADS; ++t)
        atomic_init(&b->arrived[t].count, 0u);
}

void fastrnn_barrier_wait(fastrnn_barrier *b, int t, int nt)
{
    if (nt <= 1)
        return;
    /* announce this thread's arrival on its own line, then wait for every other's: one
       cache line crosses cores per partner (a shared counter took two or three crossings,
       ~130-350 ns a barrier here) */
    unsigned mine = atomic_load_explicit(&b->arrived[t].count, memory_order_relaxed) + 1u;
    atomic_store_explicit(&b->arrived[t].count, mine, memory_order_release);
    for (int u = 0; u < nt; ++u) {
        unsigned spins = 0;
        while (u != t &&
               (int)(atomic_load_explicit(&b->arrived[u].count, memory_order_acquire) - mine) < 0) {
            CPU_RELAX();
            if (++spins >= BARRIER_SPINS) { /* a partner was descheduled: give the core away */
                sched_yield();
                spins = 0;
            }
        }
    }
}

/* Spin on a shared flag with pause, yielding the core now and then (a descheduled partner). */
static void relax(unsigned *spins)
{
    CPU_RELAX();
    if (++*spins >= BARRIER_SPINS) {
        sched_yield();
        *spins = 0;
    }
}

static atomic_long pipes_started; /* for the tests: proof that a call took the pipe */

long fastrnn_pipes_started(void)
{
    return atomic_load_explicit(&pipes_started, memory_order_relaxed);
}

void fastrnn_pipe_init(fastrnn_pipe *p, long chunks, long slots)
{
    atomic_fetch_add_explicit(&pipes_started, 1, memory_order_relaxed);
    atomic_init(&p->next, 0);
    atomic_init(&p->consumed, 0);
    for (int i = 0; i < FASTRNN_PIPE_SLOTS; ++i)
        atomic_init(&p->ready[i], 0);
    p->chunks = chunks;
    p->slots = slots < 1 ? 1 : slots > FASTRNN_PIPE_SLOTS ? FASTRNN_PIPE_SLOTS : slots;
}

int fastrnn_pipe_need(fastrnn_pipe *p, long k)
{
    _Atomic long *ready = &p->ready[k % p->slots];
    if (atomic_load_explicit(ready, memory_order_acquire) == k + 1)
        return 0;
    /* chunks before k were claimed (the loop needed them already): next is k unless the
       helper has taken k */
    long expected = k;
    if (atomic_compare_exchange_strong_explicit(&p->next, &expected, k + 1,
                                                memory_order_acq_rel, memory_order_acquire))
        return 1;
    unsigned spins = 0;
    while (atomic_load_explicit(ready, memory_order_acquire) != k + 1)
        relax(&spins);
    return 0;
}

void fastrnn_pipe_consumed(fastrnn_pipe *p, long k)
{
    atomic_store_explicit(&p->consumed, k + 1, memory_order_release);
}

void fastrnn_pipe_close(fastrnn_pipe *p)
{
    atomic_store_explicit(&p->next, p->chunks, memory_order_release);
}

long fastrnn_pipe_claim(fastrnn_pipe *p)
{
    unsigned spins = 0;
    for (;;) {
        long k = atomic_load_explicit(&p->next, memory_order_acquire);
        if (k >= p->chunks)
            return -1;
        /* chunk k's slot last held chunk k - slots: wait until the loop is done with it */
        if (k >= atomic_load_explicit(&p->consumed, memory_order_acquire) + p->slots) {
            relax(&spins);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&p->next, &k, k + 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return k;
    }
}

void fastrnn_pipe_ready(fastrnn_pipe *p, long k)
{
    atomic_store_explicit(&p->ready[k % p->slots], k + 1, memory_order_release);
}

/* The pool's self-test: `jobs` jobs of 2, 3 or 4 shares in turn, each share counting its
   runs; every share must have run exactly once when its job returns, and still once after
   all jobs (a share run twice, or after its job returned, shows). Returns the anomalies. */
struct selftest_job {
    atomic_int runs[4];
};

static void selftest_task(void *ctx, int t, int nt)
{
    (void)nt;
    atomic_fetch_add_explicit(&((struct selftest_job *)ctx)->runs[t], 1, memory_order_relaxed);
}

int fastrnn_pool_selftest(int jobs)
{
    static const int sizes[] = {4, 2, 3, 2};
    struct selftest_job *job = calloc(jobs > 0 ? (size_t)jobs : 1u, sizeof *job);
    int bad = 0;
    if (job == NULL)
        return -1;
    for (int j = 0; j < jobs; ++j) {
        int nt = sizes[j % 4];
        for (int t = 0; t < 4; ++t)
            atomic_init(&job[j].runs[t], 0);
        fastrnn_parallel(nt, selftest_task, &job[j]);
        for (int t = 0; t < 4; ++t)
            bad += atomic_load(&job[j].runs[t]) != (t < nt);
    }
    for (int j = 0; j < jobs; ++j)
        for (int t = 0; t < 4; ++t)
            bad += atomic_load(&job[j].runs[t]) != (t < sizes[j % 4]);
    free(job);
    return bad;
}

/* The pipe's self-test: `runs` pipes of `chunks` chunks over `slots` slots, a loop and a
   helper that wait a varying number of pauses per chunk (so either runs ahead), and every
   third run's loop stopping after two thirds of its chunks. A chunk's "projection" stores
   its index in its slot; the loop reads it back before and after its wait. Anomalies: a
   chunk projected other than once (up to the loop's stop), or a slot that did not hold the
   loop's chunk while the loop read it (overwritten too early, or not yet written). */
struct pipe_selftest {
    fastrnn_pipe pipe;
    _Atomic long slot[FASTRNN_PIPE_SLOTS];
    _Atomic int projected[256];
    long stop;
    unsigned seed;
    atomic_int bad;
};

static void pause_for(unsigned n)
{
    for (unsigned i = 0; i < n; ++i)
        CPU_RELAX();
}

static void pipe_selftest_task(void *ctx, int t, int nt)
{
    (void)nt;
    struct pipe_selftest *job = ctx;
    fastrnn_pipe *p = &job->pipe;
    unsigned r = job->seed * 2654435761u + (unsigned)t;
    if (t == 0) {
        for (long k = 0; k < job->stop; ++k) {
            if (k > 0)
                fastrnn_pipe_consumed(p, k - 1);
            if (fastrnn_pipe_need(p, k)) {
                atomic_store_explicit(&job->slot[k % p->slots], k, memory_order_relaxed);
                atomic_fetch_add_explicit(&job->projected[k], 1, memory_order_relaxed);
            }
            long seen = atomic_load_explicit(&job->slot[k % p->slots], memory_order_relaxed);
            r = r * 1103515245u + 12345u;
            pause_for((r >> 16) % 64);
            seen |= atomic_load_explicit(&job->slot[k % p->slots], memory_order_relaxed) ^ k;
            if (seen != k)
                atomic_fetch_add_explicit(&job->bad, 1, memory_order_relaxed);
        }
        fastrnn_pipe_close(p);
        return;
    }
    long k;
    while ((k = fastrnn_pipe_claim(p)) >= 0) {
        r = r * 1103515245u + 12345u;
        pause_for((r >> 16) % 48);
        atomic_store_explicit(&job->slot[k % p->slots], k, memory_order_relaxed);
        atomic_fetch_add_explicit(&job->projected[k], 1, memory_order_relaxed);
        fastrnn_pipe_ready(p, k);
    }
}

int fastrnn_pipe_selftest(int runs, long chunks, long slots)
{
    struct pipe_selftest *job = malloc(sizeof *job);
    int bad = 0;
    if (job == NULL)
        return -1;
    if (chunks > 256)
        chunks = 256;
    for (int run = 0; run < runs; ++run) {
        fastrnn_pipe_init(&job->pipe, chunks, slots);
        for (int i = 0; i < FASTRNN_PIPE_SLOTS; ++i)
            atomic_init(&job->slot[i], -1);
        for (int i = 0; i < 256; ++i)
            atomic_init(&job->projected[i], 0);
        job->stop = run % 3 == 2 ? chunks * 2 / 3 : chunks;
        job->seed = (unsigned)run;
        atomic_init(&job->bad, 0);
        fastrnn_parallel(2, pipe_selftest_task, job);
        bad += atomic_load(&job->bad);
        for (long k = 0; k < chunks; ++k) {
            int n = atomic_load(&job->projected[k]);
            bad += k < job->stop ? n != 1 : n > 1;
        }
    }
    free(job);
    return bad;
}
