#!/usr/bin/env node
// Watch a Hatchery run from Node.js, to show the run-control contract is the proto's, not
// Python's: WatchRun streams one event per generation (its metrics.jsonl row), then a last
// event with the run's end state. On a dropped stream (an optimizer restarted by its
// StatefulSet) it asks again from the generation after the last one it printed, so it
// prints every generation once.
//
//   node watch.js HOST:PORT [--from-generation N]      (token: $HATCHERY_CONTROL_TOKEN or
//                                                        $HATCHERY_OPTIMIZER_TOKEN, if set)
// Prints one JSON object per line: {generation, reward_mean, heldout_reward, sample} per
// generation, then {state, generations}. Exits 0 when the run finished, 1 otherwise.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.join(__dirname, '..', '..', 'protos');
const RECONNECT_FOR_MS = 600_000;
const RUN_STATES = ['unspecified', 'running', 'paused', 'finishing', 'finished', 'failed'];

function usage(message) {
  console.error(`${message}\nusage: node watch.js HOST:PORT [--from-generation N]`);
  process.exit(2);
}

function parseArgs(argv) {
  const [address, ...rest] = argv;
  if (!address || !/^[^:]+:\d+$/.test(address)) usage(`not a host:port: ${address ?? '(none)'}`);
  let from = 0;
  for (let i = 0; i < rest.length; i += 2) {
    if (rest[i] !== '--from-generation' || !/^\d+$/.test(rest[i + 1] ?? '')) usage(`bad flag: ${rest[i]}`);
    from = Number(rest[i + 1]);
  }
  return { address, from };
}

function main() {
  const { address, from } = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync('hatchery/v1/optimizer.proto',
    { includeDirs: [PROTOS], keepCase: true, defaults: true, oneofs: true, longs: Number });
  const { OptimizerService } = grpc.loadPackageDefinition(definition).hatchery.v1;
  const token = process.env.HATCHERY_CONTROL_TOKEN || process.env.HATCHERY_OPTIMIZER_TOKEN || '';
  const metadata = new grpc.Metadata();
  if (token) metadata.add('authorization', `Bearer ${token}`); // as the Python services expect it
  const client = new OptimizerService(address, grpc.credentials.createInsecure());
  let next = from;
  let downSince = null;

  const follow = () => {
    const stream = client.WatchRun({ from_generation: next }, metadata);
    let ended = false; // the run's last event arrived
    let retrying = false; // grpc-js may report one broken stream as both 'error' and 'end'
    const again = () => { if (!ended && !retrying) { retrying = true; setTimeout(follow, 1000); } };
    stream.on('data', (event) => {
      downSince = null;
      if (!event.row) { // the last event: the run is over
        ended = true;
        console.log(JSON.stringify({ state: RUN_STATES[event.state] ?? event.state, generations: event.generation,
          failure: event.failure || undefined }));
        client.close();
        process.exitCode = RUN_STATES[event.state] === 'finished' ? 0 : 1;
        return;
      }
      const row = plain(event.row);
      const sample = event.evaluation?.samples?.[0];
      console.log(JSON.stringify({ generation: event.generation, reward_mean: row.reward_mean,
        heldout_reward: row.heldout_reward, sample: sample ? sample.completion : undefined }));
      next = event.generation + 1;
    });
    stream.on('error', (err) => {
      if (ended) return;
      const retryable = [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(err.code);
      downSince ??= Date.now();
      if (!retryable || Date.now() - downSince > RECONNECT_FOR_MS) {
        console.error(`watch: ${address}: ${err.details || err.message}`);
        process.exit(1);
      }
      again();
    });
    stream.on('end', again); // the optimizer went away mid-stream
  };
  follow();
}

// A google.protobuf.Struct as proto-loader decodes it (oneofs: true), as a plain object.
function plain(struct) {
  const value = (v) => {
    switch (v.kind) {
      case 'nullValue': return null;
      case 'numberValue': return v.numberValue;
      case 'stringValue': return v.stringValue;
      case 'boolValue': return v.boolValue;
      case 'structValue': return plain(v.structValue);
      case 'listValue': return (v.listValue.values || []).map(value);
      default: return undefined;
    }
  };
  return Object.fromEntries(Object.entries(struct.fields || {}).map(([k, v]) => [k, value(v)]));
}

main();
