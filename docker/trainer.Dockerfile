# The CPT trainer: NVIDIA's PyTorch container (CUDA, NCCL, Transformer Engine) with
# megatron-core and agentcpt. Build from the repo root:
#   docker build -f docker/trainer.Dockerfile -t agentcpt-trainer .
FROM nvcr.io/nvidia/pytorch:25.09-py3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 AGENTCPT_DATA_DIR=/data
WORKDIR /opt/agentcpt
COPY pyproject.toml README.md ./
COPY synth ./synth
COPY pipelines ./pipelines
COPY api ./api
COPY pretrain ./pretrain
COPY configs ./configs
# Keep the container's own CUDA build of torch: install agentcpt without dependencies,
# then the dependencies it needs that the container lacks.
RUN pip install --no-deps . \
 && pip install "megatron-core>=0.14" "transformers>=4.57" "pydantic>=2.8,<3" "pydantic-settings>=2.4" \
      "pyyaml>=6" "rich>=13" "pyarrow>=17" "duckdb>=1.1" "tokenizers>=0.20" "safetensors>=0.4" "psutil>=5.9" \
 && groupadd --system --gid 1000 agentcpt \
 && useradd --system --uid 1000 --gid agentcpt --create-home agentcpt \
 && mkdir -p /data && chown agentcpt:agentcpt /data
USER 1000:1000
WORKDIR /data
# torchrun launches `agentcpt cpt CONFIG` once per GPU; multi-node through
# NNODES / NODE_RANK / MASTER_ADDR (see configs/cpt/slurm.sbatch).
ENTRYPOINT ["torchrun", "--nproc-per-node=gpu", "-m", "pretrain.train"]
CMD ["/opt/agentcpt/configs/cpt/qwen3_1p7b.yaml"]
