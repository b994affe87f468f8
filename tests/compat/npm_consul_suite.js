// Drives a muster agent with the npm `consul` package (v2), as a Node.js user would:
// register with a TTL check, read the catalog and health, follow changes with its watch
// helper (blocking queries), deregister. Usage: node npm_consul_suite.js HOST:PORT
const assert = require('assert');
const Consul = require('consul');
const [host, port] = process.argv[2].split(':');
const consul = new Consul({ host, port: Number(port) });

(async () => {
  await consul.agent.service.register({ name: 'nodeweb', id: 'nodeweb-1', port: 3000, tags: ['js'], check: { ttl: '30s' } });
  assert.deepStrictEqual(Object.keys(await consul.agent.service.list()), ['nodeweb-1']);
  const nodes = await consul.catalog.service.nodes('nodeweb');
  assert.strictEqual(nodes.length, 1);
  assert.strictEqual(nodes[0].ServicePort, 3000);
  assert.strictEqual((await consul.health.service({ service: 'nodeweb', passing: true })).length, 0);
  await consul.agent.check.pass('service:nodeweb-1');
  assert.strictEqual((await consul.health.service({ service: 'nodeweb', passing: true })).length, 1);
  assert.ok((await consul.agent.members()).every((m) => m.Status === 1));

  // The watch helper issues blocking queries; it must see 1 healthy, then 0 after a fail.
  const seen = await new Promise((resolve, reject) => {
    const counts = [];
    const watch = consul.watch({ method: consul.health.service, options: { service: 'nodeweb', passing: true } });
    watch.on('change', (data) => {
      counts.push(data.length);
      if (counts.length === 2) { watch.end(); clearTimeout(limit); resolve(counts); }
    });
    watch.on('error', (e) => { watch.end(); reject(e); });
    setTimeout(() => consul.agent.check.fail('service:nodeweb-1'), 500);
    const limit = setTimeout(() => { watch.end(); reject(new Error('watch saw ' + JSON.stringify(counts))); }, 15000);
  });
  assert.deepStrictEqual(seen, [1, 0]);
  await consul.agent.service.deregister('nodeweb-1');
  assert.strictEqual((await consul.catalog.service.nodes('nodeweb')).length, 0);
  console.log('npm consul suite passed');
  process.exit(0); // the watch's last long poll may still be open
})().catch((e) => { console.error('FAIL', e); process.exit(1); });
