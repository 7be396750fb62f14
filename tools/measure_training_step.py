"""Measures the host-memory peak of a CPU training step (run as ``python -m`` in a fresh process).

Argument: JSON ``{"cases": [case, ...]}`` or one case ``{"model": "t"|"tiny"|..., "overrides": {...},
"image_size": int, "batch_size": int, "precision": "fp32"|"bf16", "gradient_checkpointing": bool}``. Prints JSON
with ``peak_bytes``: the resident-set high-water mark of the second training step (forward, backward, AdamW step,
zero_grad) minus the resident set before the model was built (after a warm-up step of a throwaway tiny model), so
it counts the model, its optimizer states and the step's activations and temporaries.
"""

from __future__ import annotations

import json
import sys


def measure_case(arguments: dict) -> dict:
    import gc

    import torch
    from memory_measure import peak_resident_bytes, reset_peak, resident_bytes

    from internimage_hf.models.internimage.modeling_internimage import InternImageForImageClassification
    from internimage_hf.training.models import enable_gradient_checkpointing, preset_config

    torch.set_num_threads(1)
    size, batch = arguments["image_size"], arguments["batch_size"]
    low_precision = arguments["precision"] == "bf16"

    def build(model_name, overrides):
        torch.manual_seed(0)
        model = InternImageForImageClassification(preset_config(model_name, **overrides)).train()
        if arguments["gradient_checkpointing"]:
            enable_gradient_checkpointing(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def step(model, optimizer, pixel_values):
        labels = torch.zeros(pixel_values.shape[0], dtype=torch.long)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low_precision):
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # One-off allocations of the operator libraries and autograd (primitive caches, thread pools) are no part of
    # the step: run them on a throwaway small model first so they fall into the baseline.
    warm_model, warm_optimizer = build("tiny", {})
    step(warm_model, warm_optimizer, torch.randn(1, 3, 64, 64))
    del warm_model, warm_optimizer
    baseline = resident_bytes()

    model, optimizer = build(arguments["model"], arguments.get("overrides", {}))
    pixel_values = torch.randn(batch, 3, size, size)
    step(model, optimizer, pixel_values)  # creates the AdamW states
    reset_peak()
    step(model, optimizer, pixel_values)
    result = {"peak_bytes": peak_resident_bytes() - baseline, "after_bytes": resident_bytes() - baseline}
    del model, optimizer, pixel_values
    gc.collect()
    return result


def main(arguments: dict) -> dict | list[dict]:
    """One case, or ``{"cases": [...]}`` measured one after the other (each above its own baseline)."""
    if "cases" in arguments:
        return [measure_case(case) for case in arguments["cases"]]
    return measure_case(arguments)


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
