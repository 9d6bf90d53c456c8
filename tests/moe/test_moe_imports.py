"""Planning reads headers only, so it never imports torch (about a second here): `mergesmith plan`
stays quick, and `mergesmith moe` starts copying while its router thread imports torch."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import write_recipe
from moe_configs import moe_config, write_config

PROBE = """
import sys
from mergesmith.api import plan
from mergesmith.moe.build import plan_file
import mergesmith.cli.main, mergesmith.cli.moe_cmd, mergesmith.moe.stages
plan(sys.argv[1])
plan_file(sys.argv[2])
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def test_planning_a_merge_and_a_moe_imports_no_torch(llama_family, tmp_path):
    base, ft1, ft2 = llama_family
    recipe = write_recipe(
        tmp_path,
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {ft1}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {ft2}\n    parameters: {{weight: 0.5, density: 0.5}}\n",
    )
    moe = write_config(tmp_path, moe_config(base, [ft1, ft2]))
    done = subprocess.run([sys.executable, "-c", PROBE, str(recipe), str(moe)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
