"""The configuration framework: dataclasses as the schema, YAML presets, dotted overrides.

A training command's configuration is a tree of dataclasses (sections). Each section
derives from :class:`Section`, which checks and converts every field against its type
annotation when the object is constructed, then runs the section's own ``validate()``.
So a config object that exists is a valid one, whether it came from YAML, the command
line, or Python code.

Loading (:func:`load_config`) merges three layers, later winning:

1. the schema's defaults,
2. a YAML file (a path, or the name of a packaged preset: see :func:`resolve_config_path`),
3. command-line overrides of any key by its dotted path: ``--train.lr 3e-4`` or
   ``--train.lr=3e-4``; ``--optim.betas 0.9,0.95``; ``--model.init none``.

Strings (from the command line, or YAML scalars such as ``3e-4`` that YAML reads as text)
are parsed by the field's type: ``int``, ``float``, ``bool`` (true/false, yes/no, on/off,
1/0; anything else is an error), ``str``, ``X | None`` ("none"/"null" give None),
``tuple``/``list`` (comma-separated), ``Literal[...]`` (one of the choices) and nested
sections. Unknown keys and bad values raise :class:`~customgpt.errors.ConfigError` naming
the dotted key and where it was set, before any training starts.

A command defines its own top-level schema from the shared sections here plus its own::

    @dataclass
    class FinetuneConfig(Section):
        model: ModelSection = field(default_factory=ModelSection)
        train: TrainConfig = field(default_factory=TrainConfig)
        optim: OptimConfig = field(default_factory=OptimConfig)
        runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
        logging: LoggingConfig = field(default_factory=LoggingConfig)
        data: MyDataSection = field(default_factory=MyDataSection)

    cfg = load_config(FinetuneConfig, "configs/finetune.yaml", ["--train.lr", "5e-5"])
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from customgpt.errors import ConfigError
from customgpt.train.files import atomic_write_text

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NONE = {"none", "null", "~"}


class FieldError(ConfigError):
    """A bad value for one field; the loader prefixes the section path to ``key``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class _Flag:
    """A command-line key given without a value (``--runtime.compile``): true for bools."""

    def __repr__(self) -> str:
        return "<flag without a value>"


FLAG = _Flag()


# --------------------------------------------------------------------------- type handling


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for ``X | None`` / ``Optional[X]``, else (False, tp)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != len(get_args(tp)) and len(args) == 1:
            return True, args[0]
        raise TypeError(f"unsupported union type {tp!r} in a config schema (only X | None)")
    return False, tp


def describe_type(tp: Any) -> str:
    """A short human name for a field type, used in error messages."""
    optional, inner = _is_optional(tp)
    if optional:
        return f"{describe_type(inner)} or none"
    origin = get_origin(inner)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(inner))
    if origin in (tuple, list):
        args = get_args(inner)
        nouns = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        noun = nouns.get(args[0], "values") if args else "values"
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{len(args)} comma-separated {noun}"
        return f"a comma-separated list of {noun}"
    if is_dataclass(inner):
        return f"a section ({inner.__name__})"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping"}.get(inner, getattr(inner, "__name__", str(inner)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``, parsing strings; raise FieldError naming ``key``."""
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise FieldError(key, f"expected {describe_type(tp)}, got none")
    return _coerce_inner(value, inner, key)


def _bad(key: str, tp: Any, value: Any) -> FieldError:
    return FieldError(key, f"expected {describe_type(tp)}, got {value!r}")


