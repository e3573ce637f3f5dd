"""conftest.require_service: a missing service skips a test on a developer's machine and
fails it under MLFOLIO_REQUIRE_SERVICES=1 (CI), in a test body and at module level alike."""

from __future__ import annotations

import pytest

from .conftest import REQUIRE_SERVICES

MISSING = """
from tests.conftest import require_module, require_program, require_service

{module_level}

def test_needs_a_database():
    require_service("PostgreSQL at 127.0.0.1:1", False, "connection refused")

def test_needs_a_program():
    require_program("no-such-program-mlfolio", "Debian: apt-get install it")

def test_needs_a_package():
    require_module("no_such_package_mlfolio", "the test reads it")

def test_has_what_it_needs():
    require_service("this machine", True, "never said")
"""


def run(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    require: str | None,
    module_level: str = "",
) -> pytest.RunResult:
    pytester.makepyfile(test_needs=MISSING.format(module_level=module_level))
    if require is None:
        monkeypatch.delenv(REQUIRE_SERVICES, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_SERVICES, require)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rsf")


def test_without_the_variable_a_missing_service_skips_saying_why(pytester, monkeypatch):
    result = run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*PostgreSQL at 127.0.0.1:1 is not usable: connection refused*",
            "*no-such-program-mlfolio is not usable: not on PATH (Debian: apt-get install it)*",
            "*'no_such_package_mlfolio' is not usable: the test reads it*",
        ]
    )


def test_with_the_variable_a_missing_service_fails_the_test(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "1")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "PostgreSQL at 127.0.0.1:1 is not usable: connection refused "
            f"({REQUIRE_SERVICES}=1: every service must be there)",
            "FAILED test_needs.py::test_needs_a_database*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_with_the_variable_a_module_level_requirement_fails_the_collection(pytester, monkeypatch):
    line = 'require_service("Chromium", False, "not on PATH")'
    skipped = run(pytester, monkeypatch, "0", module_level=line)
    skipped.assert_outcomes(skipped=1)
    failed = run(pytester, monkeypatch, "1", module_level=line)
    failed.assert_outcomes(errors=1)
    failed.stdout.fnmatch_lines(["*Chromium is not usable: not on PATH*"])
    assert failed.ret == pytest.ExitCode.INTERRUPTED
