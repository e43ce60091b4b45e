"""Training data for the small GPT models: real text, tokenised once, packed into blocks, cached as Arrow.

A rank sweep trains many models on the same data, so the corpus is read (through Hugging Face
`datasets`), split, tokenised and packed once per configuration and the packed blocks are cached
as an Arrow IPC file; every later run memory-maps that file instead of re-tokenising. Everything
works offline: the default corpus ("stdlib") is the running Python's own standard library, which
exists on every machine, and local files are loaded with the hub switched off.

Pipeline, all deterministic:
  1. Documents: a text file is one document; a parquet/arrow/json row is one document. Files are
     taken in sorted relative-path order, rows in file order, until `max_bytes` UTF-8 bytes (the
     document that crosses the cap is cut at a character boundary).
  2. Split by document, so no block mixes train and val text: documents in the order of a stable
     hash of their key (relative path, or row index for tables) go to val until it holds
     `val_fraction` of the corpus bytes (at least one document each to train and val).
  3. Tokenise each split into one stream, each document followed by a separator: "\\n\\n" for the
     byte tokenizer, the <|endoftext|> token for BPE (trained on the train split only).
  4. Pack each stream into non-overlapping blocks of seq_len + 1 tokens, dropping the tail.

bytes_per_token, for bits per byte: the exact UTF-8 byte count of the validation *target* tokens
(val[:, 1:], the tokens the loss is averaged over) divided by their number, computed when the blocks
are packed and stored in the cache. A byte token is one byte; a byte-level BPE token's bytes are
read back through GPT-2's byte alphabet (one character per byte); <|endoftext|> counts as the two
bytes of the "\\n\\n" it stands for, so both tokenizers measure the same text.
Bits per byte = mean target loss in nats / ln 2 / bytes_per_token.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from lrkv.kernels.spec import ConfigError

SEPARATOR = "\n\n"
EOT = "<|endoftext|>"
FORMATS = {".txt": "text", ".md": "text", ".py": "text", ".rst": "text", ".parquet": "parquet",
           ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
TOKENIZERS = ("byte", "bpe")
# Bump when the packed layout or the pipeline changes, so old caches are not reused.
CACHE_VERSION = 2
# Parts of the standard library that are not representative hand-written Python: third-party
# packages, test suites, generated tables (encodings, pydoc_data) and machine-specific build files.
_STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib",
                         "turtledemo", "encodings", "pydoc_data"}
_MISSING_SOURCE = "an existing file or directory, 'stdlib' or 'hub:NAME'"


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is tokenised and packed; see the module docstring."""

    source: str = "stdlib"
    text_field: str = "text"
    tokenizer: str = "byte"
    vocab_size: int = 4096
    seq_len: int = 256
    val_fraction: float = 0.05
    max_bytes: int | None = 8_000_000
    cache_dir: str = ".lrkv-cache"
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        def integer(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("source", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(name, "a non-empty string or path", value)
        if self.source.startswith("hub:") and not re.fullmatch(r"hub:[^:\s]+(:[^:\s]+)?", self.source):
            raise ConfigError("source", "'hub:NAME' or 'hub:NAME:CONFIG'", self.source)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError("text_field", "a non-empty column name", self.text_field)
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError("tokenizer", f"one of {', '.join(TOKENIZERS)}", self.tokenizer)
        for name in ("vocab_size", "seq_len"):  # below 2**63: torch's int64 holds them
            if not integer(getattr(self, name)) or not 0 < getattr(self, name) < 2**63:
                raise ConfigError(name, "a positive integer below 2**63", getattr(self, name))
        if self.tokenizer == "bpe" and not 257 <= self.vocab_size <= 2**31:
            raise ConfigError("vocab_size", "257..2**31 for bpe (256 byte symbols + <|endoftext|>)",
                              self.vocab_size)
        if (isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float))
                or not 0 < self.val_fraction < 1):
            raise ConfigError("val_fraction", "a number strictly between 0 and 1", self.val_fraction)
        if self.max_bytes is not None and (not integer(self.max_bytes) or self.max_bytes <= 0):
            raise ConfigError("max_bytes", "a positive integer or None", self.max_bytes)

    def anchored(self) -> DataConfig:
        """The same data with its local paths absolute, for a worker that runs in another folder (a
        submitted sweep's trials do): it reads the blocks the driver packed instead of packing its own."""
        local = self.source != "stdlib" and not self.source.startswith("hub:")
        return replace(self, source=os.path.abspath(self.source) if local else self.source,
                       cache_dir=os.path.abspath(self.cache_dir))


