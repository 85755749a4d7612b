# The CPT trainer: NVIDIA's PyTorch container (CUDA, cuDNN, NCCL, apex and Transformer
# Engine built for its torch) with megatron-core 0.16.1 and agentcpt. Build from the repo root:
#   docker build -f docker/trainer.Dockerfile -t agentcpt-trainer .
# megatron-core 0.16.1 supports Transformer Engine 2.9 to 2.11 (its own metadata: >=2.9.0a0,
# <2.12.0); the build stops if the base image ships another TE, so a newer base is a
# deliberate change. Run on a GPU node:
#   docker run --gpus all --ipc=host -v "$PWD:/data" agentcpt-trainer /data/configs/cpt/qwen3_1p7b.yaml
FROM nvcr.io/nvidia/pytorch:25.12-py3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 AGENTCPT_DATA_DIR=/data \
    CUDA_DEVICE_MAX_CONNECTIONS=1
WORKDIR /opt/agentcpt
COPY pyproject.toml README.md ./
COPY synth ./synth
COPY pipelines ./pipelines
COPY api ./api
COPY pretrain ./pretrain
COPY agentcpt ./agentcpt
COPY configs ./configs
COPY bench/gpu_check.sh ./bench/gpu_check.sh
# Keep the container's own CUDA torch and Transformer Engine: install agentcpt without
# dependencies, then what the trainer needs that the container lacks.
RUN pip install --no-deps . \
 && pip install "megatron-core==0.16.1" "transformers>=4.57" "pydantic>=2.8,<3" "pydantic-settings>=2.4" \
      "pyyaml>=6" "rich>=13" "pyarrow>=17" "duckdb>=1.1" "tokenizers>=0.20" "safetensors>=0.4" "psutil>=5.9" \
      "tensorboard>=2.16" \
 && python -c "import sys; from importlib.metadata import version as v; from packaging.version import Version as V; te, mc = V(v('transformer_engine')), v('megatron-core'); ok = V('2.9.0a0') <= te < V('2.12.0') and mc == '0.16.1'; print(f'transformer_engine {te}, megatron-core {mc}'); sys.exit(0 if ok else 'Transformer Engine must be >=2.9,<2.12 for megatron-core 0.16.1: pick the NGC release that ships it')" \
 && groupadd --system --gid 1000 agentcpt \
 && useradd --system --uid 1000 --gid agentcpt --create-home agentcpt \
 && mkdir -p /data && chown agentcpt:agentcpt /data
USER 1000:1000
WORKDIR /data
# torchrun starts the trainer once per GPU; multi-node through NNODES / NODE_RANK /
# MASTER_ADDR (see configs/cpt/slurm.sbatch).
ENTRYPOINT ["torchrun", "--nproc-per-node=gpu", "-m", "pretrain.train"]
CMD ["/opt/agentcpt/configs/cpt/qwen3_1p7b.yaml"]
