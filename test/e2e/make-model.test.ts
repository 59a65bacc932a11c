// `npm run make-model` on the small preset only (tens of MB, seconds): layout, determinism, errors, and
// that the synthetic model runs and routes like a trained one.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { MoeModel } from '../../src/engine/moe-model.js';
import { loadModelConfig } from '../../src/model/hf-config.js';
import { INDEX_FILE_NAME, SafetensorsArchive } from '../../src/model/safetensors.js';
import { expertTensorNames } from '../../src/model/tensor-names.js';
import { measureRouting } from '../../scripts/measure-routing.js';
import { MODEL_PRESETS, VOCAB_SIZE } from '../../scripts/model-presets.js';
import { syntheticTensors } from '../../scripts/synthetic-weights.js';
import { runScript } from '../helpers/cli.js';
import { REPO_ROOT } from '../helpers/paths.js';

const SCRIPT = join(REPO_ROOT, 'dist', 'scripts', 'make-model.js');

const makeModel = (...args: string[]) => runScript(SCRIPT, ...args);

async function tensorBytes(layers: number, seed: number, names: readonly string[]): Promise<Map<string, Buffer>> {
  const tensors = syntheticTensors({ ...MODEL_PRESETS.small, numLayers: layers }, seed, VOCAB_SIZE);
  const out = new Map<string, Buffer>();
  for (const t of tensors) if (names.includes(t.name)) out.set(t.name, Buffer.from(await t.bytes()));
  return out;
}