@dataclass
class PackedData:
    """Packed token blocks: inputs = blocks[:, :-1], targets = blocks[:, 1:]."""

    train: torch.Tensor      # int64 (N, seq_len + 1)
    val: torch.Tensor        # int64 (M, seq_len + 1)
    vocab_size: int          # ids the tokenizer can produce (BPE may stop short of the requested size)
    bytes_per_token: float   # exact UTF-8 bytes per validation target token, see module docstring
    tokenizer: object        # encode(str) -> list[int], decode(list[int]) -> str
    description: str


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to train."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, index: int) -> bytes:
        return bytes([index])

    def token_nbytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from the `tokenizers` library, with one <|endoftext|> token."""

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        # A literal "<|endoftext|>" inside a document is text, not a document boundary.
        self._tok.encode_special_tokens = True
        self.eot_id = tokenizer.token_to_id(EOT)
        self.vocab_size = tokenizer.get_vocab_size()
        alphabet = _byte_level_alphabet()
        self._bytes = [b""] * self.vocab_size
        for token, index in tokenizer.get_vocab(with_added_tokens=True).items():
            if index != self.eot_id:
                self._bytes[index] = bytes(alphabet[char] for char in token)
        # <|endoftext|> stands for the separator the byte tokenizer writes between documents.
        self._bytes[self.eot_id] = SEPARATOR.encode("utf-8")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts))
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        _write_atomic(path, lambda tmp: self._tok.save(str(tmp)))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tok.encode_batch(texts)]

    def token_bytes(self, index: int) -> bytes:
        """The exact bytes of one token (a token may hold part of a multi-byte character)."""
        return self._bytes[index]

    def token_nbytes(self) -> np.ndarray:
        return np.array([len(data) for data in self._bytes], dtype=np.int64)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable characters byte-level BPE spells its tokens in back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(byte): byte for byte in printable}
    others = [byte for byte in range(256) if byte not in table.values()]
    table.update({chr(256 + i): byte for i, byte in enumerate(others)})
    return table


@dataclass
class _Source:
    kind: str                      # "stdlib", "hub", or a datasets builder: text/parquet/arrow/json
    label: str                     # how the description names it
    files: list[tuple[str, Path]]  # (key relative to the source root, path), in sorted key order
    identity: object               # what the cache key hashes to notice a changed source


def load_blocks(cfg: DataConfig) -> PackedData:
    """Packed train/val blocks for `cfg`, from the Arrow cache when this configuration was packed before."""
    source = _resolve_source(cfg)
    digest = _digest({"version": CACHE_VERSION, "source": source.identity, "tokenizer": cfg.tokenizer,
                      "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
                      "max_bytes": cfg.max_bytes, "val_fraction": cfg.val_fraction,
                      "text_field": cfg.text_field if source.kind not in ("text", "stdlib") else None})
    cache_dir = Path(cfg.cache_dir)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.label.rstrip("/")).name or "corpus")
    # The tokenizer does not depend on seq_len, so blocks of every length share one.
    tokenizer_path = cache_dir / f"{stem}-{digest[:16]}.tokenizer.json"
    blocks_path = cache_dir / f"{stem}-{digest[:16]}-seq{cfg.seq_len}.arrow"

    if blocks_path.exists() and (cfg.tokenizer == "byte" or tokenizer_path.exists()):
        tokenizer = ByteTokenizer() if cfg.tokenizer == "byte" else BPETokenizer.load(tokenizer_path)
        return _read_blocks(blocks_path, tokenizer)

    documents = _read_documents(source, cfg)
    train_docs, val_docs = _split(documents, cfg.val_fraction, source.label)
    if cfg.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif tokenizer_path.exists():
        tokenizer = BPETokenizer.load(tokenizer_path)
    else:
        tokenizer = BPETokenizer.train([text for _, text in train_docs], cfg.vocab_size)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tokenizer_path)

    train_stream, val_stream = _tokenize(train_docs, tokenizer), _tokenize(val_docs, tokenizer)
    block = cfg.seq_len + 1
    if len(train_stream) < block or len(val_stream) < block:
        raise ConfigError("data.source", f"a corpus of at least {block} tokens in each of train and val "
                          f"(seq_len {cfg.seq_len}, val_fraction {cfg.val_fraction})",
                          f"{source.label}: {len(train_stream)} train and {len(val_stream)} val tokens")
    train, val = _pack(train_stream, block), _pack(val_stream, block)
    target_bytes = int(tokenizer.token_nbytes()[val[:, 1:]].sum())
    bytes_per_token = target_bytes / val[:, 1:].size
    corpus_bytes = sum(len(text.encode("utf-8")) for _, text in documents)
    description = (f"{_describe(source, corpus_bytes, len(documents))}: {_count(train.size)} train tokens, "
                   f"{_count(val.size)} val tokens, {cfg.tokenizer} tokenizer")

    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_blocks(blocks_path, train, val, vocab_size=tokenizer.vocab_size, bytes_per_token=bytes_per_token,
                  description=description)
    return PackedData(train=torch.from_numpy(train.astype(np.int64)), val=torch.from_numpy(val.astype(np.int64)),
                      vocab_size=tokenizer.vocab_size, bytes_per_token=bytes_per_token, tokenizer=tokenizer,
                      description=description)


def stdlib_files() -> list[tuple[str, Path]]:
    """The standard library's own .py sources as (relative path, path), sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        # Pruning here keeps the walk out of the large test suite and site-packages.
        dirs[:] = [d for d in dirs if d not in _STDLIB_EXCLUDED_DIRS and not d.startswith("config-")]
        for name in names:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                path = Path(folder, name)
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def _resolve_source(cfg: DataConfig) -> _Source:
    if cfg.source == "stdlib":
        files = stdlib_files()
        return _Source("stdlib", "stdlib", files, {"stdlib": sys.version, "files": _file_identity(files)})
    if cfg.source.startswith("hub:"):
        return _Source("hub", cfg.source, [], {"hub": cfg.source})

    root = Path(cfg.source)
    if root.is_file():
        fmt = FORMATS.get(root.suffix.lower())
        if fmt is None:
            raise ConfigError("data.source", f"a file ending in one of {' '.join(FORMATS)}", cfg.source)
        files = [(root.name, root)]
    elif root.is_dir():
        files = sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*")
                       if path.is_file() and path.suffix.lower() in FORMATS
                       and not any(part.startswith(".") for part in path.relative_to(root).parts))
        if not files:
            raise ConfigError("data.source", f"a directory containing {' '.join(FORMATS)} files", cfg.source)
        formats = sorted({FORMATS[path.suffix.lower()] for _, path in files})
        if len(formats) > 1:
            raise ConfigError("data.source", "a directory of files in one format (text, parquet, arrow or json)",
                              f"{cfg.source}: {', '.join(formats)}")
        fmt = formats[0]
    else:
        raise ConfigError("data.source", _MISSING_SOURCE, cfg.source)
    return _Source(fmt, cfg.source, files, {"root": str(root.resolve()), "files": _file_identity(files)})


