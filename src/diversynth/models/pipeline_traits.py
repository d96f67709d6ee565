"""What a text-to-image pipeline takes, read from its saved configs without its weights.

Pipelines differ in what their `__call__` accepts and what it does with it: SD 1.x/2.x,
SDXL, SD3, PixArt and Sana guide with classifier-free guidance (on when guidance_scale > 1,
with a negative prompt); FLUX.1-dev embeds the guidance scale (distilled guidance, no
negative prompt), FLUX.1-schnell takes none. Their text encoders read 77 CLIP tokens,
256-512 T5 tokens or 300 Gemma tokens. The generate stage asks these traits instead of
assuming Stable Diffusion 1.x: a setting the pipeline would drop is refused at config time,
and prompts are measured with the pipeline's own tokenizers.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from diversynth.config import GenerateConfig
from diversynth.errors import UsageError
from diversynth.models.safe_weights import ModelFolderError, read_json_object

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

Guidance = Literal["classifier-free", "distilled", "none"]
CLIP_TOKENS = 77


class PipelineTraitsError(UsageError):
    pass


@dataclass(frozen=True)
class TextEncoder:
    tokenizer: str  # component name: tokenizer, tokenizer_2, ...
    kind: str  # tokenizer class name
    tokens: int  # what the pipeline reads of a prompt with it (markers included)


@dataclass(frozen=True)
class PipelineTraits:
    model: str
    pipeline: str  # class name
    guidance: Guidance
    default_guidance: float | None
    negative_prompt: bool
    encoders: tuple[TextEncoder, ...]
    options: frozenset[str]  # what __call__ takes
    left_out: tuple[str, ...] = ()  # components saved as left out (null in model_index.json)
    components: dict[str, Any] = field(default_factory=dict)  # model_index.json entries

    @property
    def longest(self) -> TextEncoder | None:
        """The encoder that reads the most of a prompt (the first among equals)."""
        return max(self.encoders, key=lambda e: e.tokens, default=None)


def read_json(model: str, name: str) -> dict[str, Any] | None:
    """A config file of a local model folder or a hub model (None when it has none): a
    JSON object of a bounded size, else PipelineTraitsError naming the file."""
    path = Path(model)
    if path.is_dir():
        file = path / name
        if not (file.exists() or file.is_symlink()):
            return None
        return _json_object(file)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        file = Path(hf_hub_download(model, name))
    except RemoteEntryNotFoundError:  # the hub has the model, not this file
        return None
    return _json_object(file)


def _json_object(file: Path) -> dict[str, Any]:
    try:
        return read_json_object(file, "generate.model")
    except ModelFolderError as exc:
        raise PipelineTraitsError(str(exc)) from None


def _named(entry: Any) -> bool:
    """A model_index.json entry that names a component to load: [library, class]
    (a component saved as left out is [null, null])."""
    return (isinstance(entry, list) and len(entry) == 2
            and all(isinstance(e, str) for e in entry))  # fmt: skip


def text_to_image_classes() -> dict[str, type[DiffusionPipeline]]:
    """Pipeline class name -> class, for every pipeline AutoPipelineForText2Image makes."""
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    # diffusers' mapping is typed by the join of its classes (type[object]): each is a
    # DiffusionPipeline subclass
    mapping = cast("dict[str, type[DiffusionPipeline]]", AUTO_TEXT2IMAGE_PIPELINES_MAPPING)
    return {cls.__name__: cls for cls in mapping.values()}


def guidance_kind(cls: type, transformer: dict[str, Any] | None) -> Guidance:
    """How a pipeline class guides, given its transformer's config (FLUX's embeds the
    scale when it has guidance embeddings, as FLUX.1-dev does; schnell's takes none)."""
    if "guidance_scale" not in inspect.signature(cls.__call__).parameters:
        return "none"
    if cls.__name__.startswith("Flux"):
        return "distilled" if (transformer or {}).get("guidance_embeds") else "none"
    return "classifier-free"


def classifier_free_on(kind: Guidance, scale: float | None, default: float | None) -> bool:
    """Whether each step calls the denoiser twice: classifier-free guidance, at a scale (the
    setting, else the pipeline's default) above 1."""
    value = scale if scale is not None else default
    return kind == "classifier-free" and value is not None and value > 1


