"""``mergesmith moe``: Mixtral- and Qwen2-MoE-style mixtures of experts from dense fine-tunes of one
base, from mergekit-moe's YAML. A tool on the core: it reads inputs, writes outputs and names
models as merges do; the core never imports it."""
