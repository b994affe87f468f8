// muster's web status page: three views (services, one service, nodes) that follow the
// agent's read-only views under /v1/internal/ui/ through blocking queries.
//
// Why it is shaped so:
// - No framework and no build step: the file is embedded in the agent as is, and the page
//   is small enough that a few DOM helpers do the job with nothing to vendor or audit.
// - Every value from the catalog reaches the page through text nodes (`el()` below turns
//   strings into text nodes; nothing is ever assigned to innerHTML), so a service meta of
//   `<script>` shows as those characters. The agent's Content-Security-Policy forbids
//   inline script besides.
// - Live without polling: each view holds one request open (`?index=N&wait=60s`) that the
//   agent answers as soon as the answer changes. Successive reads are at least MIN_GAP_MS
//   apart, so a very busy cluster costs one open page a few reads per second, not more.
// - Rows are keyed and reused: an update rebuilds only the rows whose data changed, so a
//   list of 1,000 services stays cheap to refresh.
'use strict';

const WAIT = '60s';
const MIN_GAP_MS = 250;
const RETRY_MS = [1000, 2000, 5000, 10000];

// ----- DOM helpers -----

// el('td', {class: 'x'}, 'text', child, [more]) — strings become text nodes, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else if (c instanceof Node) node.appendChild(c);
    else node.appendChild(document.createTextNode(String(c)));
  }
}

const HEALTH_MARK = { passing: '✓', warning: '!', critical: '✕' };
const STATUS_CLASS = { alive: 'passing', suspect: 'warning', failed: 'critical', left: 'muted' };

// A health shown by colour and by word both.
function healthPill(status, count) {
  const word = count === undefined ? status : `${count} ${status}`;
  return el('span', { class: `pill ${status}`, 'data-status': status },
    el('span', { class: 'mark', 'aria-hidden': 'true' }, HEALTH_MARK[status] || '?'), word);
}

function memberPill(status) {
  return el('span', { class: `pill ${STATUS_CLASS[status] || 'muted'}`, 'data-status': status }, status);
}

function chips(values, cls) {
  return el('span', { class: 'chips' }, values.map((v) => el('span', { class: cls || 'chip' }, v)));
}

