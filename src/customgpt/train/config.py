"""Training configs: dataclass sections parsed by jsonargparse, YAML presets, dotted overrides.

:func:`load_config` layers a root section's defaults, a YAML file (a path or a packaged
preset name) and ``--section.key VALUE`` overrides; jsonargparse checks the types, each
section's ``validate()`` the ranges. A ``data/`` section may be a plain ``@dataclass``
whose ``__post_init__`` raises ConfigError naming ``section.key``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import json
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import jsonargparse
import yaml

from customgpt.config import GPTConfig
from customgpt.errors import ConfigError
from customgpt.io import atomic_write_text
from customgpt.sections import FieldError, Section, to_dict, unwrap_optional

T = TypeVar("T")

_NONFINITE = re.compile(r"^[+-]?(nan|inf|infinity|\.nan|\.inf)$", re.IGNORECASE)


FLAG = object()  # a command-line key given without a value (``--runtime.compile``): true for bools


# --------------------------------------------------------------------------- the schema's keys


@functools.cache
def schema_keys(schema: type) -> dict[str, Any]:
    """Every dotted key of a root section and its type (sections included): ``{"train.lr": float, ...}``."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            key = f"{prefix}{f.name}"
            out[key] = hints[f.name]
            if is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".")

    walk(schema, "")
    return out


def describe_type(tp: Any) -> str:
    """A short human name for a field type, used in error messages."""
    optional, inner = unwrap_optional(tp)
    if optional:
        return f"{describe_type(inner)} or none"
    origin = get_origin(inner)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(inner))
    if origin in (tuple, list):
        args = get_args(inner)
        noun = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(args[0] if args else None, "values")
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{len(args)} comma-separated {noun}"
        return f"a comma-separated list of {noun}"
    if is_dataclass(inner):
        return f"a section ({inner.__name__})"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        inner, getattr(inner, "__name__", str(inner)))


def _to_arg(key: str, tp: Any, value: Any, where: str) -> str:
    """One value (a command-line string, FLAG, or a YAML object) as jsonargparse's text for ``--key``."""
    optional, inner = unwrap_optional(tp)
    origin = get_origin(inner)
    if value is FLAG:
        if inner is bool:
            return "true"
        raise ConfigError(f"{key}: needs a value ({describe_type(tp)}){where}")
    if inner is float or (origin in (tuple, list) and float in get_args(inner)):
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if (isinstance(item, float) and not math.isfinite(item)
                    or isinstance(item, str) and _NONFINITE.match(item.strip())):
                raise ConfigError(f"{key}: must be a finite number, got {item!r}{where}")
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() == "none":  # jsonargparse reads null and ~
            return "null"
        if inner is bool:  # jsonargparse reads true/false, yes/no and on/off
            return {"1": "true", "y": "true", "0": "false", "n": "false"}.get(text.lower(), text.lower())
        if origin in (tuple, list) and not text.startswith("["):
            elem = (get_args(inner) or (str,))[0]
            items = [v.strip() for v in text.split(",") if v.strip()]
            return json.dumps([v if elem is str else yaml.safe_load(v) for v in items])
        return value
    if value is None:
        return "null"
    if origin in (tuple, list) and not isinstance(value, (list, tuple)):
        value = [value]
    return json.dumps(value, default=str)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in data.items():
        out += _flatten(value, f"{prefix}{name}.") if isinstance(value, dict) else [(f"{prefix}{name}", value)]
    return out


# --------------------------------------------------------------------------- parsing


@functools.cache
def make_parser(schema: type) -> Any:
    """The jsonargparse parser of a root section (cached): it checks types and renders ``--help``."""
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = jsonargparse.ArgumentParser(exit_on_error=False, prog="config", default_env=False)
    parser.add_class_arguments(schema, nested_key=None, fail_untyped=True, instantiate=False)
    return parser


