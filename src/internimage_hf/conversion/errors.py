"""The converter's error type."""


class ConversionError(Exception):
    """A conversion that cannot be done as asked.

    Raised for an unreadable, unsafe or mismatched checkpoint, an invalid configuration, or an output directory
    that cannot be written or must not be replaced. The message is one self-contained explanation that the
    command line prints without a traceback.
    """


def unknown_keys_error(keys: list[str], what: str) -> ConversionError:
    """One line naming the checkpoint keys that are no weight of `what` (the first few of them, sorted)."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    if len(keys) > _SHOWN_KEYS:
        shown += f" and {len(keys) - _SHOWN_KEYS} more"
    return ConversionError(f"{len(keys)} checkpoint key(s) are not weights of {what}: {shown}")


_SHOWN_KEYS = 5
