'use strict';

// bee-queue's contender in baler's queue benchmark.
//
//   node bee.js worker   runs jobs until SIGTERM          (BQB_CONCURRENCY)
//   node bee.js chain    keeps BQB_CHAINS chains going     (BQB_CHAINS, BQB_SECONDS)
//   node bee.js bulk     enqueues BQB_JOBS jobs with saveAll (BQB_JOBS, BQB_BATCH)
//
// Every role also reads BQB_REDIS, BQB_QUEUE and BQB_REPORT, and writes its
// JSON report to BQB_REPORT every 250 ms and once more at exit.
//
// Queue settings are bee-queue's defaults except where a comment says why.

const Queue = require('bee-queue');
const {
  Reporter,
  RssSampler,
  die,
  onStopSignal,
  parseConfig,
  run,
  secondsSince,
  settlesWithin,
  sleep,
  warn,
  within,
} = require('./common');

// How long a worker may take to stop after SIGTERM, and how long the chain
// producer waits for its outstanding jobs, as the protocol says.
const WORKER_STOP_MS = 5000;
const CHAIN_FINAL_WAIT_MS = 10000;
// How long a producer waits for its connections to Redis before giving up.
const CONNECT_MS = 10000;

function redisSettings(cfg) {
  return { host: cfg.redis.host, port: cfg.redis.port };
}

async function worker(cfg) {
  let ran = 0;
  const reporter = new Reporter(cfg.report, () => ({ ran })).start();

  const queue = new Queue(cfg.queue, {
    redis: redisSettings(cfg),
    // A worker does not listen to the queue's pub/sub events (it still
    // publishes them: sendEvents stays at its default, true).
    getEvents: false,
    // Finished jobs are deleted from Redis by the worker that finished them
    // (bee-queue applies these settings in the worker's queue, not per job),
    // so that a million bulk jobs do not pile up in the `jobs` hash and the
    // `succeeded` set. A worker does not know which scenario it serves, so
    // the chain scenario runs with the same settings.
    removeOnSuccess: true,
    removeOnFailure: true,
  });
  queue.on('error', (err) => warn(`queue error: ${err.message}`));
  // `succeeded` (the queue-local event) fires after the worker has recorded
  // the job's completion in Redis: a job counts as ran once it is done.
  queue.on('succeeded', () => {
    ran += 1;
  });
  queue.on('failed', (job, err) => warn(`job ${job.id} failed: ${err && err.message}`));

  onStopSignal(async () => {
    // Queue#close stops taking jobs (it disconnects the blocking client),
    // waits for the jobs in hand, then quits its connections; the outer bound
    // keeps the whole stop within the protocol's 5 s.
    const closed = await settlesWithin(queue.close(WORKER_STOP_MS - 500), WORKER_STOP_MS);
    if (!closed) warn(`the queue did not close within ${WORKER_STOP_MS} ms; exiting anyway`);
    reporter.final();
    process.exit(0);
  });

  await queue.ready();
  // The handler does no work and returns a small result.
  queue.process(cfg.concurrency, async (job) => ({ n: job.data.n }));
}

