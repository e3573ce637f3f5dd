"""The stage chain on Kubeflow Pipelines v2 (needs the ``mlfolio[kfp]`` extra).

- ``spec``: the pipeline built with the kfp SDK and compiled (``mlfolio compile kfp``)
- ``components``: one lightweight Python component per task; each calls ``steps``
- ``steps``: what a task does (start, a stage in its own folder, a tuning worker, finish)
- ``local``: ``--engine kfp-local`` (kfp's SubprocessRunner, then the audit folder from
  the task artifacts) and ``--engine kfp`` (submit to a cluster)

Nothing here imports kfp at import time.
"""
