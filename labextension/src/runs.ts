// The sidebar's Runs section (every training run below the server's root folder) and the comparison view
// that overlays the ROC, loss and AUC curves of the runs ticked.
import { Widget } from '@lumino/widgets';

import { query, requestAPI } from './api';
import { legend, lines, PALETTE } from './charts';
import { fill, fmt, h, note, when } from './dom';

export interface IRun {
  id: string;
  name: string;
  date: string;
  time: number;
  model: string;
  backend: string;
  task: string;
  status: string;
  metrics: Record<string, number>;
  bundle: boolean;
  roc: boolean;
}

interface ICurves {
  id: string;
  history: { x: number[]; xlabel: string; series: Record<string, (number | null)[]> };
  roc: { fpr: number[]; tpr: number[]; auc: number | null } | null;
  roc_weighted: { fpr: number[]; tpr: number[]; auc: number | null } | null;
}

const MAIN_METRIC = ['auc', 'accuracy', 'rmse', 'val_auc', 'events_seen'];

export class RunsSection extends Widget {
  constructor(private openCompare: (runs: IRun[]) => void) {
    super();
    this.addClass('m4h-section');
    this.addClass('m4h-runs');
    this.id = 'm4h-runs';
    this.title.label = 'Runs';
    const refresh = h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject m4h-refresh', onclick: () => void this.refresh() }, 'Refresh');
    this._compare = h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept m4h-compare', disabled: true, onclick: () => this.compare() }, 'Compare');
    this.node.append(h('div', { class: 'm4h-toolbar' }, refresh, this._compare), this._status, this._table);
  }

  protected onAfterAttach(): void {
    void this.refresh();
    // runs finish while the sidebar is open: look again now and then, only when it is visible
    this._timer = window.setInterval(() => {
      if (this.isVisible) {
        void this.refresh();
      }
    }, 15000);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this._timer);
  }

  async refresh(): Promise<void> {
    try {
      const answer = await requestAPI<{ runs: IRun[]; complete: boolean }>('runs');
      this._runs = answer.runs;
      fill(this._status, answer.complete ? null : note('the search stopped at its depth or folder limit: runs deeper down are not listed'));
    } catch (err) {
      fill(this._status, note(String((err as Error).message), 'error'));
      return;
    }
    this.render();
  }

  private render(): void {
    const ids = new Set(this._runs.map(r => r.id));
    this._selected = new Set([...this._selected].filter(id => ids.has(id)));
    if (!this._runs.length) {
      fill(this._table, note('no training runs below your folder yet (a run is a folder with metrics.json or metrics.jsonl: `mlaas4hep workflow --fout OUT`, or the Lab\'s Training tab)'));
      this.updateButton();
      return;
    }
    const rows = this._runs.map(r => {
      const key = MAIN_METRIC.find(k => k in r.metrics);
      const tip = [`${r.id}`, `${r.backend} ${r.task}`, ...Object.entries(r.metrics).map(([k, v]) => `${k}: ${fmt(v)}`)].join('\n');
      const box = h('input', { type: 'checkbox', checked: this._selected.has(r.id), onchange: () => {
        if (box.checked) {
          this._selected.add(r.id);
        } else {
          this._selected.delete(r.id);
        }
        this.updateButton();
      } });
      return h('tr', { class: 'm4h-run-row', 'data-run': r.id, title: tip },
        h('td', {}, box),
        h('td', {}, h('div', { class: 'm4h-run-model' }, r.model || r.name), h('div', { class: 'm4h-dim' }, `${when(r.time)} ${r.task}`)),
        h('td', { class: `m4h-status m4h-status-${r.status}` }, r.status),
        h('td', {}, key ? h('div', {}, fmt(r.metrics[key])) : null, key ? h('div', { class: 'm4h-dim' }, key) : null));
    });
    fill(this._table, h('table', { class: 'm4h-table m4h-runs-table' },
      h('thead', {}, h('tr', {}, ...['', 'run', 'status', ''].map(t => h('th', {}, t)))),
      h('tbody', {}, ...rows)));
    this.updateButton();
  }

  private updateButton(): void {
    this._compare.disabled = this._selected.size === 0;
    this._compare.textContent = this._selected.size > 1 ? `Compare ${this._selected.size}` : 'Show curves';
  }

  private compare(): void {
    this.openCompare(this._runs.filter(r => this._selected.has(r.id)));
  }

  private _runs: IRun[] = [];
  private _selected = new Set<string>();
  private _status = h('div', {});
  private _table = h('div', { class: 'm4h-scroll' });
  private _compare: HTMLButtonElement;
  private _timer = 0;
}

