"""Student training and evaluation: losses, lr schedules, EMA, trainer (`trainer`), evaluation
(`evaluate`), the settings that cannot train (`checks`, light). Results tables are
`prism_hpc.metrics.results`; the students' file layout is `prism_hpc.store.rundir`.

No re-exports here: importing the package must not import torch (planning, `status`)."""
