"""The ``mlaas4hep`` command: parses arguments into validated settings and calls the engine.

Compatible with the original ``workflow.py --files --labels --model --params --preproc --fout``:
``mlaas4hep workflow ...`` (or ``mlaas4hep --files ...`` with no sub-command) takes the same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from mlaas4hep_lab.cli_errors import EXIT_INTERRUPTED, describe_error, stdout_closed, traceback_requested
from mlaas4hep_lab.cluster.connect import using_dask
from mlaas4hep_lab.errors import ConfigError, TreeNotFoundError

__all__ = ["main", "build_parser"]


def _add_inputs(p: argparse.ArgumentParser, model: bool) -> None:
    p.add_argument("--files", required=True, help="files.txt: one ROOT file path or URL per line")
    p.add_argument("--labels", help="labels.txt: one label per line, in the order of files.txt (a regression needs none)")
    p.add_argument("--params", help="params.json (original keys plus ours; see README)")
    p.add_argument("--preproc", help="preproc.json: new branches and cuts")
    if model:
        p.add_argument("--model", help="model.py defining model(idim)")
    _add_dask(p)


def _add_dask(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask cluster: local or local:N (N worker processes here), tcp://HOST:PORT "
                   "(a running scheduler), gateway or gateway:N (Dask Gateway, as on the hub); "
                   "default: this process")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlaas4hep", description="Machine Learning as a Service for HEP")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the full Python traceback as well as the one-line message "
                        "(also MLAAS4HEP_TRACEBACK=1); may be given anywhere on the line")
    parser.add_argument("--debug", action="store_true",
                        help="log at INFO level and let errors propagate (the traceback, for a debugger)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    wf = sub.add_parser("workflow", help="specs pass, chunk creation and training (the original workflow.py)")
    _add_inputs(wf, model=True)
    wf.add_argument("--specs", help="specs.json to reuse (checked against the files), or where to write it")
    wf.add_argument("--fout", default="mlaas4hep-output", help="output folder (default: %(default)s)")
    wf.add_argument("--dry-run", action="store_true", help="build every chunk without training and report")
    wf.add_argument("--recompute-specs", action="store_true", help="ignore an existing specs file")
    wf.add_argument("--resume", action="store_true", help="continue from the checkpoint in --fout")
    wf.add_argument("--name", help="model name in the bundle (default: the model file's name)")

    sp = sub.add_parser("specs", help="run the first pass only and write specs.json")
    _add_inputs(sp, model=False)
    sp.add_argument("--fout", default="specs.json", help="where to write the specs (default: %(default)s)")

    ins = sub.add_parser("inspect", help="describe the trees and branches of a ROOT file")
    ins.add_argument("file", help="local path, root:// or http(s):// URL")
    ins.add_argument("--tree", help="only this tree (default: every TTree and RNTuple in the file)")

    ex = sub.add_parser("example", help="write example ROOT files (no download)")
    ex.add_argument("kind", choices=["higgs", "tth", "tth_tasks"])
    ex.add_argument("--out", default=None, help="folder (default: example/KIND)")
    ex.add_argument("--events", type=int, default=None, help="events in total over all files")
    ex.add_argument("--seed", type=int, default=42)

    pr = sub.add_parser("predict", help="score ROOT files with a model bundle (its own preprocessing)")
    pr.add_argument("bundle", help="bundle directory or .tar.gz")
    pr.add_argument("--files", nargs="+", required=True, help="ROOT files, or one files.txt")
    pr.add_argument("--out", default="scores.csv", help="scores with identifiers: .csv or .root; a missing "
                    "folder is created (default: %(default)s)")
    pr.add_argument("--tree", help="TTree path or RNTuple name to read in each file (default: the one the bundle "
                    "was trained on), e.g. dir/events")
    pr.add_argument("--submission", help="also write the Higgs challenge submission CSV (EventId,RankOrder,Class)")
    pr.add_argument("--threshold", type=float, help="score threshold for the submission (default: the bundle's best-AMS one)")
    pr.add_argument("--chunk-size", type=int, default=100_000)
    _add_dask(pr)

    rep = sub.add_parser("report", help="rebuild the training report (variable ranking, overtraining check, "
                         "input correlations, learning curve) of a finished run")
    rep.add_argument("out", help="the run's output folder (workflow --fout): holds bundle/ and report_sample.npz")
    rep.add_argument("--files", help="files.txt (or ROOT files, comma-separated) to re-read the test split from, "
                     "when the run has no report_sample.npz")
    rep.add_argument("--labels", help="labels.txt matching --files")
    rep.add_argument("--events", type=int, default=50_000, help="test and train events used (default: %(default)s)")
    rep.add_argument("--repeats", type=int, default=3, help="shuffles per feature for the ranking (default: %(default)s)")
    rep.add_argument("--seconds", type=float, default=60.0,
                     help="time budget of the ranking; fewer repeats, then events, beyond it (default: %(default)s)")

    demo = sub.add_parser("demo", help="write example data and train a model on it (the README's first command)")
    demo.add_argument("--out", default="mlaas4hep-demo", help="folder (default: %(default)s)")
    demo.add_argument("--kind", choices=["higgs", "tth", "tth_tasks"], default=None,
                      help="example data (default: higgs; tth_tasks for --task multiclass or regression)")
    demo.add_argument("--task", choices=["binary", "multiclass", "regression", "objects"], default="binary",
                      help="binary: signal vs background; multiclass: ttH vs ttbb vs tt+light; regression: "
                           "the true pT of the hadronic top; objects: ttH vs tt+jets with each collection a set of "
                           "objects (DeepSets) (default: %(default)s)")
    demo.add_argument("--events", type=int, default=None)
    demo.add_argument("--backend", choices=["keras", "torch", "sklearn", "xgboost"], default="keras",
                      help="model template to train (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=None)
    _add_remote_commands(sub)
    _add_serve(sub)
    _add_jobs(sub)
    return parser


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _events(specs) -> str:
    total = specs.events.get("total")
    return f"{total:,}" if total is not None else "(not recorded in this specs file)"


def _print_summary(summary: dict) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
        elif isinstance(value, dict):
            value = json.dumps(value)
        print(f"  {key.ljust(width)}  {value}")


def _workflow(args) -> int:
    from mlaas4hep_lab.pipeline import load_inputs

    if args.model and not args.dry_run:
        from mlaas4hep_lab.training.model_file import check_model_file

        check_model_file(args.model)  # a missing model.py or a syntax error: before the (long) specs pass
    inputs = load_inputs(args.files, args.labels, args.params, args.preproc)
    with using_dask(args.dask) as cluster:
        return _workflow_on(args, inputs, cluster)


def _workflow_on(args, inputs, cluster) -> int:
    from mlaas4hep_lab.pipeline import dry_run, ensure_specs

    if cluster is not None:
        print(f"dask: {cluster.n_workers} workers ({cluster.address}); dashboard {cluster.dashboard_link}")
    fout = Path(args.fout)
    specs_path = Path(args.specs) if args.specs else fout / "specs.json"
    specs = ensure_specs(inputs, specs_path, recompute=getattr(args, "recompute_specs", False), dask=cluster)
    print(f"specs: {specs.n_features} features ({len(specs.fkeys)} flat, {len(specs.jkeys)} jagged branches), "
          f"{_events(specs)} events after cuts -> {specs_path}")
    if args.dry_run or not args.model:
        if not args.dry_run:
            print("no --model given: building every chunk as --dry-run does", file=sys.stderr)
        summary = dry_run(inputs, specs, dask=cluster)
        print("chunks that training would use:")
        _print_summary(summary)
        return 0
    from mlaas4hep_lab.training.workflow import train

    out = train(inputs, specs, args.model, fout, resume=args.resume, name=args.name, dask=cluster)
    m = out.metrics
    print(f"trained {m.get('backend')} model on {m.get('events_seen', 0):,} events"
          + (f" (stopped: {out.result.stopped})" if out.result.stopped else ""))
    print(_test_line(m))
    print(f"bundle: {out.bundle} (+ {out.bundle}.tar.gz); plots and metrics.json in {fout}")
    return 0


def _test_line(m: dict) -> str:
    """The test split's headline numbers, per task."""
    if m.get("task") == "multiclass":
        per = ", ".join(f"{c} {_num(v)}" for c, v in (m.get("auc_per_class") or {}).items())
        return (f"test split: {m.get('events', 0):,} events, macro AUC {_num(m.get('auc_macro'))} (one vs rest: "
                f"{per}), accuracy {_num(m.get('accuracy'))}")
    if m.get("task") == "regression":
        per = "; ".join(f"{t}: RMSE {_num(m['rmse'][t])}, MAE {_num(m['mae'][t])}, bias {_num(m['bias'][t])}"
                        for t in m.get("targets", []))
        return f"test split: {m.get('events', 0):,} events, {per}"
    return (f"test split: {m.get('n_events', 0):,} events, AUC {_num(m.get('auc'))}"
            + (f", weighted AUC {m['auc_weighted']:.4f}" if m.get("auc_weighted") is not None else "")
            + (f", best AMS {m['ams']:.3f} at score >= {m['ams_threshold']:.3f}" if m.get("ams") is not None else ""))