def _file_identity(files: list[tuple[str, Path]]) -> list:
    identity = []
    for key, path in files:
        stat = path.stat()
        identity.append([key, stat.st_size, stat.st_mtime_ns])
    return identity


def _read_documents(source: _Source, cfg: DataConfig) -> list[tuple[str, str]]:
    """(key, text) for every non-empty document, in order, capped at cfg.max_bytes UTF-8 bytes."""
    import datasets

    hf_cache = str(Path(cfg.cache_dir) / "hf")
    with _quiet_datasets(offline=source.kind != "hub"):
        if source.kind == "hub":
            name, _, config = source.label.removeprefix("hub:").partition(":")
            try:
                # Streaming reads only as far as max_bytes instead of downloading the whole dataset.
                dataset = datasets.load_dataset(name, config or None, split="train", streaming=True,
                                                cache_dir=hf_cache)
                rows = _rows(dataset, cfg.text_field, source.label)
                return _cap(((str(index), text) for index, text in enumerate(rows)), cfg.max_bytes)
            except ConfigError:
                raise
            except Exception as error:
                raise ConfigError("data.source", "a Hugging Face hub dataset that can be loaded",
                                  f"{source.label} ({type(error).__name__})") from error

        files = source.files
        if source.kind in ("text", "stdlib"):
            files = [(key, path) for key, path in files if path.stat().st_size > 0]
            if not files:
                return []  # _split names the problem: no documents
            if cfg.max_bytes is not None:
                files = _first_files_over(files, cfg.max_bytes)
            try:
                dataset = datasets.load_dataset("text", data_files=[str(path) for _, path in files],
                                                split="train", sample_by="document", cache_dir=hf_cache)
            except datasets.exceptions.DatasetGenerationError as error:
                if isinstance(error.__cause__, UnicodeDecodeError):
                    raise ConfigError("data.source", "UTF-8 text files", _first_non_utf8(files)) from error
                raise
            assert len(dataset) == len(files), "the text builder yields one row per file"
            texts = _rows(dataset, "text", source.label)
            return _cap(((key, text) for (key, _), text in zip(files, texts)), cfg.max_bytes)

        dataset = datasets.load_dataset(source.kind, data_files=[str(path) for _, path in files], split="train",
                                        cache_dir=hf_cache)
        rows = _rows(dataset, cfg.text_field, source.label)
        return _cap(((str(index), text) for index, text in enumerate(rows)), cfg.max_bytes)