function metaList(meta) {
  const keys = Object.keys(meta || {});
  if (keys.length === 0) return el('span', { class: 'muted' }, '—');
  return el('dl', { class: 'meta' },
    keys.map((k) => el('div', {}, el('dt', {}, k), el('dd', {}, meta[k]))));
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

// "3 s ago", "5 min ago", "2 h ago", "4 d ago".
function ago(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h`;
  return `${Math.floor(h / 24)} d`;
}

// An age that keeps counting on the page (see `tickAges`): `ageMs` was true at `receivedAt`.
function age(ageMs, receivedAt, prefix, suffix) {
  if (ageMs === null || ageMs === undefined) return el('span', { class: 'muted' }, '—');
  const node = el('span', { class: 'age', 'data-age': ageMs, 'data-at': receivedAt,
    'data-prefix': prefix || '', 'data-suffix': suffix || '' });
  node.textContent = `${prefix || ''}${ago(ageMs)}${suffix || ''}`;
  return node;
}

function tickAges() {
  const now = performance.now();
  for (const n of document.querySelectorAll('.age')) {
    const ms = Number(n.dataset.age) + (now - Number(n.dataset.at));
    const text = `${n.dataset.prefix}${ago(ms)}${n.dataset.suffix}`;
    if (n.textContent !== text) n.textContent = text;
  }
}

// Keeps `container`'s children in step with `items`: a row is rebuilt only when its data
// (`dataOf(item)`, which leaves out what ticks on its own, such as ages) changed, kept
// otherwise; rows of items gone are dropped, and the DOM is reordered only when needed.
function reconcile(container, cache, items, keyOf, dataOf, render) {
  const seen = new Map();
  const rows = [];
  for (const item of items) {
    const key = keyOf(item);
    const data = JSON.stringify(dataOf(item));
    let row = cache.get(key);
    if (!row || row.data !== data) row = { data, node: render(item) };
    seen.set(key, row);
    rows.push(row.node);
  }
  cache.clear();
  for (const [k, v] of seen) cache.set(k, v);
  const current = container.children;
  let same = current.length === rows.length;
  for (let i = 0; same && i < rows.length; i++) same = current[i] === rows[i];
  if (!same) container.replaceChildren(...rows);
}

// ----- following the agent -----

const banners = {
  protect: () => document.getElementById('protect'),
  error: () => document.getElementById('error'),
  live: () => document.getElementById('live'),
};

function setLive(state, text) {
  const live = banners.live();
  live.className = `live ${state}`;
  live.textContent = text;
}

function showProtect(stale, lastContactMs) {
  const b = banners.protect();
  if (!stale) {
    b.hidden = true;
    return;
  }
  b.replaceChildren(
    el('strong', {}, 'Protect mode'),
    ` — this agent lost most of its peers at once${Number.isFinite(lastContactMs) ? ` ${ago(lastContactMs)} ago` : ''}. `,
    'It shows their last known instances, marked stale, until contact returns.');
  b.hidden = false;
}

function showError(message) {
  const b = banners.error();
  if (!message) {
    b.hidden = true;
    return;
  }
  b.textContent = message;
  b.hidden = false;
}

// Resolves after `ms`, or at once when `signal` aborts (leaving no listener behind).
const sleep = (ms, signal) => new Promise((resolve) => {
  const done = () => {
    clearTimeout(t);
    signal.removeEventListener('abort', done);
    resolve();
  };
  const t = setTimeout(done, ms);
  signal.addEventListener('abort', done);
});

// Reads `path` again and again as a blocking query; calls `onData(body, receivedAt)` with
// each answer whose index moved. Stops when `signal` aborts.
async function follow(path, signal, onData) {
  let index = 0;
  let failures = 0;
  while (!signal.aborted) {
    const started = performance.now();
    const sep = path.includes('?') ? '&' : '?';
    const url = index > 0 ? `${path}${sep}index=${index}&wait=${WAIT}` : path;
    try {
      const resp = await fetch(url, { signal, cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!resp.ok) throw new Error(`${resp.status} ${(await resp.text()).trim()}`);
      const next = Number(resp.headers.get('X-Consul-Index')) || 0;
      const body = await resp.json();
      const receivedAt = performance.now();
      showProtect(resp.headers.get('X-Muster-Stale') === 'true',
        Number(resp.headers.get('X-Consul-LastContact')));
      showError(null);
      setLive('ok', 'live');
      failures = 0;
      // A moved index means new data; one that went backwards (the agent restarted) too,
      // and the next read blocks from there. An answer at the same index is the wait
      // running out: nothing to redraw.
      if (next !== index || index === 0) onData(body, receivedAt);
      index = next > 0 ? next : 0;
      const spent = performance.now() - started;
      if (spent < MIN_GAP_MS) await sleep(MIN_GAP_MS - spent, signal);
    } catch (e) {
      if (signal.aborted) return;
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      failures += 1;
      index = 0;
      setLive('down', 'reconnecting');
      showError(`Cannot read ${path}: ${e.message || e}. Retrying in ${wait / 1000} s.`);
      await sleep(wait, signal);
    }
  }
}

// ----- views -----

function filterBox(placeholder, onInput) {
  const input = el('input', { type: 'search', class: 'filter', placeholder, 'aria-label': placeholder,
    autocomplete: 'off', spellcheck: 'false' });
  input.addEventListener('input', () => onInput(input.value.trim().toLowerCase()));
  return input;
}

function applyFilter(rows, text, countNode, noun) {
  let shown = 0;
  for (const row of rows) {
    const hide = text !== '' && !row.dataset.search.includes(text);
    if (row.hidden !== hide) row.hidden = hide;
    if (!hide) shown += 1;
  }
  countNode.textContent = text === '' ? plural(rows.length, noun) : `${shown} of ${plural(rows.length, noun)}`;
}

function servicesView(main, signal) {
  document.title = 'Services · muster';
  const count = el('span', { class: 'count' });
  let filter = '';
  const tbody = el('tbody');
  const empty = el('p', { class: 'empty', hidden: true }, 'No service is registered in the cluster.');
  const refilter = () => applyFilter(tbody.children, filter, count, 'service');
  main.replaceChildren(
    el('div', { class: 'heading' }, el('h1', {}, 'Services'), count,
      filterBox('Filter by name or tag', (t) => { filter = t; refilter(); })),
    el('table', { class: 'list services' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Service'), el('th', {}, 'Health'), el('th', { class: 'num' }, 'Instances'),
        el('th', { class: 'num wide' }, 'Nodes'))),
      tbody),
    empty);
  const cache = new Map();
  const render = (s) => {
    const health = [];
    if (s.Passing) health.push(healthPill('passing', s.Passing));
    if (s.Warning) health.push(healthPill('warning', s.Warning));
    if (s.Critical) health.push(healthPill('critical', s.Critical));
    if (s.Stale) health.push(el('span', { class: 'pill stale' }, `${s.Stale} stale`));
    const row = el('tr', { 'data-service': s.Name },
      el('td', { 'data-label': 'Service' },
        el('a', { class: 'name', href: `#/service/${encodeURIComponent(s.Name)}` }, s.Name),
        s.Tags.length ? chips(s.Tags) : null),
      el('td', { 'data-label': 'Health', class: 'health' }, health),
      el('td', { 'data-label': 'Instances', class: 'num' }, s.InstanceCount),
      el('td', { 'data-label': 'Nodes', class: 'num wide' }, s.NodeCount));
    row.dataset.search = [s.Name, ...s.Tags].join(' ').toLowerCase();
    return row;
  };
  let first = true;
  follow('/v1/internal/ui/services', signal, (list) => {
    reconcile(tbody, cache, list, (s) => s.Name, (s) => s, render);
    empty.hidden = list.length !== 0;
    refilter();
    if (first) {
      first = false;
      markRendered('services', list.length);
    }
  });
}

