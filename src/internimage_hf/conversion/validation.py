"""Checking an official-style configuration before any weight is read.

`InternImageConfig` itself checks types (`@strict`) and ranges. On top of that the converter refuses sizes far
beyond every InternImage release: such a value is a typo, and building the model for it would take minutes (or
all memory) before failing on the weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping

from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError

from ..models.internimage.configuration_internimage import InternImageConfig
from .errors import ConversionError
from .families import INTERNIMAGE, family_from_config

# Upper bounds, each several times the largest official value (G: channels 512, 48 blocks in stage 3,
# dw_kernel_size 5; H: 640-px input; ImageNet-22k: 21841 classes).
SIZE_LIMITS: dict[str, int] = {
    "num_channels": 64,
    "channels": 4096,
    "depths": 128,
    "mlp_ratio": 64,
    "cls_scale": 64,
    "dw_kernel_size": 63,
    "image_size": 8192,
    "num_classes": 1_000_000,
}
# Keys of an official hub config.json that describe the remote code, not the model.
HUB_CONFIG_DROP = ("_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype")
# Keys that official configs and this package's saved configs carry besides `InternImageConfig`'s fields.
_OTHER_KNOWN_KEYS = ("model_type", "num_classes", "num_labels", "out_features", "out_indices", "stage_names")


def _config_fields(config_class: type[InternImageConfig]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(config_class) if not f.name.startswith("_"))


def official_config_kwargs(config: Mapping) -> dict:
    """Official (hub-style) config.json -> `InternImageConfig` kwargs, without the remote-code bookkeeping."""
    return {k: v for k, v in config.items() if k not in HUB_CONFIG_DROP}


_STRICT_FIELD = re.compile(r"field '(\w+)'")


def _describe(error: Exception, kwargs: Mapping, config_class: type[InternImageConfig]) -> str:
    """One line for the command line; `@strict` type errors are multi-line and list every union member."""
    match = _STRICT_FIELD.search(str(error))
    if isinstance(error, StrictDataclassFieldValidationError) and match and match.group(1) in kwargs:
        name = match.group(1)
        expected = config_class.__dataclass_fields__[name].type
        expected = getattr(expected, "__name__", str(expected))
        return f"`{name}` = {kwargs[name]!r} has the wrong type (expected {expected})"
    return " ".join(part.strip() for part in str(error).splitlines())


def _check_known_keys(kwargs: Mapping, origin: str, config_class: type[InternImageConfig]) -> None:
    """A misspelt field would otherwise be stored as an unused attribute and the default used instead."""
    known = _config_fields(config_class) | set(_OTHER_KNOWN_KEYS)
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConversionError(f"{origin}: unknown configuration field {key!r}{hint}")


def _check_num_classes(kwargs: Mapping, origin: str) -> None:
    """Checked before building the config, which would allocate a label name per class."""
    for key in ("num_classes", "num_labels"):
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= SIZE_LIMITS["num_classes"]:
            raise ConversionError(
                f"{origin}: `{key}` must be an integer from 1 to {SIZE_LIMITS['num_classes']:,}, got {value!r}"
            )


def check_size_limits(config: InternImageConfig, origin: str) -> None:
    """Refuse sizes no InternImage release comes near (see `SIZE_LIMITS`)."""
    values = {name: getattr(config, name) for name in SIZE_LIMITS if name not in ("depths", "num_classes")}
    values.update({f"depths[{stage}]": depth for stage, depth in enumerate(config.depths)})
    for name, value in values.items():
        limit = SIZE_LIMITS[name.split("[")[0]]
        if value is not None and value > limit:
            raise ConversionError(
                f"{origin}: `{name}` = {value} is above {limit}, far beyond every InternImage release; "
                "check the configuration"
            )


def build_config(
    kwargs: Mapping, origin: str, config_class: type[InternImageConfig] = InternImageConfig
) -> InternImageConfig:
    """`config_class(**kwargs)` (InternImage's or FlashInternImage's) with every type, range and size problem as a
    `ConversionError` naming the field."""
    _check_num_classes(kwargs, origin)
    try:
        config = config_class(**kwargs)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ConversionError(f"invalid configuration ({origin}): {_describe(error, kwargs, config_class)}") from error
    check_size_limits(config, origin)
    return config


def check_config_values(values: object, origin: str) -> dict:
    """Validate an official-style config (a JSON object) and return its configuration kwargs, against
    `FlashInternImageConfig` when it names that family (`family_from_config`), else `InternImageConfig`."""
    if not isinstance(values, dict):
        raise ConversionError(
            f"{origin} must hold a JSON object of configuration fields, got {type(values).__name__} {values!r:.60}"
        )
    kwargs = official_config_kwargs(values)
    config_class = (family_from_config(kwargs) or INTERNIMAGE).config_class
    _check_known_keys(kwargs, origin, config_class)
    build_config(kwargs, origin, config_class)
    return kwargs


__all__ = ["SIZE_LIMITS", "build_config", "check_config_values", "check_size_limits", "official_config_kwargs"]
