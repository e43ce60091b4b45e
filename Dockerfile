# One image for every service of docker-compose.yml but PostgreSQL: the Ray head (which runs the sweep
# drivers submitted as Ray jobs), the GPU Ray workers (which run the trials), the MLflow tracking server
# and optuna-dashboard. Its commands are `ray start … --block`, `mlflow server`, `optuna-dashboard` and `lrkv …`.
#
#   docker compose build                     # or: docker build -t lrkv-sweep .
#   docker run --rm lrkv-sweep lrkv cache --kind lrkv --rank 64
#
# The base brings CUDA and a CUDA build of torch; `pip install .` keeps that torch when it is inside
# pyproject's torch range (the GPU machines run torch 2.11 on Python 3.12).
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

WORKDIR /opt/lrkv-sweep
COPY pyproject.toml README.md ./
COPY kernels/ kernels/
COPY workers/ workers/
COPY orchestrator/ orchestrator/
COPY dashboards/ dashboards/
COPY sweeps/ sweeps/
# PostgreSQL drivers for Optuna's RDBStorage and MLflow's backend store: a plain postgresql:// URL means
# psycopg (3) under SQLAlchemy ≥ 2.1 and psycopg2 under 2.0, so both are here, whichever pip resolves.
RUN pip install . "psycopg[binary]" psycopg2-binary optuna-dashboard \
    && python -c "import torch, lrkv.orchestrator.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Run as an unprivileged user; /mlartifacts is the MLflow server's artifact store (a named volume
# takes this folder's owner when it is first created).
RUN (id -u lrkv >/dev/null 2>&1 || useradd --create-home --shell /bin/bash lrkv) \
    && mkdir -p /mlartifacts && chown lrkv /mlartifacts
USER lrkv
WORKDIR /home/lrkv

# MLflow, Ray GCS, optuna-dashboard, Ray dashboard / job API.
EXPOSE 5000 6379 8080 8265
CMD ["lrkv", "--help"]
