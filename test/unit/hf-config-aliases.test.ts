// config.json keys as transformers reads them: each config class's attribute_map lets a checkpoint name a
// setting by an alias (a Qwen3-MoE config saved by transformers 5 says num_local_experts, an older one
// num_experts). The expected aliases are written out here, from transformers' configuration_<type>.py,
// rather than read from hf-config.ts's table, so that dropping or misspelling an entry fails a test.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ModelConfigError } from '../../src/model/errors.js';
import { parseModelConfig, type ModelFamily, type ModelSpec } from '../../src/model/hf-config.js';

const SOURCE = 'test/config.json';
const EXPERTS = 6;

const COMMON = {
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
  rms_norm_eps: 1e-6,
  rope_parameters: { rope_theta: 10000, rope_type: 'default' },
  max_position_embeddings: 256,
  num_experts_per_tok: 2,
  hidden_act: 'silu',
  bos_token_id: 0,
  eos_token_id: 0,
};

/** Each family's required keys other than the expert count. */
const FAMILY_KEYS: Readonly<Record<ModelFamily, Readonly<Record<string, unknown>>>> = {
  mixtral: { intermediate_size: 96 },
  qwen2_moe: { moe_intermediate_size: 48, intermediate_size: 96, shared_expert_intermediate_size: 80 },
  olmoe: { intermediate_size: 48 },
  qwen3_moe: { moe_intermediate_size: 48, intermediate_size: 96 },
};

function config(family: ModelFamily, expertKeys: Readonly<Record<string, unknown>>): Record<string, unknown> {
  return { model_type: family, ...COMMON, ...FAMILY_KEYS[family], ...expertKeys };
}

function parse(raw: unknown): ModelSpec {
  return parseModelConfig(raw, SOURCE);
}

/** What transformers declares: alias -> canonical, per class. */
const DECLARED: readonly { family: ModelFamily; cls: string; alias: string; canonical: string }[] = [
  { family: 'mixtral', cls: 'MixtralConfig', alias: 'num_experts', canonical: 'num_local_experts' },
  { family: 'olmoe', cls: 'OlmoeConfig', alias: 'num_local_experts', canonical: 'num_experts' },
  { family: 'qwen3_moe', cls: 'Qwen3MoeConfig', alias: 'num_experts', canonical: 'num_local_experts' },
];

describe('config.json key aliases (transformers attribute_map)', () => {
  for (const { family, cls, alias, canonical } of DECLARED) {
    describe(`${family} (${cls}: ${alias} -> ${canonical})`, () => {
      test(`reads the expert count from ${canonical}`, () => {
        assert.equal(parse(config(family, { [canonical]: EXPERTS })).numExperts, EXPERTS);
      });

      test(`reads the expert count from the alias ${alias}, giving the same spec as ${canonical}`, () => {
        const viaAlias = parse(config(family, { [alias]: EXPERTS }));
        assert.equal(viaAlias.numExperts, EXPERTS);
        assert.deepEqual(viaAlias, parse(config(family, { [canonical]: EXPERTS })));
      });

      test(`accepts ${alias} and ${canonical} together when they agree`, () => {
        assert.equal(parse(config(family, { [alias]: EXPERTS, [canonical]: EXPERTS })).numExperts, EXPERTS);
      });

      test(`rejects ${alias} and ${canonical} that disagree, naming both, whichever comes first`, () => {
        for (const raw of [
          config(family, { [alias]: EXPERTS, [canonical]: EXPERTS + 2 }),
          config(family, { [canonical]: EXPERTS + 2, [alias]: EXPERTS }),
        ]) {
          assert.throws(() => parse(raw), (err: unknown) => {
            assert.ok(err instanceof ModelConfigError, String(err));
            assert.ok(err.message.includes(SOURCE), err.message);
            assert.ok(err.message.includes(`${alias} (${EXPERTS})`), err.message);
            assert.ok(err.message.includes(`${canonical} (${EXPERTS + 2})`), err.message);
            return true;
          });
        }
      });

      test('validates a value given under the alias like the canonical one', () => {
        assert.throws(() => parse(config(family, { [alias]: 0 })), (err: unknown) => {
          assert.ok(err instanceof ModelConfigError, String(err));
          assert.ok(err.message.includes(canonical), err.message);
          return true;
        });
      });

      test('names the alias when neither key is present', () => {
        assert.throws(() => parse(config(family, {})), (err: unknown) => {
          assert.ok(err instanceof ModelConfigError, String(err));
          assert.ok(err.message.includes(`${canonical} (or its alias ${alias})`), err.message);
          return true;
        });
      });
    });
  }

  test('qwen2_moe declares no alias: num_local_experts does not stand for num_experts', () => {
    assert.equal(parse(config('qwen2_moe', { num_experts: EXPERTS })).numExperts, EXPERTS);
    assert.throws(() => parse(config('qwen2_moe', { num_local_experts: EXPERTS })), (err: unknown) => {
      assert.ok(err instanceof ModelConfigError, String(err));
      assert.ok(/num_experts\b(?! \(or)/.test(err.message), err.message);
      return true;
    });
  });

  test('leaves the raw config object unchanged', () => {
    const raw = config('qwen3_moe', { num_experts: EXPERTS });
    const before = structuredClone(raw);
    parse(raw);
    assert.deepEqual(raw, before);
  });
});
