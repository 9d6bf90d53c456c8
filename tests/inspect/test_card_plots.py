"""``merge --card-plots``: the schedule and the inputs' heatmap as PNGs in OUT/plots, linked from the card."""

from __future__ import annotations

from cli_helpers import cli, write_recipe
from inspect_png import png_size
from recipes import slerp_recipe


def test_card_plots_draws_both_pictures_and_links_them(capsys, tmp_path, llama_family):
    base, ft1 = llama_family[:2]
    recipe = write_recipe(tmp_path, slerp_recipe(base, ft1, 4, "float32"))
    out = tmp_path / "out"
    code, _, err = cli(capsys, "merge", recipe, out, "--quiet", "--card-plots")
    assert code == 0, err
    for name in ("schedule.png", "inputs.png"):
        width, height = png_size(out / "plots" / name)
        assert width > 200 and height > 100
    card = (out / "README.md").read_text()
    assert "## Pictures" in card and "(plots/schedule.png)" in card and "(plots/inputs.png)" in card
    assert card.count("## Pictures") == 1
    assert not list(out.glob("plots/.*"))  # no staged leftovers


def test_card_plots_refuses_a_lineage(capsys, tmp_path, llama_family):
    base, ft1 = llama_family[:2]
    stage = f"name: C\nmerge_method: linear\nmodels: [{{model: {base}, parameters: {{weight: 1}}}}]\n"
    final = "merge_method: linear\nmodels: [{model: C, parameters: {weight: 1}}]\n"
    recipe = write_recipe(tmp_path, stage + "---\n" + final)
    code, out, err = cli(capsys, "merge", recipe, tmp_path / "out", "--quiet", "--card-plots")
    assert code == 2 and "is a lineage; --card-plots" in err
    assert not (tmp_path / "out").exists()
