"""The model trains with transformers' Trainer on a `datasets` imagefolder, through its saved image processor."""

import math

import torch
from datasets import load_dataset
from launch import remote_logits
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings


def test_trainer_trains_on_an_imagefolder_and_its_output_reloads(image_folders, seed, tmp_path):
    dataset = load_dataset("imagefolder", data_dir=str(image_folders[0].parent), cache_dir=str(tmp_path / "cache"))
    class_names = dataset["train"].features["label"].names
    assert len(dataset["train"]) == 48 and len(dataset["validation"]) == 101

    # The folder a run or a conversion writes: the model and its image processor.
    start = tmp_path / "start"
    config = ViTCustomConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        id2label=dict(enumerate(class_names)), label2id={name: i for i, name in enumerate(class_names)},
    )  # fmt: skip
    ViTCustomForImageClassification(config).save_pretrained(start)
    PreprocessSettings(image_size=16, crop_pct=1.0).to_image_processor().save_pretrained(start)

    processor = AutoImageProcessor.from_pretrained(start)
    model = AutoModelForImageClassification.from_pretrained(start)

    def preprocess(batch):
        pixels = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch["label"]}

    dataset.set_transform(preprocess)

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to="none", max_steps=12,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=3e-3, warmup_steps=2,
        logging_steps=1, save_strategy="no", remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=collate,
        processing_class=processor,
    )
    initial = trainer.evaluate()
    trainer.train()
    final = trainer.evaluate()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert final["eval_loss"] < initial["eval_loss"] - 0.1, (initial, final)

    trainer.save_model(tmp_path / "trained")
    names = {path.name for path in (tmp_path / "trained").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_vit_custom.py", "preprocessor_config.json"} <= names
    pixel_values = torch.stack([dataset["validation"][i]["pixel_values"] for i in range(4)])
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values).logits
    reloaded = remote_logits(tmp_path / "trained", pixel_values, tmp_path / "clean")
    assert (reloaded - expected).abs().max().item() < 1e-6
