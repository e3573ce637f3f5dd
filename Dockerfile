# The mlfolio image: every task of the Kubeflow pipeline (`mlfolio compile kfp` names it
# in kfp.image, default mlfolio:latest) and `mlfolio serve` run in it. It holds the
# project: mlfolio with its pinned dependencies and the kfp extra, the stage notebooks,
# the parameter files and data/. Build from the project root:
#   docker build -t mlfolio:latest .
# Serve with it:  docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#   mlfolio:latest mlfolio serve --model models:/churn-classifier@champion --host 0.0.0.0
# (deploy.kubernetes writes a slimmer serving-only image with its own Dockerfile.)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MLFOLIO_PROJECT_DIR=/opt/mlfolio \
    OMP_WAIT_POLICY=PASSIVE \
    MPLBACKEND=Agg

RUN groupadd --system --gid 10001 mlfolio \
    && useradd --system --uid 10001 --gid 10001 --create-home \
       --home-dir /home/mlfolio --shell /usr/sbin/nologin mlfolio

WORKDIR /opt/mlfolio
# Dependencies first: a change to a notebook or a parameter file keeps this layer.
COPY pyproject.toml constraints.txt README.md ./
COPY lib ./lib
RUN pip install --no-cache-dir -c constraints.txt ".[kfp]" \
    && rm -rf build lib/*.egg-info
COPY notebooks ./notebooks
COPY parameters ./parameters
COPY data ./data

# Bytecode was compiled by pip; the root filesystem may be read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/mlfolio
EXPOSE 8080
# No ENTRYPOINT: KFP gives each task its own command, and `docker run IMAGE mlfolio ...`
# runs any mlfolio command.
CMD ["mlfolio", "--help"]
