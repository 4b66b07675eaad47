// Draws libleak's report from the JSON document embedded in the page (the same document
// `libleak report --json` prints), so that every number on the page is the JSON's. Data only
// ever reaches the page as text nodes: nothing from the report is parsed as markup.
'use strict';

const DATA = JSON.parse(document.getElementById('libleak-data').textContent);
const ROOT = document.getElementById('report');
const TIP = document.getElementById('tip');

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// As the text report writes numbers: 10,240.
function thousands(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

function amount(bytes, blocks) {
  return `${thousands(bytes)} bytes in ${thousands(blocks)} ${blocks === 1 ? 'block' : 'blocks'}`;
}

function basename(path) {
  return path ? path.slice(path.lastIndexOf('/') + 1) : path;
}

function place(f) {
  if (!f) return '';
  const fn = f.function || '??';
  if (f.file && f.line != null) return `${fn} at ${f.file}:${f.line}`;
  if (f.file) return `${fn} in ${f.file}`;
  return fn;
}

function frameText(f) {
  let text = place(f);
  if (f.module) text += ` [${basename(f.module)}]`;
  if (f.inlined) text += ' (inlined)';
  if (f.build_id_mismatch) text += ' (file on disk has another build-id)';
  return text;
}

function showTip(event, text) {
  TIP.textContent = text;
  TIP.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - TIP.offsetWidth - 8);
  TIP.style.left = `${Math.max(4, x)}px`;
  TIP.style.top = `${event.clientY + 16}px`;
}

function hideTip() {
  TIP.hidden = true;
}

// `index`: the process's place on the page (two traces may share a pid).
function processHeader(doc, index) {
  const p = doc.process;
  const out = [el('h2', { id: `process-${index}` }, `${p.program} (pid ${p.pid})`), el('p', { class: 'mono' }, p.argv.join(' '))];
  if (doc.trace) out.push(el('p', { class: 'muted' }, `trace: ${doc.trace}`));
  if (doc.fork) out.push(el('p', null, `forked from pid ${doc.fork.parent_pid}: inherited ${thousands(doc.fork.inherited_blocks)} blocks, ${thousands(doc.fork.inherited_bytes)} bytes`));
  if (doc.complete) {
    const status = doc.exit && doc.exit.status != null ? ` with status ${doc.exit.status}` : '';
    out.push(el('p', null, `trace complete: the process exited normally${status}`));
  } else {
    out.push(el('p', { class: 'warn' }, `trace INCOMPLETE: ${doc.incomplete_reason || ''}`));
  }
  for (const d of doc.damage || []) out.push(el('p', { class: 'warn' }, `trace DAMAGED: ${thousands(d.bytes)} bytes at byte ${thousands(d.offset)} skipped`));
  return out;
}

// ---- the leak report -------------------------------------------------------------------

function summaryTable(s) {
  const rows = [
    ['definitely lost', s.definitely_lost], ['indirectly lost', s.indirectly_lost],
    ['unclassified', s.unclassified], ['possibly lost', s.possibly_lost], ['reachable', s.reachable],
    ['awaiting garbage collection', s.collectable || { bytes: 0, blocks: 0 }],
    ['runtime leftovers', s.runtime_leftovers],
    ['made once by imports', s.import_once || { bytes: 0, blocks: 0 }], ['suppressed', s.suppressed],
    ['inherited, not judged', s.inherited_unjudged],
    ['released by exec', s.released_by_exec || { bytes: 0, blocks: 0 }],
  ];
  return el('table', { class: 'summary' },
    el('tr', null, el('th', null, 'class'), el('th', { class: 'num' }, 'bytes'), el('th', { class: 'num' }, 'blocks')),
    rows.map(([name, t]) => el('tr', null, el('td', null, name), el('td', { class: 'num' }, thousands(t.bytes)), el('td', { class: 'num' }, thousands(t.blocks)))));
}

