#!/usr/bin/env node
// A Hatchery reward service in Node.js: any server implementing hatchery.v1.RewardService works.
//
//     npm ci && node server.js --port 50053
//
// Offers the built-in graders first_integer, countdown and length, scoring as reward_svc/graders.py
// specifies them: ASCII digits, ASCII whitespace, integers of any length and exact arithmetic.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { ReflectionService } = require('@grpc/reflection');
const { HealthImplementation } = require('grpc-health-check');
const { version } = require('./package.json');

const PROTOS = path.join(__dirname, '..', '..', 'protos');
const STATUS = { OK: 1, FAILED: 2, NOT_APPLICABLE: 4 }; // hatchery.v1.ScoreStatus
const MAX_SAMPLES = 4096, MAX_TEXT_CHARS = 1 << 20, MAX_METADATA_ENTRIES = 64, MAX_METADATA_CHARS = 1 << 16;
const MAX_MESSAGES = 256;
const MAX_EQUATION_CHARS = 1000, MAX_NESTING = 100;

class NotApplicable extends Error {} // the grader does not apply to this sample
class BadEquation extends Error {} // an answer that does not parse, or divides by zero: scored 0

// ---------- text and integers ----------

const WHITESPACE = ' \t\n\r\f\v';
function strip(s) { // ASCII whitespace only, from both ends
  let i = 0, j = s.length;
  while (i < j && WHITESPACE.includes(s[i])) i++;
  while (j > i && WHITESPACE.includes(s[j - 1])) j--;
  return s.slice(i, j);
}

const codePoints = (s) => [...s].length; // characters as Python counts them, not UTF-16 units

function canonicalInteger(text) { // the integer text spells, without leading zeros ("-0" is "0"); null if none
  const m = /^(-?)([0-9]+)$/.exec(strip(text));
  if (!m) return null;
  const digits = m[2].replace(/^0+/, '') || '0';
  return digits === '0' ? digits : m[1] + digits;
}

// ---------- countdown's equations: exact fractions [numerator, denominator > 0] of BigInts ----------

function fraction(n, d) {
  if (d === 0n) throw new BadEquation('division by zero');
  if (d < 0n) [n, d] = [-n, -d];
  let [a, b] = [n < 0n ? -n : n, d]; // gcd(|n|, d)
  while (b) [a, b] = [b, a % b];
  return [n / a, d / a];
}

const ARITHMETIC = {
  '+': ([a, b], [c, d]) => fraction(a * d + c * b, b * d),
  '-': ([a, b], [c, d]) => fraction(a * d - c * b, b * d),
  '*': ([a, b], [c, d]) => fraction(a * c, b * d),
  '/': ([a, b], [c, d]) => fraction(a * d, b * c),
  '//': (x, y) => { // Python's floor division: the floor of the exact quotient
    const [n, d] = ARITHMETIC['/'](x, y);
    return [n / d - (n % d < 0n ? 1n : 0n), 1n];
  },
};

// expr := term (('+'|'-') term)* ; term := factor (('*'|'/'|'//') factor)* ; factor := INTEGER | '(' expr ')'
// As Python's eval reads it, exactly: no literal with a leading zero (07), no implicit multiplication; and
// unlike it (docs/rewards.md says why): no ** or unary minus, at most MAX_NESTING nested parentheses.
function evaluateEquation(equation) {
  const tokens = equation.match(/[0-9]+|\/\/|[-+*/()]/g) || []; // the caller allows only these and spaces
  let pos = 0;
  const chain = (ops, operand, depth) => { // left-associative: 8-2-1 is (8-2)-1
    let value = operand(depth);
    while (ops.includes(tokens[pos])) { const op = tokens[pos++]; value = ARITHMETIC[op](value, operand(depth)); }
    return value;
  };
  const expr = (depth) => chain(['+', '-'], term, depth);
  const term = (depth) => chain(['*', '/', '//'], factor, depth);
  function factor(depth) {
    const token = tokens[pos++];
    if (token === '(') {
      if (depth >= MAX_NESTING) throw new BadEquation(`more than ${MAX_NESTING} levels of parentheses`);
      const value = expr(depth + 1);
      if (tokens[pos++] !== ')') throw new BadEquation('unbalanced parentheses');
      return value;
    }
    if (!/^[0-9]+$/.test(token ?? '')) throw new BadEquation(`expected a number, got ${token}`);
    if (/^0+[1-9]/.test(token)) throw new BadEquation(`${token}: Python refuses a literal with a leading zero`);
    return [BigInt(token), 1n];
  }
  const value = expr(0);
  if (pos !== tokens.length) throw new BadEquation(`unexpected ${tokens[pos]}`);
  return value;
}

