// The load tests' prompt set: text from models/tiny-moe's domain, so the model answers in its own
// register and routes as it would for real users. Short and long prompts mixed, so prefill varies.
// Sources: the Python 3.11 documentation (PSF License Version 2; short passages, some abridged) and
// classic fortunes of the kind in Debian's fortune-mod (public domain proverbs and sayings).

export interface LoadPrompt {
  readonly source: 'python-docs' | 'fortunes';
  readonly text: string;
}

export const LOAD_PROMPTS: readonly LoadPrompt[] = [
  { source: 'python-docs', text: 'The Python interpreter' },
  { source: 'python-docs', text: 'A list comprehension consists of brackets containing an expression followed by a for clause, then' },
  { source: 'python-docs', text: 'Return a new sorted list from the items in iterable.\n\n   Has two optional arguments which' },
  { source: 'python-docs', text: 'class Foo:\n    def' },
  { source: 'python-docs', text: 'The with statement is used to wrap the execution of a block with methods defined by a context manager.' },
  { source: 'python-docs', text: 'import os\n' },
  { source: 'python-docs', text: 'Raise a TypeError if' },
  { source: 'python-docs', text: 'Generators are a simple and powerful tool for creating iterators. They are written like regular functions but use the yield statement whenever they want to return data. Each time next() is called on it, the generator' },
  { source: 'python-docs', text: 'Q: What is a generator?\nA:' },
  { source: 'python-docs', text: '.. function:: open(file, mode=\'r\', buffering=-1, encoding=None)\n\n   Open *file* and return a corresponding' },
  { source: 'python-docs', text: 'The *default* argument' },
  { source: 'python-docs', text: 'Dictionaries are sometimes found in other languages as "associative memories" or "associative arrays". Unlike sequences, which are indexed by a range of numbers, dictionaries are indexed by keys, which' },
  { source: 'python-docs', text: 'Return the name of' },
  { source: 'python-docs', text: 'Exceptions\n==========\n\nEven if a statement or expression is syntactically correct, it may cause an error when' },
  { source: 'python-docs', text: 'The :mod:`asyncio` module provides infrastructure for writing single-threaded concurrent code using coroutines,' },
  { source: 'python-docs', text: '>>> for i in range(5):\n...     print(i)\n' },
  { source: 'fortunes', text: 'A journey of a thousand miles begins with a single step.\n%\n' },
  { source: 'fortunes', text: 'Q: How many programmers does it take to change a light bulb?\nA:' },
  { source: 'fortunes', text: 'Whenever you find yourself on the side of the majority, it is time to' },
  { source: 'fortunes', text: 'You will be' },
  { source: 'fortunes', text: 'Never put off till tomorrow what you can' },
  { source: 'fortunes', text: 'It is easier to' },
  { source: 'fortunes', text: 'An apple a day keeps the doctor away.\n%\nA bird in the hand is worth two in the bush.\n%\nA fool and his money are soon parted.\n%\n' },
  { source: 'fortunes', text: 'Your lucky number is' },
];
