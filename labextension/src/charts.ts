// SVG charts drawn from numbers the server computed: histograms (binned counts) and line charts (ROC,
// loss, AUC). Colours and text follow the JupyterLab theme through CSS classes (style/base.css).

const SVG = 'http://www.w3.org/2000/svg';
export const PALETTE = [
  '#4c78a8',
  '#e45756',
  '#54a24b',
  '#f58518',
  '#b279a2',
  '#72b7b2',
  '#eeca3b',
  '#9d755d'
];

function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  text?: string
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, String(v));
  }
  if (text !== undefined) {
    el.textContent = text;
  }
  return el;
}

/** About `n` round tick values covering [lo, hi]; integers only when `integer`. */
export function ticks(lo: number, hi: number, n = 6, integer = false): number[] {
  if (!(hi > lo)) {
    return [lo];
  }
  const raw = (hi - lo) / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(v => v >= raw) || raw;
  if (integer) {
    step = Math.max(1, Math.round(step));
  }
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function label(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) {
    return v.toExponential(1);
  }
  return String(parseFloat(v.toPrecision(4)));
}

interface IFrame {
  svg: SVGSVGElement;
  x: (v: number) => number;
  y: (v: number) => number;
}

function frame(
  xlim: [number, number],
  ylim: [number, number],
  opts: { xlabel?: string; ylabel?: string; xinteger?: boolean; width?: number; height?: number }
): IFrame {
  const W = opts.width || 480;
  const H = opts.height || 280;
  const m = { l: 58, r: 12, t: 10, b: 42 };
  const svg = s('svg', {
    class: 'm4h-chart',
    viewBox: `0 0 ${W} ${H}`,
    width: W,
    height: H
  });
  const x = (v: number) => m.l + ((v - xlim[0]) / (xlim[1] - xlim[0] || 1)) * (W - m.l - m.r);
  const y = (v: number) => H - m.b - ((v - ylim[0]) / (ylim[1] - ylim[0] || 1)) * (H - m.t - m.b);
  svg.appendChild(
    s('rect', { class: 'm4h-axes', x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b })
  );
  for (const t of ticks(xlim[0], xlim[1], 6, opts.xinteger)) {
    svg.appendChild(s('line', { class: 'm4h-tick', x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }));
    svg.appendChild(s('text', { class: 'm4h-ticklabel', x: x(t), y: H - m.b + 15, 'text-anchor': 'middle' }, label(t)));
  }
  for (const t of ticks(ylim[0], ylim[1], 5)) {
    svg.appendChild(s('line', { class: 'm4h-grid', x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
    svg.appendChild(s('text', { class: 'm4h-ticklabel', x: m.l - 5, y: y(t) + 4, 'text-anchor': 'end' }, label(t)));
  }
  if (opts.xlabel) {
    svg.appendChild(s('text', { class: 'm4h-axislabel', x: (m.l + W - m.r) / 2, y: H - 6, 'text-anchor': 'middle' }, opts.xlabel));
  }
  if (opts.ylabel) {
    svg.appendChild(
      s('text', { class: 'm4h-axislabel', x: -(m.t + H - m.b) / 2, y: 14, transform: 'rotate(-90)', 'text-anchor': 'middle' }, opts.ylabel)
    );
  }
  return { svg, x, y };
}

export interface IHistSeries {
  name: string;
  counts: number[];
  color?: string;
}

/** Step histograms over shared bin edges; normalised to unit area when `normalize` (shapes compared). */
export function histogram(
  edges: number[],
  series: IHistSeries[],
  opts: { normalize?: boolean; xlabel?: string; integer?: boolean } = {}
): SVGSVGElement {
  const heights = series.map(sr => {
    const total = sr.counts.reduce((a, b) => a + b, 0) || 1;
    return sr.counts.map((c, i) => (opts.normalize ? c / total / (edges[i + 1] - edges[i]) : c));
  });
  const ymax = Math.max(1e-12, ...heights.flat()) * 1.08;
  const f = frame([edges[0], edges[edges.length - 1]], [0, ymax], {
    xlabel: opts.xlabel,
    ylabel: opts.normalize ? 'density (unit area)' : 'entries',
    xinteger: opts.integer
  });
  series.forEach((sr, k) => {
    const color = sr.color || PALETTE[k % PALETTE.length];
    let d = `M ${f.x(edges[0])} ${f.y(0)}`;
    heights[k].forEach((v, i) => {
      d += ` L ${f.x(edges[i])} ${f.y(v)} L ${f.x(edges[i + 1])} ${f.y(v)}`;
    });
    d += ` L ${f.x(edges[edges.length - 1])} ${f.y(0)}`;
    f.svg.appendChild(s('path', { d: d + ' Z', fill: color, 'fill-opacity': 0.18, stroke: 'none' }));
    f.svg.appendChild(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.6, class: 'm4h-series', 'data-name': sr.name }));
  });
  return f.svg;
}

export interface ILineSeries {
  name: string;
  x: number[];
  y: (number | null)[];
  color?: string;
  dashed?: boolean;
}

/** Lines (gaps at nulls); `diagonal` draws the random classifier's line of a ROC curve. */
export function lines(
  series: ILineSeries[],
  opts: { xlabel?: string; ylabel?: string; xlim?: [number, number]; ylim?: [number, number]; diagonal?: boolean; xinteger?: boolean } = {}
): SVGSVGElement {
  const xs = series.flatMap(sr => sr.x);
  const ys = series.flatMap(sr => sr.y.filter((v): v is number => v !== null && isFinite(v)));
  let xlim = opts.xlim || [Math.min(...xs), Math.max(...xs)];
  let ylim = opts.ylim || [Math.min(...ys), Math.max(...ys)];
  if (!(xlim[1] > xlim[0])) {
    xlim = [xlim[0] - 1, xlim[0] + 1];
  }
  if (!(ylim[1] > ylim[0])) {
    const pad = Math.abs(ylim[0]) * 0.05 || 0.5;
    ylim = [ylim[0] - pad, ylim[0] + pad];
  } else if (!opts.ylim) {
    const pad = (ylim[1] - ylim[0]) * 0.06;
    ylim = [ylim[0] - pad, ylim[1] + pad];
  }
  const f = frame(xlim, ylim, { xlabel: opts.xlabel, ylabel: opts.ylabel, xinteger: opts.xinteger });
  if (opts.diagonal) {
    f.svg.appendChild(s('line', { class: 'm4h-diagonal', x1: f.x(0), y1: f.y(0), x2: f.x(1), y2: f.y(1) }));
  }
  series.forEach((sr, k) => {
    const color = sr.color || PALETTE[k % PALETTE.length];
    let d = '';
    let pen = false;
    sr.x.forEach((xv, i) => {
      const yv = sr.y[i];
      if (yv === null || !isFinite(yv)) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'} ${f.x(xv).toFixed(1)} ${f.y(yv).toFixed(1)} `;
      pen = true;
    });
    const attrs: Record<string, string | number> = { d, fill: 'none', stroke: color, 'stroke-width': 1.8, class: 'm4h-series', 'data-name': sr.name };
    if (sr.dashed) {
      attrs['stroke-dasharray'] = '5 3';
    }
    f.svg.appendChild(s('path', attrs));
    if (sr.x.length === 1 && sr.y[0] !== null) {   // one point: a dot, or nothing would show
      f.svg.appendChild(s('circle', { cx: f.x(sr.x[0]), cy: f.y(sr.y[0] as number), r: 3.5, fill: color }));
    }
  });
  return f.svg;
}

/** A legend: coloured swatches and names. */
export function legend(items: { name: string; color: string; dashed?: boolean }[]): HTMLElement {
  const el = document.createElement('div');
  el.className = 'm4h-legend';
  for (const it of items) {
    const sw = document.createElement('span');
    sw.className = 'm4h-swatch' + (it.dashed ? ' m4h-swatch-dashed' : '');
    sw.style.borderColor = it.color;
    sw.style.background = it.dashed ? 'transparent' : it.color;
    const item = document.createElement('span');
    item.className = 'm4h-legend-item';
    item.append(sw, document.createTextNode(it.name));
    el.appendChild(item);
  }
  return el;
}
