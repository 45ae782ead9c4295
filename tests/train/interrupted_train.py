"""`itop train` that is interrupted at the start of epoch N (a stand-in for a crash).

torchrun ... interrupted_train.py N <itop train arguments>
"""

import sys

from itop.__main__ import main
from itop.train import loop

if __name__ == "__main__":
    stop_epoch, argv = int(sys.argv[1]), sys.argv[2:]
    original = loop.Run.train_epoch

    def train_epoch(self):
        if self.epoch + 1 == stop_epoch:
            raise KeyboardInterrupt
        return original(self)

    loop.Run.train_epoch = train_epoch
    sys.exit(main(["train", *argv]))
