"""Request and response models of Triton's management routes (:mod:`.triton`): model configuration,
statistics, repository index/load/unload and log settings, for the OpenAPI schema and the strict parsing
of their bodies. The responses are Triton's JSON forms (``model_config.proto`` / ``grpc_service.proto``
field names)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlaas4hep_lab.serving import ServingError
from mlaas4hep_lab.serving.bodies import load_json

__all__ = ["ModelConfig", "TensorConfig", "ModelStatsResponse", "ModelStat", "InferStats", "BatchStat",
           "DurationStat", "RepositoryEntry", "RepositoryIndexRequest", "LoadRequest", "UnloadRequest",
           "LoadResponse", "LogSettings", "LogSettingsUpdate", "parse_optional_body", "inline_body_doc"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- model configuration ---------------------------------------------------------------------------
class TensorConfig(BaseModel):
    """An input or output of the configuration: ``dims`` without the batch axis."""

    name: str
    data_type: str = Field(description="model_config.proto DataType, e.g. TYPE_FP32")
    dims: list[int]
    reshape: dict[str, list[int]] | None = Field(default=None, description="{\"shape\": []}: one value per row")
    optional: bool | None = Field(default=None, description="true when the model also takes other inputs "
                                  "instead (features or an objects-layout model's named inputs)")


class ModelConfig(BaseModel):
    """Triton's model configuration (the JSON form of ``ModelConfig``)."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[TensorConfig]
    output: list[TensorConfig]
    instance_group: list[dict[str, Any]] = []
    dynamic_batching: dict[str, Any] | None = None
    parameters: dict[str, dict[str, str]] = {}


# -- statistics --------------------------------------------------------------------------------------
class DurationStat(BaseModel):
    count: int
    ns: int


class InferStats(BaseModel):
    success: DurationStat
    fail: DurationStat
    queue: DurationStat
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat
    cache_hit: DurationStat
    cache_miss: DurationStat


class BatchStat(BaseModel):
    batch_size: int
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat


class ModelStat(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch (0: none yet)")
    inference_count: int = Field(description="rows of successful requests")
    execution_count: int = Field(description="forward passes")
    inference_stats: InferStats
    batch_stats: list[BatchStat]


class ModelStatsResponse(BaseModel):
    model_stats: list[ModelStat]


# -- model repository ----------------------------------------------------------------------------------
class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY (loaded in this server process) or UNAVAILABLE")
    reason: str | None = None


class RepositoryIndexRequest(_Strict):
    ready: bool = Field(default=False, description="only the models ready for inference")


class LoadRequest(_Strict):
    parameters: dict[str, Any] | None = Field(default=None, description="none are supported (Triton's config "
                                              "and file: parameters are refused: upload models instead)")


class UnloadRequest(_Strict):
    parameters: dict[str, Any] | None = Field(default=None, description="unload_dependents (boolean)")


class LoadResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions loaded (load) or dropped from memory (unload)")


# -- log settings --------------------------------------------------------------------------------------
class LogSettings(BaseModel):
    log_file: str
    log_info: bool
    log_warning: bool
    log_error: bool
    log_verbose_level: int
    log_format: str


class LogSettingsUpdate(_Strict):
    """The settings to change (admins only); the others stay."""

    log_file: str | None = Field(default=None, description="read only: may only repeat the current value")
    log_info: bool | None = None
    log_warning: bool | None = None
    log_error: bool | None = None
    log_verbose_level: int | None = Field(default=None, ge=0)
    log_format: str | None = Field(default=None, description="default or ISO8601")


# -- bodies ----------------------------------------------------------------------------------------------
def parse_optional_body(body: bytes, model: type[BaseModel], max_depth: int) -> dict[str, Any]:
    """A JSON object body that may be empty (then ``{}``), checked against ``model``; returns the object
    as sent (only the keys given), 422 naming the wrong fields."""
    from pydantic import ValidationError

    from mlaas4hep_lab.serving.schemas import summarize

    if not body.strip():
        return {}
    obj = load_json(body, max_depth)
    if not isinstance(obj, dict):
        raise ServingError(f"body must be a JSON object ({model.__name__})", 422)
    try:
        model.model_validate(obj)
    except ValidationError as err:
        raise ServingError(f"invalid {model.__name__}: {summarize(err)}", 422) from None
    return obj


def inline_body_doc(model: type[BaseModel], required: bool = False) -> dict[str, Any]:
    """OpenAPI requestBody of a route that parses its own (flat) body with :func:`parse_optional_body`."""
    return {"requestBody": {"required": required, "content": {"application/json": {
        "schema": model.model_json_schema()}}}}
