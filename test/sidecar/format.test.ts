// format.test.ts — the sidecar's words for people: the prefill progress line.
import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { prefillProgressText } from '../../sidecar/format';

test('prefill progress: counts at first, then the rate so far and the time left', () => {
  // the first seconds, nothing done, or done: counts only (a rate from one chunk would be noise)
  assert.equal(prefillProgressText(512, 30720, 1500), '512 / 30,720 tokens');
  assert.equal(prefillProgressText(0, 30720, 10_000), '0 / 30,720 tokens');
  assert.equal(prefillProgressText(30720, 30720, 600_000), '30,720 / 30,720 tokens');
  // 12,288 tokens in 300 s: 41 tok/s, 18,432 left = 450 s
  assert.equal(prefillProgressText(12288, 30720, 300_000), '12,288 / 30,720 tokens \u00b7 41 tok/s \u00b7 about 8 min left');
  assert.equal(prefillProgressText(1000, 1200, 10_000), '1,000 / 1,200 tokens \u00b7 100 tok/s \u00b7 under a minute left');
  // slow machines: a decimal below 10 tok/s, hours past 90 minutes
  assert.equal(prefillProgressText(2048, 100_000, 400_000), '2,048 / 100,000 tokens \u00b7 5.1 tok/s \u00b7 about 5.3 h left');
});
