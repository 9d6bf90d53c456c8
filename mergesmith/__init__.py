"""mergesmith: merge LLM checkpoints from mergekit-style YAML recipes, streamed with flat memory.

    import mergesmith
    mergesmith.plan("recipe.yml")            # what would happen, per tensor
    mergesmith.merge("recipe.yml", "out/")   # do it

The API is imported lazily so that ``mergesmith --help`` does not pay for torch.
"""

__version__ = "0.1.0"
__all__ = ["load_recipe", "merge", "plan"]


def __getattr__(name):
    if name in ("merge", "plan"):
        from mergesmith import api

        return getattr(api, name)
    if name == "load_recipe":
        from mergesmith.config.load import load_recipe

        return load_recipe
    raise AttributeError(f"module 'mergesmith' has no attribute {name!r}")
