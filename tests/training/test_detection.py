"""`scripts/train_detection.py`: a tiny InternImage DINO learns the synthetic task; resume, 2-process evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_weights, requires_accelerate, requires_torchvision

pytestmark = [requires_accelerate, requires_torchvision]

# A shorter run than the script's default (512 images x 12 epochs): 256 images x 8 epochs of 8 = 256 steps, evaluated
# once at the end. Measured (torch 2.14.1, torchvision 0.29.1, this shared 2-core CPU): box AP 0.122 / 0.112 / 0.116 and
# AP50 0.276 / 0.329 / 0.321 with seeds 42 / 0 / 1, in 50-115 s of training depending on load (after 30 steps
# the detector scores AP < 0.005).
LEARNING_RUN = ["--synthetic_train_samples", "256", "--synthetic_eval_samples", "32", "--num_train_epochs", "8",
                "--eval_every_epochs", "8"]  # fmt: skip
LEARNED_AP = 0.05
LEARNED_AP50 = 0.15


def detection_args(output_dir, *extra: str) -> list[str]:
    return ["--output_dir", str(output_dir), "--logging_steps", "5", "--num_predictions", "0", *extra]


def make_detection_trainer(argv):
    from internimage_hf.training.detection import DetectionTrainer, parse_detection_options

    return DetectionTrainer(parse_detection_options(argv))


def test_dino_learns_the_synthetic_task_and_reloads_into_a_pipeline(tmp_path):
    from internimage_hf.training.detection import reload_and_detect
    from internimage_hf.training.detection_data import SYNTHETIC_LABELS, SyntheticDetectionShapes

    results = make_detection_trainer(detection_args(tmp_path, *LEARNING_RUN)).run()
    assert results["global_step"] == 256 and results["eval_images"] == 32
    assert results["eval_AP"] > LEARNED_AP and results["eval_AP50"] > LEARNED_AP50, results
    assert json.loads((tmp_path / "all_results.json").read_text())["eval_AP"] == results["eval_AP"]

    from transformers import AutoModelForObjectDetection

    model = AutoModelForObjectDetection.from_pretrained(tmp_path)
    assert type(model).__name__ == "DinoDetrForObjectDetection"
    assert model.config.backbone_config.model_type == "internimage"
    assert model.config.id2label == dict(enumerate(SYNTHETIC_LABELS))
    image, _ = SyntheticDetectionShapes(1, 64, seed=7, split="validation")[0]
    (detections,) = reload_and_detect(tmp_path, [image], threshold=0.0)
    assert detections and {d["label"] for d in detections} <= set(SYNTHETIC_LABELS)
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 64 for d in detections)


def test_resume_matches_uninterrupted_run(tmp_path):
    run = ("--max_steps", "4", "--save_steps", "2", "--save_total_limit", "0", "--synthetic_train_samples", "16",
           "--synthetic_eval_samples", "4", "--per_device_train_batch_size", "4", "--ema_decay", "0.9")  # fmt: skip
    make_detection_trainer(detection_args(tmp_path / "full", *run)).run()
    assert (tmp_path / "full" / "online_model" / "model.safetensors").is_file()  # the EMA weights are the model
    first = tmp_path / "full" / "checkpoints" / "step_00000002"
    resumed = make_detection_trainer(detection_args(tmp_path / "resumed", *run, "--resume", str(first)))
    assert resumed.run()["global_step"] == 4
    for weights in ("", "online_model"):  # EMA and online weights
        expected, actual = load_weights(tmp_path / "full" / weights), load_weights(tmp_path / "resumed" / weights)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)

    from internimage_hf.training.checkpointing import CheckpointError

    with pytest.raises(CheckpointError, match="--crop_probability"):
        make_detection_trainer(
            detection_args(tmp_path / "other", *run, "--crop_probability", "0.2", "--resume", str(first))
        )


def test_gathered_detections_count_each_image_once():
    """2 processes, 10 images, batches of 4: Accelerate's even batches give rank 1 images 0 and 1 again."""
    from internimage_hf.training.detection import unique_by_image

    ranks = [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7, 0, 1]]  # rank r gets batches r, r + 2, ...; the last one padded
    gathered = [
        (image_id, [{"image_id": image_id, "rank": rank}]) for rank, ids in enumerate(ranks) for image_id in ids
    ]
    by_image = unique_by_image(gathered)
    assert sorted(by_image) == list(range(10))
    assert by_image[0] == [{"image_id": 0, "rank": 0}]  # the first occurrence is kept


