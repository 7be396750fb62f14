"""Portable PyTorch operators: the DCNv3 sampling core and operator module (`dcnv3`). They import nothing else of
the package; the compiled hub kernel that can replace them is loaded by `internimage_hf.hub_kernels`."""