// A flame node's colour: Python frames blue, native ones warm, varied by name.
function colour(frame) {
  let h = 0;
  for (const c of frame.function || '') h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return frame.kind === 'python' ? `hsl(${200 + (h % 30)}, 60%, ${72 + (h % 10)}%)` : `hsl(${18 + (h % 34)}, 85%, ${64 + (h % 12)}%)`;
}

// The stacks of the listed rows merged into one tree, outermost frame at the top.
function flameTree(leaks) {
  const root = { label: 'all', frame: null, bytes: 0, blocks: 0, children: new Map() };
  for (const leak of leaks) {
    for (const stack of leak.stacks.concat(...(leak.parts || []).map((p) => p.stacks))) {
      let node = root;
      node.bytes += stack.bytes;
      node.blocks += stack.blocks;
      const frames = stack.frames.length ? stack.frames.slice().reverse() : [{ kind: 'native', function: '[no stack recorded]' }];
      for (const f of frames) {
        const label = frameText(f);
        let child = node.children.get(label);
        if (!child) {
          child = { label, frame: f, bytes: 0, blocks: 0, children: new Map(), parent: node };
          node.children.set(label, child);
        }
        child.bytes += stack.bytes;
        child.blocks += stack.blocks;
        node = child;
      }
    }
  }
  return root;
}

const ROW = 20;

function drawFlame(box, info, top, whole) {
  box.textContent = '';
  let depth = 0;
  const place = (node, level, left, width) => {
    depth = Math.max(depth, level + 1);
    const share = whole.bytes ? (100 * node.bytes / whole.bytes).toFixed(1) : '0';
    const f = node.frame;
    const detail = f
      ? `${f.function || '??'}\n${f.file ? `${f.file}${f.line != null ? `:${f.line}` : ''}` : (f.module || '')}\n${amount(node.bytes, node.blocks)} (${share}% of the leaked bytes listed)`
      : `all listed leaks: ${amount(node.bytes, node.blocks)}`;
    const bar = el('div', {
      class: 'fr',
      style: `left:${left}%;width:${width}%;top:${level * ROW}px;background:${f ? colour(f) : '#c9ced6'}`,
      onmousemove: (e) => showTip(e, detail),
      onmouseleave: hideTip,
      onclick: () => {
        info.textContent = detail.replace(/\n/g, ' — ');
        drawFlame(box, info, node === top && node.parent ? node.parent : node, whole);
      },
    }, f ? (f.function || '??') : 'all');
    box.append(bar);
    let x = left;
    const children = [...node.children.values()].sort((a, b) => b.bytes - a.bytes);
    for (const child of children) {
      const w = node.bytes ? width * child.bytes / node.bytes : 0;
      if (w >= 0.05) place(child, level + 1, x, w);
      x += w;
    }
  };
  place(top, 0, 0, 100);
  box.style.height = `${depth * ROW + 2}px`;
}

function flameGraph(leaks) {
  const whole = flameTree(leaks);
  const info = el('div', { class: 'flame-info muted' }, 'Hover a frame for its function, file:line, bytes and blocks; click to zoom into it (click the top bar to zoom out).');
  const box = el('div', { class: 'flame' });
  drawFlame(box, info, whole, whole);
  return [box, info];
}

function stackBlock(stack, title) {
  return el('div', { class: 'stack' },
    el('div', null, title),
    stack.frames.length
      ? stack.frames.map((f) => el('div', { class: `frame ${f.kind}` }, frameText(f)))
      : el('div', { class: 'frame' }, '(no stack recorded)'));
}