def _rows(dataset, field: str, label: str) -> Iterator[str]:
    columns = dataset.column_names
    if columns is not None and field not in columns:
        raise ConfigError("data.text_field", f"a column of {label} ({', '.join(columns)})", field)
    for batch in dataset.iter(batch_size=256):
        for text in batch[field]:
            if text is not None and not isinstance(text, str):
                raise ConfigError("data.text_field", "a column of strings", f"{field}: {type(text).__name__}")
            yield text or ""


def _first_non_utf8(files: list[tuple[str, Path]]) -> str | None:
    for _, path in files:
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            return f"{path} ({error.reason} at byte {error.start})"
    return None


def _first_files_over(files: list[tuple[str, Path]], max_bytes: int) -> list[tuple[str, Path]]:
    # Decoded text is never longer than the file (universal newlines only shrink it), so these suffice.
    total = 0
    for count, (_, path) in enumerate(files, 1):
        total += path.stat().st_size
        if total >= max_bytes:
            return files[:count]
    return files


def _cap(documents: Iterator[tuple[str, str]], max_bytes: int | None) -> list[tuple[str, str]]:
    kept, total = [], 0
    for key, text in documents:
        if not text:
            continue
        data = text.encode("utf-8")
        if max_bytes is not None and total + len(data) > max_bytes:
            text = data[: max_bytes - total].decode("utf-8", errors="ignore")
            if text:
                kept.append((key, text))
            break
        kept.append((key, text))
        total += len(data)
    return kept


