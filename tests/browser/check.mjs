#!/usr/bin/env node
// Accessibility / keyboard / no-JS / small-screen checks of Plenary's web
// pages in headless Chromium.
//
//   node tests/browser/check.mjs --base http://127.0.0.1:PORT --pages pages.json --out DIR
//
// pages.json: [{"name": "list", "path": "/lists/x@y/"}, {"name": "gone", "path": "/nope", "status": 404}]
//
// For every page:
//   a. axe-core (WCAG 2.0/2.1/2.2 A+AA and best-practice rules), in a context
//      that bypasses the page's CSP so axe can be injected;
//   b. keyboard: Tab through the page (same tab as a.): the first stop must be
//      a working skip link, every stop must show a focus indicator, every
//      visible control must be reachable;
//   c. JavaScript disabled (real CSP): expected status, <main> has text;
//   d. full-page screenshots at 360x800 (phone) and 1280x900 (desktop) in
//      DIR, and no horizontal scrolling at 360 px.
// Writes DIR/report.json. Exit 0: all good; 1: findings; 2: harness error.
//
// Every request to anything but the server under test is aborted before it
// is sent, and listed in the report.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import {
  HarnessError, parseCommon, pageUrl, launch, guardRequests, truncate, run,
} from './common.mjs';

const USAGE =
  'node tests/browser/check.mjs --base http://127.0.0.1:PORT --pages pages.json --out DIR [--max-tabs 60]';

const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'];
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 360, height: 800 };
const NAV_TIMEOUT = 30_000;
const AXE_TIMEOUT = 120_000;

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

run(async () => {
  const opts = parseCommon(USAGE, { 'max-tabs': '60' });
  const maxTabs = Number(opts['max-tabs']);
  if (!Number.isInteger(maxTabs) || maxTabs < 1) throw new HarnessError('--max-tabs must be a positive integer');

  const browser = await launch(opts.base);
  const report = {
    base: opts.base.href,
    browser: browser.version(),
    axeVersion: require('axe-core/package.json').version,
    axeTags: AXE_TAGS,
    startedAt: new Date().toISOString(),
    pages: [],
    harnessErrors: [],
  };
  try {
    for (const page of opts.pages) {
      const result = await checkPage(browser, opts, page, maxTabs);
      report.pages.push(result);
      printPage(result);
    }
  } finally {
    await browser.close().catch(() => {});
  }

  const failed = report.pages.filter((p) => p.failures.length > 0);
  const broken = report.pages.filter((p) => p.harnessError);
  report.harnessErrors = broken.map((p) => `${p.name}: ${p.harnessError}`);
  report.ok = failed.length === 0 && broken.length === 0;
  writeFileSync(path.join(opts.out, 'report.json'), JSON.stringify(report, null, 2) + '\n');

  console.log('');
  console.log(
    `${report.pages.length} page(s): ${report.pages.length - failed.length - broken.length} passed, ` +
      `${failed.length} with findings, ${broken.length} harness error(s); report: ${path.join(opts.out, 'report.json')}`,
  );
  if (broken.length) {
    for (const e of report.harnessErrors) console.error(`harness error: ${e}`);
    return 2;
  }
  return failed.length ? 1 : 0;
});

