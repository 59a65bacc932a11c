export interface StopStringResult {
  /** Text that is certainly not part of a stop string. */
  emit: string;
  /** A stop string was found; `emit` is the text before it and nothing follows. */
  stopped: boolean;
}

/**
 * Finds stop strings in streamed text that may split them anywhere. Only a suffix that could still grow into a
 * stop string is held back, so the stream lags by at most (longest stop string - 1) characters. As in OpenAI's
 * API the stop string itself is not emitted.
 */
export class StopStringMatcher {
  private readonly stopStrings: readonly string[];
  // Every proper prefix of every stop string: what a held-back suffix may be.
  private readonly properPrefixes: ReadonlySet<string>;
  private readonly longestPrefixLength: number;
  private held = '';
  private stopped = false;

  constructor(stopStrings: readonly string[]) {
    // An empty stop string would end every stream before its first character; it cannot be meant.
    this.stopStrings = stopStrings.filter((s) => s.length > 0);
    const prefixes = new Set<string>();
    for (const s of this.stopStrings) {
      for (let length = 1; length < s.length; length++) prefixes.add(s.slice(0, length));
    }
    this.properPrefixes = prefixes;
    this.longestPrefixLength = Math.max(0, ...this.stopStrings.map((s) => s.length - 1));
  }

  push(text: string): StopStringResult {
    if (this.stopped) return { emit: '', stopped: true };
    // A match cannot start in text already emitted: its start would have been a held-back prefix.
    const buffer = this.held + text;
    const stopAt = this.earliestStop(buffer);
    if (stopAt !== undefined) {
      this.stopped = true;
      this.held = '';
      return { emit: buffer.slice(0, stopAt), stopped: true };
    }
    const heldLength = this.longestHeldSuffix(buffer);
    this.held = buffer.slice(buffer.length - heldLength);
    return { emit: buffer.slice(0, buffer.length - heldLength), stopped: false };
  }

  /** Ends the stream: the held-back text was not a stop string after all. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }

  // Earliest rather than first-listed: with stops ["abc", "b"] and text "abc", nothing is emitted.
  private earliestStop(buffer: string): number | undefined {
    let earliest: number | undefined;
    for (const s of this.stopStrings) {
      const at = buffer.indexOf(s);
      if (at !== -1 && (earliest === undefined || at < earliest)) earliest = at;
    }
    return earliest;
  }

  private longestHeldSuffix(buffer: string): number {
    for (let length = Math.min(this.longestPrefixLength, buffer.length); length > 0; length--) {
      if (this.properPrefixes.has(buffer.slice(buffer.length - length))) return length;
    }
    return 0;
  }
}
