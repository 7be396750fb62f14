"""The converter's error type."""


class ConversionError(Exception):
    """A conversion that cannot be done as asked.

    Raised for an unreadable, unsafe or mismatched checkpoint, an invalid configuration, or an output directory
    that cannot be written or must not be replaced. The message is one self-contained explanation that the
    command line prints without a traceback.
    """