function leakDetail(leak) {
  const o = leak.owner;
  const classes = Object.entries(leak.classes).map(([name, t]) => `${name}: ${amount(t.bytes, t.blocks)}`).join('; ');
  return [
    el('p', null, `allocator: ${leak.allocator}; ${classes}`),
    o.function ? el('p', null, `owner: ${place(o)}${o.module ? ` [${basename(o.module)}]` : ''}`) : null,
    o.python ? el('p', null, `called from Python: ${place(o.python)}`) : null,
    leak.also_in ? el('p', null, `also in forked processes ${leak.also_in.join(', ')}`) : null,
    leak.inherited ? el('p', null, 'inherited from the parent at fork') : null,
    objectsLine(leak.objects, 'objects'),
    leakedReferences(leak.leaked_references),
    leak.stacks.map((s, i) => stackBlock(s, `stack ${i + 1}: ${amount(s.bytes, s.blocks)}`)),
    structure(leak),
  ];
}

// `3 × list (168 bytes), 1 × dict (64 bytes)`.
function objectsLine(objects, label) {
  if (!objects || !objects.length) return null;
  return el('p', { class: 'objects' },
    `${label}: ${objects.map((o) => `${thousands(o.blocks)} × ${o.type} (${thousands(o.bytes)} bytes)`).join(', ')}`);
}

function leakedReferences(r) {
  if (!r || !r.objects) return null;
  const noun = (n) => (n === 1 ? 'reference' : 'references');
  return el('p', { class: 'references' },
    `${r.objects === 1 ? '' : `${thousands(r.objects)} objects: `}refcount ${thousands(r.refcount)}, ` +
    `${thousands(r.found)} ${noun(r.found)} found: ${thousands(r.leaked)} leaked ${noun(r.leaked)}`);
}

// What the leaked roots keep alive that was allocated elsewhere: one line per site.
function structure(leak) {
  if (!leak.parts || !leak.parts.length) return null;
  const kept = { bytes: leak.bytes - leak.roots.bytes, blocks: leak.blocks - leak.roots.blocks };
  return el('div', { class: 'structure' },
    el('p', null, `the leaked ${leak.roots.blocks === 1 ? 'block' : 'blocks'} (${amount(leak.roots.bytes, leak.roots.blocks)}) ` +
      `${leak.roots.blocks === 1 ? 'keeps' : 'keep'} ${amount(kept.bytes, kept.blocks)} allocated elsewhere:`),
    el('table', { class: 'parts' }, el('tr', null,
      el('th', { class: 'num' }, 'bytes'), el('th', { class: 'num' }, 'blocks'), el('th', null, 'kind'),
      el('th', null, 'made by'), el('th', null, 'objects')),
    leak.parts.map((part) => {
      const o = part.owner;
      const site = o.function ? `${place(o)}${o.python ? `, called from ${place(o.python)}` : ''}`
        : o.python ? place(o.python) : frameText(part.frames[0] || { function: '?' });
      return el('tr', { class: 'part' },
        el('td', { class: 'num' }, thousands(part.bytes)), el('td', { class: 'num' }, thousands(part.blocks)),
        el('td', null, part.kind), el('td', { class: 'frames' }, site),
        el('td', null, part.objects.map((x) => `${thousands(x.blocks)} × ${x.type}`).join(', ')));
    })));
}

function leakTable(leaks) {
  const table = el('table', { class: 'leaks' }, el('tr', null,
    el('th', null, '#'), el('th', null, 'kind'), el('th', { class: 'num' }, 'bytes'), el('th', { class: 'num' }, 'blocks'),
    el('th', null, 'owner'), el('th', null, 'Python line')));
  leaks.forEach((leak, i) => {
    const o = leak.owner;
    const owner = o.function ? place(o) : frameText(leak.frames[0] || { function: '(no stack recorded)' });
    const detail = el('tr', { class: 'detail', hidden: '' }, el('td', { colspan: 6 }, leakDetail(leak)));
    const row = el('tr', {
      class: 'row',
      onclick: () => { detail.hidden = !detail.hidden; row.classList.toggle('open', !detail.hidden); },
    },
    el('td', null, i + 1), el('td', null, el('span', { class: `kind ${leak.kind}` }, leak.kind)),
    el('td', { class: 'num bytes' }, thousands(leak.bytes)), el('td', { class: 'num' }, thousands(leak.blocks)),
    el('td', { class: 'frames' }, owner), el('td', { class: 'frames' }, o.python ? place(o.python) : ''));
    // The largest row starts open: its stack is what a reader looks for first; so does the
    // largest row holding a structure, whose parts say what its leak keeps alive.
    if (i === 0 || (leak.parts && leak.parts.length && i === leaks.findIndex((l) => l.parts && l.parts.length))) row.click();
    table.append(row, detail);
  });
  return table;
}

