"""Deployment targets of the deploy stage: local, kubernetes, aws_lambda, sagemaker."""

from mlfolio.errors import DeployError

__all__ = ["DeployError"]  # defined in mlfolio.errors; imported from here by every target
