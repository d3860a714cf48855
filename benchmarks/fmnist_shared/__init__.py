"""What both Fashion-MNIST benchmarks (`fmnist_prism_vs_sre2l`, `fmnist_baselines`) share, one
job a module:

- runlist: RunSpec, the merged configs and the sweep spec OUT/sweep.yaml (pool first);
- session: `prism-hpc sweep` on that spec (and its dry run), OUT/sessions.json;
- timing: item seconds from the runs' markers, submit seconds from sweep.json, run states;
- markdown, sections: the report's cells, header, paired differences, diversity, every run.

The benchmarks run as modules from the repository root (`python -m benchmarks.<name>.run`), so
they import this package by its name: no `sys.path` edits.
"""
