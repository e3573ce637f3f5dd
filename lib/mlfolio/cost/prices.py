"""The dated price table (``aws-us-east-1.yaml`` beside this module), typed and validated.

A table is read once at the edge (:func:`load`); the arithmetic in :mod:`mlfolio.cost.
arithmetic` takes the typed :class:`PriceTable` and never reads a file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlfolio.errors import ConfigError

DEFAULT_TABLE = Path(__file__).with_name("aws-us-east-1.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instance(_Strict):
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    usd_per_hour: float = Field(gt=0)
    baseline: float | None = Field(None, gt=0, le=1)  # burstable: sustained share per vCPU


class Spot(_Strict):
    typical_discount: float = Field(ge=0, lt=1)


class Serverless(_Strict):
    usd_per_gb_second: float = Field(gt=0)
    usd_per_request: float = Field(ge=0)
    memory_mb: list[int] = Field(min_length=1)


class Lambda(_Strict):
    usd_per_gb_second: float = Field(gt=0)
    usd_per_request: float = Field(ge=0)
    min_memory_mb: int = Field(gt=0)
    max_memory_mb: int = Field(gt=0)
    full_vcpu_memory_mb: int = Field(gt=0)


class PriceTable(_Strict):
    """One region's prices, with where they come from and when they were published."""

    region: str
    currency: str
    as_published: str
    read_on: str
    hours_per_month: float = Field(gt=0)
    sources: dict[str, str]
    training: dict[str, Instance]
    processing: dict[str, Instance]
    spot: Spot
    realtime: dict[str, Instance]
    data_usd_per_gb: float = Field(ge=0)
    serverless: Serverless
    lambda_: Lambda = Field(alias="lambda")
    path: str = ""  # the file it was read from (set by load)

    def jobs(self, job: str) -> dict[str, Instance]:
        """The instance prices of a SageMaker job kind: ``training`` or ``processing``."""
        if job not in ("training", "processing"):
            raise ConfigError(f"job kind {job!r}: expected 'training' or 'processing'")
        return self.training if job == "training" else self.processing

    def provenance(self) -> dict[str, object]:
        return {
            "file": self.path,
            "region": self.region,
            "currency": self.currency,
            "published": self.as_published,  # the month the prices were published
            "read_on": self.read_on,
            "sources": dict(self.sources),
        }


@cache
def load(path: Path = DEFAULT_TABLE) -> PriceTable:
    """The table in ``path`` (default: the packaged us-east-1 table); ConfigError naming
    the file and the field when it is not a valid price table."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"price table {path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"price table {path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"price table {path}: expected a mapping of sections")
    try:
        return PriceTable(**raw, path=str(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"price table {path}: {field}: {first['msg']}") from None
