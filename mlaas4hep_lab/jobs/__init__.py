"""The jobs service (the MLaaS4HEP server, ours): training jobs submitted over HTTP, each in its own process.

Modules: :mod:`~mlaas4hep_lab.jobs.settings` (Settings), :mod:`~mlaas4hep_lab.jobs.schemas` (request and
response models), :mod:`~mlaas4hep_lab.jobs.submission` (checks of a submission),
:mod:`~mlaas4hep_lab.jobs.db` (the SQLite jobs table), :mod:`~mlaas4hep_lab.jobs.runner` (worker processes,
limits, process groups), :mod:`~mlaas4hep_lab.jobs.worker` (what runs in a job's process),
:mod:`~mlaas4hep_lab.jobs.service` (queue, monitor, restart recovery, pushes) and
:mod:`~mlaas4hep_lab.jobs.app` (``create_app(settings)``, routes).

Importing this package loads no web framework: ``create_app`` is imported on first use.
"""

from __future__ import annotations

from mlaas4hep_lab.extras import lazy_attributes

__all__ = ["create_app", "Settings"]

_LAZY = {"create_app": "mlaas4hep_lab.jobs.app", "Settings": "mlaas4hep_lab.jobs.settings"}


__getattr__ = lazy_attributes(__name__, _LAZY)
