/** Prompts the benchmarks run: documentation-flavoured, the embedded model's domain. */
export const BENCH_PROMPTS = [
  'The Python interpreter',
  'A list comprehension',
  'Q: What is a generator?\nA:',
  'import os\n',
  'The *default* argument',
  'Return the name of',
  'Raise a TypeError if',
  'class Foo:\n    def',
] as const;
