"""Optimizer-state benchmark: the tiny model's training curve with Adam and with 8-bit AdamW
(bitsandbytes), on the same batches and the same noise, and the state each keeps.

    python benchmarks/optimizer_state.py              # writes the optimizer section of docs/benchmarks.md

8-bit AdamW (weight_decay 0, so the update rule is Adam's) stores both moments as uint8 with one
float32 scale per block of 256 values: ~2 bytes per parameter instead of 8. bitsandbytes is not a
dependency of interdyn (``pip install bitsandbytes``); without it only the Adam curve is run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402
from train_recipes import TINY_CONTROL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state."""
    return sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )


def curve(name: str, steps: int, lr: float, batch: dict, marks: set[int]) -> dict:
    """Train the tiny branch ``steps`` steps with ``name``: the training loss of every step (the same draws
    for every optimizer) and, before the steps in ``marks`` and at the end, the loss at fixed draws."""
    from interdyn.training.module import InterDynModule

    torch.manual_seed(0)
    module = InterDynModule(
        svd="random:tiny", conditioning_embedding_out_channels=TINY_CONTROL, optimizer=name, learning_rate=lr
    )
    module.train()
    optimizer = module.configure_optimizers()
    losses, evals = [], {}

    def fixed_loss() -> float:  # fixed noise levels and noise: comparable across steps and optimizers
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1234)
            sigma = torch.tensor([0.5, 2.0])
            return float(
                module.compute_loss(batch["pixel_values"], batch["control"], sigma=sigma, generator=generator)
            )

    start = time.perf_counter()
    for i in range(steps):
        if i in marks:
            evals[i] = fixed_loss()
        optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(i)  # the same noise levels and noise for every optimizer
        loss = module.compute_loss(batch["pixel_values"], batch["control"], generator=generator)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    evals[steps] = fixed_loss()
    params = sum(p.numel() for p in module.controlnet.parameters())
    return {
        "optimizer": name,
        "losses": losses,
        "evals": evals,
        "seconds": time.perf_counter() - start,
        "state_bytes_per_param": state_bytes(optimizer) / params,
    }


def main() -> int:
    from interdyn.commands.spelling import ScriptParser  # old hyphenated options still work

    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3, help="large enough for the tiny model to move")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--no_write", action="store_true")
    args = parser.parse_args()
    from interdyn.data.toy import MovingShapesDataset

    data = MovingShapesDataset(2, num_frames=args.frames, height=64, width=64, seed=3)
    items = [data[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("pixel_values", "control")}
    names = ["adam"]
    try:
        import bitsandbytes  # noqa: F401

        names.append("adamw8bit")
    except ImportError:
        print("bitsandbytes is not installed: Adam only", file=sys.stderr)
    marks = sorted({0, 5, 10, 20} & set(range(args.steps))) + [args.steps]
    runs = [curve(n, args.steps, args.lr, batch, set(marks)) for n in names]
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
    head = " | ".join(f"after {i} steps" for i in marks)
    lines = [
        f"## Optimizer state (`benchmarks/optimizer_state.py`), {time.strftime('%Y-%m-%d')}",
        "",
        f"- {machine('cpu')}",
        f"- tiny model, batch 2 of {args.frames} frames at 64x64, lr {args.lr:g}, {args.steps} steps; every"
        " optimizer sees the same batch, noise levels and noise at each step.",
        "- Fixed-draw loss (noise levels 0.5 and 2, fixed noise) after n steps, and the mean absolute gap"
        " between each step's training loss and Adam's (same draws).",
        "",
        f"| optimizer | state bytes per parameter (tiny) | {head} | mean training-loss gap to Adam |",
        "|---|---|" + "---|" * len(marks) + "---|",
    ]
    base = runs[0]["losses"]
    for r in runs:
        gap = sum(abs(a - b) for a, b in zip(r["losses"], base, strict=True)) / len(base)
        cells = " | ".join(f"{r['evals'][i]:.4f}" for i in marks)
        lines.append(f"| {r['optimizer']} | {r['state_bytes_per_param']:.2f} | {cells} | {gap:.4f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("optimizer-state", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