function leakedTotal(s) {
  return {
    bytes: s.definitely_lost.bytes + s.indirectly_lost.bytes + s.unclassified.bytes,
    blocks: s.definitely_lost.blocks + s.indirectly_lost.blocks + s.unclassified.blocks,
  };
}

function leakSection(doc, index) {
  const s = doc.summary;
  const leaked = leakedTotal(s);
  const about = processHeader(doc, index);
  const heading = about.shift();
  const t = doc.totals;
  about.push(el('p', null, `${thousands(t.allocations)} allocations, ${thousands(t.frees)} frees, peak ${thousands(t.peak_bytes)} bytes live; at exit ${thousands(t.live_bytes)} bytes live in ${thousands(t.live_blocks)} blocks`));
  if (doc.python) about.push(el('p', null, `python: CPython ${doc.python.version}, ${doc.python.frames_recorded ? 'Python frames recorded' : `no Python frames (${doc.python.note || ''})`}`));
  about.push(el('p', { class: `headline${leaked.bytes ? ' bad' : ''}`, 'data-leaked-bytes': leaked.bytes, 'data-leaked-blocks': leaked.blocks },
    `${amount(leaked.bytes, leaked.blocks)} leaked`));
  if (s.reachable.blocks) about.push(`still reachable at exit: ${amount(s.reachable.bytes, s.reachable.blocks)} (--show-reachable lists them)`);
  if (s.collectable && s.collectable.blocks) about.push(`awaiting garbage collection: ${amount(s.collectable.bytes, s.collectable.blocks)} (Python reference cycles nothing else refers to, not leaks)`);
  if (s.runtime_leftovers.blocks) about.push(`left by the C runtime or the interpreter alone: ${amount(s.runtime_leftovers.bytes, s.runtime_leftovers.blocks)} (--show-leftovers lists them)`);
  if (s.import_once && s.import_once.blocks) about.push(`made once by imports: ${amount(s.import_once.bytes, s.import_once.blocks)} (lost one-time set-up of imported modules; --show-leftovers lists them)`);
  if (s.suppressed.blocks) about.push(`suppressed: ${amount(s.suppressed.bytes, s.suppressed.blocks)}`);
  if (s.inherited_unjudged && s.inherited_unjudged.blocks) about.push(`inherited, not judged: ${amount(s.inherited_unjudged.bytes, s.inherited_unjudged.blocks)} (its parent's report judges them)`);
  if (s.released_by_exec && s.released_by_exec.blocks) about.push(`released by exec: ${amount(s.released_by_exec.bytes, s.released_by_exec.blocks)} (live when the program image was replaced, which frees them: no leak)`);
  if (doc.inherited_shown_elsewhere) {
    const f = doc.inherited_shown_elsewhere;
    about.push(`${f.leaks} inherited rows (${amount(f.bytes, f.blocks)}) shown in the report of pid ${f.shown_in.join(', ')}`);
  }
  const out = [heading, el('div', { class: 'top' },
    el('div', null, about.map((line) => (typeof line === 'string' ? el('p', { class: 'muted' }, line) : line))),
    el('div', null, summaryTable(s)))];
  if (doc.leaks.length) {
    out.push(el('h3', null, 'leaked bytes by stack (outermost frame at the top)'), flameGraph(doc.leaks));
    out.push(el('h3', null, 'leaks'), leakTable(doc.leaks));
  } else {
    out.push(el('p', null, 'No leak rows listed.'));
  }
  if (doc.omitted.leaks) out.push(el('p', { class: 'muted' }, `${thousands(doc.omitted.leaks)} more rows (${amount(doc.omitted.bytes, doc.omitted.blocks)}) beyond --limit`));
  return el('section', { class: 'process' }, out);
}

