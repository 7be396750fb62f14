"""Entry point of `scripts/train.py` (plain `python` or `accelerate launch`)."""

from __future__ import annotations

import logging
import sys

from .arguments import parse_options, uses_builtin_digits
from .checkpointing import CheckpointError
from .data import ColumnError, UnreadableImageError
from .deepspeed_engine import DeepSpeedOptionError
from .run_dir import OutputDirError, results_json
from .segmentation_data import MaskError

# Errors about the user's input (output_dir, checkpoint, data) that a message explains: no traceback, exit 2.
USER_ERRORS = (CheckpointError, ColumnError, DeepSpeedOptionError, MaskError, OutputDirError, UnreadableImageError)


def run_trainer(trainer_class, options):
    """Set up logging and run `trainer_class(options)`: (trainer, results); (None, None) after a user error.

    A user error (see `USER_ERRORS`) is printed without a traceback; the main process prints the results as JSON.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        trainer = trainer_class(options)
        results = trainer.run()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return None, None
    if trainer.accelerator.is_main_process:
        print(results_json(results))
    return trainer, results


def main(argv: list[str] | None = None) -> int:
    """Parse options, train, and on the built-in digits data reload the result and print predictions."""
    from .loop import Trainer

    trainer, results = run_trainer(Trainer, parse_options(argv))
    if trainer is None:
        return 2
    if not trainer.accelerator.is_main_process:
        return 0
    options = trainer.options
    if uses_builtin_digits(options) and options.num_predictions > 0:
        from .predict import reload_and_predict

        data = trainer.data
        accuracy = reload_and_predict(
            options.output_dir, data.eval, data.image_column, data.label_column, options.num_predictions
        )
        results["reloaded_accuracy"] = accuracy
    return 0


if __name__ == "__main__":
    sys.exit(main())
