"""The models of the package, one folder each, laid out like ``transformers.models``: ``internimage``."""
