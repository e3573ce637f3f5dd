"""The exceptions mlfolio raises: one base, one subclass per kind of failure."""

from __future__ import annotations


class MlfolioError(Exception):
    """Base of every error mlfolio raises on purpose."""


class ConfigError(MlfolioError):
    """A parameter file or override is invalid (names the file and key path)."""


class DataValidationError(MlfolioError):
    """Input data does not match the expected schema (names the column)."""


class StageError(MlfolioError):
    """A pipeline stage failed; carries the stage name and failing cell."""

    def __init__(self, stage: str, message: str, cell_index: int | None = None):
        self.stage = stage
        self.cell_index = cell_index
        where = f" (cell {cell_index})" if cell_index is not None else ""
        super().__init__(f"stage '{stage}' failed{where}: {message}")


class RegistryError(MlfolioError):
    """The model registry refused an operation or a model could not be found."""


class LockTimeoutError(RegistryError):
    """A registry lock (promotion, retraining claim) stayed held past its timeout."""


class RunInterrupted(MlfolioError):
    """SIGINT or SIGTERM stopped a run; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message)


class DeployError(MlfolioError):
    """A deployment target failed; the message names the target, call and resource."""


class ManifestError(DeployError):
    """Kubernetes manifests failed validation; ``problems`` holds one line per field at fault."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  - {p}" for p in problems))