async function chain(cfg) {
  let enqueued = 0;
  let advanced = 0;
  let delivered = 0;
  let failed = 0;
  let firstEnqueue = null;
  let endedAt = null;
  const rss = new RssSampler();
  const elapsed = () =>
    firstEnqueue === null ? 0 : endedAt !== null ? endedAt : secondsSince(firstEnqueue);
  const reporter = new Reporter(cfg.report, () => ({
    enqueued,
    advanced,
    delivered,
    failed,
    seconds: elapsed(),
    rss_kb: rss.samples,
  })).start();

  // The producer's queue: no worker (no blocking client), and getEvents
  // (its default, true, named here because the chain depends on it) so that
  // the queue-level `job succeeded` events and the per-job `succeeded` events
  // both reach this process.
  const queue = new Queue(cfg.queue, {
    redis: redisSettings(cfg),
    isWorker: false,
    getEvents: true,
  });
  queue.on('error', (err) => warn(`queue error: ${err.message}`));
  await within(queue.ready(), CONNECT_MS, 'connecting to Redis');

  // Each job's payload is {c: chain, n: seq}, seq unique in this producer; the
  // worker returns {n}. The queue-level event carries that result, so the
  // chain is found from `n` even when the event arrives before save() has
  // told us the job's id (the race of bee-queue's issue 189).
  const chainOfSeq = new Map(); // seq -> chain, for jobs in flight
  const seqOfId = new Map(); // job id -> seq, for mapping a `job failed` event
  let seq = 0;
  let stopping = false;
  let allDone = null; // resolves when stopping and no job is in flight

  const finishOne = () => {
    if (stopping && chainOfSeq.size === 0 && allDone) allDone();
  };

  const startJob = (c) => {
    if (stopping) return finishOne();
    const n = seq++;
    chainOfSeq.set(n, c);
    const job = queue.createJob({ c, n });
    // The per-job API a caller uses to get its job's result.
    job.on('succeeded', () => {
      delivered += 1;
    });
    job.on('failed', () => {
      failed += 1;
    });
    job.save().then(
      (saved) => {
        enqueued += 1;
        if (chainOfSeq.has(n)) seqOfId.set(saved.id, n);
      },
      (err) => {
        warn(`save failed: ${err.message}`);
        failed += 1;
        chainOfSeq.delete(n);
        // Try the chain again shortly rather than losing it.
        setTimeout(() => startJob(c), 100);
      }
    );
  };

  // The chain advances on the queue-level event, as bee-queue's issue-189
  // reproduction does.
  queue.on('job succeeded', (jobId, result) => {
    seqOfId.delete(jobId);
    const n = result && typeof result.n === 'number' ? result.n : undefined;
    const c = chainOfSeq.get(n);
    if (c === undefined) return;
    chainOfSeq.delete(n);
    advanced += 1;
    startJob(c);
  });
  // A failed job (none is expected: the handler cannot fail) ends that link
  // of its chain without advancing it; the chain goes on with a new job. It is
  // counted in `failed` by the per-job `failed` event above.
  queue.on('job failed', (jobId) => {
    const n = seqOfId.get(jobId);
    seqOfId.delete(jobId);
    const c = chainOfSeq.get(n);
    if (c === undefined) return;
    chainOfSeq.delete(n);
    startJob(c);
  });

  firstEnqueue = process.hrtime.bigint();
  rss.start();
  for (let c = 0; c < cfg.chains; c++) startJob(c);

  await sleep(cfg.seconds * 1000);
  stopping = true;
  if (chainOfSeq.size > 0) {
    let timer;
    await new Promise((resolve) => {
      allDone = resolve;
      timer = setTimeout(resolve, CHAIN_FINAL_WAIT_MS);
    });
    clearTimeout(timer);
  }
  // Let the per-job events that came in the same message settle.
  await new Promise((resolve) => setImmediate(resolve));
  endedAt = secondsSince(firstEnqueue);
  rss.stop();
  if (chainOfSeq.size > 0) {
    warn(`${chainOfSeq.size} job(s) still outstanding after the final wait of ${CHAIN_FINAL_WAIT_MS} ms`);
  }
  reporter.final();
  await settlesWithin(queue.close(1000), 1500);
  process.exit(0);
}

async function bulk(cfg) {
  let enqueued = 0;
  let start = null;
  let seconds = null;
  const reporter = new Reporter(cfg.report, () => ({
    enqueued,
    seconds: seconds !== null ? seconds : start === null ? 0 : secondsSince(start),
  })).start();

  const queue = new Queue(cfg.queue, {
    redis: redisSettings(cfg),
    isWorker: false,
    // This producer does not wait for results: no event subscription, and
    // no Job objects kept for events that would never be read (with the
    // default storeJobs: true the producer would hold all BQB_JOBS jobs).
    getEvents: false,
    storeJobs: false,
  });
  queue.on('error', (err) => warn(`queue error: ${err.message}`));
  await within(queue.ready(), CONNECT_MS, 'connecting to Redis');

  // Finished jobs are removed by the workers (removeOnSuccess: true in
  // worker()), which is where bee-queue applies it.
  start = process.hrtime.bigint();
  for (let first = 0; first < cfg.jobs; first += cfg.batch) {
    const count = Math.min(cfg.batch, cfg.jobs - first);
    const jobs = new Array(count);
    for (let i = 0; i < count; i++) jobs[i] = queue.createJob({ c: 0, n: first + i });
    const errors = await queue.saveAll(jobs);
    enqueued += count - errors.size;
    if (errors.size > 0) {
      const [, err] = errors.entries().next().value;
      reporter.final();
      die(`saveAll failed for ${errors.size} of ${count} jobs, for example: ${err.message}`);
    }
  }
  seconds = secondsSince(start);
  reporter.final();
  await settlesWithin(queue.close(1000), 1500);
  process.exit(0);
}

const cfg = parseConfig();
run(() => ({ worker, chain, bulk })[cfg.role](cfg));