def _coerce_inner(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if value is FLAG:
        if tp is bool:
            return True
        raise FieldError(key, f"needs a value ({describe_type(tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)  # "1e3" is a whole number written as a float
                except ValueError:
                    raise _bad(key, tp, value) from None
                if f.is_integer():
                    return int(f)
        raise _bad(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _bad(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(key, tp, value)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            for choice in choices:
                if str(choice) == value.strip():
                    return choice
        raise _bad(key, tp, value)
    if origin in (tuple, list):
        args = get_args(tp)
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise _bad(key, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise FieldError(key, f"expected {describe_type(tp)}, got {len(items)}: {value!r}")
            return tuple(_coerce_inner(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        elem = args[0] if args else Any
        out = [v if elem is Any else _coerce_inner(v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if tp is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, dict):
            return dict(value)
        raise _bad(key, tp, value)
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return build_section(tp, value, key)
        raise _bad(key, tp, value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported type {tp!r} for config field {key}")


class Section:
    """Base class of config dataclasses: typed and validated on construction.

    Subclasses are ``@dataclass`` classes with annotated fields; they may override
    :meth:`validate` for checks across fields (raise :class:`FieldError` naming the field).
    """

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f.name))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise :class:`FieldError` (key, reason)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def build_section(cls: type[T], data: dict[str, Any], prefix: str = "", origins: dict[str, str] | None = None) -> T:
    """Construct section ``cls`` from a mapping; unknown keys and bad values name the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _type_hints(cls)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for name in data:
        if name not in names:
            full = f"{prefix}.{name}" if prefix else str(name)
            hint = difflib.get_close_matches(str(name), names, n=1)
            suggestion = f" (did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?)" if hint else ""
            raise ConfigError(f"unknown config key {full!r}{_where(full, origins)}{suggestion}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        full = f"{prefix}.{name}" if prefix else name
        optional, inner = _is_optional(hints[name])
        if is_dataclass(inner) and isinstance(value, dict):
            kwargs[name] = build_section(inner, value, full, origins)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except FieldError as exc:
        full = f"{prefix}.{exc.key}" if prefix else exc.key
        raise ConfigError(f"{full}: {exc.reason}{_where(full, origins)}") from None


def _where(key: str, origins: dict[str, str] | None) -> str:
    if not origins:
        return ""
    base = key.split("[", 1)[0]
    while base:
        if base in origins:
            return f" (set in {origins[base]})"
        base = base.rpartition(".")[0]
    return ""


def to_dict(obj: Any) -> Any:
    """A section as plain YAML-friendly data (tuples become lists)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back."""
    atomic_write_text(path, to_yaml(obj))


# --------------------------------------------------------------------------- overrides


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, Any]]:
    """``["--train.lr", "3e-4", "--optim.betas=0.9,0.95"]`` → ``[("train.lr", "3e-4"), ...]``.

    A key followed by another ``--key`` (or nothing) is a flag: true for a bool field.
    Dashes in keys are read as underscores (``--train.max-steps``).
    """
    out: list[tuple[str, Any]] = []
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: overrides look like --section.key VALUE")
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not _KEY_RE.match(key):
            raise ConfigError(f"bad override {token!r}: expected --section.key VALUE or --section.key=VALUE")
        if eq:
            out.append((key, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append((key, tokens[i + 1]))
            i += 2
        else:
            out.append((key, FLAG))
            i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[tuple[str, Any]], origins: dict[str, str]) -> None:
    """Set each dotted key in the nested mapping ``data`` (in place)."""
    for key, value in overrides:
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"cannot set --{key}: {where!r} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
        origins[key] = f"--{key}"


# --------------------------------------------------------------------------- files and presets


def _packaged_configs() -> Path:
    return Path(str(resources.files("customgpt") / "configs"))


def list_config_presets() -> list[str]:
    """Names of the packaged YAML presets (``customgpt/configs/*.yaml``)."""
    folder = _packaged_configs()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a packaged preset (``pretrain-verdict``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if "/" not in name and "\\" not in name:
        for candidate in (name, f"{name}.yaml", f"{name}.yml"):
            packaged = _packaged_configs() / candidate
            if packaged.is_file():
                return packaged
    if path.exists():
        raise ConfigError(f"config {name!r} is not a file")
    presets = ", ".join(list_config_presets()) or "none"
    raise ConfigError(f"config {name!r} is neither a file nor a packaged preset (presets: {presets})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _record_origins(data: dict[str, Any], source: str, origins: dict[str, str], prefix: str = "") -> None:
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        origins[full] = source
        if isinstance(value, dict):
            _record_origins(value, source, origins, full)


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] | Sequence[tuple[str, Any]] | None = None,
) -> T:
    """Build a ``schema`` instance from defaults, an optional YAML file and overrides.

    Args:
        schema: the top-level :class:`Section` dataclass.
        path: a YAML file or a packaged preset name; None for the schema's defaults.
        overrides: command-line tokens (``["--train.lr", "3e-4"]``) or (key, value) pairs.

    Raises:
        ConfigError: unknown key, bad value or type, unreadable file; names key and source.
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        resolved = resolve_config_path(path)
        data = read_yaml(resolved)
        _record_origins(data, str(path), origins)
    pairs: list[tuple[str, Any]]
    if overrides and isinstance(next(iter(overrides)), str):
        pairs = parse_overrides(overrides)  # type: ignore[arg-type]
    else:
        pairs = list(overrides or [])  # type: ignore[arg-type]
    apply_overrides(data, pairs, origins)
    return build_section(schema, data, "", origins)


# --------------------------------------------------------------------------- argparse glue


def split_override_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--section.key [VALUE]`` tokens (dotted keys) from a command's own options."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        key = token[2:].partition("=")[0] if token.startswith("--") else ""
        if "." in key:
            overrides.append(token)
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(argv[i + 1])
                i += 1
        else:
            own.append(token)
        i += 1
    return own, overrides


def add_config_arguments(parser: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    """Add ``--config`` and ``--print-config``, and accept ``--section.key VALUE`` overrides.

    After ``parser.parse_args()``, ``args.overrides`` holds the override tokens (pass them to
    :func:`load_config`). argparse itself rejects unknown options, so this parser's
    ``parse_args`` first takes the dotted-key tokens out.
    """
    parser.allow_abbrev = False
    parser.add_argument(
        "--config", "-c", default=default_config,
        help="YAML config: a path, or a packaged preset name (e.g. pretrain-verdict)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.epilog = (parser.epilog or "") + (
        "Any config key can be overridden by its dotted path: --train.lr 3e-4, --optim.betas=0.9,0.95."
    )
    accept_override_args(parser)


def accept_override_args(parser: argparse.ArgumentParser) -> None:
    """Make ``parser.parse_args()`` take the ``--section.key VALUE`` tokens out first (argparse
    would reject them) and return them as ``args.overrides``. On a parser with subcommands,
    call it on the top-level parser."""
    original = parser.parse_args

    def parse_args(args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        import sys

        own, overrides = split_override_args(sys.argv[1:] if args is None else args)
        ns = original(own, namespace)
        ns.overrides = overrides
        return ns

    parser.parse_args = parse_args  # type: ignore[method-assign]


# --------------------------------------------------------------------------- shared sections


@dataclass
class ModelSection(Section):
    """Which model to train: a preset (from scratch), or weights to continue from.

    Attributes:
        preset: a :data:`customgpt.config.PRESETS` name (``cpu-small``, ``gpt2-124M`` ...).
        init: a customgpt/Hugging Face folder or hub id to load weights from (then the shape
            comes from those weights and ``preset`` is ignored).
        context_length, n_layer, n_head, n_embd: change the preset's shape (from scratch only).
        dropout, attn_dropout: dropout while training (also applied to loaded weights).
        impl: ``fast`` or ``explicit`` kernels (same numbers).
        token_ngram_buckets: > 0 adds hashed character n-gram embeddings to the token
            embedding (:mod:`customgpt.token_ngrams`). With ``init``, they are added to the
            loaded weights, initialised to zero (the model starts out computing what it did).
        token_embedding_init: ``normal`` (GPT-2's N(0, 0.02)) or ``zero``: the token embedding
            table starts at zero, so a token the training data never shows keeps a zero,
            neutral embedding instead of random noise (from scratch only).
    """

    preset: str | None = "cpu-small"
    init: str | None = None
    context_length: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    impl: Literal["fast", "explicit"] | None = None
    token_ngram_buckets: int | None = None
    token_embedding_init: Literal["normal", "zero"] = "normal"

    _SHAPE = ("context_length", "n_layer", "n_head", "n_embd", "token_ngram_buckets")

    def validate(self) -> None:
        if self.init is None and self.preset is None:
            raise FieldError("preset", "give a model preset, or weights to start from in model.init")
        if self.init is not None:
            for key in self._SHAPE:
                if key != "token_ngram_buckets" and getattr(self, key) is not None:
                    raise FieldError(key, "cannot change the shape of weights loaded from model.init")
            if self.token_embedding_init != "normal":
                raise FieldError("token_embedding_init", "initialises a model trained from scratch; "
                                 "the weights in model.init are already trained")
        else:
            self.gpt_config()  # shape errors (e.g. n_embd % n_head) surface now, before training

    def _changes(self) -> dict[str, Any]:
        keys = (*self._SHAPE, "dropout", "attn_dropout", "impl")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def gpt_config(self):  # -> GPTConfig
        """The model config for training from scratch (``init`` is None)."""
        from customgpt.config import GPTConfig

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
            model = GPT(self.gpt_config()).train()
            if self.token_embedding_init == "zero":  # after the random init: the rest is unchanged
                model.zero_token_embeddings()
            return model
        from customgpt.checkpoints import load_model

        changes = {k: v for k, v in self._changes().items() if k in ("dropout", "attn_dropout", "impl")}
        model = load_model(self.init, device="cpu", dtype="float32", overrides=changes or None)
        have, want = model.config.token_ngram_buckets, self.token_ngram_buckets
        if want and not have:
            model.add_token_ngrams(want)
        elif want is not None and want != have:
            # raised after loading, outside the loader that prefixes section names: name the key in full
            raise ConfigError(f"model.token_ngram_buckets: the weights in model.init ({self.init}) have "
                              f"{have} n-gram buckets, not {want}")
        return model.train()


@dataclass
class OptimConfig(Section):
    """AdamW. Weight decay applies to matrices and embeddings only (see :mod:`customgpt.train.optim`)."""

    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fused: bool | None = None  # None: fused kernels on CUDA and CPU, foreach elsewhere

    def validate(self) -> None:
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise FieldError(f"betas[{i}]", f"must be in [0, 1), got {b}")
        if self.eps <= 0:
            raise FieldError("eps", f"must be > 0, got {self.eps}")


@dataclass
class TrainConfig(Section):
    """The loop: how long, how big a batch, the LR schedule, clipping, evaluation, saving.

    Batch sizes count sequences. ``batch_size`` is the global batch of one optimizer step;
    each process runs ``micro_batch_size`` sequences per forward/backward and accumulates
    ``batch_size / (micro_batch_size * world_size)`` of them (None: no accumulation).
    The LR warms up linearly from ``initial_lr`` to ``lr`` over ``warmup_steps`` (or
    ``warmup_fraction`` of all steps), then follows ``schedule`` down to ``min_lr``.
    """

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: run all epochs)
    batch_size: int = 8
    micro_batch_size: int | None = None
    lr: float = 4e-4
    initial_lr: float = 0.0
    min_lr: float = 0.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = None
    warmup_fraction: float | None = None
    grad_clip: float | None = 1.0  # max global grad norm; 0 or none: no clipping
    seed: int = 123
    eval_every: int = 50  # optimizer steps between evaluations; 0: only at the end
    eval_iters: int | None = 20  # validation batches (of batch_size windows) per evaluation; none: all
    save_every: int | None = None  # steps between checkpoints; none: at every evaluation

    def validate(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("max_steps", "micro_batch_size", "eval_iters"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise FieldError(key, f"must be >= 1 or none, got {value}")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise FieldError("micro_batch_size", f"({self.micro_batch_size}) exceeds batch_size ({self.batch_size})")
        if self.lr <= 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        for key in ("initial_lr", "min_lr"):
            if getattr(self, key) < 0:
                raise FieldError(key, f"must be >= 0, got {getattr(self, key)}")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise FieldError("warmup_steps", "give warmup_steps or warmup_fraction, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise FieldError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise FieldError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise FieldError("grad_clip", f"must be >= 0 (0 or none: off), got {self.grad_clip}")
        if self.eval_every < 0:
            raise FieldError("eval_every", f"must be >= 0, got {self.eval_every}")
        if self.save_every is not None and self.save_every < 0:
            raise FieldError("save_every", f"must be >= 0, got {self.save_every}")

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

    device: str = "auto"  # auto: cuda, then mps, then cpu; or e.g. "cpu", "cuda:1"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on capable CUDA, else fp32
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # CPU threads for PyTorch's intra-op work; none: PyTorch's default

    def validate(self) -> None:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", self.device):
            raise FieldError("device", f"expected auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise FieldError("threads", f"must be >= 1 or none, got {self.threads}")


@dataclass
class LoggingConfig(Section):
    """Where the run goes and what it reports."""

    out_dir: str = "runs/pretrain"  # the run folder: config, metrics, plots, checkpoints, final model
    log_every: int = 1  # steps between metrics.jsonl lines
    progress: bool = True  # tqdm progress bar
    plots: bool = True  # loss.png and lr.png at the end
    tensorboard: bool = False  # also write TensorBoard events (needs `pip install tensorboard`)

    def validate(self) -> None:
        if self.log_every < 1:
            raise FieldError("log_every", f"must be >= 1, got {self.log_every}")
        if not self.out_dir:
            raise FieldError("out_dir", "must not be empty")


__all__ = [
    "ConfigError", "FieldError", "Section", "ModelSection", "OptimConfig", "TrainConfig",
    "RuntimeConfig", "LoggingConfig", "load_config", "build_section", "coerce", "parse_overrides",
    "resolve_config_path", "list_config_presets", "save_config", "to_dict", "to_yaml", "read_yaml",
    "accept_override_args", "add_config_arguments", "split_override_args",
]
