"""Where a stage's rows come from: the shipped demo set, a JSONL file, a `datasets` directory, a blob uploaded in
the dashboard, or a Hugging Face dataset id. Imports `datasets` when it needs it, so only the stages and the CLI
use this module; the validation checks themselves (`pipeline.validation`) stay free of it for the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.paths import BLOB_PREFIX, DATASET_DIR_MARKERS, read_blob
from pipeline.validation import Row, read_rows


def read_records(source: str | Path) -> Iterator[Row]:
    """Rows of a JSONL file or a `datasets` directory (saved with `save_to_disk`)."""
    path = Path(source)
    if path.is_dir():
        from datasets import load_from_disk

        if not any((path / marker).exists() for marker in DATASET_DIR_MARKERS):
            raise DataError(f"{path} is a directory, not a JSONL file or a directory saved with datasets' save_to_disk")

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # a DatasetDict: take the train split
            dataset = dataset["train"] if "train" in dataset else dataset[next(iter(dataset.keys()))]
        for index, row in enumerate(dataset, start=1):
            yield index, dict(row)
        return
    yield from read_rows(path)


# the data sets shipped in the package, by the name a config gives them
SHIPPED = {
    # 225 instructions of ten kinds; the tiny model is pretrained on its training rows
    "demo": "demo_instructions.jsonl",
    # 635 tasks with gold answers and checkers, 225 held out (scripts/make_verifiable_tasks.py)
    "verifiable": "verifiable_tasks.jsonl",
}


def shipped_path(name: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("pipeline") / "data" / SHIPPED[name]))


def instruction_rows(source: str, split: str = "train") -> tuple[Iterator[Row], str]:
    """Rows of instructions from a shipped set ('demo', 'verifiable'), a JSONL file, a datasets directory, or a
    Hugging Face dataset id."""
    if source in SHIPPED:
        return read_rows(shipped_path(source)), str(shipped_path(source))
    if source.startswith(BLOB_PREFIX):  # a dataset uploaded in the dashboard, materialized by the worker
        from pipeline.core.home import alignlab_home

        path = read_blob(alignlab_home(), source)
        return read_records(path), f"{source} ({path})"
    path = Path(source).expanduser()
    if path.exists():
        return read_records(path), str(path)
    if source.endswith((".jsonl", ".json")) or source.startswith((".", "/", "~")):
        raise DataError(f"instructions file {source} does not exist; check DataConfig.instructions")
    try:
        from datasets import load_dataset

        dataset = load_dataset(source, split=split)
    except Exception as exc:
        raise DataError(
            f"instructions {source!r}: not a local file and could not be loaded as a Hugging Face dataset "
            f"(split {split!r}): {exc}"
        ) from exc
    return ((index, dict(row)) for index, row in enumerate(dataset, start=1)), f"hf:{source}[{split}]"
