"""Parity fixture of the DINO detector, written by running the official InternImage detection code.

`tests/fixtures/detection/dino_internimage_t.safetensors` lets `tests/models/dino_detr/test_dino_detr_parity.py`
compare `DinoDetrForObjectDetection` with the official `DINO` (mmdet 2.28 + the official `mmdet_custom`) in a fresh
clone. It holds the official InternImage-T DINO configuration with weights on an exact grid (stored as seed recipes, see
`parity_fixtures.grid_tensor`), inputs (also recipes) and the official outputs, all computed in float64:

- `cases.<case>.*`: eval-mode outputs for one 256x320 image, one 320x224 image and a padded batch of a 256x320 and a
  224x288 image: the last layer's logits of the first 100 queries, the last and first layers' boxes of all 900
  queries, the selected encoder proposals (best class score, box), and which proposals the query selection ranked
  first with their scores (float64: where two scores lie closer than float32 rounding, the test checks that ours are
  as close and then follows the official order);
- `losses.*`: the official head's losses of the batch for fixed targets, without denoising (eval-mode forward);
- `denoising.*`: a training-mode forward with the official `CdnQueryGenerator`'s queries (their noisy labels, -1 on
  padding slots, and boxes in logit space) and the official losses with them.

Run it where the official code runs (see `scripts/make_official_detection_env.sh`)::

    python scripts/make_detection_fixtures.py --official /path/to/InternImage

Only the imports that need compiled code are replaced: mmcv's `_ext` (`mmcv_ext_standin`; mmcv's deformable
attention runs its PyTorch path on CPU), the `DCNv3` CUDA extension (the backbone runs the official
`DCNv3_pytorch` core, through a subclass that drops the detection-only `use_dcn_v4_op` flag), and the official
denoising generator's `.cuda()` / `.to("cuda")` calls, which return the CPU tensor while the fixture is made.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import torch
from parity_fixtures import _fan_in_exponent, grid_tensor, rebuild_weights, tensor_sha256, weight_recipe
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FIXTURE_FORMAT = 1
CONFIG = "configs/coco/dino_4scale_internimage_t_1x_coco_layer_wise_lr.py"
SEED = 31
# case -> list of (height, width) images; a batch is padded to the first (largest) size at the bottom and right
CASES = {"single_256x320": [(256, 320)], "single_320x224": [(320, 224)], "batch": [(256, 320), (224, 288)]}
STORED_QUERIES = 100  # logits are stored for the first (best-proposal) queries
NUM_DENOISING = 20  # the official T config uses 100; fewer keeps the fixture small, the layout is the same
# per image of the batch: (labels, boxes x0, y0, x1, y1 in pixels of the unpadded image)
TARGETS = [
    ([3, 17, 3], [[20.0, 30.0, 120.0, 200.0], [150.0, 40.0, 300.0, 110.0], [60.0, 180.0, 100.0, 250.0]]),
    ([56], [[10.0, 10.0, 250.0, 200.0]]),
]


class OfficialDetectionCode:
    """The official detection code of an OpenGVLab/InternImage checkout (mmdet 2.28), imported for CPU use."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = Path(checkout).resolve()
        self.detection = self.checkout / "detection"
        if not (self.detection / "mmdet_custom").is_dir():
            raise FileNotFoundError(f"--official: {self.detection / 'mmdet_custom'} not found")
        import mmcv_ext_standin

        mmcv_ext_standin.install()
        if importlib.util.find_spec("DCNv3") is None:
            sys.modules["DCNv3"] = types.ModuleType("DCNv3")
        sys.path.insert(0, str(self.detection))
        importlib.import_module("mmdet_custom")
        self._register_pytorch_core()
        self.commit = self._commit()

    @staticmethod
    def _register_pytorch_core() -> None:
        from ops_dcnv3 import modules

        class DCNv3PytorchCore(modules.DCNv3_pytorch):
            def __init__(self, *args, use_dcn_v4_op=False, **kwargs):
                if use_dcn_v4_op:
                    raise ValueError("the fixture runs the DCNv3 PyTorch core")
                super().__init__(*args, **kwargs)

        modules.DCNv3PytorchCore = DCNv3PytorchCore

    def _commit(self) -> str:
        git = ["git", "-C", str(self.checkout)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "detection"], check=True, capture_output=True, text=True
        ).stdout
        return commit.strip() + ("-dirty" if status.strip() else "")

    def config(self, num_denoising: int = NUM_DENOISING):
        import mmcv

        config = mmcv.Config.fromfile(str(self.detection / CONFIG))
        model = config.model
        model.backbone.update(core_op="DCNv3PytorchCore", with_cp=False, init_cfg=None)
        model.bbox_head.dn_cfg.group_cfg.num_dn_queries = num_denoising
        return model

    def build(self):
        """The official DINO-T detector, in float64 and eval mode (mmcv's init logging silenced)."""
        from mmdet.models import build_detector

        logging.getLogger("mmcv").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            model = build_detector(self.config())
        return model.double().eval()


