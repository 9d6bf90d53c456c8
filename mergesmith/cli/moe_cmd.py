"""``mergesmith moe CONFIG OUT``: a mixture of experts from dense models (mergekit-moe's YAML)."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "moe",
        help="build a mixture-of-experts model from dense fine-tunes",
        description="Build a Mixtral or Qwen2-MoE model from a mergekit-moe YAML config into OUT.",
    )
    p.add_argument("config", help="mergekit-moe YAML: base_model, gate_mode, experts with prompts")
    p.add_argument("out", help="output directory (appears only when the build is complete)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--seed", type=int, default=0, help="seed of random gates and noise_scale (default 0); per tensor")
    p.add_argument("--device", default="cpu", help="where the hidden-state pass runs: cpu (default) or cuda[:N]")
    p.add_argument(
        "--shard-size", default="5GB", metavar="SIZE", help="largest output shard, with a unit (default 5GB)"
    )
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (they can run code)")
    p.add_argument(
        "--lora-cache",
        metavar="DIR",
        help="where base+adapter experts are merged and reused "
        "(default $MERGESMITH_CACHE/lora, else ~/.cache/mergesmith/lora)",
    )
    p.add_argument(
        "--intermediate-dir",
        metavar="DIR",
        help="where merge stages named by the MoE config are built (a lineage file; default OUT.stages)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=run)


def run(args) -> int:
    from mergesmith.cli.merge_cmd import _lora_cache
    from mergesmith.moe.build import build_moe
    from mergesmith.moe.stages import read_moe_lineage

    config = args.config
    if (lineage := read_moe_lineage(args.config)) is not None:
        config = _build_stages(args, lineage, _lora_cache(args))
    plan = build_moe(
        config,
        args.out,
        force=args.force,
        seed=args.seed,
        device=args.device,
        shard_size=args.shard_size,
        allow_pickle=args.allow_pickle,
        lora_cache=_lora_cache(args),
        progress=args.log.progress,
        status=args.log.status,
    )
    if not args.quiet:
        args.log.line(
            f"wrote a {plan.out_config['architectures'][0]} of {len(plan.config.experts)} experts, "
            f"{len(plan.tensors)} tensors, to {args.out}",
            sys.stdout,
        )
    return 0


def _build_stages(args, lineage, lora_cache):
    """The merge stages the MoE config names, built as lineages (up-to-date ones kept)."""
    from pathlib import Path

    from mergesmith.lineage import merge_lineage
    from mergesmith.lineage.run import default_intermediate_dir
    from mergesmith.moe.stages import build_stages, resolved_source

    inter = Path(args.intermediate_dir).resolve() if args.intermediate_dir else default_intermediate_dir(args.out)

    def report(outcome) -> None:
        if not args.quiet:
            args.log.line(
                f"stage {outcome.stage}: {outcome.status} ({outcome.tensors} tensors) -> {outcome.path}", sys.stdout
            )

    def run_stage(stages, out) -> None:
        merge_lineage(
            stages,
            out,
            intermediate_dir=inter,
            force=args.force,
            seed=args.seed,
            allow_pickle=args.allow_pickle,
            progress=args.log.progress,
            on_stage=report,
            lora_cache=lora_cache,
        )

    return resolved_source(lineage, build_stages(lineage, inter, run_stage))
