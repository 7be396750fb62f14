"""`convert_checkpoint`: every step from a checkpoint file to a Hugging Face directory, and the upload."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..hub.remote_code import RemoteCodeError, add_remote_code
from .building import VERIFY_TOLERANCE, build_model, unused_keys, verify_converted
from .errors import ConversionError
from .families import family_of
from .output_dir import OutputDirectory
from .planning import ConversionPlan, check_image_size, plan_conversion, read_config_file
from .releases import (
    COMPOSITE_BACKBONE_RELEASES,
    DINO_RELEASES,
    FLASH_DENSE_RELEASES,
    MASK2FORMER_RELEASES,
    RELEASES,
    find_dense_release,
    find_detection_release,
    find_release,
    find_segmentation_release,
)
from .sources import load_source
from .writing import card_info, count_parameters, write_converted, write_model_card

# --verify runs the model on CPU at this size at most (the official models use up to 896 px).
MAX_VERIFY_SIZE = 1024


@dataclass
class ConversionResult:
    """What `convert_checkpoint` produced."""

    output_dir: Path
    task: str
    config: object
    num_parameters: int
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    name: str | None = None,
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    task: str = "auto",
    image_size: int | None = None,
    verify: bool = False,
    verify_size: int | None = None,
    repo_id: str | None = None,
    remote_code: bool | None = None,
    overwrite: bool = False,
    log=print,
) -> ConversionResult:
    """Convert `source` into a Hugging Face directory at `output_dir`.

    `name` (or the source's file/directory name) selects a known release: its preset, class count, label names,
    image size and published accuracy (classification releases, the official Mask2Former segmentation releases, the
    DINO detectors and the FlashInternImage detectors and segmenters). The model family (InternImage or
    FlashInternImage) is that of the weights' operator (`families.detect_family`).
    `preset` / `config_file` override the architecture. Arguments and the configuration are checked before any
    weight is read. Nothing is left at `output_dir` when any step fails, and
    `overwrite` only ever replaces a previous conversion (see `output_dir.OutputDirectory`).

    `remote_code` also writes the modeling code and `auto_map` (`internimage_hf.hub.remote_code`), so the output loads
    with ``trust_remote_code=True`` where ``internimage_hf`` is not installed; `None` (the default) means "when the
    output is bound for the Hub" (`repo_id` given). Segmentation outputs (UperNet, Mask2Former) cannot carry it (an
    explicit request is an error).
    """
    target = OutputDirectory(output_dir, source, overwrite=overwrite, log=log)
    _refuse_composite_backbone(name, source)
    finders = (find_release, find_segmentation_release, find_detection_release, find_dense_release)
    if name and not any(find(name) for find in finders):
        known = ", ".join(sorted({*RELEASES, *MASK2FORMER_RELEASES, *DINO_RELEASES, *FLASH_DENSE_RELEASES}))
        raise ConversionError(f"unknown release {name!r}; known: {known}")
    check_image_size(image_size, "image_size")
    check_image_size(verify_size, "verify_size", limit=MAX_VERIFY_SIZE)
    if config_file is not None:
        read_config_file(config_file)  # fail on a bad config now rather than after reading gigabytes of weights
    release = find_release(name) or find_release(Path(source).name)
    segmentation_release = find_segmentation_release(name) or find_segmentation_release(Path(source).name)
    detection_release = find_detection_release(name) or find_detection_release(Path(source).name)
    dense_release = find_dense_release(name) or find_dense_release(Path(source).name)
    with target:
        loaded = load_source(source)
        if loaded.ignored_keys:
            log(f"ignoring non-weight entries of the checkpoint: {', '.join(loaded.ignored_keys)}")
        plan = plan_conversion(
            loaded, task=task, preset=preset, config_file=Path(config_file) if config_file else None, release=release,
            image_size=image_size, segmentation_release=segmentation_release, detection_release=detection_release,
            dense_release=dense_release,
        )  # fmt: skip
        for note in plan.notes:
            log(note)
        include_code = _include_remote_code(remote_code, repo_id, plan, log)
        dropped = unused_keys(loaded, plan.task)
        if dropped:
            log(
                f"not converted ({len(dropped)} keys, e.g. {', '.join(dropped[:3])}): not part of the {plan.task} model"
            )
        model = build_model(plan, loaded)
        log(f"{plan.task}: {count_parameters(model):,} parameters, all {len(model.state_dict())} tensors matched")

        with target.staging() as staging:
            write_converted(staging, model, plan)
            max_diff, verification = None, None
            if verify:
                max_diff = verify_converted(staging, plan, loaded, verify_size)
                what = {"backbone": "feature maps", "dino": "logits and boxes"}.get(plan.task, "logits")
                log(f"verify: max abs diff of {what} = {max_diff:.3e}")
                if not max_diff <= VERIFY_TOLERANCE:
                    raise ConversionError(f"verification failed: max abs diff {max_diff:.3e} > {VERIFY_TOLERANCE}")
                verification = (
                    f"Verified at conversion time: the converted model and the source weights loaded through the "
                    f"official hub key names agree to a max abs difference of {max_diff:.1e} on a random input."
                )
            write_model_card(staging, card_info(plan, model, loaded, verification, repo_id))
            if include_code:  # last: a failed step never leaves .py files, which the staging cleanup keeps
                _write_remote_code(staging)
            target.publish(staging)
    log(f"wrote {target.path}")
    return ConversionResult(target.path, plan.task, model.config, count_parameters(model), max_diff, plan.notes)


def _refuse_composite_backbone(name: str | None, source: str | os.PathLike) -> None:
    """A CB-InternImage release, named or by its file name, is refused before any weight is read."""
    for candidate in (name, Path(source).name):
        stem = Path(str(candidate or "")).name.removesuffix(".pth").lower()
        if stem in COMPOSITE_BACKBONE_RELEASES:
            raise ConversionError(
                f"{stem} is a CB-InternImage detector (a composite backbone: two InternImage-H joined by "
                "`backbone.cb_linears`); internimage_hf has no model for it. The single-backbone DINO releases "
                f"convert: {', '.join(sorted(DINO_RELEASES))}"
            )


def _include_remote_code(remote_code: bool | None, repo_id: str | None, plan: ConversionPlan, log) -> bool:
    """Whether to write remote code: as asked, else for Hub-bound output; never for a segmentation model or detector
    (UperNet, Mask2Former, DINO), whose config nests ours, nor for FlashInternImage, which has no remote code."""
    wanted = repo_id is not None if remote_code is None else remote_code
    head = {"upernet": "UperNet", "mask2former": "Mask2Former", "dino": "DINO"}.get(plan.task)
    if plan.config.model_type != "internimage":
        head = family_of(plan.config).display_name
    if wanted and head:
        if remote_code:
            raise ConversionError(
                f"--remote_code covers InternImage classification and backbone checkpoints; a {head} checkpoint "
                "loads with internimage_hf installed (drop --remote_code)"
            )
        log(f"remote code: not included (a {head} checkpoint loads with internimage_hf installed)")
        return False
    return wanted


def _write_remote_code(directory: Path) -> None:
    try:
        add_remote_code(directory)
    except RemoteCodeError as error:
        raise ConversionError(f"cannot write the remote code: {error}") from error


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False, api=None) -> str:
    """Upload the converted directory (weights, config, processor, card) to `repo_id`; returns the commit URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(output_dir), repo_id=repo_id, repo_type="model",
        commit_message="Add InternImage checkpoint converted with internimage_hf",
    )  # fmt: skip
    return str(getattr(commit, "commit_url", commit))


__all__ = ["ConversionResult", "convert_checkpoint", "push_to_hub"]
