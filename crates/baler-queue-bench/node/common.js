'use strict';

// Shared by bee.js and bullmq.js: reading the BQB_* environment, writing the
// JSON report atomically, sampling resident memory, and the small timing
// helpers every role needs. The protocol these follow is the queue
// benchmark's contender protocol (one role per process, chosen by the first
// command-line argument; see the crate's README).

const fs = require('fs');
const path = require('path');

const ROLES = ['worker', 'chain', 'bulk'];

/** Which environment variables each role reads (besides the common three). */
const ROLE_VARS = {
  worker: ['BQB_CONCURRENCY'],
  chain: ['BQB_CHAINS', 'BQB_SECONDS'],
  bulk: ['BQB_JOBS', 'BQB_BATCH'],
};

/** An input error: the message says what to change. */
class ConfigError extends Error {}

function program() {
  return path.basename(process.argv[1] || 'contender');
}

/** Prints an error that ends the process, and exits with `code`. */
function die(message, code = 1) {
  process.stderr.write(`${program()}: ${message}\n`);
  process.exit(code);
}

/** Logs a non-fatal problem (a library's `error` event, a failed report write). */
function warn(message) {
  process.stderr.write(`${program()}: ${message}\n`);
}

function requireVar(env, name) {
  const value = env[name];
  if (value === undefined || value === '') {
    throw new ConfigError(`${name} is not set; the runner sets it for every process of this role`);
  }
  return value;
}

function positiveInt(env, name) {
  const raw = requireVar(env, name);
  if (!/^[0-9]+$/.test(raw.trim())) {
    throw new ConfigError(`${name} must be a positive whole number, got ${JSON.stringify(raw)}`);
  }
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new ConfigError(`${name} must be a positive whole number, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function positiveNumber(env, name) {
  const raw = requireVar(env, name);
  const value = Number(raw.trim());
  if (raw.trim() === '' || !Number.isFinite(value) || value <= 0) {
    throw new ConfigError(`${name} must be a positive number of seconds, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/**
 * Parses BQB_REDIS (`redis://127.0.0.1:<port>`) into `{host, port}`.
 * Credentials, a database number or TLS are not part of the protocol, so they
 * are refused rather than silently dropped.
 */
function parseRedisUrl(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch (_) {
    throw new ConfigError(`BQB_REDIS must look like redis://127.0.0.1:6379, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'redis:') {
    throw new ConfigError(
      `BQB_REDIS must use the redis:// scheme (plain TCP), got ${JSON.stringify(url.protocol)} in ${JSON.stringify(raw)}`
    );
  }
  if (url.username || url.password) {
    throw new ConfigError(`BQB_REDIS must not carry credentials (the benchmark's redis-server has none), got ${JSON.stringify(raw)}`);
  }
  if (url.pathname && url.pathname !== '/' && url.pathname !== '') {
    throw new ConfigError(`BQB_REDIS must not name a database (/N); the benchmark uses database 0, got ${JSON.stringify(raw)}`);
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) {
    throw new ConfigError(`BQB_REDIS has no host, got ${JSON.stringify(raw)}`);
  }
  const port = url.port === '' ? 6379 : Number(url.port);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new ConfigError(`BQB_REDIS has a bad port, got ${JSON.stringify(raw)}`);
  }
  return { host, port };
}

/**
 * Reads the role from argv and the variables it needs from the environment.
 * On bad input prints what to change and exits with status 2.
 */
function parseConfig(argv = process.argv, env = process.env) {
  const role = argv[2];
  try {
    if (!ROLES.includes(role)) {
      throw new ConfigError(
        `the first argument must be one of ${ROLES.join(', ')}, got ${role === undefined ? 'nothing' : JSON.stringify(role)}`
      );
    }
    if (argv.length > 3) {
      throw new ConfigError(`takes exactly one argument (the role), got ${argv.length - 2}`);
    }
    const config = {
      role,
      redis: parseRedisUrl(requireVar(env, 'BQB_REDIS')),
      queue: requireVar(env, 'BQB_QUEUE'),
      report: requireVar(env, 'BQB_REPORT'),
    };
    for (const name of ROLE_VARS[role]) {
      if (name === 'BQB_SECONDS') {
        config.seconds = positiveNumber(env, name);
      } else {
        config[name.slice(4).toLowerCase()] = positiveInt(env, name);
      }
    }
    return config;
  } catch (err) {
    if (err instanceof ConfigError) {
      die(`${err.message}\nusage: BQB_REDIS=redis://127.0.0.1:PORT BQB_QUEUE=NAME BQB_REPORT=FILE ` +
        `[BQB_CONCURRENCY=N | BQB_CHAINS=N BQB_SECONDS=S | BQB_JOBS=N BQB_BATCH=N] node ${program()} worker|chain|bulk`, 2);
    }
    throw err;
  }
}

/**
 * Writes `snapshot()` as JSON to `file` every 250 ms and once more on
 * `final()`. Each write goes to `<file>.tmp` first and is then renamed over
 * `file`, so a reader never sees half a report.
 */
class Reporter {
  constructor(file, snapshot) {
    this.file = file;
    this.tmp = `${file}.tmp`;
    this.snapshot = snapshot;
    this.timer = null;
    this.warned = false;
    this.finished = false;
  }

  writeNow() {
    fs.writeFileSync(this.tmp, JSON.stringify(this.snapshot()) + '\n');
    fs.renameSync(this.tmp, this.file);
  }

  /** Writes now and then every 250 ms until `final()`. */
  start() {
    this.tick();
    this.timer = setInterval(() => this.tick(), 250);
    return this;
  }

  tick() {
    if (this.finished) return;
    try {
      this.writeNow();
    } catch (err) {
      if (!this.warned) {
        this.warned = true;
        warn(`cannot write the report ${this.file}: ${err.message}`);
      }
    }
  }

  /** Stops the periodic writes and writes the final report; exits 1 if it cannot. */
  final() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    try {
      this.writeNow();
    } catch (err) {
      die(`cannot write the final report ${this.file}: ${err.message}`);
    }
    this.finished = true;
  }
}

