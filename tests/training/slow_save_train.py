"""`scripts/train.py` whose checkpoint at step `$SLOW_SAVE_STEP` stalls once its shards are written: it writes the
staging directory's path to `$SLOW_SAVE_MARKER` and sleeps, so a test can kill the run in the middle of a save."""

import os
import sys
import time
from pathlib import Path

from internimage_hf.training import checkpointing
from internimage_hf.training.cli import main

_write_own_state = checkpointing._write_own_state


def _stalling_write_own_state(directory, state, *args):
    # Called on the main process after every process wrote its shard, before the checkpoint is marked complete.
    if state.global_step == int(os.environ["SLOW_SAVE_STEP"]):
        Path(os.environ["SLOW_SAVE_MARKER"]).write_text(str(directory))
        time.sleep(600)
    return _write_own_state(directory, state, *args)


checkpointing._write_own_state = _stalling_write_own_state

if __name__ == "__main__":
    sys.exit(main())
