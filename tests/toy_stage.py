"""A toy stage for the registry test: counts the held-out pairs. Declared by the test, nowhere else."""

from pathlib import Path

from pipeline.core.registry import stage_of_module
from pipeline.stages import StageResult, read_jsonl, write_json
from pipeline.stages.pairs import HELDOUT


def run(spec, inputs: dict[str, Path], out_dir: Path, on_progress=None) -> StageResult:
    count = len(read_jsonl(inputs["pairs"] / HELDOUT))
    write_json(out_dir / "toy.json", {"heldout_pairs": count})
    return StageResult(stage=stage_of_module(__name__), outputs={"summary": "toy.json"}, metrics={"pairs": count})
