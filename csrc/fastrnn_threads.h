/*
 * fastrnn_threads.h -- a small persistent thread pool for the time loops.
 *
 * Why our own and not OpenMP: libgomp's workers spin for a while after every parallel
 * region, and that spinning competed for the 2 cores with BLAS's threads (an RNN training
 * step at (T, B, I, H) = (100, 16, 128, 128) took 8.0 ms with 2 threads instead of 2.3 ms);
 * the only cure, OMP_WAIT_POLICY=passive, is process-wide and slowed PyTorch's OpenMP in the
 * same process 4x. These workers spin briefly (0.5 ms, timed; long enough to chain the regions
 * of one call without a sleep), then sleep on a condition variable until the next job.
 *
 * fastrnn_parallel(nt, task, ctx) runs task(ctx, t, nt) for t = 0..nt-1: t = 0 on the
 * calling thread, the others on workers, and returns when all are done. Jobs from several
 * calling threads at once are safe: a caller that finds the pool busy runs every t itself,
 * in order (the same numbers: tasks never depend on which thread runs them).
 */
#ifndef FASTRNN_THREADS_H
#define FASTRNN_THREADS_H

typedef void (*fastrnn_task)(void *ctx, int t, int nt);

/* The most threads a job may use (the caller plus workers). */
#define FASTRNN_MAX_THREADS 64

void fastrnn_parallel(int nt, fastrnn_task task, void *ctx);

/* The same for shares that meet at barriers and so must all run at once: when the pool is
   busy or cannot start nt - 1 workers, it runs task(ctx, 0, 1) alone instead (the task
   then does every share's work; results must not depend on nt). */
void fastrnn_parallel_team(int nt, fastrnn_task task, void *ctx);

/* A reusable spinning barrier for the shares of one team job: share t calls
   fastrnn_barrier_wait(b, t, nt) and returns once all nt shares have arrived as often as it
   has. Each share counts its arrivals on a cache line of its own. */
typedef struct {
    struct {
        _Alignas(64) _Atomic unsigned count;
    } arrived[FASTRNN_MAX_THREADS];
} fastrnn_barrier;

void fastrnn_barrier_init(fastrnn_barrier *b);
void fastrnn_barrier_wait(fastrnn_barrier *b, int t, int nt);

/* A time loop on one thread with its input projection computed a chunk of steps ahead by a
   helper thread: chunk k of `chunks` goes to ring slot k % slots (slots <= FASTRNN_PIPE_SLOTS).
   Whoever claims a chunk first projects it, so the loop never waits for a helper that has
   not started (it then projects every chunk itself, as on one thread) and waits only for a
   chunk the helper is part-way through. Each chunk's numbers are the same whoever projects
   it. The loop: fastrnn_pipe_need(p, k) before chunk k's steps (1: project it yourself),
   fastrnn_pipe_consumed(p, k) once it no longer reads chunk k, fastrnn_pipe_close(p) when it
   ends. The helper: k = fastrnn_pipe_claim(p) until -1, project, fastrnn_pipe_ready(p, k). */
#define FASTRNN_PIPE_SLOTS 64

typedef struct {
    _Alignas(64) _Atomic long next;     /* the first chunk nobody has claimed */
    _Alignas(64) _Atomic long consumed; /* chunks 0..consumed-1 are free to overwrite */
    _Alignas(64) _Atomic long ready[FASTRNN_PIPE_SLOTS]; /* chunk k + 1 once k is in slot */
    long chunks;
    long slots;
} fastrnn_pipe;

void fastrnn_pipe_init(fastrnn_pipe *p, long chunks, long slots);
int fastrnn_pipe_need(fastrnn_pipe *p, long k);
void fastrnn_pipe_consumed(fastrnn_pipe *p, long k);
void fastrnn_pipe_close(fastrnn_pipe *p);
long fastrnn_pipe_claim(fastrnn_pipe *p);
void fastrnn_pipe_ready(fastrnn_pipe *p, long k);
/* Pipes initialised so far in this process (the tests check that a call took one). */
long fastrnn_pipes_started(void);
/* Times so far a worker stopped spinning and went to sleep (the tests check that idle
   workers do). */
long fastrnn_pool_sleeps(void);

/* Self-test of the pipe (tests/test_invariants.py): `runs` pipes of `chunks` (<= 256) chunks
   over `slots` slots; returns the anomalies (-1: no memory). */
int fastrnn_pipe_selftest(int runs, long chunks, long slots);

/* Self-test of the pool's accounting (tests/test_invariants.py): runs `jobs` small jobs of 2-4
   shares; returns the shares that did not run exactly once within their job (-1: no memory). */
int fastrnn_pool_selftest(int jobs);

#endif /* FASTRNN_THREADS_H */