def _encoders(cls: type, model: str, index: dict[str, Any],
              defaults: dict[str, Any]) -> tuple[TextEncoder, ...]:  # fmt: skip
    """Each tokenizer the model has and how many tokens of a prompt the pipeline reads with
    it: a CLIP tokenizer's model_max_length; for T5 and Gemma the pipeline's
    max_sequence_length (its default), within the tokenizer's own maximum."""
    found = []
    for name, entry in sorted(index.items()):
        if not (name.startswith("tokenizer") and _named(entry)):
            continue
        kind = entry[1]
        settings = read_json(model, f"{name}/tokenizer_config.json") or {}
        found.append(TextEncoder(name, kind, encoder_tokens(kind, settings, defaults)))
    return tuple(found)


def encoder_tokens(kind: str, settings: dict[str, Any], defaults: dict[str, Any]) -> int:
    """Tokens of a prompt the pipeline gives an encoder whose tokenizer is of class `kind`
    (`settings`: its tokenizer_config.json; `defaults`: the pipeline call's defaults): a
    CLIP tokenizer's model_max_length; a T5's or Gemma's, max_sequence_length within it."""
    own = settings.get("model_max_length")
    own = int(own) if isinstance(own, int | float) and own < 1e9 else None
    sequence = defaults.get("max_sequence_length")
    if "CLIP" not in kind and isinstance(sequence, int):
        return min(sequence, own) if own else sequence
    return own or CLIP_TOKENS


def call_defaults(cls: type) -> dict[str, Any]:
    """The default of each parameter of a pipeline class's __call__."""
    signature = inspect.signature(cls.__call__).parameters
    return {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}


def read_traits(model: str) -> PipelineTraits:
    """The traits of the pipeline saved at `model` (a folder or a hub id)."""
    try:
        index = read_json(model, "model_index.json")
    except PipelineTraitsError:  # the file is there, and is no JSON object: named
        raise
    except Exception as exc:  # hub errors come in many classes; the message names them
        raise PipelineTraitsError(f"generate.model: cannot read {model!r}: {exc}") from exc
    if index is None:
        raise PipelineTraitsError(
            f"generate.model: {model!r} has no model_index.json: not a diffusers pipeline "
            "folder (save one with pipeline.save_pretrained)"
        )
    name = index.get("_class_name")
    name = name if isinstance(name, str) else ""
    known = text_to_image_classes()
    if name not in known:
        raise PipelineTraitsError(
            f"generate.model: {model!r} is a {name or 'pipeline of no named class'}, not a "
            "text-to-image pipeline that AutoPipelineForText2Image loads"
        )
    cls = known[name]
    options = frozenset(inspect.signature(cls.__call__).parameters)
    defaults = call_defaults(cls)
    transformer = read_json(model, "transformer/config.json") if "transformer" in index else None
    guidance = guidance_kind(cls, transformer)
    default_guidance = defaults.get("guidance_scale") if guidance != "none" else None
    components = {k: v for k, v in index.items() if not k.startswith("_")}
    left_out = tuple(
        k
        for k, v in components.items()
        if isinstance(v, list) and v[:1] == [None] and k not in cls._optional_components
    )
    return PipelineTraits(
        model=model, pipeline=name, guidance=guidance,
        default_guidance=float(default_guidance) if default_guidance is not None else None,
        # FLUX's negative prompt needs its own true_cfg_scale: not a classifier-free one
        negative_prompt=guidance == "classifier-free" and "negative_prompt" in options,
        encoders=_encoders(cls, model, components, defaults), options=options,
        left_out=left_out, components=components,
    )  # fmt: skip


def effective_guidance(traits: PipelineTraits, config: GenerateConfig) -> float | None:
    return config.guidance_scale if config.guidance_scale is not None else traits.default_guidance


# Components no text-to-image pipeline runs without: diffusers loads a pipeline with any of
# them left out and fails at the first call
NEEDED_COMPONENTS = frozenset({"unet", "transformer", "vae", "scheduler", "text_encoder",
                               "tokenizer"})  # fmt: skip


