"""Request and response models of the jobs service (pydantic), as the OpenAPI schema shows them.

A submission, as the original MLaaS4HEP server took it (``curl -d @submit.json .../submit``)::

    {"files": ["/data/higgs/signal.root", "root://eos.cms//store/bkg.root"],
     "labels": [1, 0],
     "model": "sklearn",                      # a template name, or the text of a model.py
     "params": {"chunk_size": 5000, "epochs": 2, "identifier": ["EventId"]},
     "preproc": {"flat_cut": {"PRI_met": {"cut": "PRI_met>10", "remove": "False"}}},
     "name": "higgs-gbt",
     "push": {"name": "higgs-gbt"}}           # optional: upload the bundle to the inference service
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlaas4hep_lab.serving.schemas import ErrorResponse

__all__ = ["SubmitRequest", "PushRequest", "SubmitResponse", "JobSummary", "JobDetail", "LogChunk",
           "DeleteResponse", "Health", "ErrorResponse", "BODY_MODELS"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PushRequest(_Strict):
    """Upload the bundle to the inference service when the job succeeds, with the submitter's token."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$",
                      description="model name on the inference service")
    url: str | None = Field(None, description="the inference service (default: the one the service is set up "
                                              "with; when it has one, no other is accepted)")
    shared: bool = Field(False, description="let every user of the inference service predict with it")


class SubmitRequest(_Strict):
    files: list[str] | str = Field(description="ROOT files: paths below the service's data roots, root:// or "
                                               "http(s):// URLs; a list, or files.txt's text (one per line)")
    labels: list[float] | str | None = Field(None, description="one label per file (binary: 1 signal, 0 "
                                                        "background; multiclass: 0..K-1), or labels.txt's text; "
                                                        "a regression (params task) needs none")
    model: str = Field(description="a template name (keras, torch, sklearn, xgboost) or the source of a "
                                   "model.py defining model(idim)")
    params: dict[str, Any] = Field(default_factory=dict, description="params.json")
    preproc: dict[str, Any] | None = Field(None, description="preproc.json: new branches and cuts")
    name: str | None = Field(None, max_length=128, description="a name for the job and its bundle")
    push: PushRequest | None = None


class SubmitResponse(BaseModel):
    id: str
    status: str
    url: str = Field(description="this job's route")
    warnings: list[str] = Field(default_factory=list)


class JobSummary(BaseModel):
    id: str
    owner: str
    name: str
    status: str = Field(description="queued, running, succeeded, failed, cancelled or interrupted")
    created: float
    started: float | None = None
    finished: float | None = None
    progress: float = Field(description="0 to 1")
    phase: str
    error: str | None = None


class JobDetail(JobSummary):
    detail: dict[str, Any] = Field(description="epoch, chunk, n_chunks, events_seen, events_total")
    metrics: dict[str, Any] = Field(description="the latest metrics (the test metrics once succeeded)")
    attempts: int
    bundle: bool = Field(description="whether GET /jobs/{id}/bundle has a bundle to give")
    push: dict[str, Any] | None = None
    push_result: dict[str, Any] | None = None
    files: list[str]
    labels: list[float]
    model: str | None = Field(None, description="template name, or 'model.py' for submitted source")
    params: dict[str, Any]
    preproc: dict[str, Any] | None = None


class LogChunk(BaseModel):
    text: str
    offset: int = Field(description="byte offset of the text in the log")
    next_offset: int = Field(description="pass it as ?offset= to get what follows")
    size: int = Field(description="size of the whole log")


class DeleteResponse(BaseModel):
    id: str
    status: str
    deleted: bool = Field(description="true: the job and its files are gone; false: it was cancelled")


class Health(BaseModel):
    live: bool
    queued: int
    running: int


BODY_MODELS = (SubmitRequest, PushRequest)
