"""agentcpt.pretrain — tokenization, HF<->megatron-core conversion, the CPT trainer."""