def test_two_process_evaluation_counts_every_image_once(tmp_path):
    """10 eval images over 2 processes x batch 4: the metrics equal a single-process evaluation of the saved model."""
    from test_distributed import launch_two_processes

    from internimage_hf.models.dino_detr.image_processing_dino_detr import DinoDetrImageProcessor
    from internimage_hf.training.detection_data import SYNTHETIC_LABELS, SyntheticDetectionShapes, coco_ground_truth
    from internimage_hf.training.detection_metrics import coco_box_map, detection_records

    # 30 steps at a high lr: enough for some boxes to match (AR > 0), so equal metrics are not two zeros.
    run = ("--max_steps", "30", "--warmup_steps", "5", "--learning_rate", "2e-3", "--synthetic_train_samples", "64",
           "--synthetic_eval_samples", "10", "--per_device_eval_batch_size", "4")  # fmt: skip
    completed = launch_two_processes("train_detection.py", detection_args(tmp_path, *run))
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (tmp_path / "replica_checksum_0.txt").read_text() == (tmp_path / "replica_checksum_1.txt").read_text()
    reported = json.loads((tmp_path / "all_results.json").read_text())

    from transformers import AutoModelForObjectDetection

    model = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    processor = DinoDetrImageProcessor.from_pretrained(tmp_path)
    source = SyntheticDetectionShapes(10, 64, seed=42, split="validation")
    images = [source[index][0] for index in range(10)]
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(64, 64)] * 10)
    expected = coco_box_map(
        coco_ground_truth(source, list(SYNTHETIC_LABELS)), detection_records(results, range(10), source.category_ids)
    )
    assert reported["eval_images"] == 10 and reported["eval_samples"] == 10
    assert expected["AR_100"] > 0  # the comparison is not between two zeros
    for key in ("AP", "AP50", "AR_100"):
        assert reported[f"eval_{key}"] == pytest.approx(expected[key], abs=1e-9), key


def test_optimizer_follows_the_official_layer_wise_lr_rules():
    from internimage_hf.training.detection import (
        DINO_OPTIMIZER_RULES,
        build_detection_model,
        parse_detection_options,
    )
    from internimage_hf.training.optimization import parameter_groups

    options = parse_detection_options(["--dataset", "d", "--output_dir", "o", "--model", "tiny"])
    assert (options.learning_rate, options.weight_decay, options.layer_decay) == (1e-4, 1e-4, 0.9)
    assert options.max_grad_norm == 0.1
    model = build_detection_model(options, {0: "a", 1: "b"}, {"a": 0, "b": 1})
    groups = parameter_groups(model, 1e-4, 0.9, 1e-4, **DINO_OPTIMIZER_RULES)
    by_name = {name: group for group in groups for name in group["names"]}
    blocks = sum(model.config.backbone_config.depths)  # 5 for `tiny`
    assert by_name["model.level_embeddings"]["lr"] == pytest.approx(1e-4 * 0.9 ** (blocks + 1))
    assert by_name["model.backbone.embeddings.conv1.weight"]["lr_scale"] == pytest.approx(0.9 ** (blocks + 1))
    assert by_name["model.backbone.encoder.stages.2.layers.1.dcn.output_proj.weight"]["layer_id"] == 4
    assert by_name["model.backbone.encoder.stages.2.layers.1.dcn.output_proj.weight"]["lr_scale"] == pytest.approx(
        0.9 ** (blocks + 1 - 4)
    )
    assert by_name["model.class_heads.0.weight"]["lr"] == 1e-4 and by_name["model.class_heads.0.weight"]["weight_decay"]
    offsets = [name for name in by_name if "sampling_offsets.weight" in name]
    assert offsets and all(by_name[name]["weight_decay"] == 0.0 for name in offsets)


