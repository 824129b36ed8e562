// "Inspect" of a .root file: its trees and branches, and the histogram of the branch clicked (binned by the
// server extension on a bounded sample; one curve per label when a files.txt with labels lists the file).
import { Widget } from '@lumino/widgets';

import { requestAPI, query } from './api';
import { histogram, legend, PALETTE } from './charts';
import { fill, fmt, h, note } from './dom';

interface IBranch {
  name: string;
  type: string;
  dtype: string;
  kind: string;
  length: number | null;
}

interface ITree {
  name: string;
  kind: string;
  entries: number;
  branches: IBranch[];
  skipped: { name: string; type: string; why: string }[];
}

interface IInspect {
  path: string;
  name: string;
  size: number;
  trees: ITree[];
  labels: null | {
    label: number;
    name: string;
    files_txt: string;
    labels_txt: string;
    groups: { label: number; name: string; files: number }[];
  };
}

interface IHistogram {
  edges: number[];
  integer: boolean;
  series: {
    name: string;
    label: number | null;
    counts: number[];
    entries: number;
    underflow: number;
    overflow: number;
    mean: number | null;
    std: number | null;
    files: number;
  }[];
  missing: Record<string, number>;
  sample: number;
}

/** Signal red, background blue, other classes from the palette. */
function colorOf(label: number | null, k: number): string {
  if (label === 1) {
    return PALETTE[1];
  }
  if (label === 0) {
    return PALETTE[0];
  }
  return PALETTE[(k + 2) % PALETTE.length];
}

/** The id of the Inspect panel of a file (one panel per file). */
export function inspectId(path: string): string {
  return `m4h-inspect-${path.replace(/[^A-Za-z0-9]/g, '-')}`;
}

export class InspectPanel extends Widget {
  constructor(readonly path: string) {
    super();
    this.addClass('m4h-inspect');
    this.id = inspectId(path);
    this.title.label = `Inspect ${path.split('/').pop()}`;
    this.title.caption = path;
    this.title.closable = true;
    this.node.appendChild(this._head);
    this.node.appendChild(h('div', { class: 'm4h-inspect-body' }, this._left, this._right));
    void this.load();
  }

  async load(): Promise<void> {
    fill(this._head, note(`reading ${this.path}...`));
    try {
      this._info = await requestAPI<IInspect>(`inspect${query({ path: this.path })}`);
    } catch (err) {
      fill(this._head, note(String((err as Error).message), 'error'));
      return;
    }
    const info = this._info;
    const labels = info.labels
      ? `${info.labels.name} in ${info.labels.files_txt} (${info.labels.groups
          .map(g => `${g.name}: ${g.files} file${g.files > 1 ? 's' : ''}`)
          .join(', ')})`
      : 'no files.txt with a labels.txt lists this file';
    const select = h('select', { class: 'm4h-tree-select', onchange: () => this.showTree(select.selectedIndex) },
      ...info.trees.map(t => h('option', {}, `${t.name} (${t.kind}, ${t.entries} entries)`)));
    fill(
      this._head,
      h('div', { class: 'm4h-inspect-title' }, h('b', {}, info.name), ` ${(info.size / 1024).toFixed(0)} KiB`),
      h('div', { class: 'm4h-inspect-labels' }, `label: ${labels}`),
      info.trees.length ? h('label', {}, 'tree ', select) : note('no TTree or RNTuple in this file', 'error')
    );
    if (info.trees.length) {
      this.showTree(0);
    }
  }

