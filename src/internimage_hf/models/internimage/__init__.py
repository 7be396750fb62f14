"""InternImage, named as in ``transformers.models``: `configuration_internimage`, `modeling_internimage`,
`image_processing_internimage` (torchvision backend) and `image_processing_pil_internimage` (PIL backend), plus
`checkpoint_keys` (the official weight names the model reads). The package root exports the public classes and
registers them with the Auto classes."""