async function checkPage(browser, opts, page, maxTabs) {
  const url = pageUrl(opts.base, page);
  const expectStatus = page.status ?? 200;
  const t0 = Date.now();
  const r = {
    name: page.name,
    path: page.path,
    url,
    expectStatus,
    failures: [], // human-readable one-liners; non-empty = page fails
    axe: null,
    keyboard: null,
    noJs: null,
    phone: null,
    screenshots: {},
    foreignRequests: [],
    harnessError: null,
    ms: 0,
  };
  const onForeign = (req) => r.foreignRequests.push({ url: req.url(), type: req.resourceType() });
  const contexts = [];
  const newContext = async (options) => {
    const ctx = await browser.newContext(options);
    contexts.push(ctx);
    ctx.setDefaultTimeout(NAV_TIMEOUT);
    await guardRequests(ctx, opts.base, onForeign);
    return ctx;
  };
  try {
    // a. + b.: JS on, CSP bypassed (the server's `default-src 'none'` would
    // otherwise refuse the injected axe script).
    {
      const ctx = await newContext({ javaScriptEnabled: true, bypassCSP: true, viewport: DESKTOP });
      const tab = await ctx.newPage();
      await gotoExpecting(tab, url, expectStatus, r, 'axe');
      r.axe = await runAxe(tab);
      for (const v of r.axe.violations) {
        r.failures.push(`axe ${v.id} (${v.impact}, ${v.nodeCount} node(s)): ${v.help}`);
      }
      r.keyboard = await keyboardCheck(tab, maxTabs);
      for (const f of r.keyboard.failures) r.failures.push(`keyboard: ${f}`);
    }

    // c.: JS off, real CSP.
    {
      const ctx = await newContext({ javaScriptEnabled: false, viewport: DESKTOP });
      const tab = await ctx.newPage();
      const status = await gotoExpecting(tab, url, expectStatus, r, 'no-JS');
      const mains = tab.locator('main');
      const count = await mains.count();
      const text = count ? (await mains.first().innerText()).trim() : '';
      r.noJs = { status, mainCount: count, mainTextLength: text.length };
      if (count === 0) r.failures.push('no-JS: no <main> element');
      else if (count > 1) r.failures.push(`no-JS: ${count} <main> elements`);
      else if (!text) r.failures.push('no-JS: <main> has no text');
    }

    // d.: screenshots, and no horizontal scrolling on a phone.
    // Chromium cannot capture a texture taller than about 16,000 device pixels: very long
    // pages (a 50-message thread) are captured down to that height.
    async function screenshot(tab, file, width) {
      const height = await tab.evaluate(() => document.documentElement.scrollHeight);
      const scale = await tab.evaluate(() => window.devicePixelRatio || 1);
      const max = Math.floor(15000 / scale);
      if (height <= max) {
        await tab.screenshot({ path: file, fullPage: true });
      } else {
        await tab.screenshot({ path: file, fullPage: true, clip: { x: 0, y: 0, width, height: max } });
      }
    }
    {
      const ctx = await newContext({
        viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2,
      });
      const tab = await ctx.newPage();
      await gotoExpecting(tab, url, expectStatus, r, 'phone');
      r.phone = await tab.evaluate(overflowProbe, PHONE.width);
      if (r.phone.scrollWidth > PHONE.width) {
        r.failures.push(
          `phone: horizontal scrolling at ${PHONE.width}px (scrollWidth ${r.phone.scrollWidth}); ` +
            `widest: ${r.phone.offenders.map((o) => `${o.selector} (right edge ${o.right})`).join(', ') || '?'}`,
        );
      }
      r.screenshots.phone = path.join(opts.out, `${page.name}-phone.png`);
      await screenshot(tab, r.screenshots.phone, PHONE.width);
    }
    {
      const ctx = await newContext({ viewport: DESKTOP });
      const tab = await ctx.newPage();
      await gotoExpecting(tab, url, expectStatus, r, 'desktop');
      r.screenshots.desktop = path.join(opts.out, `${page.name}-desktop.png`);
      await screenshot(tab, r.screenshots.desktop, DESKTOP.width);
    }
  } catch (e) {
    r.harnessError = e instanceof HarnessError ? e.message : (e?.message || String(e)).split('\n')[0];
  } finally {
    for (const ctx of contexts) await ctx.close().catch(() => {});
  }
  if (r.foreignRequests.length) {
    // Not a failure here (xss.mjs is the judge of that), but worth seeing.
    r.notes = [`${r.foreignRequests.length} request(s) to other hosts were blocked`];
  }
  r.ms = Date.now() - t0;
  return r;
}

