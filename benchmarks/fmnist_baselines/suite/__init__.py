"""The multi-method benchmark behind run.py. It reuses the PRISM-vs-SRe2L driver
(`benchmarks/fmnist_prism_vs_sre2l/driver`: runner, run states, timings, table cells and
sections) and adds what differs: `specs` (methods found from their configs, the DD-Ranking
partner runs) and `report` (BENCHMARKS.md). run.py puts `benchmarks/` and the repository on
sys.path first."""