// ---------- typed columns: Sample.columns, a google.protobuf.Struct ----------

function plainValue(value) { // a google.protobuf.Value as proto-loader decodes it (oneofs: true), as plain JS
  switch (value?.kind) {
    case 'numberValue': case 'stringValue': case 'boolValue': return value[value.kind];
    case 'listValue': return (value.listValue.values ?? []).map(plainValue);
    case 'structValue': return plainColumns(value.structValue);
    default: return null;
  }
}

function plainColumns(struct) { // {} when the sample has none (the generated tasks, older clients)
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, plainValue(v)]));
}

function asIntegerText(value) { // an integer column's number as its digits; anything else is no integer
  if (typeof value === 'string') return value;
  return Number.isSafeInteger(value) ? String(value) : '';
}

// ---------- the graders: sample -> {score, sub_scores}; throw NotApplicable, or anything else for FAILED ----------

function countdownFormat(response) { // the prompt ends with <think>, so the response continues it
  // Python's $ also matches before one final newline: so may this
  if (/^<think>.*?<\/think>\n<answer>.*?<\/answer>\n?$/s.test('<think>' + response)) return 1.0;
  return (response.includes('</think>') ? 0.1 : 0.0) + (/<answer>.*?<\/answer>/s.test(response) ? 0.5 : 0.0);
}

function countdownAnswer(response, numbers, target) { // 1 if the last answer uses exactly the numbers, hits target
  const answers = [...response.matchAll(/<answer>(.*?)<\/answer>/gs)];
  if (!answers.length) return 0.0;
  const content = answers[answers.length - 1][1]; // spaces and one final newline allowed, as Python's $ does
  if (content.length > MAX_EQUATION_CHARS || !/^[0-9+\-*/() ]+\n?$/.test(content)) return 0.0;
  const equation = content.replace(/\n$/, '');
  const used = (equation.match(/[0-9]+/g) || []).map(canonicalInteger);
  if ([...used].sort().join() !== [...numbers].sort().join()) return 0.0; // each number exactly once
  try {
    const [n, d] = evaluateEquation(equation); // within 1e-5 of the target, as the paper's float comparison
    const off = n - target * d;
    return 100000n * (off < 0n ? -off : off) < d ? 1.0 : 0.0;
  } catch (err) {
    if (err instanceof BadEquation) return 0.0;
    throw err;
  }
}

