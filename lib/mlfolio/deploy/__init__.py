"""Deployment targets of the deploy stage: local, kubernetes, aws_lambda, sagemaker.

``TARGETS`` maps each name of ``deploy.targets`` to its function (one signature, see
:mod:`mlfolio.deploy.targets`); the deploy stage looks its targets up there.
"""

from mlfolio.deploy.targets import TARGETS
from mlfolio.errors import DeployError

__all__ = ["TARGETS", "DeployError"]  # DeployError: imported from here by every target
