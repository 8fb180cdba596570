"""The parts of alignlab that import no ML library: configs, errors, the stage and metric registries, the DAG plan
and the statistics. The dashboard, the scheduler and the store use only these (an import contract checks it)."""