def setting_problems(traits: PipelineTraits, config: GenerateConfig) -> list[str]:
    """Settings the pipeline would ignore or refuse, one line each."""
    problems = []
    what = f"{traits.pipeline} ({traits.model})"
    if config.guidance_scale is not None and traits.guidance == "none":
        problems.append(f"generate.guidance_scale: {config.guidance_scale} is ignored by "
                        f"{what}: it takes no guidance (leave it out)")  # fmt: skip
    if config.negative_prompt is not None:
        scale = effective_guidance(traits, config)
        if not traits.negative_prompt:
            problems.append(f"generate.negative_prompt: {what} takes no negative prompt "
                            f"(its guidance is {traits.guidance}); leave it out")  # fmt: skip
        elif scale is not None and scale <= 1:
            problems.append(f"generate.negative_prompt: ignored at guidance_scale {scale} "
                            "(classifier-free guidance is on above 1); leave it out or raise "
                            "generate.guidance_scale")  # fmt: skip
    for name in config.components:
        if name not in traits.components:
            problems.append(
                f"generate.components: {traits.pipeline} has no component "
                f"{name!r} (it has {', '.join(sorted(traits.components))})"
            )
        elif name in NEEDED_COMPONENTS and name in traits.components:
            problems.append(f"generate.components: {traits.pipeline} cannot run without its "
                            f"{name} (what can be left out: a second or third text encoder "
                            "and its tokenizer, a safety checker)")  # fmt: skip
    problems += _unknown_classes(traits, config)
    return problems


def _unknown_classes(traits: PipelineTraits, config: GenerateConfig) -> list[str]:
    """Components model_index.json names by a class their library does not have (a typo,
    or a newer library's class): diffusers fails on them only when loading."""
    import importlib

    problems = []
    for name, entry in sorted(traits.components.items()):
        if name in config.components or not _named(entry):
            continue
        library, cls = entry
        if library not in ("diffusers", "transformers"):
            continue  # remote code, or a library we do not load
        if not hasattr(importlib.import_module(library), cls):
            problems.append(f"generate.model: model_index.json names {name} a {library} {cls}, "
                            f"a class {library} does not have (a newer {library}'s?)")  # fmt: skip
    return problems


def load_overrides(traits: PipelineTraits, config: GenerateConfig) -> dict[str, None]:
    """Components to load as left out: those saved so, and generate.components."""
    return {name: None for name in (*traits.left_out, *config.components)}


def call_options(traits: PipelineTraits, config: GenerateConfig) -> dict[str, Any]:
    """The keyword arguments of a pipeline call beyond prompts, seeds and sizes."""
    options: dict[str, Any] = {"num_inference_steps": config.steps}
    if config.guidance_scale is not None:
        options["guidance_scale"] = config.guidance_scale
    # PixArt and Sana would generate at the nearest size of their training buckets and
    # resize; the stage makes the size configured (what `plan` prices), and our prompts
    # need no caption cleaning (which wants bs4 and ftfy, and changes the text)
    if "use_resolution_binning" in traits.options:
        options["use_resolution_binning"] = False
    if "clean_caption" in traits.options:
        options["clean_caption"] = False
    return options


def _prompt_encoders(traits: PipelineTraits, drop: tuple[str, ...]) -> list[TextEncoder]:
    """The encoders that will be loaded: a tokenizer goes with its text encoder."""
    gone = set(drop) | set(traits.left_out)
    return [e for e in traits.encoders if e.tokenizer not in gone
            and e.tokenizer.replace("tokenizer", "text_encoder") not in gone]  # fmt: skip


@dataclass(frozen=True)
class PromptLimit:
    """How long a prompt may be: the tokens of the encoder that reads the most of it (CLIP
    encoders beside a T5 read the first 77 and the T5 reads the rest)."""

    encoder: TextEncoder
    model: str

    def describe(self) -> str:
        return f"{self.encoder.tokens} tokens of {self.encoder.kind}"

    def count(self, text: str) -> int:
        return _count(self.model, self.encoder.tokenizer, text)

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.encoder.tokens


@lru_cache(maxsize=4)
def _tokenizer(model: str, subfolder: str) -> Any:
    from transformers import AutoTokenizer

    from diversynth.models.safe_weights import loading

    with loading("generate.model", f"{model}/{subfolder}", PipelineTraitsError):
        return AutoTokenizer.from_pretrained(model, subfolder=subfolder)


@lru_cache(maxsize=65536)
def _count(model: str, subfolder: str, text: str) -> int:
    return len(_tokenizer(model, subfolder)(text)["input_ids"])


def prompt_limit(config: GenerateConfig) -> PromptLimit | None:
    """The limit of the pipeline's longest-reading text encoder (None: it has none)."""
    traits = read_traits(config.model)
    encoders = _prompt_encoders(traits, tuple(config.components))
    if not encoders:
        return None
    return PromptLimit(max(encoders, key=lambda e: e.tokens), config.model)
