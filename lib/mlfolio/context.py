"""What a stage notebook works with: the frozen config, its run folder, its MLflow run.

Stages hand over files in the run folder, never kernel state: each stage reads its
upstream products by name and writes its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfolio import config as config_mod
from mlfolio import logs, products
from mlfolio.config import Config, project_dir
from mlfolio.errors import StageError
from mlfolio.files import read_json, write_json
from mlfolio.graph import PIPELINES

if TYPE_CHECKING:  # pandas is imported where a stage reads Parquet: ~0.3 s otherwise
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """One stage's view of the run: ``cfg``, ``run_dir`` and the MLflow parent run."""

    stage: str
    cfg: Config
    run_dir: Path
    parent_run_id: str = ""
    mlflow_run_id: str = ""
    interactive: bool = False  # no run folder given: a person running the notebook by hand
    log_file: Path | None = None  # where library logs and warnings go (logs/<stage>.log)
    _active: Any = field(default=None, repr=False)
    _unroute: Any = field(default=None, repr=False)

    def path(self, name: str) -> Path:
        """A file in the run folder."""
        return self.run_dir / name

    def _missing(self, name: str) -> StageError:
        """The error for a missing upstream product, naming the stage that writes it; the
        stage's MLflow run ends FAILED (an interactive kernel would leave it RUNNING)."""
        stage = products.producer(name)
        writer = next((s for kind in PIPELINES.values() for s in kind if s.name == stage), None)
        how = (
            f"run the {writer.name} stage ({writer.notebook}) first"
            if writer
            else "run the upstream stages first"
        )
        where = (
            "in JupyterLab, run the earlier notebooks top to bottom with the same run_dir"
            if self.interactive
            else "mlfolio run --from ... --run-dir ..."
        )
        self.fail()
        return StageError(self.stage, f"{self.path(name)} is missing: {how} ({where})")

    def read_json(self, name: str) -> Any:
        """An upstream stage's JSON product (fails naming the stage that must run first)."""
        path = self.path(name)
        if not path.exists():
            raise self._missing(name)
        return read_json(path)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path(name)
        write_json(path, {"stage": self.stage, "mlflow_run_id": self.mlflow_run_id, **payload})
        return path

    def read_parquet(self, name: str, categories: list[str] | None = None) -> pd.DataFrame:
        """An upstream Parquet product; ``categories``: those of its text columns read as
        pandas categories (one code a row, not a Python string)."""
        path = self.path(name)
        if not path.exists():
            raise self._missing(name)
        import pandas as pd

        if not categories:
            return pd.read_parquet(path)
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        text = [
            c
            for c in categories
            if c in schema.names
            and (
                pa.types.is_string(schema.field(c).type)
                or pa.types.is_large_string(schema.field(c).type)
            )
        ]
        return pd.read_parquet(path, read_dictionary=text or None)

    def read_parquet_sample(self, name: str, n: int, seed: int) -> pd.DataFrame:
        """The rows ``df.sample(n, random_state=seed).sort_index()`` picks of the upstream
        Parquet product ``name`` (all of them when it has ``n`` or fewer), read without
        the rest: only the picked rows become Python objects (2,000 of 6M training rows:
        3.1 s, against 13.5 s and over 1 GB more to read them all first)."""
        path = self.path(name)
        if not path.exists():
            raise self._missing(name)
        import numpy as np
        import pandas as pd
        import pyarrow.parquet as pq

        rows = pq.read_metadata(path).num_rows
        if rows <= n:
            return self.read_parquet(name)
        # the positions DataFrame.sample draws for a frame of ``rows`` rows; products are
        # written without an index (write_parquet), so a row's label is its position
        picked = np.sort(pd.RangeIndex(rows).to_series().sample(n=n, random_state=seed).values)
        frame = pq.read_table(path).take(picked).to_pandas()
        frame.index = pd.Index(picked)
        return frame

    def write_parquet(self, name: str, df: pd.DataFrame) -> Path:
        from mlfolio.data import write_parquet

        path = self.path(name)
        write_parquet(df, path)
        return path

    def read(self, product: Any) -> Any:
        """An upstream :class:`~mlfolio.products.Product`: a DataFrame for Parquet, the
        validated document (its pydantic model) for JSON; fails naming the stage to run."""
        path = self.path(product.path)
        if not path.exists():
            raise self._missing(product.path)
        if product.kind == "parquet":
            import pandas as pd

            return pd.read_parquet(path)
        return product.parse(read_json(path), str(path))

    def existing(self, product: Any) -> Path:
        """The path of an upstream product that must exist (fails naming its stage)."""
        path = self.path(product.path)
        if not path.exists():
            raise self._missing(product.path)
        return path

    def write(self, product: Any, payload: Any) -> Path:
        """Write this stage's ``product``; a JSON document is checked against its model
        first, so a stage cannot hand over a product its readers would reject."""
        if product.kind == "parquet":
            return self.write_parquet(product.path, payload)
        doc = {"stage": self.stage, "mlflow_run_id": self.mlflow_run_id, **payload}
        product.parse(doc, f"stage {self.stage} writing {product.path}")
        path = self.path(product.path)
        write_json(path, doc)
        return path

    def start_mlflow(self) -> str:
        """Open this stage's MLflow run (a child of the pipeline run when there is one)."""
        from mlfolio import tracking

        self._active = tracking.stage_run(
            self.cfg, self.stage, self.parent_run_id, self.run_dir, interactive=self.interactive
        )
        run = self._active.__enter__()
        self.mlflow_run_id = run.info.run_id
        return self.mlflow_run_id

    def finish(self) -> None:
        """Close the stage's MLflow run as FINISHED (the last cell of every notebook) and
        give logging back as it was."""
        if self._active is not None:
            self._active.__exit__(None, None, None)
            self._active = None
        if self._unroute is not None:
            self._unroute()
            self._unroute = None

    def fail(self) -> None:
        """Close the stage's MLflow run as FAILED (a cell raised)."""
        if self._active is not None:
            active, self._active = self._active, None
            failure = RuntimeError(f"stage {self.stage} failed")
            active.__exit__(RuntimeError, failure, None)  # the run's `with` ends FAILED

    def _on_error(
        self, shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None
    ) -> Any:
        """IPython hook (interactive only): a failing cell ends the stage's run FAILED."""
        self.fail()
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def open_stage(
    stage: str,
    params_file: str,
    run_dir: str = "",
    parent_run_id: str = "",
    overrides: dict[str, Any] | None = None,
    tracking: bool = True,
) -> StageContext:
    """The setup cell of every stage notebook: load and validate the parameters, find the
    run folder (``runs/interactive-<experiment>`` when none is given), send library logs
    and warnings to ``logs/<stage>.log`` there (mlfolio's warnings stay on the page) and
    open the MLflow run. Relative paths resolve against the project root, not the working
    directory."""
    cfg = config_mod.load(params_file, overrides or None)
    folder = Path(run_dir) if run_dir else project_dir() / "runs" / f"interactive-{cfg.experiment}"
    if not folder.is_absolute():
        folder = project_dir() / folder
    folder.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        stage=stage,
        cfg=cfg,
        run_dir=folder.resolve(),
        parent_run_id=parent_run_id,
        interactive=not run_dir,
    )
    ctx.log_file = logs.stage_log(ctx.run_dir, stage)
    ctx._unroute = logs.route(ctx.log_file)
    if tracking:
        ctx.start_mlflow()
    if ctx.interactive:
        _end_failed_on_error(ctx)
    return ctx


def _end_failed_on_error(ctx: StageContext) -> None:
    """In an interactive IPython kernel, a cell that raises ends the stage's MLflow run
    FAILED instead of leaving it RUNNING (the runner does this itself for pipeline runs)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((Exception,), ctx._on_error)
