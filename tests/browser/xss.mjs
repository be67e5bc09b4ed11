#!/usr/bin/env node
// Looks for signs of script or markup injection in Plenary's web pages, with
// JavaScript on and the server's real headers (no CSP bypass).
//
//   node tests/browser/xss.mjs --base http://127.0.0.1:PORT --pages pages.json --out DIR
//        [--body-selector '.msg-body, .body'] [--settle-ms 500]
//
// For every page it loads the page, then focuses and hovers every element and
// clicks every <a>/<button> inside the message body container(s), and records
//   - dialogs (alert/confirm/prompt/beforeunload; dismissed),
//   - popups (window.open, target=_blank),
//   - requests to any other host:port than --base (aborted before sending),
//   - main-frame navigations away from the page's own URL,
//   - CSP violations reported on the console (informational only),
//   - uncaught page errors (informational only).
// Fails (exit 1) on any dialog, popup, foreign request or navigation. A click
// we made ourselves on a same-site link in the body is aborted and listed as
// informational; a click that would leave the site is a foreign request.
// Writes DIR/xss-report.json. Exit 2 on harness errors.

import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  HarnessError, parseCommon, pageUrl, launch, isOwn, withoutHash, truncate, run,
} from './common.mjs';

const USAGE =
  "node tests/browser/xss.mjs --base http://127.0.0.1:PORT --pages pages.json --out DIR " +
  "[--body-selector '.msg-body, .body'] [--settle-ms 500]";
const NAV_TIMEOUT = 30_000;

run(async () => {
  const opts = parseCommon(USAGE, { 'body-selector': '.msg-body, .body', 'settle-ms': '500' });
  const settleMs = Number(opts['settle-ms']);
  if (!Number.isFinite(settleMs) || settleMs < 0) throw new HarnessError('--settle-ms must be a number >= 0');

  const browser = await launch(opts.base);
  const report = {
    base: opts.base.href,
    browser: browser.version(),
    bodySelector: opts['body-selector'],
    startedAt: new Date().toISOString(),
    pages: [],
  };
  try {
    for (const page of opts.pages) {
      const r = await probePage(browser, opts, page, settleMs);
      report.pages.push(r);
      printPage(r);
    }
  } finally {
    await browser.close().catch(() => {});
  }

  const failed = report.pages.filter((p) => p.failures.length > 0);
  const broken = report.pages.filter((p) => p.harnessError);
  report.ok = failed.length === 0 && broken.length === 0;
  writeFileSync(path.join(opts.out, 'xss-report.json'), JSON.stringify(report, null, 2) + '\n');
  console.log('');
  console.log(
    `${report.pages.length} page(s): ${report.pages.length - failed.length - broken.length} clean, ` +
      `${failed.length} with findings, ${broken.length} harness error(s); ` +
      `report: ${path.join(opts.out, 'xss-report.json')}`,
  );
  if (broken.length) {
    for (const p of broken) console.error(`harness error: ${p.name}: ${p.harnessError}`);
    return 2;
  }
  return failed.length ? 1 : 0;
});