const GRADERS = {
  first_integer({ completion, reference }) { // 1 if the first integer in the completion equals the reference
    const expected = canonicalInteger(reference);
    if (expected === null) throw new NotApplicable('first_integer needs a reference answer that is an integer');
    const found = /-?[0-9]+/.exec(completion);
    return { score: found && canonicalInteger(found[0]) === expected ? 1.0 : 0.0 };
  },
  countdown({ completion, metadata, columns }) { // Qiu et al. 2025: 0.1 x format + answer
    const typed = plainColumns(columns); // a dataset's columns with their types, when the sample has them
    const listed = Array.isArray(typed.numbers) ? typed.numbers.map(asIntegerText)
      : (metadata.numbers ?? '').split(',');
    const numbers = listed.map(canonicalInteger);
    const target = canonicalInteger(typed.target !== undefined ? asIntegerText(typed.target) : metadata.target ?? '');
    if (target === null || numbers.includes(null)) {
      throw new NotApplicable("countdown needs columns 'numbers' (integers, comma-separated or a list) and " +
        "'target' (an integer)");
    }
    const format = countdownFormat(completion), answer = countdownAnswer(completion, numbers, BigInt(target));
    return { score: 0.1 * format + answer, sub_scores: { format, answer } };
  },
  length({ completion, reference }) { // minus the length difference in characters, ASCII whitespace stripped
    return { score: 0 - Math.abs(codePoints(strip(completion)) - codePoints(strip(reference))) }; // 0 - 0 is not -0
  },
};

function scoreOne(grader, sample) { // one sample's error costs that sample only, never a silent 0
  const failed = (status, error) => ({ score: 0, status, sub_scores: {}, error });
  let grade;
  try {
    grade = grader(sample);
  } catch (err) {
    if (err instanceof NotApplicable) return failed(STATUS.NOT_APPLICABLE, err.message);
    return failed(STATUS.FAILED, `${err.name}: ${err.message}`);
  }
  if (!Number.isFinite(grade.score)) return failed(STATUS.FAILED, `grader returned ${grade.score}`);
  return { score: grade.score, status: STATUS.OK, sub_scores: grade.sub_scores ?? {}, error: '' };
}

// ---------- the service ----------

const ALL = Object.keys(GRADERS).sort();
const longer = (s, limit) => s.length > limit && codePoints(s) > limit;

function checkRequest(name, samples) { // the Python service's limits: a message for INVALID_ARGUMENT, or null
  if (!Object.hasOwn(GRADERS, name)) {
    return `unknown grader '${name.slice(0, 256)}'; this server has ['${ALL.join("', '")}']`;
  }
  if (samples.length > MAX_SAMPLES) return `${samples.length} samples in one request; the limit is ${MAX_SAMPLES}`;
  for (const [i, s] of samples.entries()) {
    const entries = Object.entries(s.metadata);
    if ([s.prompt, s.completion, s.reference].some((t) => longer(t, MAX_TEXT_CHARS))) {
      return `sample ${i}: a text field is longer than ${MAX_TEXT_CHARS} characters`;
    }
    if (entries.length > MAX_METADATA_ENTRIES) {
      return `sample ${i}: ${entries.length} metadata entries; the limit is ${MAX_METADATA_ENTRIES}`;
    }
    if (entries.some(([k, v]) => longer(k + v, MAX_METADATA_CHARS))) {
      return `sample ${i}: a metadata entry is longer than ${MAX_METADATA_CHARS} characters`;
    }
    if (Object.keys(s.columns?.fields ?? {}).length > MAX_METADATA_ENTRIES) {
      return `sample ${i}: over ${MAX_METADATA_ENTRIES} columns`;
    }
    if (s.messages.length > MAX_MESSAGES || s.messages.some((m) => longer(m.content, MAX_TEXT_CHARS))) {
      return `sample ${i}: over ${MAX_MESSAGES} messages, or one longer than ${MAX_TEXT_CHARS} characters`;
    }
  }
  return null;
}

function service(defaultGrader) {
  return {
    Score({ request }, callback) {
      const name = request.grader || defaultGrader, problem = checkRequest(name, request.samples);
      if (problem) return callback({ code: grpc.status.INVALID_ARGUMENT, details: problem });
      callback(null, { results: request.samples.map((s) => scoreOne(GRADERS[name], s)) });
    },
    Describe(call, callback) {
      const graders = [defaultGrader, ...ALL.filter((n) => n !== defaultGrader)]; // the default first
      callback(null, { name: 'hatchery-node-example', version, graders, sub_score_names: ['format', 'answer'],
        max_samples: MAX_SAMPLES });
    },
  };
}