def _specs(args) -> int:
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs

    inputs = load_inputs(args.files, args.labels, args.params, args.preproc)
    with using_dask(args.dask) as cluster:
        specs = ensure_specs(inputs, args.fout, recompute=True, dask=cluster)
    print(f"wrote {args.fout}: {specs.n_features} features, {len(specs.fkeys)} flat and {len(specs.jkeys)} "
          f"jagged branches, {_events(specs)} events after cuts")
    return 0


def _inspect(args) -> int:
    from mlaas4hep_lab.data.reader import inspect_file

    try:
        print(inspect_file(args.file, args.tree), flush=True)
    except BrokenPipeError:
        # `mlaas4hep inspect FILE | head`: the reader left; send the rest (and Python's final flush) nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _example(args) -> int:
    from mlaas4hep_lab.data import datasets

    out = args.out or f"example/{args.kind}"
    ds = datasets.write_example(args.kind, out, args.events, seed=args.seed)
    print(f"wrote {len(ds.files)} files to {ds.directory}: {', '.join(p.name for p in ds.files)}")
    print(f"  files.txt {ds.files_txt}\n  labels.txt {ds.labels_txt}\n  params.json {ds.params_json}")
    if ds.preproc_json:
        print(f"  preproc.json {ds.preproc_json}")
    return 0