def keys_help(schema: type) -> str:
    """``--help`` text listing every key of ``schema`` with its type, default and description."""
    out = []
    for block in make_parser(schema).format_help().split("\n\n")[2:]:  # past usage and -h: one per section
        block = re.sub(r"^ +--[\w.]+ CONFIG .*\n", "", block, flags=re.MULTILINE)  # "--train CONFIG": a file
        section = re.search(r"--([\w.]+)\.\w+", block)
        out.append(f"{section.group(1)}: {block}" if section else block)
    return "config keys (override any with --section.key VALUE):\n\n" + "\n\n".join(out)


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a ``schema`` instance from its defaults, an optional YAML file and overrides.

    Args:
        schema: the root :class:`~customgpt.sections.Section` dataclass.
        path: a YAML file or a packaged preset name; None for the schema's defaults.
        overrides: command-line tokens (``["--train.lr", "3e-4"]``).

    Raises:
        ConfigError: unknown key, bad value or type, unreadable or invalid YAML, duplicate
            YAML key; the message names the key and the file or flag that set it.
    """
    pairs: list[tuple[str, Any, str]] = []
    if path is not None:
        data = read_yaml(resolve_config_path(path))
        pairs += [(k, v, str(path)) for k, v in _flatten(data)]
    pairs += [(k, v, f"--{k}") for k, v in parse_overrides(overrides)]

    keys = schema_keys(schema)
    origins: dict[str, str] = {}
    raw: dict[str, Any] = {}
    args: list[str] = []
    for key, value, source in pairs:
        where = f" (set in {source})"
        if key not in keys:
            hint = difflib.get_close_matches(key, list(keys), n=1)
            raise ConfigError(f"unknown config key {key!r}{where}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        if is_dataclass(keys[key]):
            if value is None:  # "train:" with nothing under it
                continue
            raise ConfigError(f"{key}: expected {describe_type(keys[key])}, got {value!r}{where}")
        args.append(f"--{key}={_to_arg(key, keys[key], value, where)}")
        origins[key], raw[key] = source, value

    try:
        ns = make_parser(schema).parse_args(args)
    except jsonargparse.ArgumentError as exc:
        found = re.search(r'key "([\w.]+)"', str(exc))
        key = found.group(1) if found else ""
        if key in raw:
            expected = describe_type(keys[key])
            raise ConfigError(f"{key}: expected {expected}, got {raw[key]!r}{_where(key, origins)}") from None
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from None
    return _build(schema, ns.as_dict(), "", origins)


def _build(cls: type[T], data: dict[str, Any], prefix: str, origins: dict[str, str]) -> T:
    """Construct section ``cls`` (its sub-sections first); a FieldError gains the dotted key and origin."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = data.get(f.name)
        if is_dataclass(hints[f.name]) and isinstance(value, dict):
            value = _build(hints[f.name], value, f"{prefix}{f.name}.", origins)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except FieldError as exc:
        full = f"{prefix}{exc.key}"
        raise ConfigError(f"{full}: {exc.reason}{_where(full, origins)}") from None
    except ConfigError as exc:  # a plain dataclass section naming its full key: "data.split: ..."
        named = re.match(r"^([\w.]+)(\[\d+\])?:", str(exc))
        where = _where(named.group(1), origins) if named else ""
        if not where:
            raise
        raise ConfigError(f"{exc}{where}") from None


