"""The stage registry: one declaration per stage, from which everything else about stages derives.

A `Stage` names its module (the pure function `run(spec, inputs, out_dir, on_progress, ...)`), the config sections
its artifact key hashes, its DAG nodes with their inputs, the queue and timeout of its jobs, its CLI command and
what its job sends to the store. The DAG plan, the CLI subcommands, the default timeouts and queues, the job's
output dispatch and the DAG drawing all iterate over `STAGES`; no other module spells a stage's name.

Adding a stage is one `register(Stage(...))` (here for the product's stages, anywhere for a plug-in or a test).
This module imports nothing but the standard library: the dashboard and the scheduler plan runs without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.workload import heldout_prompts, times, trained_examples

HOUR = 3600


@dataclass(frozen=True)
class Node:
    """One job of the DAG: a stage run once (or once per role, e.g. evaluate per method)."""

    name: str  # unique in the DAG, e.g. "dpo_sft" or "eval_base"
    stage: str
    role: str | None = None  # train_dpo: init ("sft" / "base"); evaluate: the method
    deps: tuple[tuple[str, str], ...] = ()  # (input name, node name)
    makes: str | None = None  # the method (configs.METHODS) whose model this node trains

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self.deps)


@dataclass(frozen=True)
class NodeSpec:
    """A node as its stage declares it: a name, a role and the nodes it reads (input name -> node name)."""

    name: str
    role: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    makes: str | None = None  # the method whose model this node trains (train_sft: "sft", dpo_sft: "sft_dpo")


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # import path of the stage's module: run(...) and the torch-free config_slice(...) live there
    help: str
    sections: tuple[str, ...]  # RunSpec sections its config slice hashes (the default config_slice)
    nodes: tuple[NodeSpec, ...]
    role_argument: str | None = None  # the keyword `run` takes a node's role as ("init", "method")
    timeout_s: int = HOUR
    queue: str | None = None  # resource class of its jobs; None = the run's default queue (a GPU)
    emits: tuple[str, ...] = ()  # outputs its job sends to the store beyond the common events (workers.jobs)
    runs_with: str | None = None  # always runs when this other stage is selected (it makes its input)
    reads_all: bool = False  # its inputs are every node declared before it (compare)
    cli: str = ""  # CLI subcommand; defaults to the stage's name
    variants: bool = False  # runs once per init with one config, the comparison's subject (train_dpo)
    measures: bool = False  # computes the registered metrics: their names are part of its artifact key
    label: str = ""  # how pages title its curves and steps ("SFT", "DPO"); defaults to its name
    # the model it holds and what it does with it, for the memory planner (pipeline.core.memory_plan): (workload,
    # the RunSpec section that sizes it); workload = "generate", "train", "score" or "judge"; None = it loads no model
    memory: tuple[str, str] | None = None
    loads_model: Callable[[Any], bool] | None = None  # the model is loaded only for specs where this holds
    optional: bool = False  # runs only when a spec selects it (not in the default `stages`)
    model: str = "base_model"  # the RunSpec path of the ModelConfig it loads ("judge.model" for the judge)
    # what its time grows with, (spec, instruction count or None for "all of the source") -> units or None where
    # unknown (pipeline.core.workload); None = a fixed cost. Launch scales earlier runs' times by it
    work: Callable[[Any, float | None], float | None] | None = None

    @property
    def command(self) -> str:
        return self.cli or self.name

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ")

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(n.role for n in self.nodes if n.role)

    def config_slice(self, spec: Any, role: str | None = None) -> dict[str, Any]:
        """What of the spec this stage's result depends on (with its node's role): hashed into the artifact key."""
        slice_ = {section: spec.section_dict(section) for section in self.sections}
        if role is not None and self.role_argument:
            slice_[self.role_argument] = role
        if self.measures:
            from pipeline.core.metrics import METRICS

            slice_["metrics"] = sorted(METRICS)
        return slice_


STAGES: dict[str, Stage] = {}


def register(stage: Stage, *, before: str | None = None) -> Stage:
    """Add a stage to the DAG (at the end, or before the stage named `before`). Names must be new."""
    if stage.name in STAGES:
        raise ConfigError(f"stage {stage.name!r} is declared twice")
    taken = {node.name for _, node in iter_nodes()}
    clash = [n.name for n in stage.nodes if n.name in taken]
    if clash:
        raise ConfigError(f"stage {stage.name!r}: node name(s) {', '.join(clash)} already used")
    if before is None:
        STAGES[stage.name] = stage
        return stage
    if before not in STAGES:
        raise ConfigError(f"stage {stage.name!r}: no stage {before!r} to insert before")
    items = list(STAGES.items())
    at = [name for name, _ in items].index(before)
    STAGES.clear()
    STAGES.update(items[:at] + [(stage.name, stage)] + items[at:])
    return stage


def unregister(name: str) -> None:
    """Remove a stage (tests that declare a toy stage clean up with this)."""
    STAGES.pop(name, None)


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None


def stage_of_module(module: str) -> str:
    """The stage a stage module implements (modules call this with `__name__` instead of spelling their name)."""
    for declared in STAGES.values():
        if declared.module == module:
            return declared.name
    raise ConfigError(f"module {module} is no declared stage's module")


def iter_nodes() -> Iterator[tuple[Stage, NodeSpec]]:
    for declared in STAGES.values():
        for node in declared.nodes:
            yield declared, node


def plan() -> list[Node]:
    """Every node of the DAG in execution order (the same for every spec; a spec's `stages` select what runs)."""
    nodes: list[Node] = []
    for declared, node in iter_nodes():
        deps = tuple((n.name, n.name) for n in nodes) if declared.reads_all else node.inputs
        nodes.append(Node(node.name, declared.name, node.role, deps, node.makes))
    return nodes


def node_by_name(name: str) -> Node:
    for node in plan():
        if node.name == name:
            return node
    raise ConfigError(f"unknown DAG node {name!r}; nodes: {', '.join(n.name for n in plan())}")


def selected_nodes(stages: list[str]) -> list[Node]:
    """The nodes that run for a spec selecting `stages` (plus the stages that run with them)."""
    return [n for n in plan() if n.stage in stages or STAGES[n.stage].runs_with in stages]


def dependents(node_name: str) -> set[str]:
    """Every node downstream of `node_name`."""
    nodes = plan()
    out: set[str] = set()
    frontier = {node_name}
    while frontier:
        frontier = {n.name for n in nodes for _, dep in n.deps if dep in frontier} - out
        out |= frontier
    return out


def variant_stages_onward(selected: list[str] | None = None) -> list[str]:
    """The stage trained once per init (the comparison's subject) and every stage after it: what a rerun with new
    variant settings (say, another β) needs, reusing the data and SFT stages. An optional stage comes along only
    when `selected` (the parent run's stages) has it."""
    first = next(name for name, s in STAGES.items() if s.variants)
    names = list(STAGES)
    return [n for n in names[names.index(first) :] if not STAGES[n].optional or n in (selected or ())]


def drawn_edges() -> list[tuple[str, str]]:
    """The DAG's edges as drawn: a stage that reads everything is drawn from the nodes nothing before it reads (a
    stage after it, like the judge, reading the same nodes does not take its edges away)."""
    nodes = plan()
    edges = []
    for index, node in enumerate(nodes):
        deps = [d for _, d in node.deps]
        if STAGES[node.stage].reads_all:
            read = {dep for n in nodes[:index] for _, dep in n.deps if not STAGES[n.stage].reads_all}
            deps = [d for d in deps if d not in read]
        edges += [(dep, node.name) for dep in deps]
    return edges


# the product's stages, in DAG order
for _stage in (
    Stage(
        "split_prompts",
        "pipeline.stages.split",
        "Split the instructions into train and held-out prompts, before anything trains.",
        ("data", "split", "format", "validation"),
        (NodeSpec("split"),),
        timeout_s=HOUR // 2,
        runs_with="generate_sft",
        cli="split",
    ),
    Stage(
        "generate_sft",
        "pipeline.stages.generate_sft",
        "SFT records generated by the base model for every instruction.",
        ("base_model", "format", "generation", "validation"),
        (NodeSpec("generate_sft", inputs=(("split", "split"),)),),
        timeout_s=4 * HOUR,
        memory=("generate", "generation"),
        work=lambda spec, n: times(n, spec.generation.sampling.max_new_tokens),
    ),
    Stage(
        "train_sft",
        "pipeline.stages.train_sft",
        "Supervised fine-tuning on the train prompts' SFT records.",
        ("base_model", "format", "sft", "validation"),
        (NodeSpec("train_sft", inputs=(("sft", "generate_sft"),), makes="sft"),),
        timeout_s=12 * HOUR,
        label="SFT",
        memory=("train", "sft"),
        work=lambda spec, n: trained_examples(spec.sft, n),
    ),
    Stage(
        "generate_negatives",
        "pipeline.stages.negatives",
        "Typed negative responses for every SFT record.",
        ("base_model", "negatives", "format", "validation"),
        (NodeSpec("negatives", inputs=(("sft", "generate_sft"),)),),
        timeout_s=4 * HOUR,
        cli="negatives",
        memory=("generate", "negatives"),
        loads_model=lambda spec: "model_sample" in spec.negatives.types,  # the one type a model writes
        work=lambda spec, n: times(n, len(spec.negatives.types), spec.negatives.sampling.max_new_tokens),
    ),
    Stage(
        "make_pairs",
        "pipeline.stages.pairs",
        "Preference pairs, split by prompt as the split stage decided.",
        ("pairs", "negatives", "validation"),
        (NodeSpec("pairs", inputs=(("negatives", "negatives"),)),),
        timeout_s=HOUR // 2,
        queue="cpu",
        cli="pairs",
    ),
    Stage(
        "train_dpo",
        "pipeline.stages.train_dpo",
        "DPO from the SFT model and from the base model, with one and the same DPO config.",
        ("base_model", "format", "dpo", "negatives", "validation"),
        (
            NodeSpec("dpo_sft", "sft", (("pairs", "pairs"), ("sft_model", "train_sft")), makes="sft_dpo"),
            NodeSpec("dpo_base", "base", (("pairs", "pairs"),), makes="dpo_only"),
        ),
        role_argument="init",
        timeout_s=12 * HOUR,
        variants=True,
        label="DPO",
        memory=("train", "dpo"),
        work=lambda spec, n: trained_examples(spec.dpo, times(n, spec.pairs.max_pairs_per_prompt)),
    ),
    Stage(
        "evaluate",
        "pipeline.stages.evaluate",
        "One model on the held-out prompts and pairs, in a fresh process.",
        ("base_model", "format", "eval", "validation"),
        (
            NodeSpec("eval_base", "base", (("sft", "generate_sft"), ("pairs", "pairs"))),
            NodeSpec("eval_sft", "sft", (("sft", "generate_sft"), ("pairs", "pairs"), ("model", "train_sft"))),
            NodeSpec("eval_sft_dpo", "sft_dpo", (("sft", "generate_sft"), ("pairs", "pairs"), ("model", "dpo_sft"))),
            NodeSpec("eval_dpo_only", "dpo_only", (("sft", "generate_sft"), ("pairs", "pairs"), ("model", "dpo_base"))),
        ),
        role_argument="method",
        timeout_s=4 * HOUR,
        emits=("samples",),
        measures=True,
        memory=("score", "eval"),
        work=lambda spec, n: times(heldout_prompts(spec, n), spec.eval.sampling.max_new_tokens),
    ),
    Stage(
        "compare",
        "pipeline.stages.compare",
        "Paired statistics, the parity check and the go/no-go report.",
        ("compare",),
        (NodeSpec("compare"),),
        timeout_s=HOUR // 2,
        queue="cpu",
        emits=("comparison",),
        reads_all=True,
        measures=True,
    ),
    Stage(
        "judge",
        "pipeline.stages.judge",
        "A judge model (local or behind an endpoint) compares the methods' answers in both orders, or a reward "
        "model scores them: win rates, length-controlled win rates and the judge's position bias.",
        ("judge",),
        (
            NodeSpec(
                "judge",
                inputs=(
                    ("base", "eval_base"),
                    ("sft", "eval_sft"),
                    ("sft_dpo", "eval_sft_dpo"),
                    ("dpo_only", "eval_dpo_only"),
                ),
            ),
        ),
        timeout_s=4 * HOUR,
        emits=("verdicts",),
        optional=True,
        memory=("judge", "judge"),
        loads_model=lambda spec: spec.judge.kind != "endpoint",  # an endpoint judge holds no model here
        model="judge.model",
        work=heldout_prompts,
    ),
):
    register(_stage)
