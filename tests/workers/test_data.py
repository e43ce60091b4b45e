"""The data pipeline on real files through the real `datasets` and `tokenizers` libraries, offline."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lrkv.kernels.spec import ConfigError
from lrkv.workers.data import EOT, SEPARATOR, DataConfig, load_blocks, stdlib_files

CORPUS = Path(__file__).parents[1] / "data" / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.py"))


def texts(paths) -> list[str]:
    # The text builder reads with universal newlines, like this.
    return [path.read_text(encoding="utf-8") for path in paths]


def decode_blocks(data, blocks: torch.Tensor) -> str:
    return data.tokenizer.decode(blocks.reshape(-1).tolist()).replace(EOT, SEPARATOR)


def split_of(data, blocks: torch.Tensor, docs: list[str]) -> list[int]:
    """Indices of the docs that blocks were cut from, checking the blocks hold exactly those docs in order."""
    text = data.tokenizer.decode(blocks.reshape(-1).tolist())
    chosen = [i for i, doc in enumerate(docs) if doc[:300] in text]
    expected = "".join(docs[i] + SEPARATOR for i in chosen).encode("utf-8")
    packed = b"".join(data.tokenizer.token_bytes(t) for t in blocks.reshape(-1).tolist())
    assert expected.startswith(packed) and len(expected) - len(packed) < blocks.shape[1] * 16
    return chosen


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    return load_blocks(DataConfig(source=str(CORPUS), seq_len=64, cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    return load_blocks(DataConfig(source=str(CORPUS), tokenizer="bpe", vocab_size=512, seq_len=64,
                                  cache_dir=str(tmp_path_factory.mktemp("cache"))))


def test_byte_blocks_and_round_trip(byte_data):
    assert byte_data.train.dtype == byte_data.val.dtype == torch.int64
    assert byte_data.train.shape[1] == byte_data.val.shape[1] == 65
    assert byte_data.train.shape[0] > 0 and byte_data.val.shape[0] > 0
    assert byte_data.vocab_size == 256 and int(byte_data.train.max()) < 256
    assert byte_data.bytes_per_token == 1.0
    text = "def f(x):\n    return x  # ∑ naïve ✓\n"
    assert byte_data.tokenizer.decode(byte_data.tokenizer.encode(text)) == text
    assert "3 documents" in byte_data.description and "byte tokenizer" in byte_data.description


def test_split_is_by_document(byte_data):
    docs = texts(CORPUS_FILES)
    val_docs, train_docs = split_of(byte_data, byte_data.val, docs), split_of(byte_data, byte_data.train, docs)
    assert val_docs and train_docs and set(val_docs).isdisjoint(train_docs)
    assert set(val_docs) | set(train_docs) == set(range(len(docs)))


def test_loads_are_deterministic_and_the_second_comes_from_the_arrow_cache(tmp_path, monkeypatch, byte_data):
    cfg = DataConfig(source=str(CORPUS), seq_len=64, cache_dir=str(tmp_path))
    first = load_blocks(cfg)
    assert len(list(tmp_path.glob("*.arrow"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))

    def no_reading(*args, **kwargs):
        raise AssertionError("a cached load must not read the source")

    monkeypatch.setattr(datasets, "load_dataset", no_reading)
    second = load_blocks(cfg)
    for a, b in ((first, second), (first, byte_data)):  # byte_data: same config, another cache dir
        assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
        assert (a.bytes_per_token, a.description) == (b.bytes_per_token, b.description)


def test_anchored_paths_read_what_the_driver_packed_from_another_folder(tmp_path, monkeypatch):
    """A relative corpus and cache, packed from one folder, are found as they are from any other once
    anchored; the stdlib and hub names are not paths."""
    corpus = tmp_path / "here" / "corpus"
    corpus.parent.mkdir()
    corpus.symlink_to(CORPUS)
    monkeypatch.chdir(tmp_path / "here")
    relative = DataConfig(source="corpus", seq_len=64, cache_dir="cache")
    packed = load_blocks(relative)
    anchored = relative.anchored()
    assert anchored == DataConfig(source=str(corpus), seq_len=64, cache_dir=str(tmp_path / "here" / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("packed again"))
    assert torch.equal(load_blocks(anchored).train, packed.train)
    assert DataConfig(source="stdlib").anchored().source == "stdlib"
    assert DataConfig(source="hub:org/name").anchored().source == "hub:org/name"


def test_changed_source_is_packed_again(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in CORPUS_FILES:
        (corpus / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    cfg = DataConfig(source=str(corpus), seq_len=64, cache_dir=str(tmp_path / "cache"))
    before = load_blocks(cfg)
    with open(corpus / CORPUS_FILES[0].name, "a", encoding="utf-8") as f:
        f.write("\n# one more line\n" * 200)
    after = load_blocks(cfg)
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2
    assert after.train.numel() + after.val.numel() > before.train.numel() + before.val.numel()


def test_bpe_counts_bytes_exactly(bpe_data, byte_data):
    assert bpe_data.bytes_per_token > 1
    assert bpe_data.vocab_size == 512 and int(bpe_data.train.max()) < 512
    docs = texts(CORPUS_FILES)
    # split_of checks token_bytes reproduces the corpus bytes, so the count below is exact.
    val_docs = split_of(bpe_data, bpe_data.val, docs)
    assert val_docs == split_of(byte_data, byte_data.val, docs)  # the split depends on documents alone
    assert set(split_of(bpe_data, bpe_data.train, docs)).isdisjoint(val_docs)
    targets = bpe_data.val[:, 1:].reshape(-1).tolist()
    target_bytes = sum(len(bpe_data.tokenizer.token_bytes(t)) for t in targets)
    assert bpe_data.bytes_per_token == pytest.approx(target_bytes / len(targets), rel=1e-12)
    assert EOT in bpe_data.tokenizer.decode(bpe_data.train.reshape(-1).tolist())


def test_bpe_tokenizer_is_saved_and_reloaded(tmp_path, bpe_data):
    cfg = DataConfig(source=str(CORPUS), tokenizer="bpe", vocab_size=512, seq_len=64, cache_dir=str(tmp_path))
    first = load_blocks(cfg)
    assert len(list(tmp_path.glob("*.tokenizer.json"))) == 1
    second = load_blocks(cfg)
    for data in (second, bpe_data):
        assert torch.equal(first.train, data.train) and torch.equal(first.val, data.val)
    text = 'heapq.heappush(heap, item)  # "<|endoftext|>" is text here\n'
    assert second.tokenizer.encode(text) == first.tokenizer.encode(text)
    assert second.tokenizer.decode(second.tokenizer.encode(text)) == text
    # A longer seq_len reuses the tokenizer trained for this corpus.
    load_blocks(DataConfig(source=str(CORPUS), tokenizer="bpe", vocab_size=512, seq_len=128, cache_dir=str(tmp_path)))
    assert len(list(tmp_path.glob("*.tokenizer.json"))) == 1


def paragraphs() -> list[str]:
    return [p for text in texts(CORPUS_FILES) for p in text.split("\n\n") if p.strip()]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "arrow"])
def test_table_files_load(tmp_path, fmt):
    rows = paragraphs()
    folder = tmp_path / "corpus"
    folder.mkdir()
    half = len(rows) // 2
    for name, part in (("a", rows[:half]), ("b", rows[half:])):
        table = pa.table({"id": list(range(len(part))), "content": part})
        if fmt == "parquet":
            pq.write_table(table, folder / f"{name}.parquet")
        elif fmt == "arrow":
            with pa.OSFile(str(folder / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
        else:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    data = load_blocks(DataConfig(source=str(folder), text_field="content", seq_len=32, cache_dir=str(tmp_path / "c")))
    assert data.train.shape[1] == 33 and data.val.shape[0] > 0
    assert f"({len(rows)} documents" in data.description
    stream = "".join(row + SEPARATOR for row in rows)
    total = data.train.numel() + data.val.numel()
    assert len(stream.encode("utf-8")) - 2 * 33 < total <= len(stream.encode("utf-8"))

    with pytest.raises(ConfigError) as error:
        load_blocks(DataConfig(source=str(folder), text_field="body", seq_len=32, cache_dir=str(tmp_path / "c")))
    assert error.value.field == "data.text_field"


def test_stdlib_corpus(tmp_path):
    files = [key for key, _ in stdlib_files()]
    assert "os.py" in files and "json/decoder.py" in files
    assert not any(part in ("test", "tests", "site-packages", "idlelib") for key in files for part in key.split("/"))
    data = load_blocks(DataConfig(max_bytes=300_000, seq_len=128, cache_dir=str(tmp_path)))
    assert data.description.startswith("stdlib (Python ") and "PSF license" in data.description
    assert data.train.shape[0] > 0 and data.val.shape[0] > 0
    assert data.train.numel() + data.val.numel() <= 300_000 + 2 * len(files)  # text + separators


def test_max_bytes_takes_documents_in_sorted_order(tmp_path):
    data = load_blocks(DataConfig(source=str(CORPUS), seq_len=64, max_bytes=30_000, cache_dir=str(tmp_path)))
    # heapq.py (23 KB) whole, then the start of shlex.py; textwrap.py not at all.
    assert data.train.numel() + data.val.numel() <= 30_000 + 2 * 2
    stream = decode_blocks(data, data.train) + decode_blocks(data, data.val)
    assert "Heap queue algorithm" in stream and "A lexical analyzer class" in stream
    assert "TextWrapper" not in stream


def test_interrupted_write_leaves_no_cache_file(tmp_path, monkeypatch):
    original = pa.ipc.RecordBatchFileWriter.write_table

    def write_then_interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    cfg = DataConfig(source=str(CORPUS), seq_len=64, cache_dir=str(tmp_path))
    with monkeypatch.context() as patch:
        patch.setattr(pa.ipc.RecordBatchFileWriter, "write_table", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            load_blocks(cfg)
    assert not list(tmp_path.glob("*.arrow")) and not list(tmp_path.glob(".*"))
    assert load_blocks(cfg).train.shape[0] > 0


def config_error(**kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        load_blocks(DataConfig(**kwargs))
    assert "\n" not in str(error.value)
    return error.value


def test_source_errors(tmp_path):
    missing = config_error(source=str(tmp_path / "nowhere"), cache_dir=str(tmp_path))
    assert missing.field == "data.source" and "'stdlib' or 'hub:NAME'" in str(missing)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "NOTICE").write_text("no supported files here\n")
    assert config_error(source=str(tmp_path / "empty"), cache_dir=str(tmp_path)).field == "data.source"

    (tmp_path / "table.csv").write_text("text\nhello\n")
    unsupported = config_error(source=str(tmp_path / "table.csv"), cache_dir=str(tmp_path))
    assert unsupported.field == "data.source" and ".parquet" in unsupported.expected

    small = config_error(source=str(CORPUS), seq_len=40_000, cache_dir=str(tmp_path))
    assert small.field == "data.source" and "a corpus of at least 40001 tokens" in str(small)

    single = config_error(source=str(CORPUS_FILES[0]), cache_dir=str(tmp_path))
    assert single.field == "data.source" and "two non-empty documents" in str(single)

    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    blank = config_error(source=str(tmp_path / "blank"), cache_dir=str(tmp_path))
    assert blank.field == "data.source" and "0 document(s)" in str(blank)

    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "a.txt").write_text("plain text\n" * 10)
    (tmp_path / "latin1" / "b.txt").write_bytes("café\n".encode("latin-1"))
    latin1 = config_error(source=str(tmp_path / "latin1"), seq_len=8, cache_dir=str(tmp_path))
    assert latin1.field == "data.source" and "b.txt" in str(latin1)

    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("some text\n")
    (tmp_path / "mixed" / "b.jsonl").write_text('{"text": "more"}\n')
    assert config_error(source=str(tmp_path / "mixed"), cache_dir=str(tmp_path)).field == "data.source"


@pytest.mark.parametrize(("field", "value"), [
    ("source", ""), ("source", "hub:"), ("text_field", ""), ("tokenizer", "wordpiece"), ("vocab_size", 0),
    ("seq_len", 0), ("seq_len", 1.5), ("val_fraction", 0.0), ("val_fraction", 1.0), ("val_fraction", True),
    ("max_bytes", 0), ("cache_dir", None),
])
def test_config_validation(field, value):
    with pytest.raises(ConfigError) as error:
        DataConfig(**{field: value})
    assert error.value.field == field and str(error.value).startswith(f"{field}: expected ")


def test_bpe_vocab_must_hold_bytes_and_separator():
    with pytest.raises(ConfigError) as error:
        DataConfig(tokenizer="bpe", vocab_size=256)
    assert error.value.field == "vocab_size"
    assert DataConfig(tokenizer="byte", vocab_size=256).vocab_size == 256
