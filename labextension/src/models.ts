// The sidebar's Models section: the inference service's models (own and shared), their versions and tags;
// share, tag, delete, and one test request.
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { query, requestAPI, send } from './api';
import { fill, fmt, h, note, when } from './dom';
import { IServiceState } from './jobs';

interface IModel {
  name: string;
  owner: string;
  ref: string;
  shared: boolean;
  tags: Record<string, string>;
  versions: string[];
  latest: string | null;
  backend: string | null;
  n_features: number;
  created: string | null;
}

interface IMetadata {
  name: string;
  versions?: string[];
  features?: string[];
  parameters?: { features?: string[] };
  inputs?: { name: string; shape: number[]; datatype: string; parameters?: { features?: string[] } }[];
  outputs?: { name: string }[];
}

function featuresOf(meta: IMetadata): string[] {
  return meta.features || meta.parameters?.features || meta.inputs?.[0]?.parameters?.features || [];
}

export class ModelsSection extends Widget {
  constructor() {
    super();
    this.addClass('m4h-section');
    this.addClass('m4h-models');
    this.id = 'm4h-models';
    this.title.label = 'Models';
    this.node.append(this._head, this._list, this._detail);
  }

  setService(state: IServiceState): void {
    this._configured = state.configured;
    if (!state.configured) {
      fill(this._head, note(state.hint, 'info'));
      this._head.firstElementChild?.classList.add('m4h-not-configured');
      return;
    }
    const refresh = h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject', onclick: () => void this.refresh() }, 'Refresh');
    fill(this._head, h('div', { class: 'm4h-toolbar' }, refresh), h('div', { class: 'm4h-dim' }, state.url));
    void this.refresh();
  }

  protected onAfterShow(): void {
    if (this._configured) {
      void this.refresh();
    }
  }

  async refresh(): Promise<void> {
    try {
      this._models = (await requestAPI<{ models: IModel[] }>('models')).models;
    } catch (err) {
      fill(this._list, note(String((err as Error).message), 'error'));
      return;
    }
    if (!this._models.length) {
      fill(this._list, note('no models yet: push a bundle from the Lab\'s Deploy tab, or submit a job with "push"'));
      fill(this._detail);
      return;
    }
    fill(this._list, h('table', { class: 'm4h-table' },
      h('thead', {}, h('tr', {}, ...['model', 'owner', 'versions', 'tags', 'shared'].map(t => h('th', {}, t)))),
      h('tbody', {}, ...this._models.map(m => h('tr', { class: 'm4h-model-row' + (m.ref === this._current ? ' m4h-selected' : ''), 'data-model': m.ref, onclick: () => void this.showModel(m.ref) },
        h('td', {}, m.name), h('td', {}, m.owner), h('td', {}, m.versions.join(', ')),
        h('td', {}, Object.entries(m.tags).map(([t, v]) => `${t}=${v}`).join(' ')), h('td', {}, m.shared ? 'yes' : 'no'))))));
    const current = this._models.find(m => m.ref === this._current);
    if (current) {
      await this.showModel(current.ref);
    } else {
      fill(this._detail);
    }
  }

