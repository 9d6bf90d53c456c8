"""The recipes the tests run in several places: the published SLERP schedule, the 48 → 47-layer
scaled frankenmerge, and one recipe per method over a pico family."""

from __future__ import annotations

from pathlib import Path

T_ATTN = "[0, 0.5, 0.3, 0.7, 1]"
T_MLP = "[1, 0.5, 0.7, 0.3, 0]"


def slerp_recipe(a: Path, b: Path, layers: int, dtype: str, attn=T_ATTN, mlp=T_MLP) -> str:
    # The published recipe's layout, comment included; only model names and layer counts differ.
    return f"""
slices:
  - sources:
      - model: {a}
        layer_range: [0, {layers}]
      - model: {b}
        layer_range: [0, {layers}]
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: {attn}
    - filter: mlp
      value: {mlp}
    - value: 0.5 # fallback for rest of tensors
dtype: {dtype}
"""


def frankenmerge_recipe(model: Path) -> str:
    ranges = [
        (0, 4, None),
        (4, 8, None),
        (8, 12, 1.5),
        (12, 16, None),
        (16, 20, 2.0),
        (20, 24, None),
        (24, 28, 2.5),
        (28, 32, None),
        (32, 36, 3.0),
        (36, 40, None),
        (40, 44, 3.5),
        (44, 47, 4.0),
    ]
    out = ["slices:"]
    for start, end, scale in ranges:
        out += ["  - sources:", f"      - model: {model}", f"        layer_range: [{start}, {end}]"]
        if scale is not None:
            out += [
                "        parameters:",
                "          scale:",
                "            - filter: o_proj",
                f"              value: {scale}",
                "            - filter: down_proj",
                f"              value: {scale}",
            ]
    out += ["merge_method: passthrough", "dtype: bfloat16"]
    return "\n".join(out) + "\n"


def models_recipe(method: str, fam: list[Path], dtype: str, extra: str = "") -> str:
    base, ft1, ft2 = fam
    if method == "linear":
        body = f"""
models:
  - model: {ft1}
    parameters: {{weight: 0.7}}
  - model: {ft2}
    parameters: {{weight: [0.2, 0.9]}}
"""
    else:
        body = f"""
models:
  - model: {base}
  - model: {ft1}
    parameters: {{weight: 0.6, density: [0.3, 0.8]}}
  - model: {ft2}
    parameters:
      weight:
        - filter: mlp
          value: 0.9
        - value: 0.4
      density: 0.55
base_model: {base}
"""
    return body + f"merge_method: {method}\ndtype: {dtype}\n{extra}"
