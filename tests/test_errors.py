"""Every exception lib/mlfolio defines derives from errors.MlfolioError (one base: the CLI,
the server and the Lambda handler map it to an exit code or a status in one place)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import mlfolio
from mlfolio import errors

# Exceptions that must not derive from the base, and why.
OUTSIDE_THE_BASE = {
    # Unwinds kfp's local orchestrator from a signal handler: kfp catches Exception around
    # its tasks (and would go on to the exit task), so it is a BaseException, as
    # KeyboardInterrupt is.
    "mlfolio.pipeline.kfp.stop.Stopped",
}


def defined_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(mlfolio.__path__, "mlfolio."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{info.name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_of_the_package_derives_from_the_one_base():
    found = defined_exceptions()
    assert "mlfolio.errors.ConfigError" in found  # the walk reached the package
    outside = {name for name, cls in found.items() if not issubclass(cls, errors.MlfolioError)}
    assert outside - {"mlfolio.errors.MlfolioError"} == OUTSIDE_THE_BASE
