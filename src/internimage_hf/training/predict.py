"""After training: reload the saved model the way users will, and show predictions on held-out images."""

from __future__ import annotations


def reload_and_predict(output_dir: str, eval_dataset, image_column: str, label_column: str, num_show: int = 8):
    """Reload via `AutoModelForImageClassification` and `pipeline()`, print predictions, return the accuracy.

    The accuracy is computed through the pipeline on the whole held-out set, so it checks the saved weights,
    config labels and image processor end to end (not the in-memory training objects).
    """
    from transformers import AutoModelForImageClassification, pipeline

    import internimage_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForImageClassification.from_pretrained(output_dir)
    classifier = pipeline("image-classification", model=output_dir, device="cpu")
    names = model.config.id2label
    images = [image.convert("RGB") for image in eval_dataset[image_column]]
    labels = [names[int(label)] for label in eval_dataset[label_column]]
    predictions = classifier(images, top_k=1, batch_size=64)
    predicted = [result[0]["label"] for result in predictions]
    accuracy = sum(p == t for p, t in zip(predicted, labels, strict=True)) / max(len(labels), 1)
    print(f"Reloaded {type(model).__name__} from {output_dir} ({model.num_parameters():,} parameters)")
    for index in range(min(num_show, len(images))):
        top = predictions[index][0]
        score, truth = top["score"], labels[index]
        print(f"  held-out image {index}: predicted {top['label']!r} (score {score:.3f}), true {truth!r}")
    print(f"Held-out accuracy through pipeline(): {accuracy:.4f} ({len(labels)} images)")
    return accuracy