def _split(documents: list[tuple[str, str]], val_fraction: float, label: str):
    """Whole documents, taken in the order of a stable hash of their keys, go to val until it holds
    val_fraction of the corpus bytes; at least one document goes to each split."""
    if len(documents) < 2:
        raise ConfigError("data.source", "at least two non-empty documents (the train/val split is by document, "
                          "and a text file is one document)", f"{label}: {len(documents)} document(s)")
    sizes = [len(text.encode("utf-8")) for _, text in documents]
    # blake2b, not hash(): Python salts str hashes per process.
    order = sorted(range(len(documents)),
                   key=lambda i: (hashlib.blake2b(documents[i][0].encode("utf-8"), digest_size=8).digest(), i))
    target, val_bytes, chosen = val_fraction * sum(sizes), 0, set()
    for index in order[:-1]:
        if val_bytes >= target:
            break
        chosen.add(index)
        val_bytes += sizes[index]
    train = [doc for index, doc in enumerate(documents) if index not in chosen]
    val = [doc for index, doc in enumerate(documents) if index in chosen]
    return train, val


def _tokenize(documents: list[tuple[str, str]], tokenizer) -> np.ndarray:
    texts = [text for _, text in documents]
    if isinstance(tokenizer, ByteTokenizer):
        data = (SEPARATOR.join(texts) + SEPARATOR).encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    ids = []
    for doc_ids in tokenizer.encode_documents(texts):
        ids.append(np.asarray(doc_ids, dtype=np.int64))
        ids.append(np.asarray([tokenizer.eot_id], dtype=np.int64))
    return np.concatenate(ids)


def _pack(stream: np.ndarray, block: int) -> np.ndarray:
    count = len(stream) // block
    return stream[: count * block].reshape(count, block)


def _write_blocks(path: Path, train: np.ndarray, val: np.ndarray, **meta) -> None:
    dtype = np.uint16 if meta["vocab_size"] <= 2**16 else np.uint32
    blocks = np.concatenate([train, val]).astype(dtype)
    column = pa.FixedSizeListArray.from_arrays(pa.array(blocks.reshape(-1)), blocks.shape[1])
    meta = {**meta, "n_train": len(train), "version": CACHE_VERSION}
    table = pa.table({"tokens": column}).replace_schema_metadata({"lrkv": json.dumps(meta)})

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    _write_atomic(path, write)


def _read_blocks(path: Path, tokenizer) -> PackedData:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
        meta = json.loads(table.schema.metadata[b"lrkv"])
        column = table.column("tokens").combine_chunks()
        values = column.flatten()
        dtype = np.dtype(np.uint16 if values.type == pa.uint16() else np.uint32)
        # Straight from the buffer: Array.to_numpy would import pandas (0.3 s). astype copies out of
        # the memory map before it closes.
        tokens = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values),
                               offset=values.offset * dtype.itemsize)
        blocks = tokens.astype(np.int64).reshape(len(column), column.type.list_size)
    train, val = blocks[: meta["n_train"]], blocks[meta["n_train"]:]
    return PackedData(train=torch.from_numpy(train), val=torch.from_numpy(val), vocab_size=meta["vocab_size"],
                      bytes_per_token=meta["bytes_per_token"], tokenizer=tokenizer, description=meta["description"])


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename it, so an interrupted write leaves no file at `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _quiet_datasets(offline: bool):
    """No progress bars, and for local files no network: `datasets` otherwise pings the hub first.

    The environment variable only counts before `datasets` is imported, so its config is set too.
    """
    import datasets
    from datasets import config

    saved_env = os.environ.get("HF_DATASETS_OFFLINE")
    saved = config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    if offline:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = saved_env
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _describe(source: _Source, corpus_bytes: int, n_documents: int) -> str:
    size = f"{corpus_bytes / 1e6:.1f} MB"
    if source.kind == "stdlib":
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return f"stdlib (Python {version} standard library .py sources, {size}, PSF license)"
    return f"{source.label} ({n_documents} documents, {size})"


def _count(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