function withBearerToken(handlers, token) { // every call must carry `authorization: Bearer <token>`
  const expected = Buffer.from(`Bearer ${token}`);
  const check = (handler) => (call, callback) => {
    const given = call.metadata.get('authorization');
    if (!given.length) {
      return callback({ code: grpc.status.UNAUTHENTICATED,
        details: "missing bearer token: send metadata 'authorization: Bearer <token>'" });
    }
    const got = Buffer.from(String(given[given.length - 1]));
    if (got.length !== expected.length || !crypto.timingSafeEqual(got, expected)) { // constant time
      return callback({ code: grpc.status.PERMISSION_DENIED, details: 'wrong bearer token' });
    }
    return handler(call, callback);
  };
  return Object.fromEntries(Object.entries(handlers).map(([name, handler]) => [name, check(handler)]));
}

const USAGE = 'usage: node server.js [--host 127.0.0.1] [--port 50053 (0: any free port)] [--port-file PATH]\n' +
  `                      [--default-grader first_integer (one of ${ALL.join(', ')})]`;

function parseFlags(argv) {
  const flags = { host: '127.0.0.1', port: '50053', 'port-file': '', 'default-grader': 'first_integer' };
  const usage = (problem) => { console.error(`${USAGE}\n${problem}`); process.exit(2); };
  for (let i = 0; i < argv.length; i++) { // --flag value or --flag=value
    const arg = argv[i], m = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
    if (arg === '--help' || arg === '-h') { console.log(USAGE); process.exit(0); }
    const value = m && Object.hasOwn(flags, m[1]) ? m[2] ?? argv[++i] : undefined;
    if (value === undefined) usage(`bad or incomplete flag: ${arg}`);
    flags[m[1]] = value;
  }
  if (!/^\d+$/.test(flags.port) || Number(flags.port) > 65535) usage(`--port: not a port number: ${flags.port}`);
  if (!Object.hasOwn(GRADERS, flags['default-grader'])) usage(`--default-grader: unknown ${flags['default-grader']}`);
  return { ...flags, port: Number(flags.port) };
}

function main() {
  const flags = parseFlags(process.argv.slice(2));
  const definition = protoLoader.loadSync('hatchery/v1/reward.proto',
    { includeDirs: [PROTOS], keepCase: true, defaults: true, oneofs: true });
  const { RewardService } = grpc.loadPackageDefinition(definition).hatchery.v1;
  const server = new grpc.Server({ // the message size limit of every Hatchery service
    'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20 });
  const token = process.env.HATCHERY_REWARD_TOKEN || '';
  const handlers = service(flags['default-grader']);
  server.addService(RewardService.service, token ? withBearerToken(handlers, token) : handlers);
  new HealthImplementation({ '': 'SERVING', 'hatchery.v1.RewardService': 'SERVING' }).addToServer(server); // probes
  new ReflectionService(definition).addToServer(server); // grpcurl and `hatchery conformance` list the service
  const address = `${flags.host.includes(':') ? `[${flags.host}]` : flags.host}:${flags.port}`;
  server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) { console.error(`cannot bind ${address}: ${err.message}`); process.exit(1); }
    if (flags['port-file']) { // written whole, then renamed, so a reader never sees half a number
      fs.writeFileSync(`${flags['port-file']}.tmp`, String(port));
      fs.renameSync(`${flags['port-file']}.tmp`, flags['port-file']);
    }
    console.error(`reward service on ${flags.host}:${port} with graders ${ALL.join(', ')}`);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.once(signal, () => { // let calls in flight finish, for a second at most
      setTimeout(() => { server.forceShutdown(); process.exit(0); }, 1000);
      server.tryShutdown(() => process.exit(0));
    });
  }
}

if (require.main === module) main();
module.exports = { GRADERS, scoreOne, evaluateEquation }; // for reuse without the server
