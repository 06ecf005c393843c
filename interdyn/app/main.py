"""``interdyn app``: the command line of the browser app (see docs/app.md).

interdyn app                                   # the default model on CPU, http://127.0.0.1:7860
interdyn app --svd checkpoints/svd --controlnet rickakkerman/InterDyn --device cuda
interdyn app --wan checkpoints/wan2.2-ti2v-5b --controlnet my_wan_branch/ --device cuda   # Wan2.2 TI2V
interdyn app --host 0.0.0.0 --auth alice:secret --root /data/clips   # for a lab: a login, one readable folder
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from types import SimpleNamespace

from jsonargparse import ArgumentParser

from interdyn.commands.parsers import command_parser, resolve_device
from interdyn.errors import InputError, InterDynError
from interdyn.models.released import RELEASED_REPO
from interdyn.models.sampling import DEFAULT_SAMPLING


@dataclass
class AppOptions:
    """A browser app: pick a first frame, paint a mask and drag it along a path, generate. With no weights
    named it runs the default model on CPU.

    Args:
        svd: SVD img2vid folder or hub id, as for interdyn generate (default: the default model's)
        controlnet: control branch: a folder, a hub id or a .ckpt (default: the released InterDyn branch
            when --svd is given, none with --wan, else the default model's); an exported Wan branch names
            its own base
        wan: Wan2.2 TI2V base, as for interdyn generate --wan (random:wan-tiny: a tiny random one with a
            random branch, for trying the app)
        prompt_embeds: Wan only: the fixed prompt embedding, as for interdyn generate (default: the one the
            branch was trained with, else zeros)
        guidance_scale: Wan only: prompt guidance for every run, as for interdyn generate; needs
            --negative_prompt_embeds (default: 1, no guidance, whatever the branch's run recorded)
        negative_prompt_embeds: Wan only: the negative prompt embedding of --guidance_scale
        device: auto, cpu, cuda or cuda:<index> (default: cpu for the default model, else auto)
        dtype: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16
        height: clip height (default: the model's; the paper's 256 with named weights)
        width: clip width (default: the model's; the paper's 384 with named weights)
        steps: the sampler steps the page starts with (default: the model's: 10 for the built-in world, 50
            for named weights); the page's slider changes them per run
        host: address to bind (0.0.0.0: every interface; then the page reads no server paths unless
            --root is given, and a warning is printed)
        port: port to serve on
        share: also make a public Gradio share link (as exposed as --host 0.0.0.0)
        out: folder of the runs (run001/, run002/, ...)
        root: the only folder whose images, videos and clip folders the page may read by path (default:
            any path when served on 127.0.0.1, none otherwise)
        auth: a login for the page, user:password (visible to other users of this machine in the process
            list; --auth_file is not)
        auth_file: a file of logins, one user:password a line
    """

    svd: str | None = None
    controlnet: str | None = None
    wan: str | None = None
    prompt_embeds: str | None = None
    guidance_scale: float | None = None
    negative_prompt_embeds: str | None = None
    device: str | None = None
    dtype: str = "auto"
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    out: str = "runs/app"
    root: str | None = None
    auth: str | None = None
    auth_file: str | None = None


def build_parser() -> ArgumentParser:
    """The parser of ``interdyn app`` (the options of :class:`AppOptions`)."""
    return command_parser(AppOptions, "interdyn app")


def make_engine(args: AppOptions):  # -> Engine (imported lazily: torch and diffusers)
    """The engine for the command line: the default model, or the named weights."""
    from interdyn.app.engine import DEFAULT_MODEL, TINY_WAN, WAN_CLIP, Engine, ModelChoice
    from interdyn.commands.backbone import backbone_of
    from interdyn.inputs import DEMO_CLIP

    named = SimpleNamespace(backbone="auto", svd=args.svd, wan=args.wan, controlnet=args.controlnet)
    if args.svd is None and args.controlnet is None and args.wan is None:
        model, device = DEFAULT_MODEL, args.device or "cpu"
    elif args.controlnet is None and args.wan == TINY_WAN.wan:
        model, device = dataclasses.replace(TINY_WAN, prompt=prompt_args(args)), args.device or "cpu"
    elif backbone_of(named) == "wan":
        controlnet = args.controlnet or "none"
        label = f"wan {args.wan or '(the branch’s base)'}, controlnet {controlnet}"
        steps = DEFAULT_SAMPLING.num_inference_steps
        model = ModelChoice(
            label,
            args.svd,
            controlnet,
            WAN_CLIP,
            steps,
            wan=args.wan,
            backbone="wan",
            prompt=prompt_args(args),
        )
        device = args.device or "auto"
    else:
        controlnet = args.controlnet or RELEASED_REPO
        label = f"svd {args.svd or '(the checkpoint’s)'}, controlnet {controlnet}"
        model = ModelChoice(label, args.svd, controlnet, DEMO_CLIP, DEFAULT_SAMPLING.num_inference_steps)
        device = args.device or "auto"
    if model.backbone != "wan" and prompt_args(args):
        raise InputError(f"{prompt_args(args)[0]} is for the Wan backbone (start the app with --wan).")
    if args.steps is not None:
        if args.steps < 1:
            raise InputError(f"--steps must be at least 1, got {args.steps}.")
        model = dataclasses.replace(model, steps=args.steps)
    return Engine(args.out, model, device, args.dtype, args.height, args.width)


def prompt_args(args: AppOptions) -> tuple[str, ...]:
    """The Wan prompt options given to ``interdyn app``, as ``interdyn generate`` arguments (checked with
    ``generate``'s own rules when a run starts, and the guidance's at once)."""
    guided = args.guidance_scale is not None and args.guidance_scale > 1
    if guided and args.negative_prompt_embeds is None:
        raise InputError(
            f"--guidance_scale {args.guidance_scale:g} needs --negative_prompt_embeds (a file written by "
            "interdyn prompt)."
        )
    if args.negative_prompt_embeds is not None and not guided:
        raise InputError("--negative_prompt_embeds is for prompt guidance: add --guidance_scale above 1.")
    names = ("prompt_embeds", "guidance_scale", "negative_prompt_embeds")
    return tuple(
        v
        for name in names
        if getattr(args, name) is not None
        for v in (f"--{name}", str(getattr(args, name)))
    )


def check_size(engine, args: AppOptions) -> None:  # engine: an Engine (imported lazily)
    """``--height`` and ``--width`` fit the model: multiples of 8 for SVD, of 32 for Wan (its x16 VAE times
    its 2x2 patch)."""
    multiple = 32 if engine.model.backbone == "wan" else 8
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and (value <= 0 or value % multiple):
            raise InputError(f"{flag} must be a positive multiple of {multiple}, got {value}.")


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
    from interdyn.app.access import ServerFiles, exposure_warning, read_auth
    from interdyn.app.ui import build_ui

    try:
        files = ServerFiles.for_host(args.host, args.share, args.root)
        auth = read_auth(args.auth, args.auth_file)
        engine = make_engine(args)
        check_size(engine, args)
        if engine.device != "auto":
            resolve_device(engine.device)
    except InterDynError as err:
        print(f"interdyn app: error: {err}", file=sys.stderr)
        return 2
    engine.out.mkdir(parents=True, exist_ok=True)
    demo = build_ui(engine, files)
    demo.queue(default_concurrency_limit=1, max_size=32)
    print(f"interdyn app: {engine.model.label} on {engine.device}; runs go to {engine.out}/", flush=True)
    warning = exposure_warning(args.host, args.port, args.share, files, auth is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        allowed_paths=[str(engine.out)],
        footer_links=[],
    )
    return 0
