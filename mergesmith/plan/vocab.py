"""The output vocabulary, and for each input tensor with a vocabulary axis a map of its rows.

Output vocabulary (``tokenizer_source`` or ``tokenizer.source``): the base model's tokenizer,
a named model's, or ``union`` (the base's, then every other model's tokens it lacks, in recipe
order and id order, appended as added tokens); then tokens named in ``tokenizer.tokens`` that
are still missing. Rows: ids ``0..T-1``, then the donor's rows past its last token (padding
rows such as Qwen2's are kept: mergekit drops them), then ``pad_to_multiple_of`` padding.

Row ``r`` of input ``m``: ``m``'s row of the same token; for rows past the last token, ``m``'s
row ``r`` when that is past ``m``'s last token too. A row an input lacks (or a ``force``d token)
is filled, for every input that lacks it, by the first rule that applies:

1. ``tokens[t].source``: ``{kind: zero}`` zeros; a model its row of ``t``; ``{kind: model_token}``
   that model's row of another token;
2. base: the base model's row, when the base has the token;
3. mean: the mean of the rows of the inputs that have it (one input: its row);
4. zero: no input has the token (warned).

2-4 are mergekit's defaults and the issue's rule. Padding rows get the mean of the input's own
token rows (mergekit). Rows an input has but the output vocabulary lacks are dropped with a
warning that names the count and the tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mergesmith.arch.spec import ArchSpec
from mergesmith.config.schema import (
    ModelTokenEmbedding,
    Recipe,
    TokenOverride,
    ZeroEmbedding,
)
from mergesmith.errors import ConfigError, InputFormatError
from mergesmith.io.header import ModelHeader
from mergesmith.plan.jobs import AddedToken, OutputVocab, RowFill, RowMap, TensorSource
from mergesmith.plan.vocab_files import InputVocab, read_vocab


@dataclass(frozen=True)
class VocabPlan:
    output: OutputVocab
    tokens: tuple[str | None, ...]  # output id → token (None: an id no token has)
    inputs: Mapping[str, InputVocab]  # merged model → its vocabulary
    overrides: Mapping[str, TokenOverride]
    kept_rows: int  # rows before pad_to_multiple_of
    warnings: tuple[str, ...] = ()


def other_dims(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    """The shape without the vocabulary axis: what must agree between inputs."""
    return shape if axis is None else shape[:axis] + shape[axis + 1 :]


def _embed_rows(model: ModelHeader, arch: ArchSpec) -> int:
    for weight in arch.pre:
        info = model.tensors.get(weight.name)
        if weight.vocab_axis is not None and info is not None:
            return info.shape[weight.vocab_axis]
    return int(model.config.get("vocab_size") or 0)


def _unreadable(key: str, model: ModelHeader, why: str, source: str) -> InputFormatError:
    kind = (
        "is a GGUF file (mergesmith does not read GGUF vocabularies)"
        if model.gguf_file
        else "has no tokenizer.json or vocab.json"
    )
    return InputFormatError(
        f"{source}: model '{key}' {kind}, {why}; merge from a Hugging Face directory with its tokenizer.json"
    )


def _donor(recipe: Recipe, choice: str, source: str) -> str:
    if choice == "base" and recipe.base_model is None:
        raise ConfigError(f"{source}: tokenizer_source 'base' needs a base_model; set base_model or name a model")
    if choice in ("base", "union"):
        return recipe.base_model or recipe.referenced_models()[0]
    return choice


def _union(ids: dict, vocabs, merged, donor, rows, next_id: int) -> list[AddedToken]:
    new = []
    for key in merged:
        if key == donor:
            continue
        for token, i in sorted(vocabs[key].ids.items(), key=lambda item: item[1]):
            if token not in ids and i < rows[key]:  # a token past a model's rows brings no row
                ids[token] = next_id
                new.append(replace(vocabs[key].added.get(token, AddedToken(0, token)), id=next_id))
                next_id += 1
    return new


def build_vocab(recipe: Recipe, models: Mapping[str, ModelHeader], arch: ArchSpec, source: str) -> VocabPlan | None:
    """The output vocabulary for the recipe's tokenizer choice; None when there is nothing to map."""
    choice = recipe.tokenizer_choice
    if choice is None:
        return None
    section = recipe.tokenizer
    overrides = dict(section.tokens or {}) if section else {}
    multiple = section.pad_to_multiple_of if section else None
    merged = recipe.referenced_models()
    donor = _donor(recipe, choice, source)
    rows = {key: _embed_rows(models[key], arch) for key in {*merged, donor}}
    vocabs = {key: read_vocab(models[key]) for key in {*merged, donor}}
    notes = []
    if vocabs[donor] is None:
        if choice == "union" or overrides or multiple or any(rows[k] != rows[donor] for k in merged):
            raise _unreadable(donor, models[donor], f"and tokenizer_source '{choice}' needs its vocabulary", source)
        return None  # every input has the donor's rows and the output keeps its tokenizer: nothing to map
    for key in merged:
        if vocabs[key] is None:
            if rows[key] != rows[donor]:
                raise _unreadable(
                    key,
                    models[key],
                    f"and {rows[key]} vocabulary rows against {rows[donor]} of "
                    f"'{donor}', so its token ids cannot be matched",
                    source,
                )
            vocabs[key] = vocabs[donor]
            notes.append(
                f"model '{key}' has no readable tokenizer; its token ids are taken to be those of "
                f"'{donor}' (both have {rows[key]} rows)"
            )
    ids = dict(vocabs[donor].ids)
    next_id = max(ids.values(), default=-1) + 1
    new = _union(ids, vocabs, merged, donor, rows, next_id) if choice == "union" else []
    for token in overrides:
        if token not in ids:  # as mergekit's add_tokens: a plain, normalized added token
            ids[token] = next_id + len(new)
            new.append(AddedToken(ids[token], token))
    token_rows = max(ids.values(), default=-1) + 1
    kept = max(token_rows, rows[donor])
    total = -(-kept // multiple) * multiple if multiple else kept
    tokens: list[str | None] = [None] * token_rows
    for token, i in ids.items():
        tokens[i] = token
    output = OutputVocab(choice, donor, token_rows, total, tuple(new))
    return VocabPlan(output, tuple(tokens), {k: vocabs[k] for k in merged}, overrides, kept, tuple(notes))


def _available(vp: VocabPlan, key: str, n: int) -> list[int]:
    """Output row → the input row holding the same token (or the same padding row), else -1."""
    vocab = vp.inputs[key]
    out = [-1] * vp.kept_rows
    for r, token in enumerate(vp.tokens):
        i = vocab.ids.get(token) if token is not None else None
        if i is not None and i < n:
            out[r] = i
    taken = set(vocab.ids.values())
    for r in range(vp.kept_rows):
        if (r >= len(vp.tokens) or vp.tokens[r] is None) and r < n and r not in taken:
            out[r] = r
    return out


def _override_rule(vp, keys, avail, in_rows, r, token, spec, where):
    if isinstance(spec, ZeroEmbedding):
        return "zero", ()
    model = spec.model if isinstance(spec, ModelTokenEmbedding) else spec
    label = f"{where}: tokenizer.tokens['{token}']"
    if model not in keys:
        raise ConfigError(
            f"{label} takes its row from model '{model}', which is not an input of this tensor "
            f"({', '.join(keys)}); name one of them or use {{kind: zero}}"
        )
    k = keys.index(model)
    if isinstance(spec, ModelTokenEmbedding):
        row = spec.token_id if spec.token_id is not None else vp.inputs[model].ids.get(spec.token)
        if row is None or row >= in_rows[k]:
            what = f"token {spec.token!r}" if spec.token is not None else f"token_id {spec.token_id}"
            raise ConfigError(f"{label}: model '{model}' has no row for {what} ({in_rows[k]} rows); fix the token")
        return "override", ((k, row),)
    if avail[k][r] < 0:
        raise ConfigError(
            f"{label}: model '{model}' has no token '{token}'; name a model that has it or use {{kind: zero}}"
        )
    return "override", ((k, avail[k][r]),)


def _rule(vp, keys, avail, in_rows, r, base, where):
    """(rule, ((source index, input row), ...)) for an output row some input lacks."""
    token = vp.tokens[r] if r < len(vp.tokens) else None
    override = vp.overrides.get(token) if token is not None else None
    if override is not None and override.source is not None:
        return _override_rule(vp, keys, avail, in_rows, r, token, override.source, where)
    present = tuple((k, rows[r]) for k, rows in enumerate(avail) if rows[r] >= 0)
    if not present:
        return "zero", ()
    if base in keys and avail[keys.index(base)][r] >= 0:
        return "base", ((keys.index(base), avail[keys.index(base)][r]),)
    return "mean", present


def _runs(own: list[int]) -> tuple[tuple[int, int, int], ...]:
    runs: list[list[int]] = []
    for r, i in enumerate(own):
        if i < 0:
            continue
        if runs and runs[-1][0] + runs[-1][2] == r and runs[-1][1] + runs[-1][2] == i:
            runs[-1][2] += 1
        else:
            runs.append([r, i, 1])
    return tuple(tuple(run) for run in runs)


def _dropped(vp: VocabPlan, key: str, n: int, used: set[int]) -> str | None:
    lost = [t for t, i in vp.inputs[key].ids.items() if i < n and i not in used]
    past = n - len(used) - len(lost)
    if not lost and vp.output.rows >= n:
        return None  # only padding rows moved: the vocabulary is whole
    shown = ", ".join(repr(t) for t in sorted(lost, key=vp.inputs[key].ids.get)[:5]) + (
        ", ..." if len(lost) > 5 else ""
    )
    parts = ([f"{len(lost)} tokens ({shown})"] if lost else []) + ([f"{past} rows past its last token"] if past else [])
    fix = "; tokenizer_source: union keeps every token" if lost and vp.output.source != "union" else ""
    return (
        f"model '{key}': {' and '.join(parts)} of its {n} vocabulary rows are not in the output vocabulary "
        f"({vp.output.rows} rows) and are dropped{fix}"
    )


def reindex(
    vp: VocabPlan, sources: tuple[TensorSource, ...], in_rows: list[int], axis: int, base: str | None, where: str
) -> tuple[tuple[TensorSource, ...], list[str]]:
    """Sources with row maps (None where the input already is the output vocabulary) + warnings."""
    keys = [s.model for s in sources]
    forced = {t for t, o in vp.overrides.items() if o.force}
    avail = [_available(vp, key, n) for key, n in zip(keys, in_rows)]
    own = [[-1 if r < len(vp.tokens) and vp.tokens[r] in forced else i for r, i in enumerate(a)] for a in avail]
    groups: dict[tuple, list] = {}
    for r in range(vp.kept_rows):
        if any(rows[r] < 0 for rows in own):
            rule, donors = _rule(vp, keys, avail, in_rows, r, base, where)
            groups.setdefault((rule, tuple(k for k, _ in donors)), []).append((r, tuple(i for _, i in donors)))
    total, warnings, out = vp.output.rows, [], []
    pad = (RowFill("pad", tuple(range(vp.kept_rows, total))),) if total > vp.kept_rows else ()
    for k, src in enumerate(sources):
        fills = []
        for (rule, donors), members in groups.items():
            mine = [(r, rows) for r, rows in members if own[k][r] < 0]
            if mine:
                fills.append(
                    RowFill(
                        rule,
                        tuple(r for r, _ in mine),
                        donors,
                        tuple(tuple(rows[d] for _, rows in mine) for d in range(len(donors))),
                    )
                )
        copied = _runs(own[k])
        if copied == ((0, 0, total),) and in_rows[k] == total and not fills and not pad:
            out.append(src)
        else:
            rows = RowMap(total, axis, in_rows[k], vp.output.token_rows, copied, tuple(fills) + pad)
            out.append(replace(src, rows=rows))
        message = _dropped(vp, keys[k], in_rows[k], {i for i in avail[k] if i >= 0})
        if message:
            warnings.append(message)
    zero = [
        vp.tokens[r] if r < len(vp.tokens) else f"row {r}"
        for (rule, _), members in groups.items()
        if rule == "zero"
        for r, _ in members
    ]
    zero = [t for t in zero if t not in vp.overrides or vp.overrides[t].source is None]
    if zero:
        names = ", ".join(repr(t) for t in zero[:5]) + (", ..." if len(zero) > 5 else "")
        warnings.append(
            f"{len(zero)} output tokens are in none of the merged models and get zero rows ({names}); "
            "give them a source under tokenizer.tokens"
        )
    return tuple(out), warnings
