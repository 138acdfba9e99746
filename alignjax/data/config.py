"""`DataConfig`: everything the data pipeline needs, nested under `data:` in YAML.

Errors name the config key (`data.<key>`) so a user knows what to change.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any

from alignjax.data.record_types import record_type_named, registered

SOURCE_FORMATS = ("auto", "jsonl", "parquet", "hf", "array_record", "tfds")
OVER_LENGTH_CHOICES = ("auto", "truncate", "drop")


@dataclasses.dataclass
class SourceConfig:
    """One source. `path` is a file, a directory, a glob, (format tfds) a TFDS name, or
    `hf:ORG/NAME`, a Hugging Face Hub dataset (`hub: ORG/NAME` says the same).

    `weight` is a per-record rate: each record of this source is seen `weight`
    times per epoch on average (2.0 = twice, 0.5 = a fresh random half each
    epoch). With the default 1.0 everywhere an epoch is every record once; the
    mixture proportions follow from `len(source) * weight` and are logged.
    """

    path: str = ""
    weight: float = 1.0
    format: str = "auto"
    split: str = "train"  # for a saved DatasetDict, TFDS and a Hub dataset
    data_dir: str | None = None  # TFDS data_dir
    # A Hub dataset (`alignjax.data.hub_source`): its repository, its config `name`, the
    # `revision` (branch, tag or commit) and `data_files` (datasets.load_dataset's).
    hub: str | None = None
    name: str | None = None
    revision: str | None = None
    data_files: Any = None
    # The column that holds each record key ({chosen: better, ...}; `alignjax.data.columns`),
    # over data.columns key by key.
    columns: dict[str, str] | None = None
    # A Hub dataset read as a stream (`alignjax.data.hub_stream`): never whole on disk, in
    # the stream's order, shuffled within consecutive windows of `shuffle_window` records
    # (default 10000) when data.shuffle is on; the data check reads its first
    # `check_records` records (default 10000).
    streaming: bool = False
    shuffle_window: int | None = None
    check_records: int | None = None
    # data.columns, handed to every source by DataConfig; not a key of the source mapping.
    data_columns: dict[str, str] | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.hub is not None:
            if self.path and self.path != f"hf:{self.hub}":
                raise ValueError(f"a data source sets both path={self.path!r} and hub={self.hub!r}; keep one")
            self.path = f"hf:{self.hub}"
        if not self.path:
            raise ValueError("a data source needs a path (or hub: ORG/NAME for a Hub dataset)")


@dataclasses.dataclass
class TemplateConfig:
    """Text templates that turn conditioning fields into prompt text (str.format)."""

    # MetaAlign tier 1: goes into the system message.
    system: str = "{system}"
    # MetaAlign tier 2 + 3: replaces the (first) user message.
    user_info: str = "User information:\n{user_info}\n\nQuery:\n{prompt}"
    # MO-ODPO: its field names are the objectives, e.g.
    # "Answer so that your response is {helpful:.0%} helpful, {harmless:.0%} harmless".
    weights: str | None = None
    # CUT Align-N: replaces the last user message (or the plain prompt).
    judgment: str = "{prompt}\n\nThe response should match this judgment: {judgment}"

    @property
    def objectives(self) -> tuple[str, ...]:
        """Objective names in the order they appear in the `weights` template."""
        if self.weights is None:
            return ()
        names = []
        for _, field, _, _ in string.Formatter().parse(self.weights):
            if field and field not in names:
                names.append(field)
        return tuple(names)


@dataclasses.dataclass
class DataConfig:
    """The data pipeline's configuration (YAML: the `data:` section)."""

    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    # The column that holds each record key ({prompt: question, chosen: good, ...}) in every
    # source; a source's own `columns` overrides it key by key (`alignjax.data.columns`).
    columns: dict[str, str] | None = None
    # A registered record type (data/record_types/): preference (prompt/chosen/rejected),
    # sft (prompt/response|completion or messages), prompt (prompt only: online methods),
    # cut (prompt/response/judgment), unpaired (prompt/completion/label: KTO).
    record_type: str = "preference"
    # Per sequence (prompt + one response), in tokens, BOS/EOS/user slots included.
    max_length: int = 1024
    max_prompt_length: int | None = 512
    # Which end of an over-long prompt survives; responses always keep their start.
    truncation_mode: str = "keep_end"
    # A record with a sequence over max_length (or a prompt over max_prompt_length):
    # truncate cuts it (TRL's DPOTrainer), drop leaves it out, counted as a length drop
    # (TRL's RewardTrainer); auto: the training method's choice (drop for loss.type reward,
    # truncate otherwise), truncate outside training.
    over_length: str = "auto"
    packing: bool = False
    # Packed row length; default 2 * max_length for pairs, max_length otherwise.
    pack_length: int | None = None
    # Static number of sequences a packed row may hold (sizes the pair arrays).
    max_sequences_per_row: int = 16
    # Padded mode: pad each batch to the smallest bucket that fits (bounded
    # recompiles). Default: powers of two from 64 up to max_length, and max_length.
    buckets: list[int] | None = None
    # Global batch size: pairs (or examples) per step, or packed rows per step,
    # over all processes; each process gets batch_size / process_count.
    batch_size: int = 8
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1  # None = repeat forever (stop by step count)
    worker_count: int = 0  # processes for parse/tokenise/batch; 0 = in-process
    worker_buffer_size: int = 2
    read_threads: int = 4  # threads per process for reading + tokenising records
    on_bad_record: str = "error"
    # Before step 1, read every record once through the same processing (cached per data
    # fingerprint in the run directory), so a bad record stops the run at once, not hours
    # in. Off for data sets too large to read twice.
    check: bool = True
    templates: TemplateConfig = dataclasses.field(default_factory=TemplateConfig)
    # Overrides the tokenizer's chat template (Jinja) when set.
    chat_template: str | None = None
    # P-DPO: number of user soft-token slots reserved right after BOS; 0 = off. A training
    # config's method sets this and the three below from its section (loss.pdpo.n_user_tokens).
    n_user_tokens: int = 0
    user_slot_token_id: int | None = None  # default: the tokenizer's pad id
    # Where the user-id vocabulary is read from (if it exists) or built from the
    # data; save it with the run (`Pipeline.user_vocab.save`).
    user_vocab_path: str | None = None
    # Record field that names a preference condition (e.g. "system", "weights",
    # "user_info"); mapped to `condition_id` 1..C for per-condition metrics.
    condition_field: str | None = None
    # Preference records' per-pair margin (TRL RewardTrainer's `margin` column: the loss
    # wants r_chosen - r_rejected above it), read from this field into margin_P
    # (loss.reward.margin_field).
    margin_field: str | None = None
    # SparsePO given weights: emit token_weights_BxL in every batch (records
    # without weights get default_token_weight on all response tokens); set by
    # loss.sparsepo.weights: given.
    token_weights: bool = False
    default_token_weight: float = 1.0  # also: response tokens outside every span
    # CUT: a record with a judgment is still satisfactory if score >= this
    # (loss.cut.positive_score).
    cut_positive_score: float | None = None

    def __post_init__(self):
        self.sources = [s if isinstance(s, SourceConfig) else _source_from(s) for s in self.sources]
        self.sources = [_with_data_columns(s, self.columns) for s in self.sources]
        if isinstance(self.templates, dict):
            self.templates = TemplateConfig(**self.templates)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key(s) data.{', data.'.join(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    @property
    def effective_pack_length(self) -> int:
        if self.pack_length is not None:
            return self.pack_length
        return max(record_type_named(self.record_type).packs, 1) * self.max_length

    @property
    def drops_over_length(self) -> bool:
        """Whether a record that max_length or max_prompt_length would cut is dropped instead."""
        return self.over_length == "drop"

    @property
    def effective_buckets(self) -> list[int]:
        if self.buckets:
            return sorted(set(self.buckets))
        out, b = [], 64
        while b < self.max_length:
            out.append(b)
            b *= 2
        return out + [self.max_length]

    def validate(self, process_count: int = 1) -> None:
        """Raise ValueError naming the data.<key> that is wrong, and why."""

        def bad(key, msg):
            raise ValueError(f"data.{key}: {msg}")

        if not self.sources:
            bad("sources", "no sources given; add at least one {path: ...}")
        _check_columns("columns", self.columns, bad)
        for i, s in enumerate(self.sources):
            if s.format not in SOURCE_FORMATS:
                bad(f"sources[{i}].format", f"{s.format!r} is not one of {SOURCE_FORMATS}")
            if not s.weight > 0:
                bad(f"sources[{i}].weight", f"must be > 0, got {s.weight}")
            _check_columns(f"sources[{i}].columns", s.columns, bad)
        _check_streaming(self, bad)
        record_type = record_type_named(self.record_type)
        if self.margin_field is not None and self.record_type != "preference":
            bad(
                "margin_field",
                f"only preference records carry a pair margin, not {self.record_type!r} records",
            )
        if self.truncation_mode not in ("keep_end", "keep_start"):
            bad("truncation_mode", f"{self.truncation_mode!r}: use keep_end or keep_start")
        if self.over_length not in OVER_LENGTH_CHOICES:
            bad("over_length", f"{self.over_length!r}: use {', '.join(OVER_LENGTH_CHOICES)}")
        if self.on_bad_record not in ("error", "skip"):
            bad("on_bad_record", f"{self.on_bad_record!r}: use error or skip")
        if not isinstance(self.check, bool):
            bad("check", f"{self.check!r}: use true or false")
        fixed = 1 + self.n_user_tokens  # BOS + user slots survive truncation
        if self.max_length <= fixed + 1:
            bad("max_length", f"{self.max_length} leaves no room for prompt and response")
        if self.max_prompt_length is not None and not (fixed < self.max_prompt_length < self.max_length):
            bad(
                "max_prompt_length",
                f"{self.max_prompt_length} must be > {fixed} (BOS + n_user_tokens) "
                f"and < max_length={self.max_length}",
            )
        if self.batch_size % process_count:
            bad(
                "batch_size",
                f"{self.batch_size} is not divisible by process_count={process_count}",
            )
        if self.packing:
            if not record_type.packs:
                packing = [n for n in registered() if record_type_named(n).packs]
                bad("packing", f"packing supports {' and '.join(packing)}, not {self.record_type}")
            per_example = record_type.packs
            if self.effective_pack_length < per_example * self.max_length:
                bad(
                    "pack_length",
                    f"{self.effective_pack_length} < {per_example} * max_length: "
                    "an example might not fit a row",
                )
            if self.max_sequences_per_row < per_example:
                bad("max_sequences_per_row", f"must be >= {per_example}")
        elif max(self.effective_buckets) < self.max_length:
            bad("buckets", f"largest bucket must be >= max_length={self.max_length}")
        if self.num_epochs is not None and self.num_epochs < 1:
            bad("num_epochs", "must be >= 1, or null to repeat forever")
        if self.worker_count < 0:
            bad("worker_count", "must be >= 0")


def check_source_mapping(source: SourceConfig, key: str) -> None:
    """What one source's own keys must be before it is opened (its `columns`, and a stream's
    `shuffle_window` / `check_records`); ValueError naming `key`.<name>."""

    def bad(name, msg):
        raise ValueError(f"{key}.{name}: {msg}")

    _check_columns("columns", source.columns, bad)
    for name in ("shuffle_window", "check_records"):
        value = getattr(source, name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            bad(name, f"must be a whole number >= 1, got {value!r}")


def _check_columns(key: str, columns: Any, bad) -> None:
    if columns is not None and not (
        isinstance(columns, dict) and all(isinstance(v, str) for v in [*columns, *columns.values()])
    ):
        bad(key, f"{columns!r}: use a mapping of record key to column name ({{chosen: better, ...}})")


def _check_streaming(cfg: DataConfig, bad) -> None:
    """What a streaming source cannot do: it has no length and no random access."""
    for i, s in enumerate(cfg.sources):
        for name in ("shuffle_window", "check_records"):
            value = getattr(s, name)
            if value is not None and not s.streaming:
                bad(f"sources[{i}].{name}", "applies to a streaming source only (streaming: true)")
            if value is not None and not (isinstance(value, int) and value >= 1):
                bad(f"sources[{i}].{name}", f"must be a whole number >= 1, got {value!r}")
        if not s.streaming:
            continue
        if not s.path.startswith("hf:") or s.format == "tfds":
            bad(f"sources[{i}].streaming", f"{s.path!r}: only a Hub dataset (hub: ORG/NAME) streams")
        if len(cfg.sources) > 1:
            bad(
                f"sources[{i}].streaming",
                "a streaming source must be the only source of its data set: weights mix sources "
                "per epoch, and a stream's length is unknown until it is read; merge the sources "
                "into one dataset, or set streaming: false",
            )
        if s.weight != 1.0:
            bad(f"sources[{i}].weight", "a streaming source is read once per epoch; leave weight at 1")
        # Both build a vocabulary from every record before the first batch.
        if cfg.n_user_tokens:
            bad(f"sources[{i}].streaming", "P-DPO (loss.pdpo.n_user_tokens) reads every user id up front")
        if cfg.condition_field:
            bad("condition_field", f"reads every record up front; data.sources[{i}] streams")


def _with_data_columns(source: SourceConfig, columns: dict[str, str] | None) -> SourceConfig:
    out = dataclasses.replace(source)
    out.data_columns = columns
    return out


def _source_from(s: Any) -> SourceConfig:
    if isinstance(s, str):
        return SourceConfig(path=s)
    if isinstance(s, dict):
        return SourceConfig(**s)
    raise ValueError(f"data.sources: entry {s!r} must be a path or a mapping with 'path'")
