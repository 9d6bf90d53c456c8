"""Evaluation of merge candidates: perplexity, bits per byte, KL vs a reference, multiple choice.

    from mergesmith.eval import evaluate
    result = evaluate(["out/a", "out/b"], ref="base/", texts=["heldout.txt"], tasks=["general_knowledge"])
    result.ranked()[0].model

This subpackage imports the core, never the other way round. Names are imported lazily so that
reading results (``mergesmith card``) does not load torch.
"""

__all__ = ["EvalResult", "KLScore", "ModelScore", "TaskScore", "TextScore", "evaluate", "load_results", "save_results"]


def __getattr__(name):
    if name == "evaluate":
        from mergesmith.eval.api import evaluate

        return evaluate
    if name in __all__:
        from mergesmith.eval import results

        return getattr(results, name)
    raise AttributeError(f"module 'mergesmith.eval' has no attribute {name!r}")
