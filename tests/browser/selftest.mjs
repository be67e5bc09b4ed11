#!/usr/bin/env node
// Self-test of check.mjs and xss.mjs: serves fixture pages from a tiny local
// server and runs both harnesses against them, expecting them to pass on the
// good pages and to fail, for the right reasons, on the bad ones. This is
// what shows that the checks can fail at all.
//
//   node tests/browser/selftest.mjs [--keep DIR]
//
// Exit 0 only if every expectation holds. Nothing leaves the machine: the
// "foreign" host is a second loopback server (the canary) that counts hits;
// the harnesses must block every request to it before it is sent.

import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const keepIdx = process.argv.indexOf('--keep');
const work = keepIdx > 0 ? process.argv[keepIdx + 1] : mkdtempSync(path.join(tmpdir(), 'plenary-browser-selftest-'));
mkdirSync(work, { recursive: true });

// ------------------------------------------------------------ fixtures

// Plenary's real policy shape: nothing but same-origin styles and images.
const STRICT_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'";

const GOOD_CSS = `
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #1a1a1a; background: #fff; }
header, main, footer { padding: 0 1rem; }
.skip { position: absolute; left: -10000px; top: 0; }
.skip:focus { left: .5rem; top: .5rem; background: #fff; padding: .5rem; z-index: 1; }
a { color: #0645ad; }
:focus-visible { outline: 3px solid #b35900; outline-offset: 2px; }
input, button { font: inherit; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
footer { color: #444; }
`;

const page = (title, main, { head = '', extraBody = '' } = {}) => `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<link rel="stylesheet" href="/static/good.css">
${head}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header>
  <nav aria-label="Site">
    <a href="/">Fixture archive</a>
    <form role="search" action="/search" method="get">
      <label for="q">Search</label>
      <input id="q" name="q" type="search">
      <button type="submit">Search</button>
    </form>
  </nav>
</header>
<main id="main">
${main}
</main>
<footer><p>Fixture pages for the browser harness self-test.</p></footer>
${extraBody}
</body>
</html>
`;

function fixtures(canary) {
  const foreign = `http://127.0.0.1:${canary}`;
  return {
    // (i) accessible, strict CSP, a same-site link inside the body.
    '/good/': {
      csp: true,
      html: page('A good message', `
<h1>Re: release plan</h1>
<details><summary>Headers</summary><p>From: a person</p></details>
<pre class="body">Hello all,

the release is on Friday. Notes are on the <a href="/good/notes">notes page</a>.
</pre>`),
    },
    '/nope': {
      csp: true,
      status: 404,
      html: page('Not found', '<h1>Not found</h1><p>There is no such page here.</p>'),
    },
    // (ii) script + foreign image, no CSP at all.
    '/evil-script/': {
      csp: false,
      html: page('Evil', `<h1>Evil</h1><pre class="body">hi</pre>
<script>alert(1)</script>
<img src="${foreign}/x.png" alt="">`),
    },
    // The same payload behind the strict CSP: must come out clean (the
    // console's CSP reports are informational).
    '/evil-csp/': {
      csp: true,
      html: page('Evil but fenced', `<h1>Evil</h1><pre class="body">hi</pre>
<script>alert(1)</script>
<img src="${foreign}/x.png" alt="">`),
    },
    // Payload that needs the mouse.
    '/evil-hover/': {
      csp: false,
      html: page('Hover', `<h1>Hover</h1><pre class="body"><span onmouseover="confirm('hovered')">hover me</span></pre>`),
    },
    // Payload that needs focus.
    '/evil-focus/': {
      csp: false,
      html: page('Focus', `<h1>Focus</h1><pre class="body"><span tabindex="0" onfocus="prompt('focused')">x</span></pre>`),
    },
    // Navigation away after load, without any request to another host.
    '/evil-nav/': {
      csp: true,
      html: page('Nav', '<h1>Nav</h1><pre class="body">hi</pre>', {
        head: '<meta http-equiv="refresh" content="0;url=/elsewhere">',
      }),
    },
    // Links in the body that leave the site or open a popup when clicked.
    '/evil-click/': {
      csp: false,
      html: page('Click', `<h1>Click</h1><pre class="body"><a href="${foreign}/leave">leave</a>
<button type="button" onclick="window.open('/good/')">open</button></pre>`),
    },
    // Inaccessible on purpose: no skip link, no <main>, image without alt,
    // low contrast, focus outline removed, 800 px wide box.
    '/bad/': {
      csp: true,
      html: `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bad</title><link rel="stylesheet" href="/static/bad.css"></head>
<body>
<div class="top"><a href="/">Home</a> <a href="/other">Other</a></div>
<div class="wide">This box is wider than a phone.</div>
<p class="faint">Barely readable text.</p>
<img src="/static/pixel.png">
</body></html>
`,
    },
  };
}

