"""FlashInternImage (InternImage with DCNv4), named as in ``transformers.models``: `configuration_flash_internimage`
and `modeling_flash_internimage`; it reads InternImage's image processors and official-key renames. The package root
exports the public classes and registers them with the Auto classes."""