def test_model_from_a_detector_or_a_backbone_checkpoint(tmp_path):
    from internimage_hf import InternImageConfig, InternImageForImageClassification
    from internimage_hf.training.detection import build_detection_model, parse_detection_options

    def options(model):
        return parse_detection_options(["--dataset", "d", "--output_dir", "o", "--model", str(model)])

    detector = build_detection_model(options("tiny"), {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2})
    detector.save_pretrained(tmp_path / "dino")
    relabelled = build_detection_model(options(tmp_path / "dino"), {0: "x", 1: "y"}, {"x": 0, "y": 1})
    assert relabelled.config.num_labels == 2 and relabelled.model.class_heads[0].out_features == 2
    stage = "encoder.stages.2.layers.0.dcn.output_proj.weight"
    torch.testing.assert_close(
        relabelled.model.backbone.state_dict()[stage], detector.model.backbone.state_dict()[stage], rtol=0, atol=0
    )

    classifier = InternImageForImageClassification(
        InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(1, 2, 4, 8), layer_scale=None, num_labels=3)
    )
    classifier.save_pretrained(tmp_path / "backbone")
    model = build_detection_model(options(tmp_path / "backbone"), {0: "a"}, {"a": 0})
    assert model.config.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    torch.testing.assert_close(
        model.model.backbone.state_dict()[stage], classifier.internimage.state_dict()[stage], rtol=0, atol=0
    )


def test_options_are_resolved_from_the_data():
    from internimage_hf.training.detection import parse_detection_options

    synthetic = parse_detection_options([])
    assert (synthetic.model, synthetic.image_size, synthetic.max_size) == ("tiny", 64, 107)
    assert synthetic.output_dir == "outputs/detection_synthetic" and synthetic.layer_decay == 1.0
    own = parse_detection_options(["--coco_train_json", "t.json", "--coco_eval_json", "v.json", "--output_dir", "o"])
    assert (own.model, own.image_size, own.max_size, own.num_train_epochs) == ("t", 800, 1333, 12.0)
    assert (own.learning_rate, own.weight_decay, own.layer_decay, own.lr_scheduler) == (1e-4, 1e-4, 0.9, "step")
    with pytest.raises(ValueError, match="--output_dir is required"):
        parse_detection_options(["--dataset", "some/data"])


@pytest.mark.parametrize("source", ["coco_json", "datasets"])
def test_trains_and_evaluates_on_coco_json_and_datasets_inputs(tmp_path, source):
    """Two steps on each input kind; evaluation maps class indices back to the dataset's category ids."""
    from test_detection_data import write_coco, write_objects_dataset

    if source == "coco_json":
        write_coco(tmp_path / "coco")
        data = ["--coco_train_json", str(tmp_path / "coco" / "coco.json"), "--coco_train_images",
                str(tmp_path / "coco" / "images"), "--coco_eval_json", str(tmp_path / "coco" / "coco.json"),
                "--coco_eval_images", str(tmp_path / "coco" / "images")]  # fmt: skip
    else:
        data = ["--dataset", str(write_objects_dataset(tmp_path / "ds"))]
    small = ["--model", "tiny", "--image_size", "64", "--max_size", "107", "--max_steps", "2", "--warmup_steps", "1"]
    trainer = make_detection_trainer(detection_args(tmp_path / "out", *data, *small))
    if source == "coco_json":
        assert trainer.data.category_ids == [5, 9] and trainer.data.label_names == ["cat", "dog"]
        batch = next(iter(trainer.eval_loader))
        records = [r for _, found in trainer.predict_records(trainer.model, batch) for r in found]
        assert records and {r["category_id"] for r in records} <= {5, 9}
    results = trainer.run()
    assert results["global_step"] == 2 and torch.isfinite(torch.tensor(results["train_loss"]))
    assert results["eval_images"] == (3 if source == "coco_json" else 2) and 0.0 <= results["eval_AP"] <= 1.0


def test_step_schedule_divides_the_lr_by_ten_after_eleven_twelfths():
    import json as json_module

    from internimage_hf.training.detection import parse_detection_options
    from internimage_hf.training.optimization import build_scheduler

    assert parse_detection_options(["--dataset", "d", "--output_dir", "o"]).lr_scheduler == "step"
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = build_scheduler(optimizer, "step", warmup_steps=4, total_steps=24)
    lrs = []
    for _ in range(24):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.0, 2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert lrs[5:22] == pytest.approx([1e-4] * 17) and lrs[22:] == pytest.approx(
        [1e-5] * 2
    )  # from step 22 = 24 * 11/12
    json_module.dumps(scheduler.state_dict())  # checkpoints store the scheduler state as JSON