const BAD_CSS = `
a:focus, a:focus-visible { outline: none; }
.wide { width: 800px; }
.faint { color: #ccc; background: #fff; }
`;

// 1x1 transparent PNG.
const PIXEL = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=',
  'base64',
);

function startServers() {
  let canaryHits = 0;
  const canary = http.createServer((req, res) => {
    canaryHits++;
    res.end('canary');
  });
  let pages;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/static/good.css' || url.pathname === '/static/bad.css') {
      res.writeHead(200, { 'content-type': 'text/css' });
      return res.end(url.pathname.endsWith('good.css') ? GOOD_CSS : BAD_CSS);
    }
    if (url.pathname === '/static/pixel.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      return res.end(PIXEL);
    }
    const fx = pages[url.pathname];
    const headers = { 'content-type': 'text/html; charset=utf-8' };
    if (!fx) {
      res.writeHead(404, headers);
      return res.end(page('Not found', '<h1>Not found</h1><p>Nothing here.</p>'));
    }
    if (fx.csp) headers['content-security-policy'] = STRICT_CSP;
    res.writeHead(fx.status ?? 200, headers);
    res.end(fx.html);
  });
  return new Promise((resolve) => {
    canary.listen(0, '127.0.0.1', () => {
      pages = fixtures(canary.address().port);
      server.listen(0, '127.0.0.1', () => resolve({
        server, canary, base: `http://127.0.0.1:${server.address().port}`, canaryHits: () => canaryHits,
      }));
    });
  });
}

// ------------------------------------------------------------ running

function runHarness(script, base, pages, name) {
  const dir = path.join(work, name);
  mkdirSync(dir, { recursive: true });
  const pagesFile = path.join(dir, 'pages.json');
  writeFileSync(pagesFile, JSON.stringify(pages));
  const args = [path.join(here, script), '--base', base, '--pages', pagesFile, '--out', dir];
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    child.on('close', (code) => {
      writeFileSync(path.join(dir, 'output.txt'), out);
      const reportFile = path.join(dir, script === 'check.mjs' ? 'report.json' : 'xss-report.json');
      const report = existsSync(reportFile) ? JSON.parse(readFileSync(reportFile, 'utf8')) : null;
      resolve({ code, out, report, dir, ms: Date.now() - t0 });
    });
  });
}

let passed = 0;
let failed = 0;
function expect(label, ok, detail) {
  if (ok) {
    passed++;
    console.log(`ok    ${label}`);
  } else {
    failed++;
    console.log(`FAIL  ${label}${detail ? `\n      ${detail.replace(/\n/g, '\n      ')}` : ''}`);
  }
}
const pageOf = (res, name) => res.report?.pages.find((p) => p.name === name);
const has = (list, re) => (list || []).some((f) => re.test(f));

const srv = await startServers();
const { base } = srv;
console.log(`fixture server ${base}, output in ${work}`);