def _predict(args) -> int:
    from mlaas4hep_lab.training.predict import score_files

    with using_dask(args.dask) as cluster:
        summary = score_files(args.bundle, args.files, args.out, submission=args.submission,
                              threshold=args.threshold, chunk_size=args.chunk_size, tree=args.tree, dask=cluster)
    print(f"scored {summary['events']:,} events from {summary['files']} files -> {args.out}"
          + (f"; submission -> {args.submission}" if args.submission else ""))
    return 0


def _report(args) -> int:
    from mlaas4hep_lab.training.report import rebuild_report

    files = args.files.split(",") if args.files and not args.files.endswith(".txt") else args.files
    labels = args.labels.split(",") if args.labels and not args.labels.endswith(".txt") else args.labels
    m = rebuild_report(args.out, files, labels, max_events=args.events, repeats=args.repeats,
                       max_seconds=args.seconds)
    info = m["report"]
    print(f"report of {args.out}: {info['events_test']:,} test and {info['events_train']:,} train events; "
          f"plots in {Path(args.out) / 'plots'}, numbers in {Path(args.out) / 'metrics.json'}")

    def p(value) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    print(f"overtraining check (Kolmogorov-Smirnov p-value, train vs test): signal {p(m['ks_pvalue_signal'])}, "
          f"background {p(m['ks_pvalue_background'])}")
    print(f"variable ranking (test AUC {_num(info['ranking_baseline_auc'])} drop when shuffled, "
          f"{info['ranking_events']:,} events x {info['ranking_repeats']} repeats):")
    for i, row in enumerate(m["ranking"][:15], 1):
        native = f"   {info['native_importance']} {row['native']:.4f}" if row.get("native") is not None else ""
        print(f"  {i:3d}. {row['feature']:<32s} {_num(row['importance'])} +- {_num(row['importance_std'])}{native}")
    if len(m["ranking"]) > 15:
        print(f"  ... {len(m['ranking']) - 15} more in metrics.json")
    return 0