function serviceView(main, signal, name) {
  document.title = `${name} · muster`;
  const summary = el('span', { class: 'count' });
  const list = el('div', { class: 'instances' });
  const empty = el('p', { class: 'empty', hidden: true },
    'No instance of this service is registered (any more).');
  main.replaceChildren(
    el('p', { class: 'crumbs' }, el('a', { href: '#/services' }, '← Services')),
    el('div', { class: 'heading' }, el('h1', {}, name), summary),
    empty, list);
  const cache = new Map();
  follow(`/v1/internal/ui/service/${encodeURIComponent(name)}`, signal, (view, receivedAt) => {
    const counts = { passing: 0, warning: 0, critical: 0 };
    for (const i of view.Instances) counts[i.Health] += 1;
    summary.replaceChildren();
    append(summary, [plural(view.Instances.length, 'instance'),
      ['passing', 'warning', 'critical'].filter((h) => counts[h]).map((h) => healthPill(h, counts[h]))]);
    empty.hidden = view.Instances.length !== 0;
    // Ages change with every read and count on by themselves: they are not "data".
    reconcile(list, cache, view.Instances, (i) => `${i.Node}\u0000${i.ID}`,
      (i) => ({ ...i, Checks: i.Checks.map((c) => ({ ...c, StatusAgeMs: undefined })) }),
      (i) => instanceCard(i, receivedAt));
  });
}