describe('make-model', () => {
  let root = '';
  let model = '';

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-serve-make-model-'));
    model = join(root, 'small');
    const r = await makeModel('--preset', 'small', '--out', model, '--shard-mb', '8', '--no-measure');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /MB\/s/);
    assert.match(r.stdout, /npm run routing-stats -- --model /);
  });

  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('writes shards and an index that load as a Mixtral checkpoint', async () => {
    const spec = await loadModelConfig(model);
    assert.equal(spec.family, 'mixtral');
    assert.deepEqual([spec.hiddenSize, spec.numExperts, spec.topK, spec.numLayers, spec.headDim, spec.vocabSize], [256, 32, 4, 4, 64, 8192]);
    const config = JSON.parse(await readFile(join(model, 'config.json'), 'utf8')) as Record<string, unknown>;
    const tiny = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'tiny-moe', 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(config).sort(), Object.keys(tiny).sort());
    const index = JSON.parse(await readFile(join(model, INDEX_FILE_NAME), 'utf8')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    const shards = (await readdir(model)).filter((f) => f.endsWith('.safetensors')).sort();
    assert.ok(shards.length >= 3, `shards: ${shards.join(', ')}`);
    assert.deepEqual([...new Set(Object.values(index.weight_map))].sort(), shards);
    await using archive = await SafetensorsArchive.open(model);
    assert.deepEqual(archive.names().sort(), Object.keys(index.weight_map).sort());
    assert.equal(archive.names().reduce((n, name) => n + archive.entry(name).byteLength, 0), index.metadata.total_size);
    for (const name of archive.names()) assert.equal(archive.entry(name).fileLabel.endsWith(index.weight_map[name] as string), true, name);
  });

  it('stores each expert as one contiguous byte range: gate, up, down', async () => {
    await using archive = await SafetensorsArchive.open(model);
    for (const layer of [0, 3]) {
      for (const expert of [0, 17, 31]) {
        const n = expertTensorNames('mixtral', layer, expert);
        const [gate, up, down] = [n.gate, n.up, n.down].map((x) => archive.entry(x));
        assert.ok(gate && up && down);
        assert.equal(up.fileLabel, gate.fileLabel);
        assert.equal(down.fileLabel, gate.fileLabel);
        assert.equal(up.byteOffset, gate.byteOffset + gate.byteLength);
        assert.equal(down.byteOffset, up.byteOffset + up.byteLength);
      }
    }
  });

  it('writes the same bytes for the same seed', async () => {
    const a = join(root, 'a');
    const b = join(root, 'b');
    for (const dir of [a, b]) assert.equal((await makeModel('--preset', 'small', '--layers', '1', '--seed', '5', '--out', dir, '--no-measure')).code, 0);
    const files = (await readdir(a)).sort();
    assert.deepEqual((await readdir(b)).sort(), files);
    for (const f of files) assert.ok((await readFile(join(a, f))).equals(await readFile(join(b, f))), f);
    await rm(a, { recursive: true });
    await rm(b, { recursive: true });
  });

  it('draws different weights for a different seed', async () => {
    const names = ['model.embed_tokens.weight', 'model.layers.0.block_sparse_moe.gate.weight', expertTensorNames('mixtral', 0, 3).down];
    const [s1, s2] = [await tensorBytes(1, 1, names), await tensorBytes(1, 2, names)];
    for (const name of names) assert.equal(s1.get(name)?.equals(s2.get(name) as Buffer), false, name);
  });

  it("gives a 2-layer cut exactly the 4-layer model's first layers, routers included", async () => {
    const full = syntheticTensors(MODEL_PRESETS.small, 0, VOCAB_SIZE);
    const cut = syntheticTensors({ ...MODEL_PRESETS.small, numLayers: 2 }, 0, VOCAB_SIZE);
    const byName = new Map(full.map((t) => [t.name, t]));
    // Layer 1's router depends on layer 0's (the chain); ask for it alone, out of order, too.
    for (const t of [...cut].reverse()) {
      const same = byName.get(t.name);
      assert.ok(same, t.name);
      assert.ok(Buffer.from(await t.bytes()).equals(Buffer.from(await same.bytes())), t.name);
    }
  });

  it('refuses an unknown preset, naming the known ones', async () => {
    const r = await makeModel('--preset', 'gpt-5', '--out', join(root, 'x'));
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown preset; known presets: qwen3-30b-a3b, mixtral-8x7b, small/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('refuses a non-empty output directory without --force', async () => {
    const dir = join(root, 'busy');
    await makeModel('--preset', 'small', '--layers', '1', '--out', dir, '--no-measure');
    await writeFile(join(dir, 'notes.txt'), 'mine');
    const r = await makeModel('--preset', 'small', '--layers', '1', '--out', dir, '--no-measure');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /is not empty.*--force/);
    const forced = await makeModel('--preset', 'small', '--layers', '1', '--out', dir, '--no-measure', '--force');
    assert.equal(forced.code, 0, forced.stderr);
    assert.equal(await readFile(join(dir, 'notes.txt'), 'utf8'), 'mine');
    await rm(dir, { recursive: true });
  });

  it('refuses bad numbers', async () => {
    for (const args of [['--layers', '0'], ['--seed', '-1'], ['--shard-mb', 'lots']]) {
      const r = await makeModel('--preset', 'small', '--out', join(root, 'x'), ...args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.stderr, new RegExp(args[0] as string));
    }
  });

  it('generates finite logits and text that is not one repeated token', async () => {
    await using m = await MoeModel.load(model, { device: 'cpu' });
    using kv = m.newSequence();
    let logits = await m.forward.step(kv, m.tokenizer.encode('The Python interpreter'), 'last');
    const tokens: number[] = [];
    for (let i = 0; i < 12; i++) {
      assert.ok(logits.every(Number.isFinite), `step ${i}`);
      let best = 0;
      for (let v = 1; v < logits.length; v++) if ((logits[v] as number) > (logits[best] as number)) best = v;
      tokens.push(best);
      logits = await m.forward.step(kv, [best], 'last');
    }
    assert.ok(new Set(tokens).size >= 3, `greedy tokens ${tokens.join(' ')}`);
  });

  it('routes with skewed popularity, temporal reuse and cross-layer prediction well above independence', async () => {
    const { stats: s } = await measureRouting(model, 4, 24);
    const uniformTop = s.topExperts / s.numExperts;
    assert.ok(s.entropyMean < 0.95, `entropy ${s.entropyMean}`);
    assert.ok(s.topShareMean > 2 * uniformTop, `top share ${s.topShareMean} vs uniform ${uniformTop}`);
    assert.ok((s.temporalReuse ?? 0) > 3 * s.independent, `temporal reuse ${s.temporalReuse} vs k/E ${s.independent}`);
    assert.ok((s.lookaheadRecall ?? 0) > 3 * s.independent, `lookahead recall ${s.lookaheadRecall}`);
    assert.ok((s.coactivation ?? 0) > (s.coactivationBaseline ?? 1), `co-activation ${s.coactivation} vs marginal ${s.coactivationBaseline}`);
  });
});
