"""Student training and evaluation: one student set up and summed up (`trainer`), its epoch
loop (`loop`), one optimizer step (`step`), the network and optimizer (`student`), restart
points (`checkpoint`), progress lines (`progress`); losses, lr schedules, EMA, evaluation
(`evaluate`), the settings that cannot train (`checks`, light). Results tables are
`prism_hpc.metrics.results`; the students' file layout is `prism_hpc.store.rundir`.

No re-exports here: importing the package must not import torch (planning, `status`)."""