// Navigates and checks the status; a wrong status is a finding, a failed
// navigation (server down, timeout) a harness error.
async function gotoExpecting(tab, url, expectStatus, r, phase) {
  let resp;
  try {
    resp = await tab.goto(url, { waitUntil: 'load', timeout: NAV_TIMEOUT });
  } catch (e) {
    throw new HarnessError(`${phase}: cannot load ${url}: ${e.message.split('\n')[0]}`);
  }
  if (!resp) throw new HarnessError(`${phase}: no response for ${url}`);
  const status = resp.status();
  if (status !== expectStatus) {
    const msg = `HTTP status ${status}, expected ${expectStatus}`;
    if (!r.failures.includes(msg)) r.failures.push(msg);
  }
  return status;
}

async function runAxe(tab) {
  await tab.addScriptTag({ content: AXE_SOURCE });
  const work = tab.evaluate(async (tags) => {
    // eslint-disable-next-line no-undef
    const res = await axe.run(document, { runOnly: { type: 'tag', values: tags } });
    return {
      violations: res.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        helpUrl: v.helpUrl,
        tags: v.tags,
        nodeCount: v.nodes.length,
        nodes: v.nodes.slice(0, 3).map((n) => ({
          target: n.target,
          html: n.html,
          summary: n.failureSummary,
        })),
      })),
      passes: res.passes.length,
      incomplete: res.incomplete.map((v) => ({ id: v.id, nodeCount: v.nodes.length })),
    };
  }, AXE_TAGS);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new HarnessError(`axe did not finish in ${AXE_TIMEOUT / 1000}s`)), AXE_TIMEOUT);
  });
  try {
    const res = await Promise.race([work, timeout]);
    for (const v of res.violations) for (const n of v.nodes) n.html = truncate(n.html, 300);
    return res;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- keyboard

// Runs in the page before the first Tab: records the unfocused computed style
// of everything that could take focus (nothing is focused yet, so these are
// the baseline styles), and lists the visible controls that Tab should reach.
function keyboardSetup() {
  const PROPS = [
    'outline-style', 'outline-width', 'outline-color', 'box-shadow',
    'background-color', 'background-image',
    'border-top-style', 'border-top-width', 'border-top-color',
    'border-right-style', 'border-right-width', 'border-right-color',
    'border-bottom-style', 'border-bottom-width', 'border-bottom-color',
    'border-left-style', 'border-left-width', 'border-left-color',
  ];
  const FOCUSABLE = 'a, area, button, input, select, textarea, summary, iframe, object, embed, ' +
    'details, audio, video, [tabindex], [contenteditable]';
  const CONTROLS = 'a[href], button, input, select, textarea, summary';

  const snap = (el) => {
    const cs = getComputedStyle(el);
    const o = {};
    for (const p of PROPS) o[p] = cs.getPropertyValue(p);
    return o;
  };
  const visible = (el) => {
    if (!el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })) return false;
    const rect = el.getBoundingClientRect();
    return rect.width > 0 && rect.height > 0;
  };
  // A short, readable CSS-ish path for reports.
  const describe = (el) => {
    const parts = [];
    for (let e = el; e && e.nodeType === 1 && parts.length < 4; e = e.parentElement) {
      let s = e.localName;
      if (e.id) { parts.unshift(`${s}#${e.id}`); break; }
      if (e.classList.length) s += '.' + [...e.classList].slice(0, 2).join('.');
      parts.unshift(s);
    }
    const text = (el.getAttribute('aria-label') || el.textContent || el.value || '').trim().replace(/\s+/g, ' ');
    return { selector: parts.join(' > '), text: text.slice(0, 60), href: el.getAttribute('href') };
  };

  const st = { PROPS, ids: new Map(), unfocused: new Map(), snap, visible, describe };
  window.__plenaryKbd = st;
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  for (const el of document.querySelectorAll(FOCUSABLE)) st.unfocused.set(el, snap(el));

  const idOf = (el) => {
    if (!st.ids.has(el)) st.ids.set(el, st.ids.size);
    return st.ids.get(el);
  };
  st.idOf = idOf;
  const controls = [...document.querySelectorAll(CONTROLS)].filter((el) => {
    if (el.disabled || el.closest('[inert]')) return false;
    if (el.localName === 'input' && el.type === 'hidden') return false;
    // Only a <details>' own first <summary> is interactive.
    if (el.localName === 'summary' && !(el.parentElement?.localName === 'details' &&
        el.parentElement.querySelector(':scope > summary') === el)) return false;
    return visible(el);
  });
  return controls.map((el) => ({
    id: idOf(el), ...describe(el),
    // Radio buttons: Tab visits one per group, so reaching any member counts.
    radioGroup: el.localName === 'input' && el.type === 'radio' && el.name
      ? `${el.form ? 'form' : 'doc'}:${el.name}` : null,
  }));
}

