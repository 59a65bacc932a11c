/** One prompt of a transformers reference file: test/fixtures/<family>/reference.json or tiny-moe-reference.json. */
export interface FixturePrompt {
  readonly prompt: string;
  readonly input_ids: number[];
  /** (positions, vocab) logits, in the random-weight fixtures */
  readonly logits?: number[][];
  /** (vocab) logits of the last position, in tiny-moe-reference.json */
  readonly last_logits?: number[];
  /** [layer][position] -> top-k experts */
  readonly router_topk: number[][][];
  readonly greedy_ids: number[];
  readonly greedy_text: string;
}
