// mlaas4hep-lab in JupyterLab: launcher cards and palette commands (New MLaaS4HEP Lab, Open dashboard),
// file browser menus on .root files and files.txt (Inspect, New Lab), and a left sidebar with the user's
// training runs, jobs and models. Everything is computed by the server extension (mlaas4hep_lab.lab).
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  MainAreaWidget,
  showDialog
} from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { FileDialog, IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import {
  INotebookTracker,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';
import { LabIcon, SidePanel } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { requestAPI, send, setServerSettings } from './api';
import { h, note } from './dom';
import { InspectPanel, inspectId } from './inspect';
import { IServiceState, JobsSection, LabConfig } from './jobs';
import { ModelsSection } from './models';
import { IRun, RunsCompare, RunsSection } from './runs';

const CATEGORY = 'MLaaS4HEP';
const ROOT_TYPE = 'mlaas4hep-root';
const FILES_TYPE = 'mlaas4hep-files-txt';
const MARKER = 'mlaas4hep-lab-submission:';

namespace CommandIDs {
  export const newLab = 'mlaas4hep:new-lab';
  export const newLabFromFiles = 'mlaas4hep:new-lab-from-files';
  export const openDashboard = 'mlaas4hep:open-dashboard';
  export const inspect = 'mlaas4hep:inspect';
  export const showSidebar = 'mlaas4hep:show-sidebar';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
<g class="jp-icon3" fill="#616161"><rect x="3" y="13" width="3" height="8"/><rect x="7.5" y="7" width="3" height="14"/>
<rect x="12" y="3" width="3" height="18"/><rect x="16.5" y="10" width="3" height="11"/></g>
<path class="jp-icon-accent2" fill="none" stroke="#e45756" stroke-width="1.6" d="M2 16 C 7 5, 12 1, 21 12"/></svg>`;
const ROOT_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
<path class="jp-icon3" fill="#616161" d="M6 2h8l5 5v15H6z" opacity=".35"/><g class="jp-icon3" fill="#616161">
<rect x="8" y="14" width="2" height="5"/><rect x="11" y="10" width="2" height="9"/><rect x="14" y="12" width="2" height="7"/></g></svg>`;

export const m4hIcon = new LabIcon({ name: 'mlaas4hep:icon', svgstr: ICON_SVG });
const rootIcon = new LabIcon({ name: 'mlaas4hep:root-file', svgstr: ROOT_SVG });

interface IStatus {
  version: string;
  voila: boolean;
  jobs: IServiceState;
  models: IServiceState;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlaas4hep-lab:plugin',
  description: 'MLaaS4HEP in JupyterLab: launcher, .root files, runs, jobs and models',
  autoStart: true,
  requires: [IDocumentManager, IDefaultFileBrowser, INotebookTracker],
  optional: [ILauncher, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    browser: IDefaultFileBrowser,
    notebooks: INotebookTracker,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    setServerSettings(app.serviceManager.serverSettings);
    app.docRegistry.addFileType({
      name: ROOT_TYPE, displayName: 'ROOT file', extensions: ['.root'], mimeTypes: ['application/octet-stream'],
      contentType: 'file', fileFormat: 'base64', icon: rootIcon
    });
    app.docRegistry.addFileType({
      name: FILES_TYPE, displayName: 'files.txt (ROOT files list)', extensions: [], pattern: '^files.*\\.txt$',
      mimeTypes: ['text/plain'], contentType: 'file', fileFormat: 'text', icon: m4hIcon
    });

    const selected = (suffix?: string) => [...browser.selectedItems()].filter(m => !suffix || m.name.endsWith(suffix)).map(m => m.path);
    const openMain = (content: Widget) => {
      const main = new MainAreaWidget({ content });
      main.id = content.id;
      content.id = `${content.id}-content`;
      main.title.label = content.title.label;
      main.title.caption = content.title.caption;
      main.title.icon = m4hIcon;
      app.shell.add(main, 'main');
      app.shell.activateById(main.id);
    };
    const fail = (title: string, err: unknown) =>
      showDialog({ title, body: String((err as Error).message || err), buttons: [Dialog.okButton()] });

    /** Write the Lab notebook beside the data, open it and run its first cell. */
    async function newLab(paths: string[]): Promise<void> {
      let answer: { path: string; ready: boolean; note: string };
      try {
        answer = await send('POST', 'new-lab', { paths });
      } catch (err) {
        await fail('No new Lab', err);
        return;
      }
      // the file browser shows the data the Lab is on, beside its new notebook
      await browser.model.cd(`/${PathExt.dirname(answer.path)}`);
      const widget = await docManager.openOrReveal(answer.path);
      if (!(widget instanceof NotebookPanel)) {
        return;
      }
      if (!answer.ready) {
        await showDialog({ title: 'Fill in the labels', body: answer.note, buttons: [Dialog.okButton()] });
        return;
      }
      await widget.context.ready;
      await widget.sessionContext.ready;
      widget.content.activeCellIndex = 0;
      await NotebookActions.run(widget.content, widget.sessionContext);
    }

    app.commands.addCommand(CommandIDs.newLab, {
      label: args => (args.paths || args.fromBrowser ? 'New MLaaS4HEP Lab' : 'New MLaaS4HEP Lab…'),
      caption: 'A notebook with the Lab (branches, cuts, training, deploy) on a files.txt or a folder of ROOT files',
      icon: args => (args.isPalette ? undefined : m4hIcon),
      execute: async args => {
        let paths = args.fromBrowser ? selected() : (args.paths as string[] | undefined);
        if (!paths) {
          const picked = await FileDialog.getOpenFiles({
            manager: docManager,
            title: 'New MLaaS4HEP Lab: pick a files.txt, a folder, or .root files',
            defaultPath: browser.model.path,
            filter: m => (m.type === 'directory' || /\.(txt|root)$/.test(m.name) ? {} : null)
          });
          if (!picked.button.accept || !picked.value) {
            return;
          }
          paths = picked.value.map(m => m.path);
        }
        await newLab(paths);
      }
    });
    app.commands.addCommand(CommandIDs.newLabFromFiles, {
      label: 'New MLaaS4HEP Lab from these files',
      icon: m4hIcon,
      execute: () => newLab(selected('.root'))
    });
    app.commands.addCommand(CommandIDs.inspect, {
      label: 'Inspect',
      caption: 'Trees, branches and histograms of this ROOT file',
      icon: rootIcon,
      execute: args => {
        const paths = args.path ? [String(args.path)] : selected('.root');
        for (const path of paths) {
          const id = inspectId(path);
          if ([...app.shell.widgets('main')].some(w => w.id === id)) {   // one panel per file
            app.shell.activateById(id);
          } else {
            openMain(new InspectPanel(path));
          }
        }
      }
    });
    app.commands.addCommand(CommandIDs.openDashboard, {
      label: 'Open MLaaS4HEP dashboard',
      caption: 'The Voila dashboard (notebooks/dashboard.ipynb): the Lab on example data',
      icon: args => (args.isPalette ? undefined : m4hIcon),
      execute: async () => {
        try {
          const [status, dash] = await Promise.all([
            requestAPI<IStatus>('status'),
            requestAPI<{ path: string; voila: string }>('dashboard')
          ]);
          if (status.voila) {
            window.open(dash.voila, '_blank');
          } else {
            await docManager.openOrReveal(dash.path);
          }
        } catch (err) {
          await fail('No dashboard', err);
        }
      }
    });

    // the sidebar: runs, jobs, models
    const sidebar = new SidePanel();
    sidebar.id = 'mlaas4hep-sidebar';
    sidebar.title.icon = m4hIcon;
    sidebar.title.caption = 'MLaaS4HEP: runs, jobs, models';
    sidebar.addClass('m4h-sidebar');
    const runs = new RunsSection((picked: IRun[]) => openMain(new RunsCompare(picked)));
    const jobs = new JobsSection(() => labConfig(notebooks));
    const models = new ModelsSection();
    const header = h('div', { class: 'm4h-sidebar-head' }, h('b', {}, 'MLaaS4HEP'));
    sidebar.header.addWidget(new Widget({ node: header }));
    sidebar.addWidget(runs);
    sidebar.addWidget(jobs);
    sidebar.addWidget(models);
    app.shell.add(sidebar, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(sidebar, 'mlaas4hep-sidebar');
    }
    requestAPI<IStatus>('status')
      .then(status => {
        header.append(` ${status.version}`);
        jobs.setService(status.jobs);
        models.setService(status.models);
      })
      .catch(err => header.append(note(`the mlaas4hep-lab server extension does not answer: ${err.message}`, 'error')));

    app.commands.addCommand(CommandIDs.showSidebar, {
      label: 'Show MLaaS4HEP runs, jobs and models',
      execute: () => app.shell.activateById(sidebar.id)
    });

    if (launcher) {
      launcher.add({ command: CommandIDs.newLab, category: CATEGORY, rank: 1 });
      launcher.add({ command: CommandIDs.openDashboard, category: CATEGORY, rank: 2 });
    }
    if (palette) {
      for (const command of [CommandIDs.newLab, CommandIDs.openDashboard, CommandIDs.showSidebar]) {
        palette.addItem({ command, category: CATEGORY, args: { isPalette: true } });
      }
    }
    const rootItem = `.jp-DirListing-item[data-file-type="${ROOT_TYPE}"]`;
    app.contextMenu.addItem({ command: CommandIDs.inspect, selector: rootItem, rank: 1 });
    app.contextMenu.addItem({ command: CommandIDs.newLabFromFiles, selector: rootItem, rank: 2 });
    app.contextMenu.addItem({ command: CommandIDs.newLab, selector: `.jp-DirListing-item[data-file-type="${FILES_TYPE}"]`, rank: 1,
      args: { fromBrowser: true } });
    app.contextMenu.addItem({ command: CommandIDs.newLab, selector: '.jp-DirListing-item[data-isdir="true"]', rank: 3,
      args: { fromBrowser: true } });
  }
};

/** The Lab of the notebook in focus, read in its kernel (mlaas4hep_lab.lab.submission). */
async function labConfig(notebooks: INotebookTracker): Promise<LabConfig> {
  const panel = notebooks.currentWidget;
  if (!panel) {
    throw new Error('open the notebook whose Lab you want to submit (no notebook is open)');
  }
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    throw new Error(`${panel.title.label} has no kernel: start it and run the Lab's cell first`);
  }
  const code = 'from mlaas4hep_lab.lab.submission import print_submission as _m4h_print\n_m4h_print(globals())\ndel _m4h_print';
  const future = kernel.requestExecute({ code, silent: true, store_history: false, stop_on_error: false });
  let out = '';
  let error = '';
  future.onIOPub = msg => {
    const content = msg.content as any;
    if (msg.header.msg_type === 'stream') {
      out += content.text;
    } else if (msg.header.msg_type === 'error') {
      error = `${content.ename}: ${content.evalue}`;
    }
  };
  await future.done;
  const line = out.split('\n').find(l => l.startsWith(MARKER));
  if (!line) {
    throw new Error(error || `the kernel of ${panel.title.label} gave no Lab (is mlaas4hep-lab installed in it?)`);
  }
  const config = JSON.parse(line.slice(MARKER.length));
  if (config.error) {
    throw new Error(`${panel.title.label}: ${config.error}`);
  }
  return config;
}

export default plugin;
