import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseExposition } from '../../load-tests/metric-samples.js';

test('the exposition format is read as series -> value, labels kept, comments skipped', () => {
  const text = [
    '# HELP moe_serve_requests_total HTTP requests',
    '# TYPE moe_serve_requests_total counter',
    'moe_serve_requests_total{route="/v1/completions",status="200"} 3',
    'moe_serve_requests_total{route="/a b",status="404"} 1',
    'nodejs_eventloop_lag_p99_seconds 0.012',
    '',
    'x_bucket{le="+Inf"} 7',
  ].join('\n');
  const m = new Map(parseExposition(text).map((s) => [s.series, s.value]));
  assert.equal(m.get('moe_serve_requests_total{route="/v1/completions",status="200"}'), 3);
  assert.equal(m.get('moe_serve_requests_total{route="/a b",status="404"}'), 1);
  assert.equal(m.get('nodejs_eventloop_lag_p99_seconds'), 0.012);
  assert.equal(m.get('x_bucket{le="+Inf"}'), 7);
  assert.equal(m.size, 4);
});
