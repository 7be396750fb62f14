"""Data shipped with the package: the class-name files (``*_labels.json``) and `labels`, which reads them."""