def _where(key: str, origins: dict[str, str]) -> str:
    base = key.split("[", 1)[0]
    return f" (set in {origins[base]})" if base in origins else ""


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back."""
    atomic_write_text(path, to_yaml(obj))


# --------------------------------------------------------------------------- overrides


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, Any]]:
    """``["--train.lr", "3e-4", "--optim.betas=0.9,0.95"]`` → ``[("train.lr", "3e-4"), ...]``.

    A key followed by another ``--key`` (or nothing) is a flag: true for a bool field.
    Dashes in keys are read as underscores (``--train.max-steps``).
    """
    out: list[tuple[str, Any]] = []
    rest = list(tokens)
    while rest:
        token = rest.pop(0)
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: overrides look like --section.key VALUE")
        key, eq, value = token[2:].partition("=")
        if not eq:
            value = rest.pop(0) if rest and not rest[0].startswith("--") else FLAG
        out.append((key.replace("-", "_"), value))  # the key is checked against the schema by load_config
    return out


# --------------------------------------------------------------------------- files and presets


def _packaged_configs() -> Path:
    return Path(str(resources.files("customgpt") / "configs"))


def list_config_presets() -> list[str]:
    """Names of the packaged YAML presets (``customgpt/configs/*.yaml``)."""
    return sorted(p.stem for p in _packaged_configs().glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a packaged preset (``pretrain-verdict``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if "/" not in name and "\\" not in name:
        packaged = _packaged_configs() / f"{name.removesuffix('.yaml')}.yaml"  # the presets are *.yaml
        if packaged.is_file():
            return packaged
    if path.exists():
        raise ConfigError(f"config {name!r} is not a file")
    presets = ", ".join(list_config_presets()) or "none"
    raise ConfigError(f"config {name!r} is neither a file nor a packaged preset (presets: {presets})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors and duplicate keys name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        kind = "" if str(problem).startswith("duplicate key") else "invalid YAML: "
        raise ConfigError(f"{path}:{where} {kind}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- argparse glue


def add_config_arguments(parser: argparse.ArgumentParser, schema: str, *, default_config: str | None = None) -> None:
    """Give a command ``--config``, ``--print-config`` and ``--section.key VALUE`` overrides of
    the root section ``schema`` (``"module:Name"``, imported only for ``--help``, which then
    lists every key). The tokens the command's own options do not take (the overrides) land
    in ``args.overrides`` for :func:`load_config`, which checks them.
    """
    parser.allow_abbrev = False
    default = f" (default: {default_config})" if default_config else ""
    parser.add_argument(
        "--config", "-c", default=default_config,
        help=f"YAML config: a path, or a packaged preset name{default}",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    original_help = parser.format_help
    original_parse = parser.parse_known_args

    def format_help() -> str:
        module, name = schema.split(":")
        return original_help() + "\n" + keys_help(getattr(importlib.import_module(module), name))

    def parse_known_args(args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        ns, rest = original_parse(args, namespace)
        ns.overrides = rest
        return ns, []

    parser.format_help = format_help  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


# --------------------------------------------------------------------------- shared sections


@dataclass
class ModelSection(Section):
    """Which model to train: a preset (from scratch), or weights to continue from."""

    preset: str | None = "cpu-small"
    """A model preset (cpu-tiny, cpu-small, gpt2-124M ...) to train from scratch."""
    init: str | None = None
    """A customgpt/Hugging Face folder or hub id to start from (its shape wins; preset is ignored)."""
    context_length: int | None = None
    """Positions of the model; none: the preset's (from scratch only)."""
    n_layer: int | None = None
    """Transformer blocks; none: the preset's (from scratch only)."""
    n_head: int | None = None
    """Attention heads; none: the preset's (from scratch only)."""
    n_embd: int | None = None
    """Embedding width; none: the preset's (from scratch only)."""
    dropout: float | None = None
    """Dropout while training (also applied to loaded weights); none: the model's."""
    attn_dropout: float | None = None
    """Dropout of the attention weights; none: the model's."""
    impl: Literal["fast", "explicit"] | None = None
    """Attention kernels: fast or explicit (same numbers); none: the model's."""

    _SHAPE = ("context_length", "n_layer", "n_head", "n_embd")

    def validate(self) -> None:
        if self.init is None and self.preset is None:
            raise FieldError("preset", "give a model preset, or weights to start from in model.init")
        for key in ("dropout", "attn_dropout"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise FieldError(key, f"must be in [0, 1), got {value}")
        shaped = [key for key in self._SHAPE if getattr(self, key) is not None]
        if self.init is None:
            self.gpt_config()  # shape errors (e.g. n_embd % n_head) surface now, before training
        elif shaped:
            raise FieldError(shaped[0], "cannot change the shape of weights loaded from model.init "
                                        f"(set it to null: --model.{shaped[0]} null)")

    def _changes(self) -> dict[str, Any]:
        keys = (*self._SHAPE, "dropout", "attn_dropout", "impl")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def gpt_config(self) -> GPTConfig:
        """The model config for training from scratch (``init`` is None)."""
        try:
            return GPTConfig.from_preset(self.preset or "", **self._changes())
        except ConfigError as exc:
            found = re.search(r"model\.(\w+)", str(exc))
            raise FieldError(found.group(1) if found else "preset", str(exc)) from None

    def build(self):  # -> customgpt.model.GPT
        """A fresh model from the preset, or the weights in ``init`` (with this section's
        dropout/impl applied). Returned on the CPU in train mode; seed first for repeatable
        initial weights."""
        from customgpt.model import GPT

        if self.init is None:
            return GPT(self.gpt_config()).train()
        from customgpt.checkpoints import load_model

        return load_model(self.init, device="cpu", dtype="float32", overrides=self._changes() or None).train()


@dataclass
class OptimConfig(Section):
    """AdamW; weight decay applies to matrices and embeddings only."""

    weight_decay: float = 0.1
    """Decoupled weight decay of matrices and embeddings (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    fused: bool | None = None
    """Fused AdamW kernels; none: fused on CUDA and CPU, foreach elsewhere."""

    def validate(self) -> None:
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise FieldError(f"betas[{i}]", f"must be in [0, 1), got {b}")
        if self.eps <= 0:
            raise FieldError("eps", f"must be > 0, got {self.eps}")


#: the largest learning rate accepted: AdamW steps each weight by about lr, so more is never meant
MAX_LR = 10.0
#: seeds must fit torch.manual_seed (which also takes negatives down to -2**63)
MAX_SEED = 2**64 - 1


@dataclass
class TrainConfig(Section):
    """The loop: how long, how big a batch, the LR schedule, clipping, evaluation, saving.

    Batch sizes count sequences. ``batch_size`` is the global batch of one optimizer step;
    each process runs ``micro_batch_size`` sequences per forward/backward and accumulates
    ``batch_size / (micro_batch_size * world_size)`` of them. The LR warms up linearly from
    ``initial_lr`` to ``lr``, then follows ``schedule`` down to ``min_lr``.
    """

    epochs: int = 1
    """Passes over the training data."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; none: run all epochs."""
    batch_size: int = 8
    """Sequences per optimizer step (all processes together)."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward on one process; none: the whole per-process batch."""
    lr: float = 4e-4
    """Peak learning rate (after warmup); at most 10."""
    initial_lr: float = 0.0
    """Learning rate at the start of warmup (<= lr)."""
    min_lr: float = 0.0
    """Learning rate at the end of the schedule (<= lr)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine, linear or constant."""
    warmup_steps: int | None = None
    """Optimizer steps of linear warmup (or give warmup_fraction)."""
    warmup_fraction: float | None = None
    """Fraction of all steps spent warming up, in [0, 1)."""
    grad_clip: float | None = 1.0
    """Max global gradient norm; 0 or none: no clipping."""
    seed: int = 123
    """Seed of the initial weights, shuffling and dropout (0 to 2**64 - 1)."""
    eval_every: int = 50
    """Optimizer steps between evaluations; 0: only at the end."""
    eval_iters: int | None = 20
    """Validation batches per evaluation; none: all."""
    save_every: int | None = None
    """Steps between checkpoints; none: at every evaluation."""

    def validate(self) -> None:
        for key, low in (("epochs", 1), ("batch_size", 1), ("max_steps", 1), ("micro_batch_size", 1),
                         ("eval_iters", 1), ("warmup_steps", 0), ("grad_clip", 0), ("eval_every", 0),
                         ("save_every", 0), ("initial_lr", 0), ("min_lr", 0)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise FieldError(key, f"must be >= {low}, got {value}")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise FieldError("micro_batch_size", f"({self.micro_batch_size}) exceeds batch_size ({self.batch_size})")
        if self.lr <= 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        if self.lr > MAX_LR:
            raise FieldError("lr", f"must be <= {MAX_LR:g} (a learning rate this large only makes the weights nan), "
                             f"got {self.lr:g}")
        for key in ("initial_lr", "min_lr"):
            if getattr(self, key) > self.lr:
                raise FieldError(key, f"must be <= train.lr ({self.lr:g}), got {getattr(self, key):g}")
        if not 0 <= self.seed <= MAX_SEED:
            raise FieldError("seed", f"must be between 0 and 2**64 - 1 ({MAX_SEED}), got {self.seed}")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise FieldError("warmup_steps", "give warmup_steps or warmup_fraction, not both")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise FieldError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")

    def accumulation(self, world_size: int = 1) -> tuple[int, int]:
        """(micro_batch_size, accumulation steps) per process; the global batch must divide evenly."""
        per_rank, rest = divmod(self.batch_size, world_size)
        if rest:
            raise ConfigError(f"train.batch_size ({self.batch_size}) must be divisible by the number of processes ({world_size})")
        micro = self.micro_batch_size or per_rank
        if per_rank % micro:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({micro}) "
                f"x processes ({world_size})"
            )
        return micro, per_rank // micro


@dataclass
class RuntimeConfig(Section):
    """Where and how the math runs."""

    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, mps, cuda or cuda:N."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Training precision; auto: bf16 on capable CUDA, else fp32."""
    compile: bool = False
    """torch.compile the model."""
    threads: int | None = None
    """CPU threads for PyTorch's intra-op work; none: PyTorch's default."""

    def validate(self) -> None:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", self.device):
            raise FieldError("device", f"expected auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise FieldError("threads", f"must be >= 1 or none, got {self.threads}")


@dataclass
class LoggingConfig(Section):
    """Where the run goes and what it reports."""

    out_dir: str = "runs/pretrain"
    """The run folder: config, metrics, plots, checkpoints, final model."""
    log_every: int = 1
    """Steps between metrics.jsonl lines."""
    progress: bool = True
    """Show a progress bar."""
    plots: bool = True
    """Draw loss.png and lr.png at the end."""
    tensorboard: bool = False
    """Also write TensorBoard events (needs `pip install tensorboard`)."""

    def validate(self) -> None:
        if self.log_every < 1:
            raise FieldError("log_every", f"must be >= 1, got {self.log_every}")
        if not self.out_dir:
            raise FieldError("out_dir", "must not be empty")

    def run_folder(self, *markers: str, what: str = "a run") -> Path:
        """``out_dir`` as a path, checked: not a file, and holding none of ``markers`` (the files
        or folders an earlier run of the task leaves there).

        Raises:
            ConfigError: naming ``logging.out_dir`` (and ``what`` it already holds).
        """
        run_dir = Path(self.out_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"logging.out_dir: {run_dir} exists and is not a folder")
        if any((run_dir / marker).exists() for marker in markers):
            raise ConfigError(f"logging.out_dir: {run_dir} already holds {what}; choose another folder")
        return run_dir
