// The sidebar's Jobs section: the jobs service's jobs (status, live log, cancel, bundle download) and
// "Submit the notebook's Lab", which sends the configuration of the Lab in the notebook in focus.
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { apiURL, query, requestAPI, send } from './api';
import { fill, fmt, h, note, when } from './dom';

export interface IServiceState {
  configured: boolean;
  url: string;
  token: boolean;
  hint: string;
}

interface IJob {
  id: string;
  name: string;
  status: string;
  created: number;
  started?: number | null;
  finished?: number | null;
  progress: number;
  phase: string;
  error?: string | null;
  metrics?: Record<string, unknown>;
  bundle?: boolean;
  push_result?: Record<string, unknown> | null;
}

const ACTIVE = new Set(['queued', 'running']);

/** What became of the push to the inference service. */
function pushLine(result: Record<string, any>): HTMLElement {
  return result.ok
    ? h('div', { class: 'm4h-dim' }, `pushed to the inference service as ${result.ref || result.name} version ${result.version}`)
    : note(`push to the inference service failed: ${result.error || JSON.stringify(result)}`, 'error');
}

/** What the notebook's kernel answers: the Lab's files, labels, model, params, preproc. */
export type LabConfig = Record<string, any>;

export class JobsSection extends Widget {
  constructor(private labConfig: () => Promise<LabConfig>) {
    super();
    this.addClass('m4h-section');
    this.addClass('m4h-jobs');
    this.id = 'm4h-jobs';
    this.title.label = 'Jobs';
    this.node.append(this._head, this._list, this._detail);
  }

  setService(state: IServiceState): void {
    this._state = state;
    if (!state.configured) {
      fill(this._head, note(state.hint, 'info'));
      this._head.firstElementChild?.classList.add('m4h-not-configured');
      fill(this._list);
      fill(this._detail);
      return;
    }
    const submit = h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept m4h-submit', onclick: () => void this.submit() }, "Submit the notebook's Lab");
    const refresh = h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject', onclick: () => void this.refresh() }, 'Refresh');
    fill(this._head, h('div', { class: 'm4h-toolbar' }, submit, refresh), h('div', { class: 'm4h-dim' }, state.url));
    void this.refresh();
  }

