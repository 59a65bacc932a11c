// Router lookahead votes. Each token votes once for each of the top-k experts its lookahead logits
// predict for a later sparse layer, and a prediction ranks experts by votes, most first, ties to the
// lower id, so that a prefetch cut to a few experts (cache-plan.ts's prefetchLimit) takes the likeliest,
// and the same ones every time. A token's top-k depends on its own logits only, so a batch's votes are
// the sum of its sequences' votes: forward.ts ranks a batch's lookahead that way, and the replay tool
// (replay/trace-accesses.ts) rebuilds it the same way from the per-request votes a routing trace records.

/** One prediction for one target layer: experts, most voted first, and their votes (aligned). */
export interface RankedVotes {
  readonly experts: readonly number[];
  readonly votes: readonly number[];
}

/** One vote per occurrence of an expert (each token's top-k, one after another), ranked. */
export function countVotes(experts: Iterable<number>): RankedVotes {
  const votes = new Map<number, number>();
  for (const e of experts) votes.set(e, (votes.get(e) ?? 0) + 1);
  return ranked(votes);
}

/** The ranking of several predictions' votes added up: a batch's, from its sequences'. */
export function sumVotes(predictions: readonly RankedVotes[]): RankedVotes {
  const votes = new Map<number, number>();
  for (const p of predictions) p.experts.forEach((e, i) => votes.set(e, (votes.get(e) ?? 0) + (p.votes[i] ?? 0)));
  return ranked(votes);
}

function ranked(votes: ReadonlyMap<number, number>): RankedVotes {
  const experts = [...votes.keys()].sort((a, b) => (votes.get(b) as number) - (votes.get(a) as number) || a - b);
  return { experts, votes: experts.map((e) => votes.get(e) as number) };
}
