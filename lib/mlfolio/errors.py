"""The exceptions mlfolio raises: one base, one subclass per kind of failure.

Each class says how it ends a command (``exit_code``: 2 for bad input the user can fix
before anything runs, 1 for a failure on the way, 128 + N for signal N) and how a server
answers it (``http_status``). The CLI turns any of them into its exit code in one place
(:func:`mlfolio.cli.main`); the model server and the Lambda handler into their status.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"^([^:/]+://[^:@/]*):[^@/]*@")


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``: how a store is named in messages."""
    return _PASSWORD.sub(r"\1:***@", url)


class MlfolioError(Exception):
    """Base of every error mlfolio raises on purpose."""

    exit_code: int = 1
    http_status: int = 500


class ConfigError(MlfolioError):
    """A parameter file or override is invalid (names the file and key path)."""

    exit_code = 2
    http_status = 400


class DataValidationError(MlfolioError):
    """Input data does not match the expected schema (names the column)."""

    http_status = 400


class DataFileError(DataValidationError):
    """A data file cannot be read as a table: empty, or not in its encoding (names the
    file, and the byte offset and line of the first undecodable byte). Exit 2: the file
    or ``data.encoding`` needs fixing before anything runs."""

    exit_code = 2


class StageError(MlfolioError):
    """A pipeline stage failed; carries the stage name and failing cell."""

    def __init__(self, stage: str, message: str, cell_index: int | None = None):
        self.stage = stage
        self.cell_index = cell_index
        self.detail = message
        where = f" (cell {cell_index})" if cell_index is not None else ""
        super().__init__(f"stage '{stage}' failed{where}: {message}")


class ExplainError(MlfolioError):
    """A model's attributions cannot be mapped back to its raw columns (names the step)."""


class DataChangedError(MlfolioError):
    """The data source no longer has the content hash a run recorded (names data.uri and
    both hashes); nothing was run."""

    exit_code = 2


class NotReproduced(MlfolioError):
    """``mlfolio reproduce`` re-executed a run and got different results (lists them)."""


class StudyStorageError(MlfolioError):
    """The tuning study's storage cannot be opened (names ``tuning.storage`` and the URL,
    its password masked)."""


class RegistryError(MlfolioError):
    """The model registry refused an operation or a model could not be found."""


class LockTimeoutError(RegistryError):
    """A registry lock (promotion, retraining claim) stayed held past its timeout."""

    http_status = 409


class LockUnavailableError(RegistryError):
    """A registry lock could not be taken at all: its store (``registry.lock_uri``, the
    registry itself) is unreachable or refused (names where, password masked)."""

    http_status = 503


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


class ServeError(MlfolioError):
    """The model cannot be served: unknown URI, no signature, unsupported model."""


class ModelLoadError(ServeError):
    """A bundled model (Lambda package, SageMaker folder) could not be loaded (names the
    directory or variable)."""


class NotCompilable(ServeError):
    """The fitted pipeline has a step the compiled scorer cannot reproduce; the server
    falls back to the sklearn pipeline (never reaches a user)."""


class RequestError(MlfolioError):
    """A request the server or the Lambda handler refuses; ``status`` is the HTTP status
    (400 unless given), the message names the field, ``headers`` go with the answer."""

    exit_code = 2

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.http_status = status
        self.headers = headers or {}


class GateNotPassed(MlfolioError):
    """``mlfolio gate-status``: the run finished, but its gate did not pass or its model
    version was not promoted (names the reason): do not deploy."""


class RunNotFinished(MlfolioError):
    """``mlfolio gate-status``: the run failed or was interrupted (names the stage)."""

    exit_code = 3


class ApprovalPending(MlfolioError):
    """``mlfolio gate-status``: the gate passed and the version waits for ``mlfolio
    approve`` (registry.require_approval): not yet, rather than no."""

    exit_code = 4


class ApprovalRefused(MlfolioError):
    """``mlfolio approve``/``reject`` changed nothing: the version is not pending approval,
    or the champion moved since its gate (names the version, the champion and who moved it)."""


class OverBudget(MlfolioError):
    """A tuning trial created after the study's ``n_trials`` were all claimed (workers on
    other machines raced for the last ones): Optuna's ``catch=`` ends it FAIL at once,
    before any fitting; it never leaves the tune workers."""


class TrackingError(MlfolioError):
    """The tracking store did not answer or refused a write (server stopped, SQLite file
    locked or read-only); names ``tracking.tracking_uri`` (password masked), the call and
    the cause."""


class RecordError(MlfolioError):
    """The run folder's record (manifest, index, a stage's HTML) could not be written;
    names the file and the cause (e.g. no space left on device)."""
