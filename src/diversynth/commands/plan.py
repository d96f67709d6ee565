"""`diversynth plan CONFIG`: what a run will cost, before any GPU time.

Counts (classes, prompts, images, shards), disk (JPEG bytes an image, encoded at the
configured size and store_size), LLM requests and tokens, and GPU-hours per card. FLOPs per
image are counted, not guessed: the configured model's architecture is built at full size
on the meta device (no weights, no memory) from its own configs and run once per component
under `torch.utils.flop_counter.FlopCounterMode`, at the configured size, with the text
lengths its encoders read. FLOPs become hours through a card's peak rate and the fraction of
it generation reached where it was measured (benchmarks/results/generate_speed_gpu.json);
where a card or an architecture has no measurement the plan says which one it assumed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diversynth import pipeline
from diversynth.config import GenerateConfig, RunConfig
from diversynth.errors import UsageError
from diversynth.models.cost import CARDS, TrainingCost
from diversynth.models.pipeline_traits import (
    call_defaults,
    classifier_free_on,
    encoder_tokens,
    guidance_kind,
    read_json,
    text_to_image_classes,
)
from diversynth.run.progress import console

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
# the measurement efficiency comes from (a card's figure where it has one)
MEASURED = {"file": "generate_speed_gpu.json", "architecture": "UNet2DConditionModel"}
BYTES = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


class PlanError(UsageError):
    pass


@dataclass
class ComponentFlops:
    name: str  # unet, transformer, vae, text_encoder...
    cls: str
    flops: float  # one call, one image
    calls: float  # per image


@dataclass
class Plan:
    classes: int
    prompts: int
    images: int
    shards: int
    bytes_per_image: float
    disk_bytes: float
    llm_requests: int
    llm_tokens_in: int
    llm_tokens_out: int
    pipeline: str | None = None
    architecture_source: str | None = None
    components: list[ComponentFlops] = field(default_factory=list)
    flops_per_image: float | None = None
    gpu_hours: dict[str, float] = field(default_factory=dict)
    efficiency: dict[str, str] = field(default_factory=dict)  # card -> where its figure is from
    training: TrainingCost | None = None  # with a data section or a known catalog
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the model's architecture, from its configs -------------------------------------------


def architecture_configs(model: str) -> tuple[dict[str, Any], str]:
    """{component: (library, class, config)} and "_class_name", and where they came from:
    the model folder, the hub, or the released configs bundled for well-known ids."""
    from diversynth.models.released import RELEASED

    path = Path(model)
    local = path.is_dir()
    if not local and model in RELEASED:  # known: no wait on a hub that may be unreachable
        return RELEASED[model], "released configs bundled with diversynth"
    if not local:
        from diversynth.models.hub import offline_unless_answering

        offline_unless_answering([model])
    try:
        index = read_json(model, "model_index.json")
    except Exception:  # the hub unreachable
        raise PlanError(
            f"plan: cannot read the configs of generate.model {model!r} (no hub "
            "here?): download the model folder and point generate.model at it"
        ) from None
    if index is None:
        raise PlanError(f"plan: generate.model {model!r} has no model_index.json: not a "
                        "diffusers pipeline folder")  # fmt: skip
    found: dict[str, Any] = {"_class_name": index.get("_class_name")}
    config: dict[str, Any] | None
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, cls = entry
        if name.startswith("tokenizer"):
            config = read_json(model, f"{name}/tokenizer_config.json") or {}
        elif name in ("scheduler",) or library not in ("diffusers", "transformers"):
            continue
        else:
            config = read_json(model, f"{name}/config.json")
            if config is None:
                raise PlanError(f"plan: generate.model {model!r} has no {name}/config.json")
        found[name] = (library, cls, config)
    return found, "the model folder" if local else "the hub"


def _build(library: str, cls: str, config: dict[str, Any]) -> Any:
    """The module at full size on the meta device: shapes only."""
    import torch

    from diversynth.models.safe_weights import loading

    with torch.device("meta"), loading("generate.model", f"{cls} from its config", PlanError):
        if library == "diffusers":
            import diffusers

            model_cls = getattr(diffusers, cls)
            settings = {k: v for k, v in config.items() if not k.startswith("_")}
            return model_cls.from_config(settings)
        import transformers

        settings = dict(config)
        model_type = settings.pop("model_type", None) or cls_model_type(cls)
        return getattr(transformers, cls)(transformers.AutoConfig.for_model(model_type, **settings))


def cls_model_type(cls: str) -> str:
    for prefix, kind in (("CLIPText", "clip_text_model"), ("T5", "t5"), ("Gemma2", "gemma2"),
                         ("Gemma", "gemma")):  # fmt: skip
        if cls.startswith(prefix):
            return kind
    raise PlanError(f"plan: no FLOP count for a {cls} text encoder")


def _flops(fn: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _scale_factor(vae: Any) -> int:
    channels = (
        getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
    )
    return 2 ** (len(channels) - 1)


def _denoiser_call(module: Any, cls: str, latent: Any, text_len: int) -> Any:
    """One call of a denoiser at batch 1, the inputs its pipeline gives it."""
    import torch

    cfg = module.config
    batch, _, h, w = latent.shape
    t = torch.tensor([500.0])
    if cls == "UNet2DConditionModel":
        extra: dict[str, Any] = {}
        if cfg.addition_embed_type == "text_time":
            text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, text_dim),
                                          "time_ids": torch.randn(batch, 6)}  # fmt: skip
        hidden = torch.randn(batch, text_len, cfg.cross_attention_dim)
        return lambda: module(latent, t, encoder_hidden_states=hidden, **extra)
    if cls == "SD3Transformer2DModel":
        hidden = torch.randn(batch, text_len, cfg.joint_attention_dim)
        pooled = torch.randn(batch, cfg.pooled_projection_dim)
        return lambda: module(hidden_states=latent, encoder_hidden_states=hidden,
                              pooled_projections=pooled, timestep=t)  # fmt: skip
    if cls == "FluxTransformer2DModel":
        tokens = (h // 2) * (w // 2)
        packed = torch.randn(batch, tokens, cfg.in_channels)
        hidden = torch.randn(batch, text_len, cfg.joint_attention_dim)
        extra = {"guidance": torch.tensor([3.5])} if cfg.guidance_embeds else {}
        return lambda: module(hidden_states=packed, encoder_hidden_states=hidden,
                              pooled_projections=torch.randn(batch, cfg.pooled_projection_dim),
                              timestep=t / 1000, img_ids=torch.zeros(tokens, 3),
                              txt_ids=torch.zeros(text_len, 3), **extra)  # fmt: skip
    if cls == "PixArtTransformer2DModel":
        hidden = torch.randn(batch, text_len, cfg.caption_channels)
        return lambda: module(
            latent,
            encoder_hidden_states=hidden,
            timestep=t,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
    if cls == "SanaTransformer2DModel":
        hidden = torch.randn(batch, text_len, cfg.caption_channels)
        return lambda: module(latent, encoder_hidden_states=hidden, timestep=t)
    raise PlanError(f"plan: no FLOP count for a {cls} denoiser")


def _denoiser_in_channels(module: Any, cls: str) -> int:
    cfg = module.config
    return cfg.in_channels // 4 if cls == "FluxTransformer2DModel" else cfg.in_channels


def count_flops(config: GenerateConfig) -> tuple[list[ComponentFlops], str, str]:
    """FLOPs of each component for one image at the configured size and steps, the
    pipeline class, and where the architecture was read from."""
    parts, source = architecture_configs(config.model)
    return count_architecture_flops(parts, config), parts["_class_name"], source


def count_architecture_flops(parts: dict[str, Any], config: GenerateConfig) -> list[ComponentFlops]:
    """FLOPs of each component of the architecture `parts` (architecture_configs) for one
    image at the configured size, steps and guidance."""
    import torch

    pipeline = parts["_class_name"]
    if pipeline not in text_to_image_classes():
        raise PlanError(f"plan: generate.model {config.model!r} is a {pipeline}, not a "
                        "text-to-image pipeline")  # fmt: skip
    left_out = set(config.components)
    tokens = {name: _text_tokens(pipeline, parts[name][1], parts[name][2]) for name in parts
              if name.startswith("tokenizer") and name not in left_out}  # fmt: skip
    denoiser_name = "unet" if "unet" in parts else "transformer"
    library, cls, settings = parts[denoiser_name]
    denoiser = _build(library, cls, settings)
    vae = _build(*parts["vae"])
    factor = _scale_factor(vae)
    if config.height % factor or config.width % factor:
        raise PlanError(f"plan: generate.height and width must be multiples of {factor} for "
                        f"{pipeline}")  # fmt: skip
    channels = _denoiser_in_channels(denoiser, cls)
    with torch.device("meta"):
        latent = torch.randn(1, channels, config.height // factor, config.width // factor)
    guided = _guided(config, parts)
    # the text the denoiser attends to: the longest encoder's tokens; SD3 joins the CLIPs'
    # 77 (side by side) and max_sequence_length T5 tokens (zeros without its T5); FLUX
    # attends to the T5's only
    text_len = max(tokens.values(), default=77)
    if cls == "SD3Transformer2DModel":
        text_len = 77 + _text_tokens(pipeline, "T5TokenizerFast", {})
    elif cls == "FluxTransformer2DModel":
        text_len = max(n for name, n in tokens.items() if "CLIP" not in parts[name][1])
    with torch.device("meta"):  # the inputs too
        call = _denoiser_call(denoiser, cls, latent, text_len)
    found = [ComponentFlops(denoiser_name, cls, _flops(call),
                            config.steps * (2 if guided else 1))]  # fmt: skip
    del denoiser
    found.append(ComponentFlops("vae", parts["vae"][1], _flops(lambda: vae.decode(latent)), 1))
    for name, length in sorted(tokens.items()):
        encoder_name = name.replace("tokenizer", "text_encoder")
        if encoder_name not in parts or encoder_name in left_out:
            continue
        encoder = _build(*parts[encoder_name])
        with torch.device("meta"):
            ids = torch.zeros(1, length, dtype=torch.long)
        # the negative prompt is encoded too when guidance is on
        found.append(
            ComponentFlops(
                encoder_name,
                parts[encoder_name][1],
                _flops(lambda e=encoder, i=ids: e(i)),
                2 if guided else 1,
            )
        )
    return found


def _text_tokens(pipeline: str, cls: str, settings: dict[str, Any]) -> int:
    """Tokens a tokenizer of class `cls` gives its encoder in `pipeline`."""
    return encoder_tokens(cls, settings, call_defaults(text_to_image_classes()[pipeline]))


def _guided(config: GenerateConfig, parts: dict[str, Any]) -> bool:
    """Whether each step calls the denoiser twice (classifier-free guidance on)."""
    cls = text_to_image_classes()[parts["_class_name"]]
    transformer = parts["transformer"][2] if "transformer" in parts else None
    default = call_defaults(cls).get("guidance_scale")
    return classifier_free_on(guidance_kind(cls, transformer), config.guidance_scale, default)


# --- measured efficiency -----------------------------------------------------------------


def measured_efficiency(results: Path = RESULTS) -> tuple[dict[str, float], str]:
    """Per card named in the measurement, the fraction of its peak that plain diffusers
    reached on SD 1.5 (the stage's default mode runs at least as fast: a conservative
    figure); and the setting it was measured at."""
    path = results / MEASURED["file"]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, ""
    card = next((c for c in CARDS if c in data.get("machine", "")), None)
    if card is None:
        return {}, ""
    s = data["settings"]
    from diversynth.models.released import RELEASED

    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # what the benchmark builds
    settings = GenerateConfig(model=sd15, steps=s["steps"], guidance_scale=s["guidance_scale"],
                              height=s["size"], width=s["size"])  # fmt: skip
    parts = count_architecture_flops(RELEASED[sd15], settings)
    per_image = sum(p.flops * p.calls for p in parts)
    rate = data["images_per_second"]["plain_diffusers"] * per_image
    return {card: rate / CARDS[card]}, f"SD 1.5 {s['size']} px, {s['steps']} steps, {s['dtype']}"


# --- the plan ----------------------------------------------------------------------------


def make_plan(config: RunConfig) -> Plan:
    """The run's counts as its stages estimate them, and generation's FLOPs and hours."""
    console.print(f"plan: counting {config.train.model}'s FLOPs on the meta device",
                  highlight=False)  # fmt: skip
    found = pipeline.estimate(config)
    plan = Plan(found.classes, found.prompts, found.images, found.shards, found.bytes_per_image,
                found.disk_bytes, found.llm_requests, found.llm_tokens_in, found.llm_tokens_out,
                training=found.training, notes=list(found.notes))  # fmt: skip
    gen = config.generate
    if gen is None:
        plan.notes.append("no generate section: no generation to plan")
        return plan
    console.print(f"plan: building {gen.model}'s architecture on the meta device (a minute "
                  "for a large model)", highlight=False, soft_wrap=True)  # fmt: skip
    plan.components, plan.pipeline, plan.architecture_source = count_flops(gen)
    plan.flops_per_image = sum(c.flops * c.calls for c in plan.components)
    efficiency, measured_at = measured_efficiency()
    reference = next(iter(efficiency.items()), None)
    for card, peak in CARDS.items():
        if card in efficiency:
            fraction, source = efficiency[card], f"measured on {card} ({measured_at})"
        elif reference is not None:
            fraction = reference[1]
            source = f"no {card} measurement: {reference[0]}'s fraction of peak assumed"
        else:
            continue
        plan.gpu_hours[card] = plan.images * plan.flops_per_image / (peak * fraction) / 3600
        plan.efficiency[card] = f"{fraction:.1%} of peak, {source}"
    denoiser = plan.components[0].cls
    if denoiser != MEASURED["architecture"]:
        plan.notes.append(f"efficiency measured for {MEASURED['architecture']} only; "
                          f"assumed the same for {denoiser}")  # fmt: skip
    if not efficiency:
        plan.notes.append(f"no measurement in benchmarks/results/{MEASURED['file']}: no hours")
    return plan


def _human(count: float, units: tuple[tuple[str, float], ...]) -> str:
    for unit, scale in units:
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,.0f}"


def render(plan: Plan, name: str) -> Any:
    """The plan as rich tables (printed by the CLI)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"plan: {escape(name)}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("classes", f"{plan.classes:,}"), ("prompts", f"{plan.prompts:,}"),
        ("images", f"{plan.images:,}"), ("shards", f"{plan.shards:,}"),
        ("disk", f"{_human(plan.disk_bytes, BYTES)} ({plan.bytes_per_image / 1e3:.1f} KB each)"),
        ("LLM requests", f"{plan.llm_requests:,}"),
        ("LLM tokens in / out (at most)", f"{plan.llm_tokens_in:,} / {plan.llm_tokens_out:,}"),
    ]  # fmt: skip
    if plan.flops_per_image:
        rows += [
            ("pipeline", f"{plan.pipeline} ({plan.architecture_source})"),
            ("FLOPs an image", _human(plan.flops_per_image, (("TFLOP", 1e12), ("GFLOP", 1e9)))),
        ]
    for label, value in rows:
        table.add_row(label, value)
    parts = Table(title="FLOPs an image, by component")
    for column in ("component", "class", "one call", "calls", "total"):
        parts.add_column(column, justify="right" if column != "component" else "left")
    units = (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6))
    for c in plan.components:
        parts.add_row(c.name, c.cls, _human(c.flops, units), f"{c.calls:g}",
                      _human(c.flops * c.calls, units))  # fmt: skip
    hours = Table(title="GPU-hours")
    for column in ("card", "GPU-hours", "images/s", "efficiency"):
        hours.add_column(column, justify="left" if column in ("card", "efficiency") else "right")
    for card, gpu_hours in plan.gpu_hours.items():
        rate = plan.images / (gpu_hours * 3600) if gpu_hours else 0.0
        hours.add_row(card, f"{gpu_hours:,.1f}", f"{rate:.2f}", plan.efficiency[card])
    shown: list[Any] = [table]
    if plan.components:
        shown += [parts, hours]
    if plan.training is not None:
        shown.append(training_table(plan.training))
    shown += [f"note: {note}" for note in plan.notes]
    return Group(*shown)


def hours_span(low: float, high: float) -> str:
    """Model-bound to loader-bound hours ("75.3 - 179.6"), or one figure when they agree."""
    digits = 0 if low >= 100 else 1
    if high <= low * 1.01:
        return f"{low:,.{digits}f}"
    return f"{low:,.{digits}f} - {high:,.{digits}f}"


def training_table(cost: TrainingCost) -> Any:
    from rich.table import Table

    table = Table(title=f"training: {cost.model}, {cost.image_size} px", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row(
        "FLOPs an image (forward + backward)",
        _human(cost.flops_per_image, (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6))),
    )
    if cost.real_images is not None:
        table.add_row("real training images", f"{cost.real_images:,} ({cost.real_source})")
    if cost.images_seen is not None:
        table.add_row("images seen", f"{cost.images_seen:,}")
    for card, (low, high) in cost.gpu_hours.items():
        table.add_row(f"{card} GPU-hours", hours_span(low, high))
    return table
