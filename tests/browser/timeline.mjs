// Headless-Chromium checks and benchmarks of a wgo timeline page.
//   node timeline.mjs check REPORT.html EXPECT.json SCREENSHOT.png
//   node timeline.mjs bench REPORT.html
//   node timeline.mjs shot REPORT.html SCREENSHOT.png VIOLATION-TEXT   (centres on that violation)
//   node timeline.mjs findings REPORT.html   (clicks every finding: it zooms to its span and says it)
//   node timeline.mjs steps REPORT.html NODE   (NODE's lane header, and only its, says its clock stepped)
//   node timeline.mjs readable REPORT.html   (labels never overlap at three zooms; marks at every zoom; a lost
//                                             message ends in its receiver's lane; the causal view; the URL hash)
//   node timeline.mjs shots REPORT.html DIR   (DIR/timeline-overview.png, -partition.png, -causal.png)
// EXPECT.json: { nodes, messages, events, click: { id, field, value } }
import { chromium } from "playwright-core";
import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";

const [mode, report, expectFile, shot] = process.argv.slice(2);
const url = "file://" + resolve(report);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("FAIL: " + msg); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => window.wgo && (window.wgo.ready || window.wgo.error), null, { timeout: 120000 });
  const loadMs = Date.now() - t0;
  const err = await page.evaluate(() => window.wgo.error);
  if (err) await fail("page failed to load: " + err);

  if (mode === "shot") {
    const needle = process.argv[5] || "";
    const k = await page.evaluate((needle) => {
      const W = window.wgo;
      const v = W.header.violations.find((x) => x.text.includes(needle));
      if (!v) return -1;
      const k = v.events[0];
      W.focus(k, 60e6); W.select(k);
      return k;
    }, needle);
    if (k < 0) await fail(`no violation mentions ${needle}`);
    await page.screenshot({ path: expectFile });
    console.log(`screenshot ${expectFile} centred on event ${k}`);
    await browser.close();
    process.exit(0);
  }
  if (mode === "findings") {
    const findings = await page.evaluate(() => window.wgo.header.findings);
    const items = await page.$$("#findings li");
    if (items.length !== findings.length || !findings.length) await fail(`${items.length} findings listed, the report has ${findings.length}`);
    for (let i = 0; i < findings.length; i++) {
      await items[i].click();
      const got = await page.evaluate(() => ({ view: window.wgo.view(), status: document.getElementById("status").textContent, sel: window.wgo.selected(), drop: window.wgo.selectedDrop() }));
      const f = findings[i];
      if (got.status !== f.text) await fail(`finding ${i + 1}: status says ${got.status}`);
      if (f.span && !(got.view.a <= f.span[0] && f.span[1] <= got.view.b)) await fail(`finding ${i + 1}: view ${JSON.stringify(got.view)} does not hold its span ${f.span}`);
      if (f.evidence.length && got.sel !== f.evidence[0]) await fail(`finding ${i + 1}: selected ${got.sel}, not its first evidence ${f.evidence[0]}`);
      if (!f.evidence.length && got.sel !== -1) await fail(`finding ${i + 1} has no evidence, yet event ${got.sel} stays selected`);
      // A kernel drop's finding without events selects its first drop: something to click.
      if (!f.evidence.length && (f.drops || []).length && got.drop !== f.drops[0]) await fail(`finding ${i + 1}: selected drop ${got.drop}, not its first ${f.drops[0]}`);
      if (f.kind === "kernel_drop" && !f.evidence.length && !(f.drops || []).length) await fail(`finding ${i + 1}: a kernel drop with nothing to select`);
      const hot = await page.evaluate(() => [...document.querySelectorAll("#heads .lane")].map((l, n) => (l.classList.contains("hot") ? n : -1)).filter((n) => n >= 0));
      const want = [...new Set([...f.nodes, ...(f.links || []).flat()])].sort((a, b) => a - b);
      if (JSON.stringify(hot) !== JSON.stringify(want)) await fail(`finding ${i + 1}: lanes ${hot} stand out, not its nodes ${want}`);
    }
    // Selecting a kernel drop's finding changes the selection, whatever was selected before.
    for (let i = 0; i < findings.length; i++) {
      if (findings[i].kind !== "kernel_drop") continue;
      const other = findings.findIndex((f) => f.kind !== "kernel_drop" && f.evidence.length);
      const before = other >= 0 ? (await items[other].click(), await page.evaluate(() => window.wgo.selected())) : -1;
      await items[i].click();
      const after = await page.evaluate(() => ({ sel: window.wgo.selected(), drop: window.wgo.selectedDrop(), details: document.getElementById("details").textContent }));
      if (before >= 0 && after.sel === before) await fail(`finding ${i + 1} (kernel drop) left event ${before} selected`);
      if (after.sel < 0 && after.drop < 0) await fail(`finding ${i + 1} (kernel drop) selected nothing`);
      if (!after.details.trim()) await fail(`finding ${i + 1} (kernel drop): no details shown`);
    }
    if (errors.length) await fail("page errors: " + errors.join("; "));
    console.log(`ok: ${findings.length} findings, each click zooms to its span and selects its evidence (a kernel drop's: its first drop)`);
    await browser.close();
    process.exit(0);
  }
  if (mode === "steps") {
    const node = expectFile;
    const heads = await page.evaluate(() => [...document.querySelectorAll("#heads .lane")].map((l) => ({ name: l.querySelector("b").textContent, step: l.querySelector(".step")?.textContent || "" })));
    for (const h of heads) {
      if ((h.name === node) !== h.step.startsWith("clock stepped")) await fail(`lane ${h.name}: step text ${JSON.stringify(h.step)}`);
    }
    if (errors.length) await fail("page errors: " + errors.join("; "));
    console.log(`ok: ${node}'s lane header says ${heads.find((h) => h.name === node).step}`);
    await browser.close();
    process.exit(0);
  }
  if (mode === "readable") {
    const overlaps = (ls) => {
      for (let i = 0; i < ls.length; i++) for (let j = i + 1; j < ls.length; j++) {
        const a = ls[i], b = ls[j];
        if (a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1) return [a, b];
      }
      return null;
    };
    // Three zoom levels around the busiest finding (or the middle): the whole, 1/20, 1/400.
    const zooms = [];
    for (const f of [1, 0.05, 0.05]) {
      const got = await page.evaluate((f) => {
        const W = window.wgo; if (f === 1) W.fit(); else W.zoom(f);
        return { labels: W.labels, hidden: W.labelsHidden, marks: W.marksDrawn, losses: W.lossMarks.length, drawMode: W.mode, view: W.view(), axis: 96 };
      }, f);
      const o = overlaps(got.labels);
      if (o) await fail(`labels overlap at ${JSON.stringify(got.view)}: ${JSON.stringify(o)}`);
      if (got.labels.some((l) => l.x0 < got.axis)) await fail("a label runs into the time axis");
      zooms.push({ labels: got.labels.length, hidden: got.hidden, marks: got.marks, losses: got.losses, mode: got.drawMode });
    }
    // Anomaly marks are drawn at every zoom: at the whole view too (dense or not).
    const anomalies = await page.evaluate(() => window.wgo.header.anomalies.filter((a) => a.events.length).length);
    if (anomalies && zooms[0].marks + zooms[0].losses === 0 && zooms[0].mode === "density") await fail("no anomaly marks in the overview");
    // Every finding where it happened, in the overview: stalls hatched on their lanes (and the
    // nodes that waited on them linked), partitions shaded with their cause, kernel drops and
    // a lossy link's lost messages marked.
    const where = await page.evaluate(() => {
      const W = window.wgo; W.setMode("corr"); W.fit();
      const A = W.header.anomalies, has = (k) => A.filter((a) => a.kind === k);
      return {
        shaded: W.shaded.slice(), drops: W.dropMarks.length, lossyArrows: W.lossyArrows, drawMode: W.mode,
        stalls: has("stalled_node").map((a) => ({ node: a.nodes[0], crash: a.untilEnd, waiters: a.waiters })),
        partitions: has("partition").length, kernelDrops: has("kernel_drop").length,
        lossyLost: has("lossy_link").reduce((n, a) => n + a.events.length, 0),
      };
    });
    for (const st of where.stalls) {
      if (!where.shaded.some((x) => (x.kind === "stall" || x.kind === "crash") && x.node === st.node && (x.kind === "crash") === st.crash)) await fail(`the stall of node ${st.node} is not shaded on its lane in the overview`);
      for (const w of st.waiters) if (!where.shaded.some((x) => x.kind === "waited" && x.node === w && x.on === st.node)) await fail(`node ${w} waited on node ${st.node}: not linked to it`);
    }
    const parts = where.shaded.filter((x) => x.kind === "partition");
    if (parts.length !== where.partitions || parts.some((x) => !x.cause)) await fail(`${where.partitions} partitions, ${parts.length} shaded, causes ${JSON.stringify(parts.map((x) => x.cause))}`);
    if (where.kernelDrops && !where.drops) await fail(`${where.kernelDrops} kernel drops, none marked in the overview`);
    if (where.lossyLost && where.drawMode === "density" && !where.lossyArrows) await fail("a lossy link's lost messages have no arrows in the overview");
    // Every lost message ends in its receiver's lane.
    const lost = await page.evaluate(() => {
      const W = window.wgo, a = W.header.anomalies.filter((x) => x.kind === "network_loss" && x.events.length && x.nodes.length > 1);
      const out = [];
      for (const x of a.slice(0, 20)) {
        W.focus(x.events[0], 5e6);
        for (const m of W.lossMarks) out.push({ lane: m.lane, drawnIn: W.laneOfX(m.x) });
      }
      return { out, total: a.length };
    });
    if (lost.out.some((m) => m.lane !== m.drawnIn)) await fail(`a lost message ends outside its receiver's lane: ${JSON.stringify(lost.out.find((m) => m.lane !== m.drawnIn))}`);
    if (lost.total && !lost.out.length) await fail("no lost message drawn when focused on one");
    // The causal view: every receive below its send.
    const causal = await page.evaluate(() => { const W = window.wgo; W.setMode("causal"); W.fit(); const bad = W.receivesAboveSends(); const ok = W.labels; const breaks = (W.breakLabels || []).slice(); W.setMode("corr"); return { bad, labels: ok.length, breaks }; });
    if (causal.bad) await fail(`${causal.bad} receives not below their sends in the causal view`);
    // The breaks' labels ("≈ 20 ms with nothing happening") never overlap, fitted or not.
    for (let i = 1; i < causal.breaks.length; i++) if (causal.breaks[i] - causal.breaks[i - 1] < 16) await fail(`break labels at y ${causal.breaks[i - 1]} and ${causal.breaks[i]} overlap`);
    // The causal view named by a URL without v is fitted to everything: it fills the canvas.
    {
      const pc = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
      await pc.goto(url + "#m=causal");
      await pc.waitForFunction(() => window.wgo && (window.wgo.ready || window.wgo.error), null, { timeout: 120000 });
      const e = await pc.evaluate(() => window.wgo.extent());
      if (!(e.first >= 0 && e.last <= e.height && e.last - e.first >= 0.9 * e.height)) await fail(`#m=causal draws only y ${e.first} to ${e.last} of ${e.height} px`);
      const breaks = await pc.evaluate(() => window.wgo.breakLabels || []);
      for (let i = 1; i < breaks.length; i++) if (breaks[i] - breaks[i - 1] < 16) await fail(`break labels at y ${breaks[i - 1]} and ${breaks[i]} overlap under #m=causal`);
      await pc.close();
    }
    // The URL hash round-trips: a new page opened at it shows the same view, mode, filter and selection.
    const state = await page.evaluate(() => {
      const W = window.wgo; W.fit(); W.zoom(0.3); W.pan(0.1);
      const k = Math.floor(W.events / 2); W.select(k); W.setNode(W.header.nodes.length - 1, false);
      return { hash: W.hash(), view: W.view(), sel: W.selected(), mode: W.viewMode(), shown: W.shownCount() };
    });
    const page2 = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    await page2.goto(url + state.hash);
    await page2.waitForFunction(() => window.wgo && (window.wgo.ready || window.wgo.error), null, { timeout: 120000 });
    const again = await page2.evaluate(() => { const W = window.wgo; return { hash: W.hash(), view: W.view(), sel: W.selected(), mode: W.viewMode(), shown: W.shownCount() }; });
    const near = (x, y) => Math.abs(x - y) <= 1;
    if (!(near(again.view.a, state.view.a) && near(again.view.b, state.view.b) && again.sel === state.sel && again.mode === state.mode && again.shown === state.shown)) {
      await fail(`the URL hash did not round-trip: ${JSON.stringify(state)} became ${JSON.stringify(again)}`);
    }
    // In the causal view, v counts rows: a URL with v=0,40 shows the first 40 steps.
    const page3 = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    await page3.goto(url + "#m=causal&v=0,40");
    await page3.waitForFunction(() => window.wgo && (window.wgo.ready || window.wgo.error), null, { timeout: 120000 });
    const rows = await page3.evaluate(() => { const W = window.wgo; return { mode: W.viewMode(), view: W.view(), hash: W.hash(), drawn: W.labels.length }; });
    if (rows.mode !== "causal" || rows.view.a !== 0 || rows.view.b !== 40e6 || !rows.hash.includes("v=0%2C40") || !rows.drawn) {
      await fail(`#m=causal&v=0,40 should show the first 40 rows: ${JSON.stringify(rows)}`);
    }
    // And rows far down show what they name: the events drawn are those of those steps.
    const page4 = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const levels = await page.evaluate(() => { const W = window.wgo; W.setMode("causal"); W.fit(); const v = W.view(); W.setMode("corr"); return Math.floor(v.b / 1e6); });
    const a = Math.floor(levels * 0.6), b = a + 100;
    await page4.goto(url + `#m=causal&v=${a},${b}`);
    await page4.waitForFunction(() => window.wgo && (window.wgo.ready || window.wgo.error), null, { timeout: 120000 });
    const far = await page4.evaluate(() => { const W = window.wgo; return { view: W.view(), drawn: W.eventsDrawn, status: document.getElementById("status").textContent }; });
    if (far.view.a !== a * 1e6 || far.view.b !== b * 1e6 || !far.drawn || !far.status.includes("100 steps shown")) await fail(`#m=causal&v=${a},${b} should show steps ${a} to ${b}: ${JSON.stringify(far)}`);
    await page4.close();
    if (errors.length) await fail("page errors: " + errors.join("; "));
    console.log(`ok: labels ${zooms.map((z) => `${z.labels} drawn/${z.hidden} hidden`).join(", ")} at three zooms, none overlapping; ${zooms[0].marks + zooms[0].losses} marks in the overview; ${lost.out.length} lost messages in their receivers' lanes; causal view ordered; hash ${state.hash.length} chars round-trips; overview (${where.drawMode}): ${where.stalls.length} stalls shaded (${where.stalls.filter((x) => x.crash).length} to the end), ${where.shaded.filter((x) => x.kind === "waited").length} waiters linked, ${parts.length} partitions with their cause, ${where.drops} kernel-drop marks, ${where.lossyArrows} lossy arrows`);
    await browser.close();
    process.exit(0);
  }
  if (mode === "shots") {
    const dir = expectFile;
    const shotOf = async (name) => { await page.screenshot({ path: `${dir}/timeline-${name}.png` }); console.log(`${dir}/timeline-${name}.png`); };
    await page.evaluate(() => window.wgo.fit());
    await shotOf("overview");
    const part = await page.evaluate(() => { const W = window.wgo, i = W.header.findings.findIndex((f) => f.kind === "partition"); if (i >= 0) W.showFinding(i); return i; });
    if (part < 0) await fail("no partition among the findings");
    await shotOf("partition");
    await page.evaluate(() => {
      const W = window.wgo, f = W.header.findings.find((f) => f.kind === "violation" && f.evidence.length) || W.header.findings.find((f) => f.evidence.length);
      if (f) W.select(f.evidence[0]);
      document.getElementById("mode-causal").click();
    });
    await shotOf("causal");
    await browser.close();
    process.exit(0);
  }
  if (mode === "bench") {
    // Frame times of pan and zoom steps over the whole data set.
    const frames = await page.evaluate(() => {
      const W = window.wgo; W.frames.length = 0;
      W.fit(); for (let i = 0; i < 5; i++) W.pan(0.1);
      for (let i = 0; i < 5; i++) W.zoom(0.5);
      for (let i = 0; i < 5; i++) W.pan(-0.2);
      for (let i = 0; i < 5; i++) W.zoom(2);
      return W.frames.slice();
    });
    frames.sort((a, b) => a - b);
    const info = await page.evaluate(() => ({ events: window.wgo.events, decodeMs: window.wgo.decodeMs }));
    console.log(JSON.stringify({ events: info.events, bytes: statSync(report).size, loadMs, decodeMs: Math.round(info.decodeMs), frameMedianMs: +frames[frames.length >> 1].toFixed(1), frameMaxMs: +frames[frames.length - 1].toFixed(1) }));
    await browser.close();
    process.exit(0);
  }

  const expect = JSON.parse(readFileSync(expectFile, "utf8"));
  const lanes = await page.evaluate(() => window.wgo.lanes());
  if (lanes !== expect.nodes) await fail(`lanes ${lanes}, nodes ${expect.nodes}`);
  const drawn = await page.evaluate(() => { window.wgo.fit(); return { arrows: window.wgo.arrowsDrawn, events: window.wgo.eventsDrawn, mode: window.wgo.mode }; });
  if (drawn.mode !== "detail") await fail(`expected every event drawn in detail at full view, got ${drawn.mode}`);
  if (drawn.arrows !== expect.messages) await fail(`arrows ${drawn.arrows}, matched messages ${expect.messages}`);
  if (drawn.events !== expect.events) await fail(`events drawn ${drawn.events}, events ${expect.events}`);

  // Click an event: its decoded fields and hex dump show.
  const k = await page.evaluate((id) => window.wgo.indexOfId(id), expect.click.id);
  await page.evaluate((k) => window.wgo.focus(k, 2e5), k);
  const at = await page.evaluate((k) => window.wgo.screenOf(k), k);
  await page.mouse.click(at.x, at.y);
  const selected = await page.evaluate(() => window.wgo.selected());
  if (selected !== k) await fail(`clicked event ${k} at ${at.x},${at.y}, selected ${selected}`);
  const details = await page.textContent("#details");
  if (!details.includes(expect.click.field) || !details.includes(String(expect.click.value))) await fail(`details lack field ${expect.click.field}=${expect.click.value}: ${details}`);
  const hex = await page.textContent("#details pre.hex");
  if (!/^0000  [0-9a-f]{2} /.test(hex)) await fail(`no hex dump: ${hex}`);

  // The node filter hides that node's events, and only those.
  const before = await page.evaluate(() => window.wgo.shownCount());
  await page.click('[data-node="0"]');
  const after = await page.evaluate(() => window.wgo.shownCount());
  if (before - after !== expect.node0_events) await fail(`hiding node 0 hid ${before - after} events, it has ${expect.node0_events}`);
  await page.click('[data-node="0"]');
  // The type filter shows only that type.
  await page.selectOption("#type", "0");
  const onlyType = await page.evaluate(() => window.wgo.shownCount());
  if (onlyType !== expect.type0_events) await fail(`type filter shows ${onlyType}, expected ${expect.type0_events}`);
  await page.selectOption("#type", "-1");

  if (errors.length) await fail("page errors: " + errors.join("; "));
  const foreign = requests.filter((u) => u !== url);
  if (foreign.length) await fail("the page made network requests: " + foreign.join(", "));

  await page.evaluate((k) => { window.wgo.focus(k, 4e6); }, k);
  await page.screenshot({ path: shot });
  console.log(`ok: ${lanes} lanes, ${drawn.arrows} arrows, click → fields + hex, filters, no requests; loaded in ${loadMs} ms; screenshot ${shot}`);
  await browser.close();
} catch (e) {
  await fail(String(e && e.stack || e));
}
