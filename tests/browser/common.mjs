// Shared pieces of the browser harnesses (check.mjs, xss.mjs): argument and
// pages.json parsing, launching Debian's Chromium, and the "foreign request"
// guard that keeps the browser from talking to anything but the server under
// test.

import { parseArgs } from 'node:util';
import { readFileSync, mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.PLENARY_CHROMIUM || '/usr/bin/chromium';

// A problem with the harness or its environment (bad arguments, no browser,
// server unreachable), as opposed to a finding about the pages. Exit code 2.
export class HarnessError extends Error {}

// Parses --base, --pages, --out plus any extra string options.
// `extra` maps option name -> default value.
export function parseCommon(usage, extra = {}) {
  const options = {
    base: { type: 'string' },
    pages: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  };
  for (const name of Object.keys(extra)) options[name] = { type: 'string' };
  let values;
  try {
    ({ values } = parseArgs({ options, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new HarnessError(`${e.message}\nusage: ${usage}`);
  }
  if (values.help) {
    console.log(`usage: ${usage}`);
    process.exit(0);
  }
  for (const req of ['base', 'pages', 'out']) {
    if (!values[req]) throw new HarnessError(`missing --${req}\nusage: ${usage}`);
  }
  let base;
  try {
    base = new URL(values.base);
  } catch {
    throw new HarnessError(`--base is not a URL: ${values.base}`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new HarnessError(`--base must be http(s): ${values.base}`);
  }
  const pages = loadPages(values.pages);
  mkdirSync(values.out, { recursive: true });
  const rest = {};
  for (const [name, def] of Object.entries(extra)) rest[name] = values[name] ?? def;
  return { base, pages, out: values.out, ...rest };
}

// pages.json: [{"name": "list", "path": "/lists/x@y/", "status": 404?}, ...]
function loadPages(file) {
  let pages;
  try {
    pages = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new HarnessError(`cannot read pages file ${file}: ${e.message}`);
  }
  if (!Array.isArray(pages) || pages.length === 0) {
    throw new HarnessError(`${file}: expected a non-empty JSON array of {name, path}`);
  }
  const seen = new Set();
  for (const p of pages) {
    if (typeof p?.name !== 'string' || !/^[A-Za-z0-9._-]+$/.test(p.name)) {
      // The name becomes part of screenshot file names.
      throw new HarnessError(`${file}: bad page name ${JSON.stringify(p?.name)} (use [A-Za-z0-9._-])`);
    }
    if (seen.has(p.name)) throw new HarnessError(`${file}: duplicate page name ${p.name}`);
    seen.add(p.name);
    if (typeof p.path !== 'string' || !p.path.startsWith('/')) {
      throw new HarnessError(`${file}: page ${p.name}: path must start with /`);
    }
    if (p.status !== undefined && !Number.isInteger(p.status)) {
      throw new HarnessError(`${file}: page ${p.name}: status must be an integer`);
    }
  }
  return pages;
}

export function pageUrl(base, page) {
  return new URL(page.path, base).href;
}

// Launches headless Chromium. Playwright's launch() already gives the browser
// a fresh temporary profile (user-data dir) and removes it on close.
export async function launch(base) {
  const args = [
    '--no-sandbox', // we run as root in CI
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    // Without these, Chromium phones home at start and the closed network
    // here refuses it many times over.
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // Safety net under the request routing below: anything that is neither
    // loopback nor the server under test goes to a proxy on a closed loopback
    // port and fails there, so no packet ever leaves for a foreign address
    // (e.g. a preconnect the routing cannot see). Loopback bypasses proxies
    // by default in Chromium; the base host is listed in case it is not
    // loopback (a test host in a network namespace).
    '--proxy-server=http://127.0.0.1:9',
    `--proxy-bypass-list=${base.hostname}`,
  ];
  try {
    return await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 60_000 });
  } catch (e) {
    throw new HarnessError(
      `cannot launch Chromium at ${CHROMIUM}: ${e.message.split('\n')[0]}\n` +
        'install it with: apt-get install -y chromium chromium-driver',
    );
  }
}

// True when `url` is served by the server under test (same scheme, host and
// port as the base). data:, blob: and about: URLs never hit the network.
export function isOwn(url, base) {
  let u;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  if (u.protocol === 'data:' || u.protocol === 'blob:' || u.protocol === 'about:') return true;
  return u.protocol === base.protocol && u.host === base.host;
}

// URL without its #fragment, for "same page" comparisons.
export function withoutHash(url) {
  const u = new URL(url);
  u.hash = '';
  return u.href;
}

// Routes every request of `context`: own requests continue, foreign ones are
// recorded via onForeign(request) and aborted before they are sent.
export async function guardRequests(context, base, onForeign) {
  await context.route('**/*', async (route) => {
    const req = route.request();
    if (isOwn(req.url(), base)) {
      await route.continue().catch(() => {});
    } else {
      onForeign(req);
      // 'aborted' for navigations: Chromium then stays on the page instead of
      // committing an error page.
      await route.abort(req.isNavigationRequest() ? 'aborted' : 'blockedbyclient').catch(() => {});
    }
  });
}

export function truncate(s, n) {
  s = String(s ?? '');
  return s.length > n ? s.slice(0, n) + '…' : s;
}

// Runs main(); maps HarnessError (and any other crash) to exit code 2.
export function run(main) {
  // A throw inside an event or route handler would otherwise end the process
  // with exit code 1, which reads as "findings".
  const crash = (e) => {
    console.error(`harness error (unexpected): ${e?.stack || e}`);
    process.exit(2);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  main().then(
    (code) => process.exit(code),
    (e) => {
      if (e instanceof HarnessError) {
        console.error(`harness error: ${e.message}`);
      } else {
        console.error(`harness error (unexpected): ${e?.stack || e}`);
      }
      process.exit(2);
    },
  );
}