def weight_recipe_dino(module_name: str, module, param_name: str, shape) -> tuple[int, float]:
    """(exponent, centre) of a detector weight's grid: the backbone as the classification fixtures; the head with
    unit-gain linears, norms away from the identity, embeddings of unit size, sampling offsets of about +-2 px."""
    if module_name.startswith("backbone."):
        return weight_recipe(module_name, module, param_name, shape)
    if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return {"weight": (-2, 1.0), "bias": (-3, 0.0)}[param_name]
    if param_name == "level_embeds" or module_name.endswith(("query_embed", "label_embedding")):
        return 0, 0.0
    is_bias = param_name.endswith("bias")
    if module_name.endswith("sampling_offsets"):
        return (1, 0.0) if is_bias else (_fan_in_exponent(shape), 0.0)
    if ".cls_branches." in module_name + ".":
        return (-1, -2.0) if is_bias else (_fan_in_exponent(shape), 0.0)
    return (-3, 0.0) if is_bias else (_fan_in_exponent(shape), 0.0)


def randomise_detector(model, seed: int) -> dict[str, dict]:
    """Overwrite every float parameter and buffer of the official detector with grid values; return the recipes."""
    recipes = {}
    modules = dict(model.named_modules())
    for index, (key, tensor) in enumerate(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        module_name, _, param_name = key.rpartition(".")
        exponent, center = weight_recipe_dino(module_name, modules[module_name], param_name, tensor.shape)
        recipe = {"shape": list(tensor.shape), "seed": seed * 100_000 + index, "exponent": exponent, "center": center}
        value = grid_tensor(recipe["shape"], recipe["seed"], exponent, center)
        with torch.no_grad():
            tensor.copy_(value.to(tensor.dtype))
        recipes[key] = {**recipe, "sha256": tensor_sha256(value)}
    return recipes


def case_inputs(case: str, seed: int) -> tuple[torch.Tensor, list[tuple[int, int]], dict]:
    """float64 images of a case (zero on padding, as mmdet pads) and their sizes; the recipe of the grid."""
    sizes = CASES[case]
    height, width = sizes[0]
    recipe = {"shape": [len(sizes), 3, height, width], "seed": seed, "exponent": 1, "center": 0.0}
    images = grid_tensor(recipe["shape"], seed, 1).double()
    for index, (image_height, image_width) in enumerate(sizes):
        images[index, :, image_height:] = 0
        images[index, :, :, image_width:] = 0
    return images, sizes, recipe


def image_metas(sizes: list[tuple[int, int]]) -> list[dict]:
    batch_shape = sizes[0]
    return [
        {"img_shape": (h, w, 3), "batch_input_shape": batch_shape, "ori_shape": (h, w, 3), "pad_shape": (h, w, 3)}
        for h, w in sizes
    ]


def eval_outputs(model, images: torch.Tensor, sizes) -> dict[str, torch.Tensor]:
    transformer = model.bbox_head.transformer
    ranking = {}
    with recorded_proposal_ranking(transformer, ranking), torch.no_grad():
        scores, boxes, topk_scores, topk_boxes = model.bbox_head(model.extract_feat(images), image_metas(sizes))
    return {
        "proposal_ranking": ranking["indices"],
        "proposal_scores": ranking["scores"],
        "logits": scores[-1, :, :STORED_QUERIES],
        "boxes": boxes[-1],
        "first_layer_boxes": boxes[0],
        "encoder_scores": topk_scores.max(-1)[0],
        "encoder_boxes": topk_boxes,
    }


@contextlib.contextmanager
def recorded_proposal_ranking(transformer, record: dict):
    """Record which encoder proposals the official query selection ranks first (`torch.topk` inside `forward`)."""
    original_topk = torch.topk

    def topk(values, k, *args, **kwargs):
        result = original_topk(values, k, *args, **kwargs)
        if k == transformer.two_stage_num_proposals and "indices" not in record:
            record["indices"], record["scores"] = result[1], result[0]
        return result

    torch.topk = topk
    try:
        yield
    finally:
        torch.topk = original_topk


def official_targets(sizes) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    labels = [torch.tensor(classes) for classes, _ in TARGETS]
    boxes = [torch.tensor(corners, dtype=torch.float64) for _, corners in TARGETS]
    return boxes, labels


def official_losses(model, images, sizes, denoising=None) -> dict[str, torch.Tensor]:
    boxes, labels = official_targets(sizes)
    metas = image_metas(sizes)
    head = model.bbox_head
    features = model.extract_feat(images)
    if denoising is None:
        # The official `DINOHead.loss` returns nothing without denoising (its `return` sits inside the denoising
        # branch), so its per-stage function is called here the way `loss` calls it.
        scores, stage_boxes, topk_scores, topk_boxes = head(features, metas)
        losses = {}
        stages = {"interm_": (topk_scores, topk_boxes)} | {
            (f"d{layer}." if layer < len(scores) - 1 else ""): (scores[layer], stage_boxes[layer])
            for layer in range(len(scores))
        }
        for prefix, (stage_scores, stage_box) in stages.items():
            terms = head.loss_single(stage_scores, stage_box, boxes, labels, metas, None)
            losses |= {f"{prefix}loss_{name}": value for name, value in zip(("cls", "bbox", "iou"), terms, strict=True)}
        return losses
    label_query, box_query, attention_mask, meta = denoising
    outputs = head(features, metas, label_query, box_query, attention_mask)
    with cuda_calls_stay_on_cpu():  # the official denoising targets are built with `.cuda()`
        return head.loss(*outputs, boxes, labels, metas, dn_meta=meta)


@contextlib.contextmanager
def cuda_calls_stay_on_cpu():
    """The official denoising code moves tensors with `.cuda()` / `.to("cuda")`; here they stay where they are."""
    original_cuda, original_to = torch.Tensor.cuda, torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return self
        return original_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = original_cuda, original_to


def denoising_inputs(model, sizes, seed: int):
    """The official generator's queries for `TARGETS` (seeded), and their noisy label ids (-1 on padding)."""
    head = model.bbox_head
    boxes, labels = official_targets(sizes)
    head.dn_generator.train()
    torch.manual_seed(seed)
    # The generator pads with float32 zeros: it runs in float32 (the grid values are exact there), then float64.
    embedding = torch.nn.Embedding.from_pretrained(head.label_embedding.weight.float())
    with cuda_calls_stay_on_cpu():
        label_query, box_query, attention_mask, meta = head.dn_generator(
            [box.float() for box in boxes], labels, embedding, image_metas(sizes)
        )
    label_query = label_query.double()
    embeddings = head.label_embedding.weight
    distance = (label_query[..., None, :] - embeddings).abs().amax(-1)  # (N, P, classes)
    ids = distance.argmin(-1)
    ids[(label_query == 0).all(-1)] = -1
    return (label_query, box_query.double(), attention_mask, meta), ids


def make_fixture(official: OfficialDetectionCode) -> tuple[dict[str, torch.Tensor], dict]:
    model = official.build()
    generated = randomise_detector(model, SEED)
    tensors, inputs = {}, {}
    for index, case in enumerate(CASES):
        images, sizes, recipe = case_inputs(case, SEED * 1000 + index)
        inputs[case] = {"sizes": sizes, "recipe": recipe}
        outputs = eval_outputs(model, images, sizes)
        tensors |= {f"cases.{case}.{k}": _stored(k, v) for k, v in outputs.items()}
    images, sizes, _ = case_inputs("batch", SEED * 1000 + list(CASES).index("batch"))
    with torch.no_grad():
        tensors |= {f"losses.{k}": v.float().reshape(()) for k, v in official_losses(model, images, sizes).items()}
        denoising, label_ids = denoising_inputs(model, sizes, SEED)  # the rest stays in eval mode (no drop path)
        dn_losses = official_losses(model, images, sizes, denoising)
    label_query, box_query, attention_mask, meta = denoising
    tensors |= {f"denoising.losses.{k}": v.float().reshape(()) for k, v in dn_losses.items()}
    tensors["denoising.label_ids"] = label_ids.to(torch.int64).contiguous()
    tensors["denoising.boxes"] = box_query.contiguous()
    metadata = {
        "format": FIXTURE_FORMAT,
        "torch": torch.__version__,
        "official_commit": official.commit,
        "official_config": CONFIG,
        "num_denoising": NUM_DENOISING,
        "denoising_meta": {"pad_size": int(meta["pad_size"]), "num_dn_group": int(meta["num_dn_group"])},
        "denoising_mask_sha256": hashlib.sha256(attention_mask.cpu().numpy().tobytes()).hexdigest(),
        "inputs": inputs,
        "targets": TARGETS,
        "stored_queries": STORED_QUERIES,
        "generated": generated,
    }
    return tensors, metadata


def _stored(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Indices as int64, ranking scores as float64 (their gaps decide the order), other outputs as float32."""
    if not tensor.is_floating_point():
        return tensor.to(torch.int64).contiguous()
    return tensor.double().contiguous() if name == "proposal_scores" else tensor.float().contiguous()


def write_fixture(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    save_file(tensors, str(path), metadata={"fixture": json.dumps(metadata)})


def read_fixture(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Stored tensors, rebuilt official weights (`state_dict.<official key>`) and inputs (`inputs.<case>`), metadata."""
    metadata = json.loads(safe_open(str(path), "pt").metadata()["fixture"])
    tensors = load_file(str(path))
    tensors |= {f"state_dict.{k}": v for k, v in rebuild_weights(metadata["generated"]).items()}
    for case, spec in metadata["inputs"].items():
        recipe = spec["recipe"]
        images = grid_tensor(recipe["shape"], recipe["seed"], recipe["exponent"], recipe["center"]).double()
        for index, (height, width) in enumerate(spec["sizes"]):
            images[index, :, height:] = 0
            images[index, :, :, width:] = 0
        tensors[f"inputs.{case}"] = images
    return tensors, metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the DINO parity fixture by running the official code.")
    parser.add_argument("--official", type=Path, required=True, help="an OpenGVLab/InternImage git checkout")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("tests/fixtures/detection/dino_internimage_t.safetensors"),
        help="the fixture file",
    )
    args = parser.parse_args(argv)
    official = OfficialDetectionCode(args.official)
    tensors, metadata = make_fixture(official)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_fixture(args.out, tensors, metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, official {official.commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