try {
  // check.mjs passes on the good pages (including a 404 page with override).
  {
    const res = await runHarness('check.mjs', base, [
      { name: 'good', path: '/good/' },
      { name: 'notfound', path: '/nope', status: 404 },
    ], 'check-good');
    expect('check.mjs exits 0 on accessible pages', res.code === 0, `exit ${res.code}\n${res.out}`);
    const g = pageOf(res, 'good');
    expect('check.mjs: good page has full keyboard cycle through all controls',
      g?.keyboard?.cycled && g.keyboard.unreached.length === 0 && g.keyboard.tabs >= 6,
      JSON.stringify(g?.keyboard));
    expect('check.mjs: screenshots written',
      ['good-phone.png', 'good-desktop.png', 'notfound-phone.png'].every((f) => existsSync(path.join(res.dir, f))));
    expect('check.mjs: per-page time recorded', g && g.ms > 0, `${g?.ms} ms`);
    if (g) console.log(`      (check.mjs took ${(res.ms / 1000).toFixed(1)}s for 2 pages incl. browser start; good page ${(g.ms / 1000).toFixed(1)}s)`);
  }

  // check.mjs fails on the bad page, for each of the reasons built into it,
  // and on a status mismatch.
  {
    const res = await runHarness('check.mjs', base, [
      { name: 'bad', path: '/bad/' },
      { name: 'wrongstatus', path: '/nope' },
    ], 'check-bad');
    expect('check.mjs exits 1 on inaccessible pages', res.code === 1, `exit ${res.code}\n${res.out}`);
    const f = pageOf(res, 'bad')?.failures || [];
    const want = {
      'axe image-alt': /^axe image-alt/,
      'axe color-contrast': /^axe color-contrast/,
      'no skip link': /first Tab stop is not a skip link/,
      'no focus indicator': /no visible focus indicator/,
      'no <main> without JS': /no-JS: no <main>/,
      'horizontal overflow at 360px': /phone: horizontal scrolling/,
    };
    for (const [what, re] of Object.entries(want)) {
      expect(`check.mjs detects: ${what}`, has(f, re), f.join('\n'));
    }
    expect('check.mjs detects: wrong HTTP status',
      has(pageOf(res, 'wrongstatus')?.failures, /HTTP status 404, expected 200/));
  }

  // check.mjs exits 2 when the server is unreachable.
  {
    const closed = http.createServer();
    await new Promise((r) => closed.listen(0, '127.0.0.1', r));
    const port = closed.address().port;
    await new Promise((r) => closed.close(r));
    const res = await runHarness('check.mjs', `http://127.0.0.1:${port}`, [{ name: 'x', path: '/' }], 'check-down');
    expect('check.mjs exits 2 when the server is down', res.code === 2 && /harness error/.test(res.out),
      `exit ${res.code}\n${res.out}`);
  }

  // xss.mjs passes on the good page and on a payload fenced by the CSP.
  {
    const res = await runHarness('xss.mjs', base, [
      { name: 'good', path: '/good/' },
      { name: 'evil-csp', path: '/evil-csp/' },
    ], 'xss-good');
    expect('xss.mjs exits 0 on clean and CSP-protected pages', res.code === 0, `exit ${res.code}\n${res.out}`);
    const g = pageOf(res, 'good');
    expect('xss.mjs: clicked the same-site link in the body (aborted, informational)',
      g?.interacted.clicked === 1 && g.linkClicks.length === 1, JSON.stringify(g));
    expect('xss.mjs: CSP blocks reported as information',
      pageOf(res, 'evil-csp')?.cspViolations.length > 0, JSON.stringify(pageOf(res, 'evil-csp')));
  }

  // xss.mjs fails on each kind of payload.
  {
    const hitsBefore = srv.canaryHits();
    const res = await runHarness('xss.mjs', base, [
      { name: 'evil-script', path: '/evil-script/' },
      { name: 'evil-hover', path: '/evil-hover/' },
      { name: 'evil-focus', path: '/evil-focus/' },
      { name: 'evil-nav', path: '/evil-nav/' },
      { name: 'evil-click', path: '/evil-click/' },
    ], 'xss-evil');
    expect('xss.mjs exits 1 on injected pages', res.code === 1, `exit ${res.code}\n${res.out}`);
    const f = (n) => pageOf(res, n)?.failures || [];
    expect('xss.mjs detects: alert() dialog', has(f('evil-script'), /^dialog alert/), f('evil-script').join('\n'));
    expect('xss.mjs detects: image from another host',
      has(f('evil-script'), /request to another host \(image\)/), f('evil-script').join('\n'));
    expect('xss.mjs detects: onmouseover payload', has(f('evil-hover'), /^dialog confirm/), f('evil-hover').join('\n'));
    expect('xss.mjs detects: onfocus payload', has(f('evil-focus'), /^dialog prompt/), f('evil-focus').join('\n'));
    expect('xss.mjs detects: navigation away (meta refresh)', has(f('evil-nav'), /^navigation away/), f('evil-nav').join('\n'));
    // A link in a message that the harness clicks is what any reader could do: it is
    // followed only up to the request (aborted; the canary below proves nothing left) and is
    // not a failure; the popup the same page opens on its own is.
    expect('xss.mjs: a clicked body link to another host is aborted, not a failure',
      !has(f('evil-click'), /request to another host \(document\)/), f('evil-click').join('\n'));
    expect('xss.mjs detects: popup', has(f('evil-click'), /^popup opened/), f('evil-click').join('\n'));
    expect('foreign requests were blocked before they were sent (canary got no hit)',
      srv.canaryHits() === hitsBefore, `canary hits: ${srv.canaryHits() - hitsBefore}`);
  }
} finally {
  srv.server.close();
  srv.canary.close();
  if (keepIdx < 0 && failed === 0) rmSync(work, { recursive: true, force: true });
  else console.log(`output kept in ${work}`);
}

console.log(`\nselftest: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
