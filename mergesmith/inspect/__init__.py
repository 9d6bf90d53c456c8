"""Inspect models and recipes before and after merging (a tool on the core; the core never imports it).

inspect_models(models, base=None, top_k=8)   per-tensor cosine, relative L2, delta norms, sign
                                             agreement and top-k energy (inspect/stats.py)
recipe_schedule(recipe)                      a recipe's resolved parameters per layer and filter,
                                             and for layer stacks which source layer lands where
summary_text / schedule_text                 terminal tables; plot.py draws both (matplotlib)
"""

from mergesmith.inspect.models import Inspection, TensorRow, inspect_models
from mergesmith.inspect.recipe import Schedule, Series, recipe_schedule

__all__ = ["Inspection", "TensorRow", "inspect_models", "Schedule", "Series", "recipe_schedule"]
