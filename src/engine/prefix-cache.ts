// Automatic prefix caching: the KV rows of prompts already computed, kept in blocks of BLOCK_TOKENS tokens
// and found again by a later request whose prompt starts with the same tokens (a chat's system prompt and
// history, resent every turn). As in vLLM, a block is keyed by a hash of its tokens chained to the hash of
// every block before it, so one key names a whole prefix, and the same tokens at another position are
// another block. Unlike vLLM's paged attention, a sequence's cache is one contiguous buffer here
// (kv-cache.ts), so blocks are copied in at admission and out once computed: O(prefix) memcpy, against
// O(prefix x model) compute saved. Host KV caches only; GPU caches are never copied out.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { SequenceKvCache } from './kv-cache.js';

/** Tokens per block: vLLM's default. Smaller blocks match more of a prefix; each costs a hash and a map entry. */
export const BLOCK_TOKENS = 16;

export interface PrefixCacheStats {
  readonly budgetBytes: number;
  readonly bytes: number;
  readonly blocks: number;
  /** Requests that looked for a prefix. */
  readonly lookups: number;
  /** Of those, the ones that found at least one block. */
  readonly hits: number;
  /** Prompt tokens looked up (up to the last, which is always computed), and of them the ones found. */
  readonly lookupTokens: number;
  readonly hitTokens: number;
  readonly storedBlocks: number;
  readonly evictedBlocks: number;
}

interface Block {
  readonly tokens: Int32Array;
  /** Every layer's rows of the block, as SequenceKvCache.exportRows() lays them out. */
  readonly rows: Float32Array;
}

export class PrefixCache {
  private readonly blocks: LRUCache<string, Block>;
  private lookups = 0;
  private hits = 0;
  private lookupTokens = 0;
  private hitTokens = 0;
  private storedBlocks = 0;
  private evictedBlocks = 0;

  constructor(
    readonly budgetBytes: number,
    readonly blockTokens = BLOCK_TOKENS,
  ) {
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 1) throw new RangeError(`prefix cache budget must be a positive number of bytes, got ${budgetBytes}`);
    this.blocks = new LRUCache<string, Block>({
      maxSize: budgetBytes,
      sizeCalculation: (b) => Math.max(1, b.rows.byteLength),
      dispose: (_b, _k, reason) => {
        if (reason === 'evict') this.evictedBlocks++;
      },
    });
  }

  get stats(): PrefixCacheStats {
    return {
      budgetBytes: this.budgetBytes,
      bytes: this.blocks.calculatedSize,
      blocks: this.blocks.size,
      lookups: this.lookups,
      hits: this.hits,
      lookupTokens: this.lookupTokens,
      hitTokens: this.hitTokens,
      storedBlocks: this.storedBlocks,
      evictedBlocks: this.evictedBlocks,
    };
  }

  /**
   * Copies into `kv` (empty) the longest cached prefix of `tokens` in whole blocks, of at most `limit`
   * tokens; returns its length.
   */
  load(tokens: readonly number[], limit: number, kv: SequenceKvCache): number {
    if (kv.length !== 0) throw new Error('a prefix loads into an empty KV cache');
    const found: { key: string; block: Block }[] = [];
    for (const { key, tokens: blockTokens } of this.chain(tokens, Math.floor(limit / this.blockTokens))) {
      const block = this.blocks.peek(key);
      if (!block || !sameTokens(block.tokens, blockTokens)) break;
      found.push({ key, block });
    }
    if (found.length > 0) kv.reserveRows(found.length * this.blockTokens);
    for (const { block } of found) kv.importRows(block.rows, this.blockTokens);
    this.touch(found.map((f) => f.key));
    const hit = found.length * this.blockTokens;
    this.lookups++;
    if (hit > 0) this.hits++;
    this.lookupTokens += Math.max(0, limit);
    this.hitTokens += hit;
    return hit;
  }

  /** Keeps the blocks of `tokens` whose rows `kv` holds (the first kv.length tokens) and that are not kept yet. */
  store(tokens: readonly number[], kv: SequenceKvCache): void {
    const keys: string[] = [];
    for (const { key, tokens: blockTokens, index } of this.chain(tokens, Math.floor(Math.min(kv.length, tokens.length) / this.blockTokens))) {
      keys.push(key);
      if (this.blocks.has(key)) continue;
      const block = { tokens: blockTokens, rows: kv.exportRows(index * this.blockTokens, this.blockTokens) };
      if (block.rows.byteLength > this.budgetBytes) return;
      this.blocks.set(key, block);
      this.storedBlocks++;
    }
    this.touch(keys);
  }

  /**
   * Most recent first from the last block to the first: a prefix's first block is then evicted last, since
   * every later block is unreachable without it.
   */
  private touch(keys: readonly string[]): void {
    for (let i = keys.length - 1; i >= 0; i--) this.blocks.get(keys[i] as string);
  }

  /** The first `count` blocks of `tokens`, each with its chained key. */
  private *chain(tokens: readonly number[], count: number): Generator<{ key: string; tokens: Int32Array; index: number }> {
    let parent = '';
    for (let i = 0; i < count; i++) {
      const blockTokens = Int32Array.from(tokens.slice(i * this.blockTokens, (i + 1) * this.blockTokens));
      parent = createHash('sha256').update(parent).update(new Uint8Array(blockTokens.buffer)).digest('base64');
      yield { key: parent, tokens: blockTokens, index: i };
    }
  }
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
