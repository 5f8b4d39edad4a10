// The OpenFeature Node server SDK with its OFREP provider, evaluating Pylon's flags
// (scripts/flags.json) through a flags-only key.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';
import assert from 'node:assert/strict';

const [base, key] = process.argv.slice(2);
await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl: base, headers: [['Authorization', `Bearer ${key}`]] }));
const client = OpenFeature.getClient();
let checks = 0;
const check = (got, want, what) => { assert.deepEqual(got, want, what); checks += 1; };

let d = await client.getBooleanDetails('new-checkout', false, { targetingKey: 'u1', email: 'ana@example.com' });
check([d.value, d.reason], [true, 'TARGETING_MATCH'], 'boolean targeting');
check(await client.getStringValue('app-gate', 'x', { targetingKey: 'u1', version: '2.3.0' }), 'new', 'sem_ver');
check(await client.getNumberValue('max-items', 0), 10, 'integer');
check(await client.getNumberValue('ratio', 0), 0.25, 'float');
check(await client.getObjectValue('theme', {}), { bg: '#000', fg: '#fff' }, 'object');
for (const [name, suit] of [['jack', 'hearts'], ['queen', 'spades'], ['ten', 'clubs'], ['nine', 'diamonds']]) {
  check(await client.getStringValue('fractional-flag', 'fallback', { targetingKey: 'u1', user: { name } }), suit, `fractional for ${name}`);
}
d = await client.getBooleanDetails('retired', false);
check([d.value, d.reason], [true, 'DISABLED'], 'disabled: its default variant');
d = await client.getStringDetails('no-such-flag', 'fallback');
check([d.value, d.errorCode], ['fallback', 'FLAG_NOT_FOUND'], 'missing flag');
console.log(`OpenFeature Node SDK over OFREP: ${checks} checks passed`);