// ---- the growth report -----------------------------------------------------------------

const LINE_COLOURS = ['#1d232b', '#d9480f', '#1971c2', '#2f9e44', '#ae3ec9'];

// A polyline's points for `values`, scaled into a box `w` by `h` (y grows downward).
function points(values, w, h, high) {
  const n = Math.max(values.length - 1, 1);
  return values.map((v, i) => `${(i * w / n).toFixed(1)},${(h - (high ? v * h / high : 0)).toFixed(1)}`).join(' ');
}

// SVG from numbers only (never report text), so building it from markup is safe.
function svg(cls, w, h, lines) {
  const holder = document.createElement('div');
  holder.innerHTML = `<svg class="${cls}" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${lines
    .map(([pts, stroke, width]) => `<polyline fill="none" stroke="${stroke}" stroke-width="${width}" vector-effect="non-scaling-stroke" points="${pts}"/>`)
    .join('')}</svg>`;
  return holder.firstChild;
}

function timelineChart(doc) {
  const live = doc.timeline.map((p) => p.live_bytes);
  const top = doc.growing.slice(0, LINE_COLOURS.length - 1);
  const high = Math.max(1, ...live);
  const last = doc.timeline[doc.timeline.length - 1];
  const axis = last && last.t_s != null ? `0 to ${last.t_s.toFixed(2)} s` : `events 0 to ${thousands(last ? last.seq : 0)}`;
  const out = [
    svg('chart', 1000, 200, [[points(live, 1000, 200, high), LINE_COLOURS[0], 2]]),
    el('p', { class: 'muted' }, `the whole process: live bytes from 0 to ${thousands(high)}, ${axis} (${doc.timeline.length} samples)`),
  ];
  if (top.length) {
    // The sites on a scale of their own: beside the whole process they would be flat lines.
    const siteHigh = Math.max(1, ...top.flatMap((row) => row.series));
    out.push(
      svg('chart', 1000, 200, top.map((row, i) => [points(row.series, 1000, 200, siteHigh), LINE_COLOURS[i + 1], 2])),
      el('p', { class: 'muted' }, `the top growing sites: live bytes from 0 to ${thousands(siteHigh)}, same time axis`),
      el('div', { class: 'legend' }, top.map((row, i) => el('span', null, el('i', { style: `background:${LINE_COLOURS[i + 1]}` }),
        `#${i + 1} ${place(row.owner.function ? row.owner : row.owner.python || {})}`))));
  }
  return out;
}

function growthTable(rows) {
  const table = el('table', { class: 'leaks' }, el('tr', null,
    el('th', null, '#'), el('th', { class: 'num' }, 'grew (bytes)'), el('th', { class: 'num' }, 'blocks'), el('th', { class: 'num' }, 'live at end'),
    el('th', null, 'live bytes'), el('th', null, 'owner'), el('th', null, 'Python line'), el('th', null, 'held by')));
  rows.forEach((row, i) => {
    const o = row.owner;
    const detail = el('tr', { class: 'detail', hidden: '' }, el('td', { colspan: 8 },
      el('p', null, `rose in ${row.rising_windows} of 9 windows; ${thousands(Math.round(row.bytes_per_window))} bytes per window of ${thousands(row.window_events)} events${row.bytes_per_s != null ? `; ${thousands(Math.round(row.bytes_per_s))} bytes per second` : ''}; ${row.stacks} distinct stacks`),
      (row.holders || []).map((h) => el('p', null, `held by ${h.name}: ${amount(h.bytes, h.blocks)} (${(100 * h.share).toFixed(0)}%)` +
        `${h.expression ? `, as ${h.expression}` : ''}` +
        `${h.path && h.path.length > 1 ? `, through ${h.path.join(' → ')}` : ''}`)),
      stackBlock(row, `the stack holding the most at the end (of ${row.stacks}):`)));
    const tr = el('tr', {
      class: 'row',
      onclick: () => { detail.hidden = !detail.hidden; tr.classList.toggle('open', !detail.hidden); },
    },
    el('td', null, i + 1), el('td', { class: 'num bytes' }, thousands(row.growth_bytes)), el('td', { class: 'num' }, thousands(row.blocks)),
    el('td', { class: 'num' }, thousands(row.live_bytes)),
    el('td', null, svg('spark', 140, 26, [[points(row.series, 140, 24, Math.max(1, ...row.series)), '#d9480f', 1.5]])),
    el('td', { class: 'frames' }, o.function ? place(o) : ''), el('td', { class: 'frames' }, o.python ? place(o.python) : ''),
    el('td', { class: 'frames' }, (row.held_by || []).join(', ')));
    if (i === 0) tr.click();
    table.append(tr, detail);
  });
  return table;
}