// Runs in the page after each Tab: describes the focused element and judges
// its focus indicator against the unfocused baseline.
function keyboardProbe() {
  const st = window.__plenaryKbd;
  let el = document.activeElement;
  while (el && el.shadowRoot && el.shadowRoot.activeElement) el = el.shadowRoot.activeElement;
  if (!el || el === document.body || el === document.documentElement || !document.hasFocus()) {
    return { none: true };
  }
  // Finish CSS transitions/animations so we read the end state of a focus
  // style, not its first frame.
  for (const a of document.getAnimations()) { try { a.finish(); } catch { /* infinite */ } }

  const now = st.snap(el);
  const before = st.unfocused.get(el) || null;
  const reasons = [];
  const px = (v) => parseFloat(v) || 0;
  const transparent = (c) => c === 'transparent' || /rgba\(.*,\s*0\)$/.test(c);
  if (now['outline-style'] !== 'none' && px(now['outline-width']) > 0 && !transparent(now['outline-color'])) {
    reasons.push(`outline ${now['outline-style']} ${now['outline-width']}`);
  }
  // A box-shadow the element always has is no focus indicator.
  if (now['box-shadow'] !== 'none' && (!before || before['box-shadow'] !== now['box-shadow'])) {
    reasons.push('box-shadow');
  }
  if (before) {
    const changed = st.PROPS.filter((p) => (p.startsWith('border-') || p.startsWith('background-')) &&
      before[p] !== now[p]);
    if (changed.length) reasons.push(`changed ${changed.join(', ')}`);
  }

  const rect = el.getBoundingClientRect();
  const inViewport = rect.width > 0 && rect.height > 0 && rect.bottom > 0 && rect.right > 0 &&
    rect.top < innerHeight && rect.left < innerWidth;

  const out = {
    id: st.idOf(el),
    tag: el.localName,
    ...st.describe(el),
    indicator: reasons,
    visible: inViewport && st.visible(el),
  };
  // Skip-link facts (used only for the first stop).
  const href = el.getAttribute('href');
  if (el.localName === 'a' && href && href.startsWith('#') && href.length > 1) {
    let frag = href.slice(1);
    try { frag = decodeURIComponent(frag); } catch { /* keep raw */ }
    out.skipTarget = !!(document.getElementById(frag) || document.getElementsByName(frag)[0]);
  }
  return out;
}