/**
 * Samples the process's resident memory (kB) once per second, the first
 * sample when `start()` is called, so sample i is taken i seconds in.
 */
class RssSampler {
  constructor() {
    this.samples = [];
    this.timer = null;
  }

  sample() {
    this.samples.push(Math.round(process.memoryUsage().rss / 1024));
  }

  start() {
    if (this.timer) return this;
    this.sample();
    this.timer = setInterval(() => this.sample(), 1000);
    return this;
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

/** Seconds since an earlier `process.hrtime.bigint()` reading. */
function secondsSince(start) {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves to `true` if `promise` settles within `ms`, `false` otherwise. Never rejects. */
function settlesWithin(promise, ms) {
  let timer;
  return Promise.race([
    Promise.resolve(promise).then(
      () => true,
      (err) => {
        warn(`while closing: ${err && err.message ? err.message : err}`);
        return true;
      }
    ),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Resolves as `promise` does, or rejects with "<what> did not happen within
 * <ms> ms" if it has not settled by then (so a producer whose Redis cannot be
 * reached fails with a message instead of waiting for ever).
 */
function within(promise, ms, what) {
  let timer;
  return Promise.race([
    Promise.resolve(promise),
    new Promise((_, reject) => {
      timer = setTimeout(() => {
        const err = new Error(`${what} did not happen within ${ms} ms; is BQB_REDIS right and its redis-server running?`);
        err.code = 'ETIMEDOUT';
        reject(err);
      }, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Calls `onStop` once, on the first SIGTERM or SIGINT; later signals are
 * ignored (the stop is already under way and bounded).
 */
function onStopSignal(onStop) {
  let stopping = false;
  const handler = (signal) => {
    if (stopping) return;
    stopping = true;
    onStop(signal);
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

/** Runs `main()`, turning an unexpected rejection into a message and exit 1. */
function run(main) {
  main().catch((err) => {
    // A system error (ECONNREFUSED and the like) says all in its message; any
    // other error shows where it came from.
    const detail = err && err.code ? err.message : err && err.stack ? err.stack : String(err);
    die(`failed: ${detail}`);
  });
}

module.exports = {
  ConfigError,
  Reporter,
  RssSampler,
  die,
  onStopSignal,
  parseConfig,
  parseRedisUrl,
  run,
  secondsSince,
  settlesWithin,
  sleep,
  warn,
  within,
};
