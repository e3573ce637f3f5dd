"""The stage chain as a SageMaker pipeline (``mlfolio compile sagemaker``; the SDK is the
``mlfolio[aws]`` extra).

- ``plan``: the steps derived from the stage declarations (:data:`mlfolio.graph.STAGES`)
  and the parameters, as plain data: wiring, cache keys, retries, timeouts, arguments;
  passwords taken out of the parameters
- ``definition``: the plan built with the SageMaker Python SDK (``sagemaker.mlops.workflow``)
  and written as the pipeline definition JSON
- ``entry``: what each step's container runs (``python -m mlfolio.pipeline.sagemaker.entry``)

Nothing here imports the SageMaker SDK at import time.
"""
