'use strict';

// BullMQ's contender in baler's queue benchmark.
//
//   node bullmq.js worker   runs jobs until SIGTERM            (BQB_CONCURRENCY)
//   node bullmq.js chain    keeps BQB_CHAINS chains going       (BQB_CHAINS, BQB_SECONDS)
//   node bullmq.js bulk     enqueues BQB_JOBS jobs with addBulk (BQB_JOBS, BQB_BATCH)
//
// Every role also reads BQB_REDIS, BQB_QUEUE and BQB_REPORT, and writes its
// JSON report to BQB_REPORT every 250 ms and once more at exit.
//
// Queue, worker and job options are BullMQ's defaults except where a comment
// says why.

const { Queue, QueueEvents, Worker } = require('bullmq');
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

// Every job has this name; the processor does not look at it.
const JOB_NAME = 'job';

function connection(cfg) {
  return { host: cfg.redis.host, port: cfg.redis.port };
}

async function worker(cfg) {
  let ran = 0;
  const reporter = new Reporter(cfg.report, () => ({ ran })).start();

  // The processor does no work and returns a small result. `concurrency` is
  // BullMQ's own: how many jobs this Worker runs at once.
  const w = new Worker(cfg.queue, async (job) => ({ n: job.data.n }), {
    // BullMQ requires maxRetriesPerRequest: null for a worker's connections.
    connection: { ...connection(cfg), maxRetriesPerRequest: null },
    concurrency: cfg.concurrency,
  });
  w.on('error', (err) => warn(`worker error: ${err.message}`));
  // `completed` fires after the worker has moved the job to completed in
  // Redis: a job counts as ran once it is done.
  w.on('completed', () => {
    ran += 1;
  });
  w.on('failed', (job, err) => warn(`job ${job && job.id} failed: ${err && err.message}`));

  onStopSignal(async () => {
    // Worker#close stops fetching, waits for the jobs in hand, then closes
    // its connections. If that takes longer than the protocol's 5 s, give up
    // on the jobs in hand (a forced close) and exit.
    const closed = await settlesWithin(w.close(), WORKER_STOP_MS);
    if (!closed) {
      warn(`the worker did not close within ${WORKER_STOP_MS} ms; forcing it`);
      await settlesWithin(w.close(true), 500);
    }
    reporter.final();
    process.exit(0);
  });

  await w.waitUntilReady();
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
  const report = () => ({
    enqueued,
    advanced,
    delivered,
    failed,
    seconds: elapsed(),
    rss_kb: rss.samples,
  });
  const reporter = new Reporter(cfg.report, report).start();

  // BullMQ's defaults for the chain: in particular removeOnComplete stays
  // false (BullMQ's default), so completed jobs are kept in Redis, as a user
  // who reads results later would have them.
  const queue = new Queue(cfg.queue, { connection: connection(cfg) });
  queue.on('error', (err) => warn(`queue error: ${err.message}`));
  // lastEventId: '0-0' (BullMQ's default is '$'): QueueEvents#waitUntilReady
  // resolves when its connection is up, before its first XREAD is sent, and
  // that first XREAD asks for events newer than '$' ("from now on"). A job
  // added right after waitUntilReady and finished before that XREAD reaches
  // Redis has its `completed` event skipped, and its chain would stop for
  // good (BullMQ's issue 2874; seen here on a loaded machine: 4 of 5 chains
  // stopped within the first jobs). The queue is fresh (its own name, after a
  // FLUSHALL), so reading its event stream from the start replays nothing old
  // and misses nothing new.
  const queueEvents = new QueueEvents(cfg.queue, { connection: connection(cfg), lastEventId: '0-0' });
  queueEvents.on('error', (err) => warn(`queue events error: ${err.message}`));
  // Listening before the first job is added.
  await within(queue.waitUntilReady(), CONNECT_MS, 'connecting to Redis');
  await within(queueEvents.waitUntilReady(), CONNECT_MS, "listening to the queue's events");

  // Each job's payload is {c: chain, n: seq}, seq unique in this producer; the
  // worker returns {n}. The `completed` event carries that result, so the
  // chain is found from `n` even if the event arrives before add() has told
  // us the job's id.
  const chainOfSeq = new Map(); // seq -> chain, for jobs in flight
  const seqOfId = new Map(); // job id -> seq, for mapping a `failed` event
  let seq = 0;
  let stopping = false;
  let allDone = null; // resolves when stopping and no job is in flight
  let final = null; // the final counts, fixed before the connections close

  const finishOne = () => {
    if (stopping && chainOfSeq.size === 0 && allDone) allDone();
  };

  const startJob = (c) => {
    if (stopping) return finishOne();
    const n = seq++;
    chainOfSeq.set(n, c);
    queue.add(JOB_NAME, { c, n }).then(
      (job) => {
        enqueued += 1;
        if (chainOfSeq.has(n)) seqOfId.set(job.id, n);
        // The per-job API a caller uses to get its job's result.
        job.waitUntilFinished(queueEvents).then(
          () => {
            if (!final) delivered += 1;
          },
          () => {
            if (!final) failed += 1;
          }
        );
      },
      (err) => {
        warn(`add failed: ${err.message}`);
        failed += 1;
        chainOfSeq.delete(n);
        // Try the chain again shortly rather than losing it.
        setTimeout(() => startJob(c), 100);
      }
    );
  };

  // The chain advances on the QueueEvents `completed` listener.
  queueEvents.on('completed', ({ jobId, returnvalue }) => {
    seqOfId.delete(jobId);
    const n = returnvalue && typeof returnvalue.n === 'number' ? returnvalue.n : undefined;
    const c = chainOfSeq.get(n);
    if (c === undefined) return;
    chainOfSeq.delete(n);
    advanced += 1;
    startJob(c);
  });
  // A failed job (none is expected: the processor cannot fail) ends that link
  // of its chain without advancing it; the chain goes on with a new job. It is
  // counted in `failed` when its waitUntilFinished rejects.
  queueEvents.on('failed', ({ jobId }) => {
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
  // waitUntilFinished resolves on the same stream entry as the `completed`
  // listener, a few promise turns later: let those settle.
  await new Promise((resolve) => setImmediate(resolve));
  endedAt = secondsSince(firstEnqueue);
  rss.stop();
  if (chainOfSeq.size > 0) {
    warn(`${chainOfSeq.size} job(s) still outstanding after the final wait of ${CHAIN_FINAL_WAIT_MS} ms`);
  }
  // Closing the queue rejects the waits still open; they are not failures of
  // the run, so the counts are fixed first.
  final = report();
  reporter.snapshot = () => final;
  reporter.final();
  await settlesWithin(Promise.all([queueEvents.close(), queue.close()]), 1500);
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

  const queue = new Queue(cfg.queue, { connection: connection(cfg) });
  queue.on('error', (err) => warn(`queue error: ${err.message}`));
  await within(queue.waitUntilReady(), CONNECT_MS, 'connecting to Redis');

  // removeOnComplete and removeOnFail: a finished job is deleted at once, so
  // a million jobs do not pile up in Redis (BullMQ's default keeps them all).
  const opts = { removeOnComplete: true, removeOnFail: true };
  start = process.hrtime.bigint();
  for (let first = 0; first < cfg.jobs; first += cfg.batch) {
    const count = Math.min(cfg.batch, cfg.jobs - first);
    const jobs = new Array(count);
    for (let i = 0; i < count; i++) jobs[i] = { name: JOB_NAME, data: { c: 0, n: first + i }, opts };
    try {
      await queue.addBulk(jobs);
    } catch (err) {
      reporter.final();
      die(`addBulk failed after ${enqueued} jobs: ${err.message}`);
    }
    enqueued += count;
  }
  seconds = secondsSince(start);
  reporter.final();
  await settlesWithin(queue.close(), 1500);
  process.exit(0);
}

const cfg = parseConfig();
run(() => ({ worker, chain, bulk })[cfg.role](cfg));
