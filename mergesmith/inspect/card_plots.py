"""Pictures in a merged model's card (``mergesmith merge --card-plots``): the recipe's schedule
(resolved parameters per layer and filter, or the layer-stack map) and the inputs' similarity
heatmap (cosine of their deltas against the base, per layer and module type).

Drawn after the merge, from the recipe's plan (headers only) and one more read of the inputs;
each PNG and the card are written whole (staged, then renamed), into ``OUT/plots/``.
"""

from __future__ import annotations

from pathlib import Path

from mergesmith.io.staging import replace_text
from mergesmith.output.card import with_eval_section

HEADING = "## Pictures"
PLOTS = "plots"


def _models(recipe) -> tuple[list[str], str | None]:
    """The models to compare (the base left out when there is one) and the base."""
    base = recipe.base_model
    models = [k for k in recipe.referenced_models() if k != base]
    return models, base


def add_card_plots(out, recipe, *, allow_pickle: bool = False, progress: bool = False) -> list[Path]:
    """Draw the schedule of ``recipe`` (what ``mergesmith.merge`` ran into ``out``) and, where there
    are two models or one model and a base, the inputs' heatmap; link both from the card. Returns
    the PNG paths written."""
    from mergesmith.api import plan, read_recipe
    from mergesmith.inspect.models import inspect_models
    from mergesmith.inspect.plot import plot_inspection, plot_schedule, require_matplotlib
    from mergesmith.inspect.recipe import schedule_of

    require_matplotlib()
    out = Path(out)
    src = read_recipe(recipe)
    folder = out / PLOTS
    folder.mkdir(exist_ok=True)
    lines = [HEADING, ""]
    written = []
    schedule = schedule_of(plan(src, allow_pickle=allow_pickle), src.recipe, src.name)
    plot_schedule(schedule, folder / "schedule.png")
    written.append(folder / "schedule.png")
    lines += [
        f"![the recipe's schedule]({PLOTS}/schedule.png)",
        "",
        "The recipe's resolved parameters across the output layers (and, for a layer stack, which "
        "source layer lands where).",
        "",
    ]
    models, base = _models(src.recipe)
    if len(models) >= 2 or (models and base):
        inspection = inspect_models(models, base, progress=progress, base_dir=src.base_dir, allow_pickle=allow_pickle)
        plot_inspection(inspection, folder / "inputs.png")
        written.append(folder / "inputs.png")
        what = "their deltas against the base" if base else "their weights"
        lines += [
            f"![the inputs compared]({PLOTS}/inputs.png)",
            "",
            f"How alike the merged models are, per layer and module type (cosine of {what}).",
            "",
        ]
    card_path = out / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {out.resolve().name}\n"
    replace_text(card_path, with_eval_section(card, "\n".join(lines).rstrip() + "\n", heading=HEADING))
    return written
