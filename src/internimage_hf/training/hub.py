"""Model card and upload for `--push_to_hub` (needs network and a token; tests replace `HfApi`)."""

from __future__ import annotations

from pathlib import Path

from .checkpointing import RUN_FILE
from .run_dir import LOCK_FILE, LOCK_OWNER_FILE

CARD_TEMPLATE = """---
library_name: transformers
pipeline_tag: image-classification
tags:
- internimage
- image-classification
{datasets}---

# {name}

InternImage (DCNv3) image classifier trained with `internimage_hf` (`scripts/train.py`).

- base model: `{model}`
- data: `{dataset}`
- resolution: {image_size}x{image_size}

## Results

| metric | value |
|---|---|
{results}

## Usage

```python
import internimage_hf  # registers the InternImage classes with the Auto API
from transformers import pipeline

classifier = pipeline("image-classification", model="{repo_id}")
```
{remote_code_usage}"""

REMOTE_CODE_USAGE = """
Without `internimage_hf` installed, the modeling code stored in this repository is used instead:

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{repo_id}", trust_remote_code=True)
```
"""


def model_card_text(options, results: dict, repo_id: str, image_size: int, remote_code: bool = False) -> str:
    """Model card markdown with YAML metadata, the final metrics and usage (with and without the package)."""
    dataset = options.dataset or "scikit-learn digits (built-in)"
    datasets = f"datasets:\n- {options.dataset}\n" if options.dataset and not Path(options.dataset).exists() else ""
    rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in results.items() if isinstance(value, float))
    return CARD_TEMPLATE.format(
        datasets=datasets, name=repo_id.split("/")[-1], model=options.model, dataset=dataset,
        image_size=image_size, results=rows, repo_id=repo_id,
        remote_code_usage=REMOTE_CODE_USAGE.format(repo_id=repo_id) if remote_code else "",
    )  # fmt: skip


def push_to_hub(output_dir: Path, options, results: dict) -> str:
    """Write README.md (model card) into `output_dir` and upload the folder; returns the repo id.

    With `options.hub_remote_code` the modeling code and `auto_map` go along (`internimage_hf.hub.remote_code`).
    """
    from huggingface_hub import HfApi, ModelCard

    from ..hub.remote_code import add_remote_code

    api = HfApi()
    # create_repo resolves the namespace ("name" -> "user/name"); the card's usage snippet needs the full id.
    repo_id = api.create_repo(options.hub_model_id or Path(options.output_dir).name, exist_ok=True).repo_id
    image_size = results.get("image_size") or options.image_size or 0
    if options.hub_remote_code:
        add_remote_code(output_dir)
    card = model_card_text(options, results, repo_id, image_size, remote_code=options.hub_remote_code)
    ModelCard(card).save(output_dir / "README.md")
    ignore = ["checkpoints/*", RUN_FILE, LOCK_FILE, LOCK_OWNER_FILE]  # resumable state and run bookkeeping stay local
    api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), ignore_patterns=ignore)
    return repo_id
