import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createRng } from '../../src/engine/sampler.js';
import { StopStringMatcher } from '../../src/engine/stop-strings.js';

describe('StopStringMatcher', () => {
  test('passes text through unchanged when there are no stop strings', () => {
    const matcher = new StopStringMatcher([]);
    assert.deepEqual(matcher.push('hello #'), { emit: 'hello #', stopped: false });
    assert.equal(matcher.flush(), '');
  });

  test('holds back a possible start of a stop string, then releases it when the text goes another way', () => {
    const matcher = new StopStringMatcher(['###']);
    assert.deepEqual(matcher.push('ab##'), { emit: 'ab', stopped: false });
    assert.deepEqual(matcher.push('x'), { emit: '##x', stopped: false });
  });

  test('finds a stop string spanning several pushes and emits only the text before it', () => {
    const matcher = new StopStringMatcher(['STOP']);
    assert.deepEqual(matcher.push('The end. S'), { emit: 'The end. ', stopped: false });
    assert.deepEqual(matcher.push('T'), { emit: '', stopped: false });
    assert.deepEqual(matcher.push('OP and more'), { emit: '', stopped: true });
  });

  test('emits the text of the final push that comes before the stop string', () => {
    const matcher = new StopStringMatcher(['STOP']);
    assert.deepEqual(matcher.push('ab'), { emit: 'ab', stopped: false });
    assert.deepEqual(matcher.push('cSTOPd'), { emit: 'c', stopped: true });
  });

  test('stops at the very start of the stream, emitting nothing', () => {
    const matcher = new StopStringMatcher(['\n\n']);
    assert.deepEqual(matcher.push('\n\nlater'), { emit: '', stopped: true });
  });

  test('stops at whichever of several stop strings comes first in the text', () => {
    const matcher = new StopStringMatcher(['\n\n', 'User:']);
    assert.deepEqual(matcher.push('Hi User: x\n\n'), { emit: 'Hi ', stopped: true });
  });

  test('holds back the longest suffix that could still grow into a stop string', () => {
    const matcher = new StopStringMatcher(['aab']);
    assert.deepEqual(matcher.push('xaa'), { emit: 'x', stopped: false });
    assert.deepEqual(matcher.push('ab'), { emit: 'a', stopped: true });
  });

  test('returns the held-back text from flush when the stream ends without a stop string', () => {
    const matcher = new StopStringMatcher(['STOP']);
    assert.deepEqual(matcher.push('abc ST'), { emit: 'abc ', stopped: false });
    assert.equal(matcher.flush(), 'ST');
  });

  test('emits nothing after it has stopped', () => {
    const matcher = new StopStringMatcher(['STOP']);
    matcher.push('STOP');
    assert.deepEqual(matcher.push('more'), { emit: '', stopped: true });
    assert.equal(matcher.flush(), '');
  });

  test('ignores empty stop strings instead of stopping before the first character', () => {
    const matcher = new StopStringMatcher(['', 'END']);
    assert.deepEqual(matcher.push('text'), { emit: 'text', stopped: false });
  });

  test('emits exactly the text before the first stop string however the text is split', () => {
    // Stops of equal length: the one that completes first is then also the one that starts first.
    const stops = ['aba', 'bba'];
    const rng = createRng(7);
    for (let trial = 0; trial < 2000; trial++) {
      const length = 1 + Math.floor(rng.next() * 20);
      const text = Array.from({ length }, () => 'ab '[Math.floor(rng.next() * 3)]).join('');
      const matcher = new StopStringMatcher(stops);
      let emitted = '';
      let stopped = false;
      for (let at = 0; at < text.length && !stopped; ) {
        const end = Math.min(text.length, at + 1 + Math.floor(rng.next() * 4));
        const result = matcher.push(text.slice(at, end));
        emitted += result.emit;
        stopped = result.stopped;
        at = end;
      }
      if (!stopped) emitted += matcher.flush();
      const stopAt = Math.min(...stops.map((s) => text.indexOf(s)).filter((i) => i >= 0));
      assert.equal(stopped, Number.isFinite(stopAt), text);
      assert.equal(emitted, Number.isFinite(stopAt) ? text.slice(0, stopAt) : text, JSON.stringify(text));
    }
  });
});