function growthSection(doc, index) {
  const out = processHeader(doc, index);
  const p = doc.period;
  out.push(el('p', null, `analysed: ${thousands(p.events)} events up to seq ${thousands(p.last_seq)} (${p.ends}); one sample every ${thousands(p.sample_interval)} events`));
  out.push(el('p', { class: 'muted' }, `holders: ${doc.holders.note}`));
  const grown = doc.growing.reduce((sum, r) => sum + r.growth_bytes, 0);
  out.push(el('p', { class: `headline${doc.growing.length ? ' bad' : ''}`, 'data-growing-sites': doc.growing.length, 'data-growth-bytes': grown },
    `${doc.growing.length} growing ${doc.growing.length === 1 ? 'site' : 'sites'} of ${doc.sites_judged} judged, ${thousands(grown)} bytes gained`));
  out.push(el('h3', null, 'live memory over the run'), timelineChart(doc));
  if (doc.growing.length) out.push(el('h3', null, 'growing sites'), growthTable(doc.growing));
  if (doc.omitted.sites) out.push(el('p', { class: 'muted' }, `${doc.omitted.sites} more growing sites (${thousands(doc.omitted.bytes)} bytes gained) beyond --limit`));
  const b = doc.between;
  if (b) {
    out.push(el('h3', null, `between seq ${thousands(b.from_seq)} and ${thousands(b.to_seq)}`));
    out.push(el('p', null, `allocated and still live at its end: ${amount(b.grown_total.bytes, b.grown_total.blocks)}; older blocks freed in it: ${amount(b.shrunk_total.bytes, b.shrunk_total.blocks)}`));
  }
  return el('section', { class: 'process' }, out);
}

// ---- the page --------------------------------------------------------------------------

function render() {
  const growth = DATA.format === 'libleak-growth' || DATA.format === 'libleak-growths';
  const docs = DATA.processes || [DATA];
  const section = growth ? growthSection : leakSection;
  const title = growth ? 'libleak growth report' : 'libleak report';
  ROOT.append(el('h1', null, docs.length === 1 ? `${title}: ${docs[0].process.program} (pid ${docs[0].process.pid})` : `${title}: ${docs.length} processes`));
  if (DATA.processes) {
    ROOT.append(el('ul', { class: 'procs' }, docs.map((d, i) => {
      const what = growth ? `${d.growing.length} growing sites` : `${amount(leakedTotal(d.summary).bytes, leakedTotal(d.summary).blocks)} leaked`;
      return el('li', null, el('a', { href: `#process-${i}` }, `${d.process.program} (pid ${d.process.pid})`), `: ${what}`);
    }), (DATA.unreadable || []).map((u) => el('li', { class: 'warn' }, `unreadable: ${u.error}`))));
  }
  docs.forEach((doc, i) => ROOT.append(section(doc, i)));
}

render();