function instanceCard(i, receivedAt) {
  const where = i.Port ? `${i.Address}:${i.Port}` : i.Address;
  const flags = [];
  if (i.NodeStatus !== 'alive') flags.push(memberPill(i.NodeStatus));
  if (i.Stale) flags.push(el('span', { class: 'pill stale' }, 'stale'));
  if (!i.Served) flags.push(el('span', { class: 'pill muted' }, 'not served'));
  return el('section', { class: `card ${i.Health}`, 'data-node': i.Node, 'data-id': i.ID, 'data-health': i.Health },
    el('header', {},
      healthPill(i.Health),
      el('span', { class: 'node' }, i.Node),
      el('code', { class: 'addr' }, where),
      flags),
    el('dl', { class: 'facts' },
      el('div', {}, el('dt', {}, 'ID'), el('dd', {}, i.ID)),
      el('div', {}, el('dt', {}, 'Node address'), el('dd', {}, i.NodeAddress)),
      el('div', {}, el('dt', {}, 'Tags'), el('dd', {}, i.Tags.length ? chips(i.Tags) : el('span', { class: 'muted' }, '—'))),
      el('div', {}, el('dt', {}, 'Weights'), el('dd', {}, `passing ${i.Weights.Passing} · warning ${i.Weights.Warning}`)),
      el('div', { class: 'full' }, el('dt', {}, 'Meta'), el('dd', {}, metaList(i.Meta)))),
    el('table', { class: 'checks' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Status'), el('th', {}, 'Check'), el('th', {}, 'Output'), el('th', {}, 'Changed'))),
      el('tbody', {}, i.Checks.map((c) => el('tr', { 'data-check': c.CheckID, 'data-status': c.Status },
        el('td', { 'data-label': 'Status' }, healthPill(c.Status)),
        el('td', { 'data-label': 'Check' }, el('div', {},
          el('span', { class: 'check-name' }, c.Name),
          el('span', { class: 'muted small' }, ` ${c.CheckID}${c.Type ? ` · ${c.Type}` : ''}${c.NodeCheck ? ' · node' : ''}`),
          c.Notes ? el('div', { class: 'muted small' }, c.Notes) : null)),
        el('td', { 'data-label': 'Output' }, c.Output ? el('pre', { class: 'output' }, c.Output) : el('span', { class: 'muted' }, '—')),
        el('td', { 'data-label': 'Changed', class: 'when' }, age(c.StatusAgeMs, receivedAt, '', ' ago')))))));
}

function nodesView(main, signal) {
  document.title = 'Nodes · muster';
  const count = el('span', { class: 'count' });
  let filter = '';
  const tbody = el('tbody');
  const refilter = () => applyFilter(tbody.children, filter, count, 'node');
  main.replaceChildren(
    el('div', { class: 'heading' }, el('h1', {}, 'Nodes'), count,
      filterBox('Filter by name, address, status or meta', (t) => { filter = t; refilter(); })),
    el('table', { class: 'list nodes' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Node'), el('th', {}, 'Status'), el('th', {}, 'Address'),
        el('th', { class: 'num' }, 'Services'), el('th', {}, 'Meta'))),
      tbody));
  const cache = new Map();
  follow('/v1/internal/ui/nodes', signal, (list, receivedAt) => {
    const render = (n) => {
      const row = el('tr', { 'data-node': n.Name, 'data-status': n.Status },
        el('td', { 'data-label': 'Node' }, el('span', { class: 'name' }, n.Name),
          n.Health !== 'passing' && n.Status === 'alive' ? healthPill(n.Health) : null),
        el('td', { 'data-label': 'Status' }, memberPill(n.Status),
          n.Stale ? el('span', { class: 'pill stale' }, 'stale') : null,
          ' ', age(n.StatusAgeMs, receivedAt, n.Status === 'alive' || n.Status === 'suspect' ? 'for ' : '', n.Status === 'alive' || n.Status === 'suspect' ? '' : ' ago')),
        el('td', { 'data-label': 'Address' }, el('code', {}, n.Address),
          n.GossipAddress ? el('div', { class: 'muted small' }, `gossip ${n.GossipAddress}`) : null),
        el('td', { 'data-label': 'Services', class: 'num' }, n.ServiceCount),
        el('td', { 'data-label': 'Meta' }, metaList(n.Meta)));
      row.dataset.search = [n.Name, n.Address, n.Status, ...Object.entries(n.Meta).map(([k, v]) => `${k}=${v}`)]
        .join(' ').toLowerCase();
      return row;
    };
    reconcile(tbody, cache, list, (n) => n.Name, (n) => ({ ...n, StatusAgeMs: undefined }), render);
    refilter();
  });
}

// Timings for the browser test (and the curious): when the first answer was on screen.
function markRendered(view, rows) {
  window.musterRendered = { view, rows, ms: performance.now() };
}

// ----- routing -----

let current = null;

function route() {
  if (current) current.abort();
  current = new AbortController();
  const main = document.getElementById('main');
  const hash = location.hash || '#/services';
  let view = 'services';
  if (hash.startsWith('#/service/')) {
    let name = hash.slice('#/service/'.length);
    try { name = decodeURIComponent(name); } catch (_) { /* shown as typed */ }
    view = 'service';
    serviceView(main, current.signal, name);
  } else if (hash === '#/nodes') {
    view = 'nodes';
    nodesView(main, current.signal);
  } else {
    servicesView(main, current.signal);
  }
  for (const [id, v] of [['nav-services', ['services', 'service']], ['nav-nodes', ['nodes']]]) {
    document.getElementById(id).classList.toggle('active', v.includes(view));
  }
  banners.protect().hidden = true;
}

window.addEventListener('hashchange', route);
setInterval(tickAges, 500);
route();