  protected onAfterAttach(): void {
    this._timer = window.setInterval(() => {
      if (this.isVisible && this._state?.configured) {
        void this.refresh();
      }
    }, 5000);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this._timer);
  }

  async refresh(): Promise<void> {
    try {
      this._jobs = (await requestAPI<{ jobs: IJob[] }>('jobs')).jobs;
    } catch (err) {
      fill(this._list, note(String((err as Error).message), 'error'));
      return;
    }
    if (!this._jobs.length) {
      fill(this._list, note('no jobs yet'));
    } else {
      fill(this._list, h('table', { class: 'm4h-table' },
        h('thead', {}, h('tr', {}, ...['job', 'status', 'progress', 'submitted'].map(t => h('th', {}, t)))),
        h('tbody', {}, ...this._jobs.map(j => h('tr', { class: 'm4h-job-row' + (j.id === this._current ? ' m4h-selected' : ''), 'data-job': j.id, onclick: () => void this.showJob(j.id) },
          h('td', {}, j.name || j.id), h('td', { class: `m4h-status m4h-status-${j.status}` }, j.status),
          h('td', {}, `${Math.round((j.progress || 0) * 100)} %`), h('td', {}, when(j.created)))))));
    }
    if (this._current) {
      await this.showJob(this._current, false);
    }
  }

  /** One job: status, metrics, actions, and its log (followed while it runs). */
  async showJob(id: string, resetLog = true): Promise<void> {
    if (resetLog || id !== this._current) {
      this._current = id;
      this._logOffset = 0;
      this._log.textContent = '';
      this._list.querySelectorAll('tr.m4h-job-row').forEach(r => r.classList.toggle('m4h-selected', (r as HTMLElement).dataset.job === id));
    }
    let job: IJob;
    try {
      job = await requestAPI<IJob>(`jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      fill(this._detail, note(String((err as Error).message), 'error'));
      return;
    }
    const active = ACTIVE.has(job.status);
    const numbers = Object.entries(job.metrics || {}).filter(([, v]) => typeof v === 'number');
    const shown = ['auc', 'auc_weighted', 'ams', 'accuracy', 'rmse', 'val_auc', 'loss', 'events_seen'];
    const metrics = numbers.filter(([k]) => shown.includes(k));
    const actions = h('div', { class: 'm4h-toolbar' },
      h('button', { class: 'jp-Button jp-mod-styled jp-mod-warn m4h-cancel', onclick: () => void this.remove(job, active) }, active ? 'Cancel' : 'Delete'),
      job.bundle ? h('a', { class: 'jp-Button jp-mod-styled jp-mod-accept m4h-download', href: apiURL(`jobs/${encodeURIComponent(id)}/bundle`), download: `${job.name || job.id}.tar.gz` }, 'Download bundle') : null);
    fill(this._detail,
      h('div', { class: 'm4h-job-head' }, h('b', {}, job.name || job.id), ` ${job.status}`, job.phase ? ` (${job.phase})` : '',
        ` ${Math.round((job.progress || 0) * 100)} %`),
      job.error ? note(job.error, 'error') : null,
      metrics.length ? h('div', { class: 'm4h-dim', title: numbers.map(([k, v]) => `${k}: ${fmt(v)}`).join('\n') },
        metrics.map(([k, v]) => `${k} ${fmt(v)}`).join(', ')) : null,
      job.push_result ? pushLine(job.push_result) : null,
      actions, this._log);
    await this.followLog(id);
  }

  private async followLog(id: string): Promise<void> {
    try {
      const chunk = await requestAPI<{ text: string; offset: number; next_offset: number }>(
        `jobs/${encodeURIComponent(id)}/logs${query({ offset: this._logOffset || undefined })}`);
      if (id !== this._current) {
        return;
      }
      if (chunk.offset > this._logOffset && this._logOffset > 0) {
        this._log.textContent += '\n[...]\n';
      }
      this._log.textContent += chunk.text;
      this._logOffset = chunk.next_offset;
      this._log.scrollTop = this._log.scrollHeight;
    } catch (err) {
      this._log.textContent = String((err as Error).message);
    }
  }

  private async remove(job: IJob, active: boolean): Promise<void> {
    const ok = await showDialog({
      title: active ? 'Cancel the job?' : 'Delete the job?',
      body: active ? `${job.name || job.id} stops now.` : `${job.name || job.id} and its files (log, bundle) are deleted.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: active ? 'Cancel job' : 'Delete' })]
    });
    if (!ok.button.accept) {
      return;
    }
    try {
      await send('DELETE', `jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      fill(this._detail, note(String((err as Error).message), 'error'));
      return;
    }
    if (!active) {
      this._current = null;
      fill(this._detail);
    }
    await this.refresh();
  }

  /** Ask the notebook's kernel for its Lab, confirm with a name, submit. */
  async submit(): Promise<void> {
    let config: LabConfig;
    try {
      config = await this.labConfig();
    } catch (err) {
      await showDialog({ title: "No Lab to submit", body: String((err as Error).message), buttons: [Dialog.okButton()] });
      return;
    }
    const name = h('input', { class: 'm4h-job-name', value: `${config.lab}-${new Date().toISOString().slice(0, 16).replace(/[-:T]/g, '')}` });
    const push = h('input', { type: 'checkbox', class: 'm4h-job-push' });
    const files = (config.files as string[]).map(f => f.split('/').pop()).join(', ');
    const body = new Widget({ node: h('div', { class: 'm4h-submit-form' },
      h('div', {}, `files: ${files}`),
      h('div', {}, `labels: ${(config.labels as number[]).join(', ') || '(none: regression)'}`),
      h('div', {}, `model: ${String(config.model).includes('\n') ? 'model.py (source)' : config.model}`),
      h('div', {}, `cuts and new branches: ${config.preproc ? Object.keys(config.preproc).join(', ') : 'none'}`),
      h('label', {}, 'name ', name),
      h('label', {}, push, ' push the bundle to the inference service under this name when it succeeds')) });
    const ok = await showDialog({ title: "Submit the notebook's Lab to the jobs service", body, buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })] });
    if (!ok.button.accept) {
      return;
    }
    const jobName = name.value.trim() || undefined;
    const submission = { files: config.files, labels: config.labels, model: config.model, params: config.params,
      preproc: config.preproc || undefined, name: jobName, push: push.checked && jobName ? { name: jobName } : undefined };
    try {
      const answer = await send<{ id: string; warnings?: string[] }>('POST', 'jobs', submission);
      await this.refresh();
      await this.showJob(answer.id);
      if (answer.warnings && answer.warnings.length) {
        this._detail.insertBefore(note(`warnings: ${answer.warnings.join('; ')}`), this._detail.firstChild);
      }
    } catch (err) {
      fill(this._detail, note(`not submitted: ${(err as Error).message}`, 'error'));
    }
  }

  private _state: IServiceState | null = null;
  private _jobs: IJob[] = [];
  private _current: string | null = null;
  private _logOffset = 0;
  private _timer = 0;
  private _head = h('div', {});
  private _list = h('div', { class: 'm4h-scroll' });
  private _detail = h('div', { class: 'm4h-detail' });
  private _log = h('pre', { class: 'm4h-log' });
}