def _demo(args) -> int:
    from mlaas4hep_lab.data import datasets

    out = Path(args.out)
    kind = args.kind or {"binary": "higgs", "objects": "tth"}.get(args.task, "tth_tasks")
    if args.task == "objects" and args.backend not in ("keras", "torch"):
        raise ConfigError(f"--task objects trains a network on sets of objects: --backend keras or torch, not "
                          f"{args.backend}", key="backend")
    if args.task in ("multiclass", "regression") and kind != "tth_tasks":
        raise ConfigError(f"--task {args.task} trains on the tth_tasks example (three classes, truth branches); "
                          f"drop --kind {kind}", key="task")
    ds = datasets.write_example(kind, out / "data", args.events)
    print(f"example data: {len(ds.files)} files in {ds.directory}")
    from mlaas4hep_lab.training.model_file import template_path

    params_file = ds.params_regression if args.task == "regression" else ds.params_json
    params = json.loads(Path(params_file).read_text())
    if args.task == "objects":
        params["layout"] = "objects"
    else:
        params["task"] = args.task
    if args.epochs is not None:
        params["epochs"] = args.epochs
    params_path = out / "params.json"
    params_path.write_text(json.dumps(params, indent=1))
    model = out / "model.py"
    template = {"binary": args.backend, "objects": f"{args.backend}_deepsets"}.get(args.task,
                                                                                f"{args.backend}_{args.task}")
    model.write_text(template_path(template).read_text())
    print(f"model: {model} (from the {template} template); params: {params_path}")
    ns = argparse.Namespace(files=str(ds.files_txt), labels=str(ds.labels_txt), params=str(params_path),
                            preproc=str(ds.preproc_json) if ds.preproc_json else None, model=str(model),
                            specs=None, fout=str(out / "output"), dry_run=False, recompute_specs=True,
                            resume=False, name=f"{kind}-{args.task}-{args.backend}" if args.task != "binary"
                            else f"{kind}-{args.backend}", dask=None)
    return _workflow(ns)


# --- client of the inference service: push, models, predict-remote -----------------------------