  showTree(index: number): void {
    const tree = this._info!.trees[index];
    this._tree = tree;
    const filter = h('input', { class: 'm4h-branch-filter', type: 'search', placeholder: 'filter branches' });
    const body = h('tbody', {});
    const rows = tree.branches.map(b => {
      const row = h('tr', { class: 'm4h-branch-row', 'data-branch': b.name, onclick: () => this.select(b.name) },
        h('td', {}, b.name), h('td', {}, b.kind + (b.length ? `[${b.length}]` : '')), h('td', {}, b.dtype), h('td', { class: 'm4h-dim' }, b.type));
      body.appendChild(row);
      return row;
    });
    filter.addEventListener('input', () => {
      const q = filter.value.toLowerCase();
      rows.forEach((r, i) => (r.style.display = tree.branches[i].name.toLowerCase().includes(q) ? '' : 'none'));
    });
    const skipped = tree.skipped.length
      ? h('details', { class: 'm4h-skipped' }, h('summary', {}, `${tree.skipped.length} skipped (not numbers or lists of numbers)`),
          h('ul', {}, ...tree.skipped.map(sk => h('li', {}, `${sk.name} (${sk.type}): ${sk.why}`))))
      : null;
    fill(this._left,
      h('div', { class: 'm4h-dim' }, `${tree.branches.length} numeric branches, ${tree.entries} entries`),
      filter,
      h('table', { class: 'm4h-table m4h-branches' },
        h('thead', {}, h('tr', {}, h('th', {}, 'branch'), h('th', {}, 'kind'), h('th', {}, 'dtype'), h('th', {}, 'ROOT type'))), body),
      skipped);
    this._rows = rows;
    fill(this._right, note('click a branch for its histogram'));
    if (tree.branches.length) {
      void this.select(tree.branches[0].name);
    }
  }

  async select(branch: string): Promise<void> {
    const tree = this._tree!;
    this._rows.forEach(r => r.classList.toggle('m4h-selected', r.dataset.branch === branch));
    const token = ++this._request;
    fill(this._right, note(`binning ${branch}...`));
    let hist: IHistogram;
    try {
      hist = await requestAPI<IHistogram>(`histogram${query({ path: this.path, tree: tree.name, branch })}`);
    } catch (err) {
      if (token === this._request) {
        fill(this._right, note(String((err as Error).message), 'error'));
      }
      return;
    }
    if (token !== this._request) {
      return;   // another branch was clicked meanwhile
    }
    const series = hist.series.map((sr, k) => ({ name: sr.name, counts: sr.counts, color: colorOf(sr.label, k) }));
    const several = series.length > 1;
    const chart = histogram(hist.edges, series, { normalize: several, xlabel: branch, integer: hist.integer });
    const missing = Object.entries(hist.missing).map(([v, n]) => `${n} at ${v} (missing value, not drawn)`);
    fill(this._right,
      h('div', { class: 'm4h-hist', 'data-branch': branch }, chart),
      several ? legend(series.map(sr => ({ name: sr.name, color: sr.color }))) : null,
      h('table', { class: 'm4h-table m4h-hist-stats' },
        h('thead', {}, h('tr', {}, ...['', 'entries', 'mean', 'std', 'below', 'above', 'files'].map(t => h('th', {}, t)))),
        h('tbody', {}, ...hist.series.map(sr => h('tr', {}, h('td', {}, sr.name), h('td', {}, fmt(sr.entries)),
          h('td', {}, fmt(sr.mean)), h('td', {}, fmt(sr.std)), h('td', {}, fmt(sr.underflow)), h('td', {}, fmt(sr.overflow)), h('td', {}, fmt(sr.files)))))),
      h('div', { class: 'm4h-dim' },
        `first ${hist.sample} entries of each file; ${hist.integer ? 'one bin per integer' : 'range: 0.5-99.5 % of the values'}` +
          (several ? '; curves normalised to unit area' : '') + (missing.length ? `; ${missing.join(', ')}` : '')));
  }

  private _head = h('div', { class: 'm4h-inspect-head' });
  private _left = h('div', { class: 'm4h-inspect-left' });
  private _right = h('div', { class: 'm4h-inspect-right' });
  private _info: IInspect | null = null;
  private _tree: ITree | null = null;
  private _rows: HTMLTableRowElement[] = [];
  private _request = 0;
}
