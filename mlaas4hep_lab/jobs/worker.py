"""The process of one job: ``python -m mlaas4hep_lab.jobs.worker JOB_DIR``.

Reads ``JOB_DIR/job.json`` (written by the service), sets its own resource limits before anything heavy is
imported, then runs the package's training workflow (:func:`mlaas4hep_lab.training.workflow.train`) on the
job's files with the job's ``model.py``: specs, chunked training with a checkpoint after each chunk, metric
events in ``output/metrics.jsonl``, evaluation and the bundle in ``output/bundle`` (+ ``.tar.gz``).

It reports in ``JOB_DIR/status.json`` (replaced atomically): status, phase, progress, latest metrics, and at
the end the result or a clear error. Its output (one line per training step, tracebacks) goes to the job
log. The user's model.py runs here, never in the service: under its owner's system account, in a sandbox
where the service isolates its jobs (see :mod:`mlaas4hep_lab.jobs.runner` for what it can and cannot touch).
The ``pid`` it reports is its own as it sees it (inside the sandbox's PID namespace, a small number); the
service identifies the process by the pid it started.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mlaas4hep_lab.jobs.runner import OUTPUT_DIR, SPEC_FILE, STATUS_FILE, write_json_atomic

__all__ = ["main", "Reporter", "set_limits"]

_MEMORY_WORDS = ("cannot allocate memory", "can't allocate memory", "bad_alloc", "out of memory",
                 "unable to allocate", "failed to allocate", "resource temporarily unavailable")


def set_limits(memory: int, cpu: float) -> None:
    """RLIMIT_AS (bytes) and RLIMIT_CPU (seconds; SIGXCPU at the limit, SIGKILL 10 s later); 0: none."""
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    if cpu:
        soft = max(1, int(cpu))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 10))


class Reporter:
    """Writes ``status.json``; subscribed to the training's metric events."""

    def __init__(self, job_dir: Path, attempt: int):
        self.path = job_dir / STATUS_FILE
        self.state: dict[str, Any] = {"status": "running", "pid": os.getpid(), "attempt": attempt,
                                      "phase": "starting", "progress": 0.0, "detail": {}, "metrics": {},
                                      "started": time.time()}
        self._last = 0.0

    def write(self, **changes: Any) -> None:
        self.state.update(changes, updated=time.time())
        write_json_atomic(self.path, self.state)

    def __call__(self, event) -> None:
        detail = {"epoch": event.epoch, "chunk": event.chunk, "n_chunks": event.n_chunks,
                  "events_seen": event.events_seen, "events_total": event.events_total,
                  "events_per_second": round(event.events_per_second, 1)}
        metrics = {k: v for k, v in event.to_dict()["metrics"].items() if v is None or isinstance(v, (int, float))}
        fraction = event.events_seen / event.events_total if event.events_total else 0.0
        progress = 0.05 + 0.85 * min(1.0, fraction)
        phase = "training"
        if event.kind == "end":
            phase, progress = "writing bundle", 0.95
        elif event.kind == "start":
            progress = max(self.state["progress"], 0.05)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        where = "" if event.kind in ("start", "end") else f" epoch {event.epoch} chunk {event.chunk + 1}/{event.n_chunks}"
        print(f"[{time.strftime('%H:%M:%S')}] {event.kind}{where} events {event.events_seen}/{event.events_total} "
              f"{shown} {event.message}".rstrip(), flush=True)
        now = time.monotonic()
        # every event of a small job, at most two writes a second on a fast one
        if event.kind in ("start", "end", "epoch") or now - self._last > 0.5:
            self._last = now
            self.write(phase=phase, progress=round(max(progress, self.state["progress"]), 4), detail=detail,
                       metrics=metrics or self.state["metrics"])


def _memory_error(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it was raised from is an allocation failure (the package wraps errors
    of model.py in ConfigError, naming the line)."""
    for _ in range(10):
        if err is None:
            return False
        if isinstance(err, MemoryError) or any(w in f"{type(err).__name__}: {err}".lower() for w in _MEMORY_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _human(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def run(job_dir: Path, spec: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """The training workflow of one job; returns the final report."""
    from mlaas4hep_lab.pipeline import ensure_specs, load_inputs
    from mlaas4hep_lab.training.workflow import train

    out = job_dir / OUTPUT_DIR
    out.mkdir(exist_ok=True)
    params = dict(spec["params"], verbose=0)
    reporter.write(phase="specs", progress=0.01)
    print(f"job {spec['id']} of {spec['owner']}: {len(spec['files'])} files, model {spec['model_kind']}"
          + (" (resuming from the checkpoint)" if spec.get("resume") else ""), flush=True)
    from mlaas4hep_lab.jobs.netpolicy import enforce_in_worker

    # input addresses again, here: a name may resolve elsewhere now (DNS rebinding), a server may redirect
    enforce_in_worker(spec["files"], params.get("redirector") or "", spec.get("allowed_hosts") or ())
    inputs = load_inputs(spec["files"], spec["labels"], params, spec.get("preproc") or None)
    specs = ensure_specs(inputs, out / "specs.json", recompute=not spec.get("resume"), progress=False)
    print(f"specs: {specs.n_features} features, {specs.events.get('total')} events after cuts", flush=True)
    reporter.write(phase="training", progress=0.05)
    from mlaas4hep_lab.training.events import EventBus

    bus = EventBus()
    bus.subscribe(reporter)
    result = train(inputs, specs, job_dir / "model.py", out, resume=bool(spec.get("resume")), bus=bus,
                   progress=False, name=spec.get("name") or f"job-{spec['id']}")
    metrics = {k: v for k, v in result.metrics.items() if v is None or isinstance(v, (int, float, str))}
    print(f"done: bundle {result.bundle}; test AUC {metrics.get('auc')}", flush=True)
    return {"status": "succeeded", "phase": "done", "progress": 1.0, "metrics": metrics,
            "bundle": str(Path(f"{result.bundle}.tar.gz").relative_to(job_dir)), "finished": time.time()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mlaas4hep_lab.jobs.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    spec = json.loads((job_dir / SPEC_FILE).read_text())
    limits = spec.get("limits", {})
    memory, cpu = int(limits.get("memory") or 0), float(limits.get("cpu") or 0)
    set_limits(memory, cpu)  # first: the user's model.py must not run before its limits are in place
    reporter = Reporter(job_dir, int(spec.get("attempt", 1)))

    def over_cpu(signum, frame):  # SIGXCPU: report while we can (SIGKILL follows 10 s later)
        reporter.write(status="failed", phase="failed", finished=time.time(),
                       error=f"CPU time limit of {cpu:g} s exceeded; ask for a smaller job (fewer events or "
                             f"epochs) or a service with a larger limit")
        os._exit(152)

    signal.signal(signal.SIGXCPU, over_cpu)
    reporter.write()
    try:
        final = run(job_dir, spec, reporter)
    except BaseException as err:  # noqa: BLE001 - every ending is reported; the traceback goes to the log
        traceback.print_exc()
        if _memory_error(err):
            message = (f"memory limit of {_human(memory)} exceeded ({type(err).__name__}: {err})\nUse a smaller "
                       "chunk_size or fewer events, or ask for a service with a larger limit"
                       if memory else f"out of memory ({type(err).__name__}: {err})")
        else:
            message = f"{type(err).__name__}: {err}"
        reporter.write(status="failed", phase="failed", error=message, finished=time.time())
        return 1
    reporter.write(**final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