/** ROC, loss and AUC curves of several runs, overlaid, with their test metrics side by side. */
export class RunsCompare extends Widget {
  constructor(private runs: IRun[]) {
    super();
    this.addClass('m4h-compare-view');
    this.id = `m4h-compare-${Date.now()}`;
    this.title.label = runs.length > 1 ? `Compare ${runs.length} runs` : `Run ${runs[0].model || runs[0].name}`;
    this.title.closable = true;
    void this.load();
  }

  async load(): Promise<void> {
    fill(this.node, note('reading the runs...'));
    let curves: ICurves[];
    try {
      curves = (await requestAPI<{ runs: ICurves[] }>(`runs/curves${query({ run: this.runs.map(r => r.id) })}`)).runs;
    } catch (err) {
      fill(this.node, note(String((err as Error).message), 'error'));
      return;
    }
    const name = (k: number) => `${this.runs[k].model || this.runs[k].name} (${when(this.runs[k].time)})`;
    const color = (k: number) => PALETTE[k % PALETTE.length];
    const metricKeys = [...new Set(this.runs.flatMap(r => Object.keys(r.metrics)))];
    const table = h('table', { class: 'm4h-table m4h-compare-metrics' },
      h('thead', {}, h('tr', {}, h('th', {}, 'run'), ...metricKeys.map(k => h('th', {}, k)))),
      h('tbody', {}, ...this.runs.map((r, k) => h('tr', {},
        h('td', {}, h('span', { class: 'm4h-swatch', style: `background:${color(k)};border-color:${color(k)}` }), name(k)),
        ...metricKeys.map(m => h('td', {}, fmt(r.metrics[m])))))));

    const panels: HTMLElement[] = [];
    const roc = curves.map((c, k) => ({ c, k })).filter(({ c }) => c.roc && c.roc.fpr.length);
    if (roc.length) {
      const series = roc.map(({ c, k }) => ({ name: name(k), x: c.roc!.fpr, y: c.roc!.tpr, color: color(k) }));
      panels.push(this.panel('ROC (test split, unweighted)', lines(series, { xlabel: 'false positive rate (background efficiency)', ylabel: 'true positive rate (signal efficiency)', xlim: [0, 1], ylim: [0, 1], diagonal: true }),
        roc.map(({ c, k }) => ({ name: `${name(k)}: AUC ${fmt(c.roc!.auc)}`, color: color(k) }))));
    }
    for (const [title, keys, ylabel] of [
      ['Loss', ['loss', 'val_loss'], 'loss'],
      ['AUC', ['auc', 'val_auc'], 'AUC']
    ] as [string, string[], string][]) {
      const series: { name: string; x: number[]; y: (number | null)[]; color: string; dashed: boolean }[] = [];
      const xlabels = new Set<string>();
      curves.forEach((c, k) => {
        for (const key of keys) {
          const ys = c.history.series[key];
          if (ys && ys.some(v => v !== null)) {
            series.push({ name: `${name(k)} ${key}`, x: c.history.x, y: ys, color: color(k), dashed: key.startsWith('val_') });
            xlabels.add(c.history.xlabel);
          }
        }
      });
      if (series.length) {
        panels.push(this.panel(`${title} (solid: training, dashed: validation)`, lines(series, { xlabel: [...xlabels].join(' / '), ylabel }),
          series.map(sr => ({ name: sr.name, color: sr.color, dashed: sr.dashed }))));
      }
    }
    const missing = curves.filter(c => !c.history.x.length).map(c => c.id);
    fill(this.node, table,
      missing.length ? note(`no learning curve stored for ${missing.join(', ')}`) : null,
      panels.length ? h('div', { class: 'm4h-compare-charts' }, ...panels) : note('these runs stored no curves'));
  }

  private panel(title: string, chart: SVGSVGElement, items: { name: string; color: string; dashed?: boolean }[]): HTMLElement {
    return h('div', { class: 'm4h-compare-chart' }, h('h3', {}, title), chart, legend(items));
  }
}
