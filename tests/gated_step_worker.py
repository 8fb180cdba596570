"""`python -m tests.gated_step_worker ARGS`: the real worker (`python -m workers ARGS`) whose training micro-batches
can be held: each one appends a line to $ALIGNLAB_TEST_STEPS, and while the file $ALIGNLAB_TEST_GATE exists, the
next micro-batch writes `held` and waits until the file is removed. A test can thus stop training inside a
gradient-accumulation step deterministically, and count the micro-batches that start after it lets go."""

import os
import sys
import time
from pathlib import Path

from transformers import Trainer

STEPS = Path(os.environ["ALIGNLAB_TEST_STEPS"])
GATE = Path(os.environ["ALIGNLAB_TEST_GATE"])
training_step = Trainer.training_step


def gated_training_step(self, *args, **kwargs):
    with STEPS.open("a") as log:
        log.write(f"start {self.state.global_step}\n")
    if GATE.exists():
        with STEPS.open("a") as log:
            log.write("held\n")
        while GATE.exists():  # held until the test lets go (a test helper, not a wait for the product)
            time.sleep(0.01)
    return training_step(self, *args, **kwargs)


Trainer.training_step = gated_training_step

if __name__ == "__main__":
    from workers.worker import main

    sys.exit(main(sys.argv[1:]))