def _add_remote_commands(sub) -> None:
    def service(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", required=True, help="the inference service, e.g. http://127.0.0.1:8083")
        p.add_argument("--token", help="token (default: env MLAAS4HEP_TOKEN, else JUPYTERHUB_API_TOKEN)")

    push = sub.add_parser("push", help="upload a model bundle to the inference service")
    push.add_argument("bundle", help="bundle directory or .tar.gz")
    service(push)
    push.add_argument("--name", help="model name on the service (default: the bundle's)")
    push.add_argument("--version", help="version (default: the next number); an existing one is replaced")
    push.add_argument("--shared", action="store_true", help="let every user of the service predict with it")

    models = sub.add_parser("models", help="list the models on the inference service")
    service(models)
    models.add_argument("--name", help="only models with this name")
    models.add_argument("--tag", help="only models with this tag (latest, prod, ...)")
    models.add_argument("--json", action="store_true", help="print the service's JSON answer")

    rp = sub.add_parser("predict-remote", help="score ROOT files with a served model (raw events in batches)")
    rp.add_argument("model", help="model name (owner/name for a model another user shared)")
    service(rp)
    rp.add_argument("--files", nargs="+", required=True, help="ROOT files, or one files.txt")
    rp.add_argument("--out", default="scores.csv", help="CSV of scores (a multi-class or regression model: "
                    "one column per class or target); a missing folder is created (default: %(default)s)")
    rp.add_argument("--tree", help="tree to read (default: the model's)")
    rp.add_argument("--version", help="model version (default: latest)")
    rp.add_argument("--batch-size", type=int, default=2_000, help="events per request; halved when the service "
                    "says a request is too large (default: %(default)s)")
    rp.add_argument("--max-events", type=int, help="read at most this many events of each file")


def _client(args):
    from mlaas4hep_lab.serving.client import Client

    return Client(args.url, token=args.token)


def _push(args) -> int:
    answer = _client(args).upload(args.bundle, name=args.name, version=args.version, shared=args.shared)
    if not isinstance(answer, dict) or "ref" not in answer:
        print(json.dumps(answer, indent=1))
        return 0
    print(f"uploaded {answer['ref']} version {answer.get('version')} ({answer.get('backend')} model, "
          f"{answer.get('runtime')} runtime, {len(answer.get('features') or [])} features"
          + (", shared" if answer.get("shared") else "") + f"); tags {answer.get('tags')}")
    return 0


def _models(args) -> int:
    answer = _client(args).models(name=args.name, tag=args.tag)
    rows = answer.get("models", answer) if isinstance(answer, dict) else answer
    if args.json or not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        print(json.dumps(answer, indent=1))
        return 0
    from mlaas4hep_lab.data.reader import format_table

    header = ["ref", "latest", "versions", "tags", "backend", "runtime", "shared"]

    def cell(value) -> str:
        if isinstance(value, dict):
            return ",".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            return ",".join(map(str, value))
        return "" if value is None else str(value)

    table = [[cell(r.get(h)) for h in header] for r in rows]
    print(format_table(table, header) if table else "(no models)")
    return 0


def _predict_remote(args) -> int:
    from mlaas4hep_lab.serving.client import score_files
    from mlaas4hep_lab.training.predict import prepare_output

    prepare_output(args.out)
    try:
        summary = score_files(_client(args), args.model, args.files, args.out, tree=args.tree,
                              batch_size=args.batch_size, version=args.version, max_events=args.max_events)
    except TreeNotFoundError as err:  # the reader's hint names params 'branch', which this command has not
        raise TreeNotFoundError(err.tree, err.path, err.available, hint=(
            "give --tree PATH (a TTree path such as dir/events, or an RNTuple's name)")) from None
    print(f"scored {summary['events']:,} events from {summary['files']} files with {args.model} -> {args.out}")
    return 0


# options both services take, read into the fields of serving.settings.AuthSettings they share
_SERVICE_OPTIONS = ("prefix", "oidc_issuer", "oidc_audience", "oidc_jwks_url", "oidc_username_claim",
                    "oidc_groups_claim", "allow_anonymous", "log_level")


def _add_service_options(parser) -> None:
    parser.add_argument("--prefix", help="URL prefix of every route [JUPYTERHUB_SERVICE_PREFIX]")
    parser.add_argument("--oidc-issuer", help="accept OIDC access tokens (JWT) of this issuer "
                        "[MLAAS4HEP_OIDC_ISSUER]")
    parser.add_argument("--oidc-audience", help="audience the JWTs must carry [MLAAS4HEP_OIDC_AUDIENCE]")
    parser.add_argument("--oidc-jwks-url", help="JWKS URL (default: from the issuer's discovery document) "
                        "[MLAAS4HEP_OIDC_JWKS_URL]")
    parser.add_argument("--oidc-username-claim", help="claim naming the user (default: preferred_username) "
                        "[MLAAS4HEP_OIDC_USERNAME_CLAIM]")
    parser.add_argument("--oidc-groups-claim", help="claim listing the user's groups (default: groups) "
                        "[MLAAS4HEP_OIDC_GROUPS_CLAIM]")
    parser.add_argument("--no-auth", dest="allow_anonymous", action="store_true", default=None,
                        help="development only: requests without a token act as user 'anonymous' "
                        "[MLAAS4HEP_NO_AUTH]")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="run the inference service (TFaaS + Open Inference Protocol v2) over a model store",
                        description="Defaults come from environment variables (see mlaas4hep_lab/serving/settings.py); "
                                    "a flag wins over its variable.")
    sv.add_argument("--host", help="interface to listen on (default: 127.0.0.1) [MLAAS4HEP_HOST]")
    sv.add_argument("--port", type=int, help="port (default: 8083) [MLAAS4HEP_PORT]")
    sv.add_argument("--grpc-port", type=int, help="also serve the Open Inference Protocol over gRPC (Triton's "
                    "GRPCInferenceService, for tritonclient.grpc) on this port (default: 0 = no gRPC) "
                    "[MLAAS4HEP_GRPC_PORT]")
    sv.add_argument("--store", help="model store folder (default: mlaas4hep-store) [MLAAS4HEP_STORE]")
    sv.add_argument("--tokens", help='tokens file {"user": "token", ...} [MLAAS4HEP_TOKENS]')
    sv.add_argument("--runtime", choices=["auto", "onnx", "tf"], help="preferred runtime (default: auto = ONNX "
                    "when the bundle has model.onnx, else the TF SavedModel) [MLAAS4HEP_RUNTIME]")
    sv.add_argument("--no-batching", dest="batching", action="store_false", default=None,
                    help="one forward pass per request [MLAAS4HEP_BATCHING=0]")
    sv.add_argument("--max-batch", type=int, help="rows per forward pass (default: 512) [MLAAS4HEP_MAX_BATCH]")
    sv.add_argument("--max-delay-ms", type=float, help="how long a batch waits for more requests (default: 0) "
                    "[MLAAS4HEP_MAX_DELAY_MS]")
    sv.add_argument("--queue-size", type=int, help="requests waiting per model before 503 (default: 4096)")
    sv.add_argument("--inference-threads", type=int, help="threads running forward passes (default: 2)")
    sv.add_argument("--runtime-threads", type=int, help="intra-op threads of each model (default: 1)")
    sv.add_argument("--inline-rows", type=int, help="requests of at most this many rows that find a tiny model "
                    "idle are scored on the event loop: lower latency for a lone client, less throughput "
                    "under load (default: 0) [MLAAS4HEP_INLINE_ROWS]")
    sv.add_argument("--workers", type=int, help="server processes sharing the store (default: 1)")
    sv.add_argument("--admin", action="append", dest="admins", metavar="USER", help="a user who may change the "
                    "service's log settings (repeat for more; hub admins are admins) [MLAAS4HEP_SERVE_ADMINS]")
    sv.add_argument("--max-body", type=int, dest="max_body_bytes", help="JSON body cap in bytes (default: 1 MiB)")
    sv.add_argument("--max-upload", type=int, dest="max_upload_bytes", help="upload cap in bytes (default: 500 MiB)")
    sv.add_argument("--max-tar-members", type=int, help="members of an uploaded tarball (default: 10000) "
                    "[MLAAS4HEP_MAX_TAR_MEMBERS]")
    sv.add_argument("--max-tar-member-bytes", type=int, help="bytes of one unpacked member (default: 2 GiB) "
                    "[MLAAS4HEP_MAX_TAR_MEMBER_BYTES]")
    sv.add_argument("--max-tar-bytes", type=int, help="unpacked bytes of an upload (default: 2 GiB) "
                    "[MLAAS4HEP_MAX_TAR_BYTES]")
    sv.add_argument("--max-tar-ratio", type=float, help="unpacked per uploaded byte above which an upload is a "
                    "compression bomb (default: 100; 0: no check) [MLAAS4HEP_MAX_TAR_RATIO]")
    sv.add_argument("--quota-bytes", type=int, help="unpacked bytes of models each user may store (default: "
                    "10 GiB; 0: no limit) [MLAAS4HEP_QUOTA_BYTES]")
    sv.add_argument("--quota-versions", type=int, help="model versions each user may store (default: 100; "
                    "0: no limit) [MLAAS4HEP_QUOTA_VERSIONS]")
    _add_service_options(sv)


