"""The project root and the base every parameter section shares."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

SQL_PREFIXES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+", "mssql", "oracle")


def project_dir() -> Path:
    """The project root: ``$MLFOLIO_PROJECT_DIR``, else the checkout mlfolio is installed from."""
    env = os.environ.get("MLFOLIO_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").exists():
        return checkout
    return Path.cwd().resolve()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
