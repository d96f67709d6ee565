"""`diversynth torchrun`: torchrun itself, with the setting its restarts need set.

torch's launchers (c10d rendezvous) share their rendezvous store with the training
processes by default. A group restarted after a whole node was lost and started again
then meets stale addresses there: the surviving launcher keeps the old store's address,
the new one makes its own, and the rendezvous times out (`wait timeout ... role_info`).
`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` makes each group's rank 0 host a store of its own,
and a lost process, rank 0 or a whole node then recovers with `--max-restarts N`."""

from __future__ import annotations

import os
import sys

SEPARATE_STORES = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def torchrun(args: list[str]) -> int:
    """Run torchrun's own entry point on `args` (its options, then `-m diversynth train
    ...`); a value the user set for the store variable is kept. Returns the exit code."""
    os.environ.setdefault(SEPARATE_STORES, "1")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(args)
    except ChildFailedError as exc:
        # torchrun's own report of which process failed and how (its console script
        # shows it as a traceback)
        print(exc, file=sys.stderr)
        return 1
    return 0