def _serve(args) -> int:
    from mlaas4hep_lab.serving.settings import Settings

    names = ("host", "port", "runtime", "batching", "max_batch", "max_delay_ms", "queue_size", "inference_threads",
             "runtime_threads", "inline_rows", "workers", "max_body_bytes", "max_upload_bytes", "max_tar_members",
             "max_tar_member_bytes", "max_tar_bytes", "max_tar_ratio", "quota_bytes", "quota_versions", "grpc_port",
             "admins", *_SERVICE_OPTIONS)
    settings = Settings.from_env(store_dir=args.store, tokens_file=args.tokens,
                                 **{n: getattr(args, n) for n in names})
    if not settings.auth_configured():
        print("error: no way to authenticate users: give --tokens FILE, --oidc-issuer/--oidc-jwks-url, run as a "
              "JupyterHub service (JUPYTERHUB_API_URL), or --no-auth for development", file=sys.stderr)
        return 2
    from mlaas4hep_lab.auth import Authenticator
    from mlaas4hep_lab.serving.app import serve

    methods = Authenticator.from_settings(settings).methods  # a broken tokens file fails here, before binding
    print(f"mlaas4hep inference service on http://{settings.host}:{settings.port}{settings.prefix} "
          f"(store {settings.store_dir}, runtime {settings.runtime}, "
          f"batching {'on' if settings.batching else 'off'}, auth: {', '.join(methods)})"
          + (f"; gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port else ""), flush=True)
    serve(settings)
    return 0


def _add_jobs(sub) -> None:
    jb = sub.add_parser("jobs", help="run the jobs service (the MLaaS4HEP server): training jobs over HTTP",
                        description="Defaults come from environment variables (see mlaas4hep_lab/jobs/settings.py); "
                                    "a flag wins over its variable.")
    jb.add_argument("--host", help="interface to listen on (default: 127.0.0.1) [MLAAS4HEP_JOBS_HOST]")
    jb.add_argument("--port", type=int, help="port (default: 8084) [MLAAS4HEP_JOBS_PORT]")
    jb.add_argument("--state", help="folder of the jobs table and the job folders (default: mlaas4hep-jobs) "
                    "[MLAAS4HEP_JOBS_STATE]")
    jb.add_argument("--tokens", help='tokens file {"user": "token", ...} [MLAAS4HEP_TOKENS]')
    jb.add_argument("--data-root", action="append", dest="data_roots", metavar="DIR",
                    help="folder whose files jobs may read by path (repeat for more); without one, only "
                    "root:// and http(s):// URLs [MLAAS4HEP_JOBS_DATA_ROOTS]")
    jb.add_argument("--allow-host", action="append", dest="allowed_hosts", metavar="HOST",
                    help="a host input URLs may name although its address is loopback, link-local or private "
                    "(a site's XRootD redirector): name, name:port, IP, [v6]:port or CIDR network; repeat for "
                    "more [MLAAS4HEP_JOBS_ALLOWED_HOSTS, comma-separated]")
    jb.add_argument("--max-concurrent", type=int, help="jobs running at once; more wait in the queue (default: 1)")
    jb.add_argument("--memory-limit", help="address-space limit of each job, e.g. 4GB; 0: none (default: 8GB)")
    jb.add_argument("--time-limit", type=float, help="wall-clock seconds of each job run; 0: none (default: 3600)")
    jb.add_argument("--cpu-limit", type=float, help="CPU seconds of each job run (default: time limit x threads)")
    jb.add_argument("--threads", type=int, help="threads of the numerical libraries in each job (default: 1)")
    jb.add_argument("--push-url", help="the inference service finished bundles are pushed to "
                    "[MLAAS4HEP_JOBS_PUSH_URL]")
    jb.add_argument("--admin", action="append", dest="admins", metavar="USER", help="a user who sees every job")
    jb.add_argument("--submit-scope", help="scope a hub token needs to submit (default: custom:jobs:submit; "
                    "'' for none)")
    jb.add_argument("--max-resumes", type=int, help="times a job whose worker died while the service was down "
                    "restarts from its checkpoint (default: 1)")
    jb.add_argument("--isolation", choices=("auto", "users+bwrap", "users", "bwrap", "none"),
                    help="what jobs run under: an account per user (users, needs root), a bubblewrap sandbox "
                    "(bwrap), both (users+bwrap), or none; auto: users+bwrap as root, bwrap otherwise "
                    "(default: auto) [MLAAS4HEP_JOBS_ISOLATION]")
    jb.add_argument("--allow-unisolated", action="store_true", default=None,
                    help="run jobs even when they cannot be isolated (otherwise the service refuses them with "
                    "503) [MLAAS4HEP_JOBS_ALLOW_UNISOLATED=1]")
    jb.add_argument("--hide", action="append", dest="hide_paths", metavar="PATH",
                    help="a folder or file jobs must not see (the inference service's store, the hub's state); "
                    "repeat for more; the state folder and the tokens file always are hidden [MLAAS4HEP_JOBS_HIDE]")
    _add_service_options(jb)


def _jobs(args) -> int:
    from mlaas4hep_lab.jobs.settings import Settings

    names = ("host", "port", "max_concurrent", "memory_limit", "time_limit", "cpu_limit", "threads", "push_url",
             "submit_scope", "max_resumes", "isolation", "allow_unisolated", "hide_paths", *_SERVICE_OPTIONS)
    settings = Settings.from_env(state_dir=args.state, tokens_file=args.tokens, data_roots=args.data_roots,
                                 admins=args.admins, allowed_hosts=args.allowed_hosts,
                                 **{n: getattr(args, n) for n in names})
    if not settings.auth_configured():
        print("error: no way to authenticate users: give --tokens FILE, --oidc-issuer/--oidc-jwks-url, run as a "
              "JupyterHub service (JUPYTERHUB_API_URL), or --no-auth for development", file=sys.stderr)
        return 2
    from mlaas4hep_lab.auth import Authenticator
    from mlaas4hep_lab.jobs.app import serve

    methods = Authenticator.from_settings(settings).methods  # a broken tokens file fails here, before binding
    limits = (f"memory {settings.memory_limit / 2**30:.3g} GiB" if settings.memory_limit else "no memory limit") + \
        (f", {settings.time_limit:g} s" if settings.time_limit else ", no time limit")
    print(f"mlaas4hep jobs service on http://{settings.host}:{settings.port}{settings.prefix} "
          f"(state {settings.state_dir}, {settings.max_concurrent} at once, {limits}, "
          f"data roots: {', '.join(map(str, settings.data_roots)) or 'none'}, auth: {', '.join(methods)})", flush=True)
    from mlaas4hep_lab.jobs.isolation import resolve

    isolation = resolve(settings)   # probed once; the service reuses the result
    print(isolation.describe(), flush=True)
    if isolation.mode == "none":
        print(f"WARNING: training jobs are not isolated: {isolation.reason}. A user's model.py would run as this "
              "service, able to read its tokens, its database and other users' jobs. "
              + ("--allow-unisolated was given: jobs run anyway." if isolation.ready else
                 "Jobs are refused (503) until isolation works (bubblewrap installed, the service run as root) "
                 "or the service is started with --allow-unisolated."), file=sys.stderr, flush=True)
    serve(settings)
    return 0


_COMMANDS = {"workflow": _workflow, "specs": _specs, "inspect": _inspect, "example": _example,
             "predict": _predict, "report": _report, "demo": _demo,
             "push": _push, "models": _models, "predict-remote": _predict_remote, "serve": _serve,
             "jobs": _jobs}


def main(argv: list[str] | None = None) -> int:
    """Run the command; every error ends as one line on stderr and a non-zero status (see cli_errors)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, when Keras is used
    show_traceback, argv = traceback_requested(list(sys.argv[1:] if argv is None else argv))
    original = ("--files", "--labels", "--params", "--model", "--preproc", "--fout")
    if not any(a in _COMMANDS for a in argv) and any(a.split("=", 1)[0] in original for a in argv):
        # the original workflow.py call, without a sub-command (global options stay in front)
        at = next(i for i, a in enumerate(argv) if a.split("=", 1)[0] in original)
        argv.insert(at, "workflow")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        if show_traceback:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, BrokenPipeError) and stdout_closed():
            return 0  # `mlaas4hep ... | head`: the reader has what it wanted
        if show_traceback:
            traceback.print_exc()
        message, status = describe_error(err)
        print(f"error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
