"""Deployment targets of the deploy stage: local, kubernetes, aws_lambda, sagemaker."""

from mlfolio.errors import MlfolioError


class DeployError(MlfolioError):
    """A deployment target failed; the message names the target, call and resource."""
