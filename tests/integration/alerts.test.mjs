// The alerting rules (deploy/prometheus/alerts.yml): promtool checks them and runs their unit
// tests (tests/prometheus/alerts.test.yml), and every alert has at least one firing case
// there, so none can rot unnoticed (a renamed metric makes its test fail).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../lib/harness.mjs';

const RULES = path.join(REPO_ROOT, 'deploy/prometheus/alerts.yml');
const TESTS = path.join(REPO_ROOT, 'tests/prometheus/alerts.test.yml');
const promtool = process.env.PROMTOOL ?? 'promtool';

function run(args) {
  const r = spawnSync(promtool, args, { encoding: 'utf8', timeout: 60000 });
  if (r.error?.code === 'ENOENT') {
    assert.fail('promtool not found: install the Debian package prometheus (make deps does)');
  }
  return r;
}

test('promtool check rules: the rules parse', () => {
  const r = run(['check', 'rules', RULES]);
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
});

test('promtool test rules: every alert fires (and stays quiet) when it should', () => {
  const r = run(['test', 'rules', TESTS]);
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
});

test('every alert has a firing case in the unit tests', () => {
  const alerts = [...fs.readFileSync(RULES, 'utf8').matchAll(/^\s*- alert: (\w+)/gm)].map((m) => m[1]);
  assert.ok(alerts.length >= 5, alerts.join());
  const cases = fs.readFileSync(TESTS, 'utf8');
  for (const a of alerts) {
    const firing = new RegExp(`alertname: ${a}\\n\\s+exp_alerts:\\n\\s+- exp_labels`);
    assert.ok(firing.test(cases), `${a} never fires in ${path.relative(REPO_ROOT, TESTS)}`);
  }
});
