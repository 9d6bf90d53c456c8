"""Every data file against the tensor names transformers writes, and inference against every data file.

Each architecture is built tiny (2 layers) with transformers' own config class, saved with
``save_pretrained`` and its safetensors header read back: the file's non-optional names must
all be there, and an optional one exactly when the config says so (a separate head when the
embeddings are not tied, StableLM's q/k/v biases with ``use_qkv_bias``); an optional one without
a config flag (a layout variant such as falcon-7b's norms, or biases whose flag is on by default and
missing from old configs) may be there or not, and must occur in some case.
"""

from __future__ import annotations

import json

import pytest
from arch_pico import NEW_KINDS, build_arch_model
from families import FAMILY_KINDS, family_config
from moe_pico import MOE_KINDS, build_moe_model
from pico import KINDS, build_model
from safetensors import safe_open

from mergesmith.arch.infer import infer_arch
from mergesmith.arch.moe import with_experts
from mergesmith.arch.spec import ArchSpec, all_architectures, find_arch
from mergesmith.errors import ArchitectureError

LAYERS = 2
# Layout variants a data file covers with optional tensors: falcon-7b-style norms (input_layernorm,
# post_attention_layernorm); LFM2 with attention first, then a convolution with biases.
LAYOUTS = {
    "falcon": dict(new_decoder_architecture=False, parallel_attn=False),
    "lfm2": dict(layer_types=["full_attention", "conv"], conv_bias=True),
    "llama4_text": dict(moe_layers=[]),  # dense MLPs only (Maverick alternates dense and expert layers)
}
# (kind, variant): every family as configured by default, the other tie setting where the data
# file makes the head optional, and StableLM with q/k/v biases.
CASES = (
    [(k, "") for k in KINDS + NEW_KINDS + MOE_KINDS]
    + [
        (k, "other_tie")
        for k in KINDS + NEW_KINDS + MOE_KINDS
        if k != "phi2"  # phi-2 has no tied form
    ]
    + [(k, "bias") for k in ("llama", "qwen3", "gemma", "gemma2", "gemma3", "stablelm")]
    + [(k, v) for k in FAMILY_KINDS for v in ("", "other_tie", "bias")]
    + [(k, "layout") for k in LAYOUTS]
)
# Families whose layers differ by type (LFM2: convolution or attention): no inferred definition.
MIXED_LAYERS = ("lfm2",)
# Config flags that make transformers add the optional tensors a data file marks with config_flag.
BIAS_FLAGS = (
    "attention_bias",
    "mlp_bias",
    "use_qkv_bias",
    "use_qk_norm",
    "bias",
    "use_bias",
    "attention_out_bias",
    "conv_bias",
    "mamba_rms_norm",
    "mamba_proj_bias",
    "projectors_bias",
)


