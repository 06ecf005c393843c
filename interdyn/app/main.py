"""``interdyn app``: the command line of the browser app (see docs/app.md).

interdyn app                                   # the default model on CPU, http://127.0.0.1:7860
interdyn app --svd checkpoints/svd --controlnet rickakkerman/InterDyn --device cuda
"""

from __future__ import annotations

import argparse
import sys

from interdyn.errors import InputError, InterDynError
from interdyn.generate import SAMPLING_DEFAULTS
from interdyn.models.released import RELEASED_REPO


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interdyn app",
        description="A browser app: pick a first frame, paint a mask and drag it along a path, generate. "
        "With no weights named it runs the default model on CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    weights = parser.add_argument_group("weights (as interdyn generate)")
    weights.add_argument("--svd", help="SVD img2vid folder or hub id (default: the default model's)")
    weights.add_argument(
        "--controlnet",
        help=f"control branch: a folder, a hub id or a .ckpt (default: {RELEASED_REPO} when --svd is given, "
        "else the default model's)",
    )
    weights.add_argument(
        "--device", help="auto | cpu | cuda | cuda:<index> (default: cpu for the default model, else auto)"
    )
    weights.add_argument(
        "--dtype",
        default="auto",
        help="auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16",
    )
    weights.add_argument("--height", type=int, help="clip height (default: 256 with named weights)")
    weights.add_argument("--width", type=int, help="clip width (default: 384 with named weights)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    server.add_argument("--port", type=int, default=7860)
    server.add_argument("--share", action="store_true", help="also make a public Gradio share link")
    server.add_argument("--out", default="runs/app", help="folder of the runs (run001/, run002/, ...)")
    return parser


def make_engine(args: argparse.Namespace):  # -> Engine (imported lazily: torch and diffusers)
    """The engine for the command line: the default model, or the named weights."""
    from interdyn.app.engine import DEFAULT_MODEL, Engine, ModelChoice

    if args.svd is None and args.controlnet is None:
        model, device = DEFAULT_MODEL, args.device or "cpu"
    else:
        controlnet = args.controlnet or RELEASED_REPO
        label = f"svd {args.svd or '(the checkpoint’s)'}, controlnet {controlnet}"
        model = ModelChoice(
            label, args.svd, controlnet, 256, 384, int(SAMPLING_DEFAULTS["num_inference_steps"])
        )
        device = args.device or "auto"
    return Engine(args.out, model, device, args.dtype, args.height, args.width)


def app_main(argv: list[str]) -> int:
    """``interdyn app``: serve the page until interrupted; 2 with one sentence for user errors."""
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(
            "interdyn app: error: the app needs Gradio; install it with pip install -e '.[app]' (or make app).",
            file=sys.stderr,
        )
        return 2
    from interdyn.app.ui import build_ui

    try:
        for flag, value in (("--height", args.height), ("--width", args.width)):
            if value is not None and (value <= 0 or value % 8):
                raise InputError(f"{flag} must be a positive multiple of 8, got {value}.")
        engine = make_engine(args)
        if engine.device != "auto":
            from interdyn.generate import resolve_device

            resolve_device(engine.device)
    except InterDynError as err:
        print(f"interdyn app: error: {err}", file=sys.stderr)
        return 2
    engine.out.mkdir(parents=True, exist_ok=True)
    demo = build_ui(engine)
    demo.queue(default_concurrency_limit=1, max_size=32)
    print(f"interdyn app: {engine.model.label} on {engine.device}; runs go to {engine.out}/", flush=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(engine.out)],
        footer_links=[],
    )
    return 0
