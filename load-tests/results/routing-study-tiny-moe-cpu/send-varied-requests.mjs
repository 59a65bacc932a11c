// Sends the "varied" workload of the routing study to a running `moe-serve serve --trace FILE`: each prompt
// is two passages of load-tests/prompts.ts from the same source (Python docs or fortunes), drawn at random
// (seeded), so that prompts rarely repeat but share their first passage with others; sampled at
// temperature 1 with a seed per request, so that answers differ too. A closed loop of CONCURRENCY clients.
//   node load-tests/results/routing-study-tiny-moe-cpu/send-varied-requests.mjs URL REQUESTS CONCURRENCY
import { LOAD_PROMPTS } from '../../../dist/load-tests/prompts.js';

const [url = 'http://127.0.0.1:8199', requestsText = '400', concurrencyText = '16'] = process.argv.slice(2);
const requests = Number(requestsText);
const concurrency = Number(concurrencyText);

// mulberry32, seeded: the same prompts every run.
let state = 20261130;
const random = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = Math.imul(state ^ (state >>> 15), state | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (list) => list[Math.floor(random() * list.length)];
const prompts = Array.from({ length: requests }, () => {
  const first = pick(LOAD_PROMPTS);
  const second = pick(LOAD_PROMPTS.filter((p) => p.source === first.source));
  return `${first.text} ${second.text}`;
});

let next = 0;
let tokens = 0;
async function client() {
  while (next < requests) {
    const i = next++;
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-moe', prompt: prompts[i], max_tokens: 32, temperature: 1, seed: i }),
    });
    if (res.status !== 200) throw new Error(`request ${i}: ${res.status} ${await res.text()}`);
    tokens += (await res.json()).usage.completion_tokens;
  }
}
const started = performance.now();
await Promise.all(Array.from({ length: concurrency }, client));
process.stdout.write(`${requests} requests, ${tokens} completion tokens in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
