"""Multi-stage lineages in mergekit-multi's format, built in dependency order and resumed.

A lineage file holds several YAML documents, each a recipe plus ``name:``; a stage uses another by
writing its name where a model goes (A+B → C, C+B → D, D+E → F). The final merge is the one
unnamed document, else the one stage no other stage uses: it is written to OUT, every named
stage to ``<intermediate dir>/<name>``.

``parse``: documents → :class:`Lineage` (stages in dependency order, final last), pure.
``run``: ``plan_lineage`` plans every stage before any exists; ``merge_lineage`` builds the stages
whose output is missing or stale.
"""

from mergesmith.lineage.parse import (
    FINAL_LABEL,
    Lineage,
    Stage,
    is_lineage,
    is_lineage_file,
    model_references,
    parse_lineage,
    read_lineage,
    resolved_recipe,
    stage_of,
)
from mergesmith.lineage.run import (
    MERGED,
    STAGE_RECORD,
    UP_TO_DATE,
    StageOutcome,
    default_intermediate_dir,
    fingerprints,
    merge_lineage,
    plan_lineage,
)

__all__ = [
    "FINAL_LABEL",
    "MERGED",
    "STAGE_RECORD",
    "UP_TO_DATE",
    "Lineage",
    "Stage",
    "StageOutcome",
    "default_intermediate_dir",
    "fingerprints",
    "is_lineage",
    "is_lineage_file",
    "merge_lineage",
    "model_references",
    "parse_lineage",
    "plan_lineage",
    "read_lineage",
    "resolved_recipe",
    "stage_of",
]
