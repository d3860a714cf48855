"""The multi-method benchmark behind run.py: `specs` (methods found from their configs, one
protocol, the DD-Ranking partner runs) and `report` (BENCHMARKS.md). What it shares with the
PRISM-vs-SRe2L benchmark (the sweep spec and session, timing from markers, the report's shared
sections) is `benchmarks.fmnist_shared`; its base.yaml and variants/ are read as files."""
