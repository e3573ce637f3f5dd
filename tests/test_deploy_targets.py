"""deploy.TARGETS: one function per name that deploy.targets accepts, one signature."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

from mlfolio import deploy
from mlfolio.config import TARGET_NAMES, DeployConfig
from mlfolio.deploy import targets


def test_every_configurable_target_has_a_function_and_no_other():
    (literal,) = typing.get_args(DeployConfig.model_fields["targets"].annotation)
    assert typing.get_args(literal) == TARGET_NAMES == tuple(deploy.TARGETS)
    functions = {n.removeprefix("deploy_") for n in dir(targets) if n.startswith("deploy_")}
    assert functions == set(TARGET_NAMES)


def test_targets_share_one_signature():
    for name, fn in deploy.TARGETS.items():
        assert list(inspect.signature(fn).parameters) == ["ctx", "ref", "alias_uri", "out_dir"], (
            name
        )


def test_importing_the_targets_leaves_the_cloud_sdks_unimported():
    code = (
        "import json, sys; from mlfolio.deploy import TARGETS; "
        "print(json.dumps([m for m in ('boto3', 'sagemaker', 'kubernetes_validate') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