async function probePage(browser, opts, page, settleMs) {
  const url = pageUrl(opts.base, page);
  const home = withoutHash(url);
  const expectStatus = page.status ?? 200;
  const t0 = Date.now();
  const r = {
    name: page.name,
    path: page.path,
    url,
    status: null,
    dialogs: [],
    popups: [],
    foreignRequests: [],
    navigations: [],
    // informational
    linkClicks: [],
    unsafeLinks: [],
    reloads: [],
    cspViolations: [],
    pageErrors: [],
    interacted: { focusedHovered: 0, clicked: 0 },
    failures: [],
    harnessError: null,
    ms: 0,
  };

  // The <a>/<button> we are clicking right now, if any: a navigation to its
  // own same-site href is ours, not the page's doing.
  let clicking = null;
  // Every href the harness has clicked on this page. A navigation request can
  // reach the router after the click's wait is over on a slow machine, so a
  // request is matched against all of them, not only the current click.
  const clickedHrefs = new Set();
  const ourClick = (reqUrl) => (clicking && clicking.href && withoutHash(clicking.href) === withoutHash(reqUrl)) ||
    clickedHrefs.has(withoutHash(reqUrl));
  let loaded = false;
  let tab = null;

  const context = await browser.newContext({ javaScriptEnabled: true, viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(NAV_TIMEOUT);
  try {
    await context.route('**/*', async (route) => {
      const req = route.request();
      const reqUrl = req.url();
      // A link in a message that the harness itself clicked, followed to where its href
      // says: what any reader could do, not something the page did on its own. Recorded,
      // aborted, not a failure. Anything else that leaves the site is.
      const followedLink = req.isNavigationRequest() && ourClick(reqUrl) && /^https?:/i.test(reqUrl);
      if (!isOwn(reqUrl, opts.base) && followedLink) {
        r.linkClicks.push({ selector: clicking?.selector ?? '(earlier click)', url: truncate(reqUrl, 300) });
        return route.abort('aborted').catch(() => {});
      }
      if (!isOwn(reqUrl, opts.base)) {
        r.foreignRequests.push({
          url: truncate(reqUrl, 300), type: req.resourceType(), duringClick: clicking?.selector ?? null,
        });
        // 'aborted' (not 'blockedbyclient') for navigations: Chromium then
        // stays on the page instead of committing an error page.
        return route.abort(req.isNavigationRequest() ? 'aborted' : 'blockedbyclient').catch(() => {});
      }
      // After load, the main frame must not leave the page. Abort such
      // navigations (reloads too) so we stay put and can go on probing.
      if (loaded && req.isNavigationRequest() && tab && frameOf(req) === tab.mainFrame()) {
        if (withoutHash(reqUrl) === home) {
          r.reloads.push({ duringClick: clicking?.selector ?? null });
        } else if (ourClick(reqUrl)) {
          r.linkClicks.push({ selector: clicking?.selector ?? '(earlier click)', url: reqUrl });
        } else {
          r.navigations.push({ to: truncate(reqUrl, 300), how: 'request', duringClick: clicking?.selector ?? null });
        }
        return route.abort('aborted').catch(() => {});
      }
      return route.continue().catch(() => {});
    });

    tab = await context.newPage();
    tab.on('dialog', (d) => {
      r.dialogs.push({ type: d.type(), message: truncate(d.message(), 200), duringClick: clicking?.selector ?? null });
      d.dismiss().catch(() => {});
    });
    tab.on('popup', (p) => {
      r.popups.push({ url: truncate(p.url(), 300), duringClick: clicking?.selector ?? null });
      p.close().catch(() => {});
    });
    tab.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) {
        r.cspViolations.push(truncate(m.text(), 300));
      }
    });
    tab.on('pageerror', (e) => r.pageErrors.push(truncate(e.message, 200)));
    // Same-document changes (history.pushState, #fragments) never reach the
    // router, so also watch committed main-frame navigations.
    tab.on('framenavigated', (f) => {
      if (loaded && f === tab.mainFrame() && withoutHash(f.url()) !== home) {
        r.navigations.push({ to: truncate(f.url(), 300), how: 'framenavigated', duringClick: clicking?.selector ?? null });
      }
    });

    let resp;
    try {
      resp = await tab.goto(url, { waitUntil: 'load', timeout: NAV_TIMEOUT });
    } catch (e) {
      throw new HarnessError(`cannot load ${url}: ${e.message.split('\n')[0]}`);
    }
    if (!resp) throw new HarnessError(`no response for ${url}`);
    r.status = resp.status();
    if (r.status !== expectStatus) r.failures.push(`HTTP status ${r.status}, expected ${expectStatus}`);
    // A script that redirected during parsing would leave us elsewhere.
    if (withoutHash(tab.url()) !== home) {
      r.navigations.push({ to: tab.url(), how: 'during load', duringClick: null });
    }
    loaded = true;
    await tab.waitForTimeout(settleMs); // timers, meta refresh

    // Focus and hover every element (onfocus / onmouseover payloads).
    const count = await tab.evaluate(() => {
      window.__plenaryXss = [...document.querySelectorAll('body, body *')];
      return window.__plenaryXss.length;
    });
    for (let i = 0; i < count; i++) {
      const point = await tab.evaluate((i) => {
        const el = window.__plenaryXss?.[i];
        if (!el || !el.isConnected) return null;
        el.scrollIntoView({ block: 'center', inline: 'center' });
        if (typeof el.focus === 'function') el.focus({ preventScroll: true });
        const rect = el.getBoundingClientRect();
        if (rect.width <= 0 || rect.height <= 0) return null;
        return { x: rect.left + rect.width / 2, y: rect.top + rect.height / 2 };
      }, i).catch(() => null);
      r.interacted.focusedHovered++;
      if (point) await tab.mouse.move(point.x, point.y).catch(() => {});
    }
    await tab.waitForTimeout(Math.min(settleMs, 200));

    // Click every link and button in the message body/bodies.
    const targets = await tab.evaluate((sel) => {
      const list = [];
      for (const box of document.querySelectorAll(sel)) {
        for (const el of box.querySelectorAll('a, button')) list.push(el);
      }
      window.__plenaryXssClick = list;
      return list.map((el) => ({
        selector: `${el.localName}${el.id ? '#' + el.id : ''}` +
          (el.textContent.trim() ? ` "${el.textContent.trim().slice(0, 40)}"` : ''),
        href: el.localName === 'a' && el.href ? String(el.href) : null,
      }));
    }, opts['body-selector']);
    // Links a message can carry may only lead to web pages or mail addresses.
    for (const t of targets) {
      if (t.href && !/^(https?:|mailto:)/i.test(t.href)) r.unsafeLinks.push({ selector: t.selector, href: truncate(t.href, 200) });
    }
    for (let i = 0; i < targets.length; i++) {
      clicking = targets[i];
      if (clicking.href) clickedHrefs.add(withoutHash(clicking.href));
      const point = await tab.evaluate((i) => {
        const el = window.__plenaryXssClick?.[i];
        if (!el || !el.isConnected) return null;
        el.scrollIntoView({ block: 'center', inline: 'center' });
        const rect = el.getBoundingClientRect();
        if (rect.width <= 0 || rect.height <= 0) return null;
        return { x: rect.left + rect.width / 2, y: rect.top + rect.height / 2 };
      }, i).catch(() => null);
      if (point) {
        await tab.mouse.click(point.x, point.y).catch(() => {});
      } else {
        // Not rendered (e.g. zero-size): click it from script instead.
        await tab.evaluate((i) => window.__plenaryXssClick?.[i]?.click(), i).catch(() => {});
      }
      r.interacted.clicked++;
      await tab.waitForTimeout(100);
      clicking = null;
    }
    await tab.waitForTimeout(Math.min(settleMs, 200));
  } catch (e) {
    r.harnessError = e instanceof HarnessError ? e.message : (e?.message || String(e)).split('\n')[0];
  } finally {
    await context.close().catch(() => {});
  }

  for (const d of r.dialogs) r.failures.push(`dialog ${d.type}: ${JSON.stringify(d.message)}`);
  for (const p of r.popups) r.failures.push(`popup opened: ${p.url}`);
  for (const q of r.foreignRequests) r.failures.push(`request to another host (${q.type}): ${q.url}`);
  for (const n of r.navigations) r.failures.push(`navigation away (${n.how}) to ${n.to}`);
  for (const u of r.unsafeLinks) r.failures.push(`link with an unsafe scheme: ${u.selector} -> ${u.href}`);
  r.ms = Date.now() - t0;
  return r;
}

// A popup's first navigation request has no frame yet (Playwright throws).
function frameOf(req) {
  try {
    return req.frame();
  } catch {
    return null;
  }
}

function printPage(r) {
  const verdict = r.harnessError ? 'ERROR' : r.failures.length ? 'FAIL' : 'clean';
  console.log(`\n== ${r.name}  ${r.path}  ${verdict}  (${(r.ms / 1000).toFixed(1)}s)`);
  console.log(`   status ${r.status}; focused/hovered ${r.interacted.focusedHovered} element(s), ` +
    `clicked ${r.interacted.clicked} in the body`);
  for (const c of r.cspViolations) console.log(`   info: CSP blocked: ${truncate(c, 160)}`);
  for (const e of r.pageErrors) console.log(`   info: page error: ${e}`);
  for (const l of r.linkClicks) console.log(`   info: link clicked, navigation aborted: ${l.url}`);
  for (const l of r.reloads) console.log(`   info: reload of the page aborted${l.duringClick ? ` (clicked ${l.duringClick})` : ''}`);
  for (const f of r.failures) console.log(`   FAIL ${f}`);
  if (r.harnessError) console.log(`   ERROR ${r.harnessError}`);
}
