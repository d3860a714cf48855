"""The shipped executors, registered on import in the order `backend` lists them: `local`
(foreground, this machine), `slurm` (submitit arrays), `debug` (local, in-process)."""

# the import order is the registration order, hence the listing order of the names
from prism_hpc.hpc.backends import local  # noqa: F401, I001
from prism_hpc.hpc.backends import slurm  # noqa: F401
from prism_hpc.hpc.backends import debug  # noqa: F401
