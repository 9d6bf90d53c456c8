"""Train one domain specialist of SmolLM2-135M-Instruct as a LoRA adapter, on CPU.

    python examples/specialists/train.py kjv      # King James Bible  -> adapters/kjv/
    python examples/specialists/train.py austen   # Jane Austen       -> adapters/austen/

Training text is data/text/<domain>_train.txt only (the held-out and fitness splits are other
books; see data/README.md). The text is tokenized once, cut into consecutive windows of
--seq-len tokens, and the windows are shuffled by --seed; step i trains on the next
--batch-size of them. LoRA A matrices are initialised from the same seed, dropout is 0, so a
run is reproducible on the same torch build and thread count. Needs `peft` (the test extra).

Writes adapter_config.json, adapter_model.safetensors and training.json (options, data hash,
loss per step, wall time, versions) into adapters/<domain>/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import torch
from common import ADAPTERS, BASE, DOMAINS, ROOT, ensure_base, train_text

# All attention and MLP projections of a llama block.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# What adapter_config.json names as its base: the directory common.ensure_base() builds,
# relative to the repository root (the absolute path of the training machine means nothing elsewhere).
BASE_NAME = str(BASE.relative_to(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("domain", choices=DOMAINS)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by alpha / rank")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="peak AdamW learning rate (linear warm-up, then linear decay to 0)"
    )
    p.add_argument("--warmup", type=int, default=6, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="adapter directory (default: adapters/<domain>)")
    return p.parse_args(argv)


def batches(ids: torch.Tensor, seq_len: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` batches of shuffled consecutive windows; windows repeat only when the text runs out."""
    n = len(ids) // seq_len
    windows = ids[: n * seq_len].view(n, seq_len)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch_size / n))])
    return [windows[order[i * batch_size : (i + 1) * batch_size]] for i in range(steps)]


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (args.steps - step) / max(1, args.steps - args.warmup)


def train(args: argparse.Namespace) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # LoRA A initialisation
    base = ensure_base()
    text_path = train_text(args.domain)
    text = text_path.read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    plan = batches(ids, args.seq_len, args.batch_size, args.steps, args.seed)

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    losses, start = [], time.perf_counter()
    for step, batch in enumerate(plan):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        print(
            f"{args.domain} step {step + 1}/{args.steps} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    wall = time.perf_counter() - start

    out = args.out or ADAPTERS / args.domain
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    _set_base_name(out / "adapter_config.json")
    log = {
        "domain": args.domain,
        "data": {
            "file": str(text_path.relative_to(ROOT)),
            "sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
            "tokens": len(ids),
            "windows": len(ids) // args.seq_len,
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "targets": TARGETS,
        "trainable_parameters": sum(p.numel() for p in params),
        "loss": losses,
        "wall_s": round(wall, 1),
        "versions": {
            "torch": torch.__version__,
            "peft": _version("peft"),
            "transformers": _version("transformers"),
            "python": platform.python_version(),
        },
        "cpu": f"{platform.machine()}, {args.threads} thread(s)",
    }
    (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    return log


def _set_base_name(path: Path) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = BASE_NAME
    config["target_modules"] = sorted(config["target_modules"])  # peft stores a set: fix the order
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    log = train(parse_args())
    print(
        f"{log['domain']}: {log['trainable_parameters']} LoRA parameters, {log['wall_s']} s, "
        f"loss {log['loss'][0]} -> {log['loss'][-1]}"
    )