async function keyboardCheck(tab, maxTabs) {
  const controls = await tab.evaluate(keyboardSetup);
  const stops = [];
  const failures = [];
  let cycled = false;
  let firstId = null;
  let prevId = null;
  for (let i = 0; i < maxTabs; i++) {
    await tab.keyboard.press('Tab');
    const s = await tab.evaluate(keyboardProbe);
    if (s.none) {
      // Focus left the document (past the last stop, to the browser UI):
      // the whole tab order has been seen.
      if (stops.length > 0) { cycled = true; break; }
      continue;
    }
    if (s.id === firstId) { cycled = true; break; }
    if (s.id === prevId) {
      failures.push(`keyboard trap: Tab stays on ${s.selector}`);
      break;
    }
    if (firstId === null) firstId = s.id;
    prevId = s.id;
    stops.push(s);
  }

  if (stops.length === 0) {
    failures.push('Tab reaches nothing');
  } else {
    const first = stops[0];
    if (first.tag !== 'a' || !first.href || !first.href.startsWith('#') || first.href.length < 2) {
      failures.push(`first Tab stop is not a skip link (got ${first.selector} "${first.text}")`);
    } else if (!first.skipTarget) {
      failures.push(`skip link ${first.href} points at no element`);
    } else if (!first.visible) {
      failures.push(`skip link ${first.href} is not visible when focused`);
    }
  }
  for (const s of stops) {
    if (!s.visible) failures.push(`focused element is off-screen or invisible: ${s.selector} "${s.text}"`);
    else if (s.indicator.length === 0) failures.push(`no visible focus indicator on ${s.selector} "${s.text}"`);
  }

  const reached = new Set(stops.map((s) => s.id));
  const reachedGroups = new Set(controls.filter((c) => reached.has(c.id) && c.radioGroup).map((c) => c.radioGroup));
  const unreached = controls.filter((c) => !reached.has(c.id) && !(c.radioGroup && reachedGroups.has(c.radioGroup)));
  if (cycled) {
    for (const c of unreached) failures.push(`not reachable by Tab: ${c.selector} "${c.text}"`);
  }
  return {
    tabs: stops.length,
    cycled, // false: more than maxTabs stops, so reachability was not judged
    stops: stops.map((s) => ({ selector: s.selector, text: s.text, href: s.href, indicator: s.indicator })),
    controls: controls.length,
    unreached: unreached.map((c) => ({ selector: c.selector, text: c.text })),
    failures,
  };
}

// ---------------------------------------------------------------- layout

// Runs in the page: document width, and the elements sticking out furthest.
function overflowProbe(width) {
  const scrollWidth = document.documentElement.scrollWidth;
  const offenders = [];
  if (scrollWidth > width) {
    for (const el of document.body.querySelectorAll('*')) {
      const right = Math.round(el.getBoundingClientRect().right + scrollX);
      if (right > width) {
        let s = el.localName;
        if (el.id) s += `#${el.id}`;
        else if (el.classList.length) s += '.' + [...el.classList].slice(0, 2).join('.');
        if (el.parentElement && el.parentElement !== document.body) s = `${el.parentElement.localName} > ${s}`;
        offenders.push({ selector: s, right });
      }
    }
    offenders.sort((a, b) => b.right - a.right);
  }
  return { width, scrollWidth, offenders: offenders.slice(0, 5) };
}

// ---------------------------------------------------------------- output

function printPage(r) {
  const secs = (r.ms / 1000).toFixed(1);
  const verdict = r.harnessError ? 'ERROR' : r.failures.length ? 'FAIL' : 'ok';
  console.log(`\n== ${r.name}  ${r.path}  ${verdict}  (${secs}s)`);
  if (r.axe) {
    console.log(`   axe: ${r.axe.violations.length} violation(s), ${r.axe.passes} rule(s) passed, ` +
      `${r.axe.incomplete.length} need review`);
    for (const v of r.axe.violations) {
      console.log(`     - ${v.id} [${v.impact}] ${v.help} (${v.nodeCount} node(s))`);
      for (const n of v.nodes) console.log(`         ${JSON.stringify(n.target)}  ${truncate(n.html, 120)}`);
    }
  }
  if (r.keyboard) {
    const k = r.keyboard;
    console.log(`   keyboard: ${k.tabs} stop(s), ${k.cycled ? 'full cycle' : 'no full cycle within --max-tabs'}, ` +
      `${k.controls} visible control(s)`);
  }
  if (r.noJs) console.log(`   no-JS: status ${r.noJs.status}, <main> text ${r.noJs.mainTextLength} chars`);
  if (r.phone) console.log(`   phone: scrollWidth ${r.phone.scrollWidth} at ${r.phone.width}px`);
  for (const s of Object.values(r.screenshots)) console.log(`   screenshot: ${s}`);
  for (const n of r.notes || []) console.log(`   note: ${n}`);
  for (const f of r.failures) console.log(`   FAIL ${f}`);
  if (r.harnessError) console.log(`   ERROR ${r.harnessError}`);
}