  async showModel(ref: string): Promise<void> {
    this._current = ref;
    this._list.querySelectorAll('tr.m4h-model-row').forEach(r => r.classList.toggle('m4h-selected', (r as HTMLElement).dataset.model === ref));
    const model = this._models.find(m => m.ref === ref);
    if (!model) {
      return;
    }
    let meta: IMetadata;
    try {
      meta = await requestAPI<IMetadata>(`models/${encodeURIComponent(ref)}`);
    } catch (err) {
      fill(this._detail, note(String((err as Error).message), 'error'));
      return;
    }
    const features = featuresOf(meta);
    const version = h('select', { class: 'm4h-version' }, ...model.versions.map(v => h('option', { value: v }, v)));
    version.value = model.latest || model.versions[model.versions.length - 1] || '';
    const tagName = h('input', { class: 'm4h-tag-name', value: 'prod', list: 'm4h-tag-names', size: 8 });
    const result = h('div', { class: 'm4h-test-result' });
    const rows = h('textarea', { class: 'm4h-test-input', rows: 3, spellcheck: 'false' });
    rows.value = JSON.stringify([features.map(() => 0)]);
    fill(this._detail,
      h('div', { class: 'm4h-model-head' }, h('b', {}, model.ref), ` ${model.backend || ''}, ${model.n_features} features, created ${when(model.created)}`),
      h('div', { class: 'm4h-toolbar' }, 'version ', version,
        h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject m4h-share', onclick: () => void this.act(`models/${encodeURIComponent(ref)}/share`, { shared: !model.shared }) }, model.shared ? 'Stop sharing' : 'Share with everyone'),
        h('button', { class: 'jp-Button jp-mod-styled jp-mod-warn m4h-delete', onclick: () => void this.remove(model, version.value) }, 'Delete…')),
      h('div', { class: 'm4h-toolbar' }, 'tag ', tagName, h('datalist', { id: 'm4h-tag-names' }, h('option', { value: 'prod' }), h('option', { value: 'latest' })),
        h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject m4h-set-tag', onclick: () => void this.act(`models/${encodeURIComponent(ref)}/tags`, { tag: tagName.value, version: version.value }) }, 'Point at version'),
        h('button', { class: 'jp-Button jp-mod-styled jp-mod-reject m4h-remove-tag', onclick: () => void this.act(`models/${encodeURIComponent(ref)}/tags`, { tag: tagName.value, version: null }) }, 'Remove tag')),
      h('details', { class: 'm4h-test', open: true },
        h('summary', {}, 'Test request'),
        h('div', { class: 'm4h-dim' }, features.length ? `one row of ${features.length} inputs, in this order: ${features.slice(0, 8).join(', ')}${features.length > 8 ? ', ...' : ''} (the model's input scale)` : 'rows of input values'),
        rows,
        h('button', { class: 'jp-Button jp-mod-styled jp-mod-accept m4h-send-test', onclick: () => void this.test(ref, version.value, rows.value, result) }, 'Send'),
        result));
  }

  private async act(endPoint: string, body: unknown): Promise<void> {
    try {
      await send('POST', endPoint, body);
    } catch (err) {
      this._detail.insertBefore(note(String((err as Error).message), 'error'), this._detail.firstChild);
      return;
    }
    await this.refresh();
  }

  private async remove(model: IModel, version: string): Promise<void> {
    const answer = await showDialog({
      title: `Delete ${model.ref}?`,
      body: `Version ${version} only, or the model with all its versions (${model.versions.join(', ')})?`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: `Version ${version}` }), Dialog.warnButton({ label: 'All versions' })]
    });
    if (!answer.button.accept) {
      return;
    }
    const all = answer.button.label === 'All versions';
    try {
      await send('DELETE', `models/${encodeURIComponent(model.ref)}${all ? '' : query({ version })}`);
    } catch (err) {
      this._detail.insertBefore(note(String((err as Error).message), 'error'), this._detail.firstChild);
      return;
    }
    if (all) {
      this._current = null;
    }
    await this.refresh();
  }

  private async test(ref: string, version: string, text: string, out: HTMLElement): Promise<void> {
    let rows: unknown;
    try {
      rows = JSON.parse(text);
    } catch (err) {
      fill(out, note(`not JSON: ${(err as Error).message}`, 'error'));
      return;
    }
    fill(out, note('sending...'));
    try {
      const answer = await send<{ outputs: { name: string; shape: number[]; data: number[] }[]; ms: number; model_version: string | null }>(
        'POST', `models/${encodeURIComponent(ref)}/test`, { rows, version });
      fill(out, h('div', { class: 'm4h-test-ok' }, `answered in ${fmt(answer.ms)} ms (version ${answer.model_version || version})`),
        ...answer.outputs.map(o => h('div', {}, `${o.name} [${o.shape.join(', ')}]: ${o.data.slice(0, 12).map(v => fmt(v)).join(', ')}`)));
    } catch (err) {
      fill(out, note(String((err as Error).message), 'error'));
    }
  }

  private _configured = false;
  private _models: IModel[] = [];
  private _current: string | null = null;
  private _head = h('div', {});
  private _list = h('div', { class: 'm4h-scroll' });
  private _detail = h('div', { class: 'm4h-detail' });
}
