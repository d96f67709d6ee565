"""`torchrun --nproc_per_node N -m diversynth.train CONFIG --out DIR [--set k=v] [--force]`:
the train stage on N processes (DDP; several nodes through torchrun's rendezvous).

Every process reads the same config and run directory and trains on its slice of each
batch; the first writes the checkpoints, metrics and stage state. Without torchrun it is
`diversynth train`.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from diversynth.cli import app
from diversynth.train import distributed


def main() -> None:
    distributed.init_from_env()
    try:
        app(["train", *sys.argv[1:]], prog_name="python -m diversynth.train")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
