"""mergesmith: merge LLM checkpoints from mergekit-style YAML recipes, streamed with flat memory."""

__version__ = "0.1.0"
