"""The model server (see :mod:`mlfolio.serve.app`); being split into modules."""

from mlfolio.serve.app import *  # noqa: F403
from mlfolio.serve.app import (  # noqa: F401
    NotCompilable,
    RequestError,
    ServeError,
    _scoring_error,
    _steps,
    _text_to_float,
)