def _build(kind: str, variant: str):
    from transformers import AutoModelForCausalLM

    if kind in FAMILY_KINDS:
        config = family_config(kind, LAYERS)
        tie = not config.tie_word_embeddings if variant == "other_tie" else None
        layout = LAYOUTS[kind] if variant == "layout" else {}
        config = family_config(kind, LAYERS, tie=tie, **layout)
        for flag in BIAS_FLAGS if variant == "bias" else ():
            if hasattr(config, flag):
                setattr(config, flag, True)
        return AutoModelForCausalLM.from_config(config)
    if kind in NEW_KINDS:
        model = build_arch_model(kind, seed=0, num_layers=LAYERS, variant=variant)
    elif kind in MOE_KINDS:
        model = build_moe_model(kind, seed=0, num_layers=LAYERS)
    else:
        model = build_model(kind, seed=0, num_layers=LAYERS)
    config = model.config
    if variant == "other_tie" and kind not in NEW_KINDS:
        config.tie_word_embeddings = not config.tie_word_embeddings
    for flag in BIAS_FLAGS if variant == "bias" else ():
        if hasattr(config, flag):
            setattr(config, flag, True)
    return AutoModelForCausalLM.from_config(config) if variant else model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(kind, variant) -> (config.json, {tensor name: shape}) as save_pretrained wrote them."""
    root = tmp_path_factory.mktemp("arch-data")
    out = {}
    for kind, variant in CASES:
        path = root / f"{kind}-{variant or 'default'}"
        _build(kind, variant).save_pretrained(path)
        with safe_open(path / "model.safetensors", "pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        out[kind, variant] = (json.loads((path / "config.json").read_text()), shapes)
    return out


def _beside_weight(name: str, shapes) -> bool:
    return not name.endswith(".bias") or name[: -len("bias")] + "weight" in shapes


def _free(w) -> bool:
    """Optional, but neither tied nor behind a config flag: a layout variant."""
    return w.optional and not w.tied_to and not w.config_flag


def _names(spec: ArchSpec, n: int, *, optional: bool) -> set[str]:
    weights = [w for w in spec.pre + spec.post if w.optional == optional]
    return {w.name for w in weights} | {
        w.at_layer(i).name for i in range(n) for w in spec.layer if w.optional == optional
    }


def test_every_data_file_parses_consistently():
    specs = all_architectures()
    assert {s.family for s in specs} >= {
        "qwen3",
        "phi3",
        "gemma",
        "gemma2",
        "gpt2",
        "gpt_neox",
        "stablelm",
        "starcoder2",
    }
    classes = [a for s in specs for a in s.architectures]
    assert len(classes) == len(set(classes)), "an architecture class is claimed by two files"
    for spec in specs:
        pre_names = {w.name for w in spec.pre}
        assert all("{layer}" in w.name for w in spec.layer), spec.family
        assert not any("{layer}" in w.name for w in spec.pre + spec.post), spec.family
        assert len({w.name for w in spec.pre + spec.layer + spec.post}) == len(spec.pre + spec.layer + spec.post)
        assert [w.role for w in spec.pre if w.vocab_axis is not None][:1] == ["embed"], spec.family
        for w in spec.post:
            assert set(w.tied_to) <= pre_names, f"{spec.family}: {w.name} tied to a tensor the file does not list"


@pytest.mark.parametrize("kind,variant", CASES)
def test_data_file_matches_transformers_names(kind, variant, saved):
    config, shapes = saved[kind, variant]
    spec = find_arch(config)
    assert spec is not None, f"no data file claims {config['architectures']}"
    spec = with_experts(spec, config, kind)  # one tensor per expert, as save_pretrained writes them
    assert spec.num_layers(config, kind) == LAYERS
    expected = _names(spec, LAYERS, optional=False)
    if not config.get("tie_word_embeddings", True):
        expected |= {w.name for w in spec.post if w.role == "lm_head" and w.optional}
    # A flagged bias exists beside its weight: LFM2's conv biases only in its convolution layers.
    expected |= {
        w.at_layer(i).name
        for i in range(LAYERS)
        for w in spec.layer
        if w.config_flag and config.get(w.config_flag) and _beside_weight(w.at_layer(i).name, shapes)
    }
    free = {w.name for w in spec.pre + spec.post if _free(w)} | {
        w.at_layer(i).name for i in range(LAYERS) for w in spec.layer if _free(w)
    }
    assert expected <= set(shapes) <= expected | free
    for w in spec.pre + spec.post:
        if w.vocab_axis is not None and w.name in shapes:
            assert shapes[w.name][w.vocab_axis] == config["vocab_size"], w.name


def test_every_optional_tensor_occurs_in_some_model(saved):
    for spec in all_architectures():
        seen = set().union(*(shapes for config, shapes in saved.values() if find_arch(config) is spec))
        assert _names(spec, LAYERS, optional=True) <= seen, spec.family


@pytest.mark.parametrize("kind,variant", CASES)
def test_inference_reproduces_the_data_file(kind, variant, saved):
    """The definition inferred from names alone agrees with the shipped one on this model."""
    config, shapes = saved[kind, variant]
    if kind in MIXED_LAYERS:  # inference needs every layer to hold the same tensors
        with pytest.raises(ArchitectureError, match="layers differ"):
            infer_arch(config, shapes, kind)
        return
    spec, inferred = with_experts(find_arch(config), config, kind), infer_arch(config, shapes, kind)

    def present(weights):
        return {w.name: w.vocab_axis for w in weights if w.name.format(layer=0) in shapes}

    assert present(inferred.pre) == present(spec.pre)
    assert present(inferred.post) == present(spec.post)
    assert set(present(inferred.layer)) == set(present(spec.layer))
    # Inference ties every head of the embeddings' shape (phi-2's file does not: it never ties).
    tied = {w.name: w.tied_to for w in inferred.post}
    assert all(tied[w.name] == w.tied_to for w in spec.post if w.tied_to and w.name in shapes)
    assert inferred.num_layers_key == spec.num_layers_key
    assert set(inferred.per_layer_keys) <= set(spec.per_layer_keys)
