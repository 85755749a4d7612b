"""Where the trainer computes: one runtime per backend behind one interface (`runtime.base`).

* `runtime.gpu`: pure megatron-core on CUDA (NCCL, TP/PP/CP/EP, Transformer Engine, bf16,
  distributed optimizer, dist_checkpointing);
* `runtime.cpu`: the same `GPTModel` in one CPU process with a plain AdamW loop;
* `runtime.megatron_cpu`: the only module that knows CUDA is missing (megatron-core patches);
* `runtime.choose`: picks one for this machine.
"""
