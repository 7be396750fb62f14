"""The training loop: Accelerate for devices, processes, mixed precision, accumulation and checkpoints."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import checkpointing
from .checkpointing import CheckpointError, RunRecord, TrainingState
from .data import (
    build_batch_mix,
    build_dataloaders,
    build_image_processor,
    build_train_transform,
    check_torchvision,
    prepare_classification_data,
)
from .deepspeed_engine import cast_buffers_with_parameters, check_deepspeed_options, process_group_kwargs
from .ema import ModelEMA
from .fsdp import (
    check_fsdp_options,
    enable_cpu_fsdp,
    log_sharding,
    sync_buffers_from_main,
    warn_single_process_cpu_launch,
)
from .metrics import classification_loss, topk_correct
from .models import apply_hub_kernel, build_model, enable_gradient_checkpointing, model_image_size
from .optimization import build_optimizer, build_scheduler, warmup_steps_for
from .run_dir import (
    ONLINE_MODEL_DIR,
    RESULTS_FILE,
    OutputDirLock,
    check_inputs_are_kept,
    check_resume_settings,
    claim_output_dir,
    new_run_id,
    remove_outputs,
    results_json,
    resume_settings,
)
from .threads import apply_cpu_threads

logger = logging.getLogger(__name__)


def build_accelerator(options):
    """An `Accelerator` for the options; `mixed_precision=None` defers to `accelerate launch`/config."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    check_deepspeed_options(options)
    trackers = [t.strip() for t in options.report_to.split(",") if t.strip() and t.strip() != "none"]
    warn_single_process_cpu_launch()
    accelerator = Accelerator(
        mixed_precision=options.mixed_precision,
        cpu=options.use_cpu,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=options.output_dir, logging_dir=options.output_dir),
        dynamo_backend="inductor" if options.torch_compile else None,
        kwargs_handlers=process_group_kwargs(),
    )
    cast_buffers_with_parameters(accelerator)
    enable_cpu_fsdp(accelerator)
    return accelerator


def tracker_config(options) -> dict:
    """Options as flat scalars (what TensorBoard's hparams and other trackers accept)."""
    return {k: v for k, v in asdict(options).items() if isinstance(v, (int, float, str, bool))}


@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 accuracy over the whole eval set (all processes)."""
    was_training = model.training
    model.eval()
    loss_sum, count, correct = 0.0, 0, {1: 0, 5: 0}
    for batch in loader:
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits
        logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        count += labels.numel()
        for k, hits in topk_correct(logits, labels).items():
            correct[k] += hits
    model.train(was_training)
    count = max(count, 1)
    return {"loss": loss_sum / count, "accuracy": correct[1] / count, "top5_accuracy": correct[5] / count}


def parameter_checksum(model) -> str:
    """SHA-256 of all parameters and buffers in name order (equal on every DDP replica when in sync; under FSDP of
    the gathered full tensors, a collective that every process runs)."""
    from torch.distributed.tensor import DTensor

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_run_record(path) -> RunRecord:
    """The run record a checkpoint to resume carries; checkpoints of older versions (which pickled) have none."""
    record = RunRecord.read(path)
    if record is None:
        raise CheckpointError(
            f"checkpoint {path} has no {checkpointing.RUN_FILE}: it was written by an older version of internimage_hf, "
            "whose checkpoints hold pickle files (loading them can run code), so it cannot be resumed"
        )
    return record


class Trainer:
    """One training run: `Trainer(options).run()` returns the final metrics (also in all_results.json).

    The main process holds `output_dir`'s lock from construction until `run()` returns (or construction fails),
    so a second run on the same directory fails at start.

    This class trains an image classifier; another task overrides the task hooks (`_check_requirements`,
    `_prepare_data`, `_resume_settings`, `_build_model`, `_build_image_processor`, `_make_loaders`,
    `_build_optimizer`, `_compute_loss`, `_evaluate`, `_push_to_hub`) and keeps the run-dir, lock, checkpoint,
    resume and Accelerate machinery.
    """

    def __init__(self, options) -> None:
        self.options = options
        self._check_requirements()
        self.accelerator = build_accelerator(options)
        check_fsdp_options(options, self.accelerator.distributed_type)
        self._lock = OutputDirLock(options.output_dir) if self.accelerator.is_main_process else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._claim_output_dir()
            self._build()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _claim_output_dir(self) -> None:
        """Decide the run (a new one, or the checkpoint's) and check that output_dir may hold it."""
        options = self.options
        self.resume_path = None
        self.resumed_run = None
        if options.resume:
            self.resume_path = checkpointing.resolve_resume_path(options.resume, options.output_dir)
            self.resumed_run = checkpoint_run_record(self.resume_path)
        run_id = self.resumed_run.run_id if self.resumed_run is not None else self._shared_new_run_id()
        self.run_record = RunRecord(run_id)
        self._outputs_to_remove = claim_output_dir(
            options.output_dir, run_id, self.resume_path, options.overwrite_output_dir
        )
        check_inputs_are_kept(self._outputs_to_remove, {"--model": getattr(options, "model", None)})

    def _shared_new_run_id(self) -> str:
        """A new run id, the main process's on every process."""
        from accelerate.utils import broadcast_object_list

        run_id = [new_run_id()]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(run_id)
        return run_id[0]

    def _build(self) -> None:
        options = self.options
        from accelerate.utils import set_seed

        # Same seed on every process for init; `device_specific` so drop-path masks differ per process.
        set_seed(options.seed)
        self.data = self._prepare_data()
        self.run_record.settings = self._resume_settings()
        if self.resumed_run is not None:
            check_resume_settings(self.resumed_run.settings, self.run_record.settings, self.resume_path)
        model = self._build_model()
        self.image_size = model_image_size(model, options)
        batch_size = options.per_device_train_batch_size or 1
        self.cpu_threads = apply_cpu_threads(options.cpu_threads, batch_size, self.image_size, self.accelerator.device)
        self.image_processor = self._build_image_processor()
        set_seed(options.seed, device_specific=True)
        if options.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if options.use_kernel:
            model = apply_hub_kernel(model, self.accelerator.device.type)
        self._build_loaders()
        self._build_optimization(model)

    # --- task hooks (image classification) ----------------------------------------------------------------

    def _check_requirements(self) -> None:
        """Fail before anything starts when an option needs a package that is missing."""
        check_torchvision(self.options)

    def _prepare_data(self):
        """The task's data object: `.train`, `.eval`, `.label_names`, `.num_train_samples`."""
        return prepare_classification_data(self.options)

    def _resume_settings(self) -> dict:
        """The settings a resume of this run must keep (see `run_dir.resume_settings`)."""
        return resume_settings(
            self.options, self.accelerator.num_processes, len(self.data.train), self.data.label_names
        )

    def _build_model(self):
        return build_model(self.options, self.data.id2label, self.data.label2id)

    def _build_image_processor(self):
        """The processor saved with the model (its transform is the evaluation transform)."""
        return build_image_processor(self.image_size)

    def _make_loaders(self):
        """(train loader, eval loader, training dataset, sampler); the loop sets the epoch of the last two."""
        transform = build_train_transform(self.options, self.image_processor, self.image_size)
        self.batch_mix = build_batch_mix(self.options, len(self.data.label_names))
        return build_dataloaders(self.data, self.options, self.image_processor, transform)

    def _build_optimizer(self, model) -> torch.optim.Optimizer:
        """AdamW with the shared layer-wise lr decay and weight-decay rules (`optimization.build_optimizer`)."""
        return build_optimizer(model, self.options)

    def _compute_loss(self, batch) -> torch.Tensor:
        """The training loss of one micro-batch (called under `accelerator.accumulate`)."""
        pixel_values, targets = batch["pixel_values"], batch["labels"]
        if self.batch_mix is not None:
            pixel_values, targets = self.batch_mix(pixel_values, targets)
        with self.accelerator.autocast():
            logits = self.model(pixel_values=pixel_values).logits
        return classification_loss(logits, targets, self.options.label_smoothing)

    def _evaluate(self, model) -> dict[str, float]:
        """Metrics of `model` on the whole eval set (all processes)."""
        return evaluate(model, self.eval_loader, self.accelerator)

    def _push_to_hub(self, output_dir: Path, results: dict) -> None:
        """Upload the saved model with a model card (`--push_to_hub`; main process only)."""
        if self.options.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(output_dir, self.options, results)

    # ------------------------------------------------------------------------------------------------------

    def _build_loaders(self) -> None:
        options = self.options
        train_loader, eval_loader, self.train_set, self.sampler = self._make_loaders()
        # Length of the loader each process sees (after Accelerate's sharding), hence steps per epoch.
        self.batches_per_epoch = batches_per_process(
            len(self.sampler), options.per_device_train_batch_size, self.accelerator.num_processes,
            train_loader.drop_last,
        )  # fmt: skip
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / options.gradient_accumulation_steps)
        self.total_steps = options.max_steps or math.ceil(options.num_train_epochs * self.steps_per_epoch)
        self.train_loader, self.eval_loader = train_loader, eval_loader

    def _build_optimization(self, model) -> None:
        options, accelerator = self.options, self.accelerator
        optimizer = self._build_optimizer(model)
        warmup = warmup_steps_for(options, self.steps_per_epoch, self.total_steps)
        # Not passed to prepare(): Accelerate would step it once per process; we step it per optimizer step.
        self.scheduler = build_scheduler(optimizer, options.lr_scheduler, warmup, self.total_steps)
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, self.train_loader, self.eval_loader
        )
        log_sharding(accelerator, self.model)
        self.ema = ModelEMA(accelerator.unwrap_model(self.model), options.ema_decay) if options.ema_decay else None

    # ------------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        try:
            return self._run()
        finally:
            self._release()

    def _start_run(self) -> None:
        """Remove an earlier run's outputs (only with --overwrite_output_dir) and record this run as the owner."""
        if self.accelerator.is_main_process:
            remove_outputs(self._outputs_to_remove)
            self.run_record.write(self.options.output_dir)
        self.accelerator.wait_for_everyone()

    def _run(self) -> dict[str, float]:
        options, accelerator = self.options, self.accelerator
        state = self._resume_state()  # a checkpoint that fails to load leaves output_dir as it was
        self._start_run()
        accelerator.init_trackers(options.project_name, config=tracker_config(options))
        progress = self._progress_bar(state)
        start = time.perf_counter()
        samples_at_start = state.samples_seen
        eval_metrics: dict[str, float] = {}
        eval_step = -1
        while state.global_step < self.total_steps:
            finished_epoch = self._train_epoch(state, progress)
            if finished_epoch and state.epoch % options.eval_every_epochs == 0:
                eval_metrics, eval_step = self._evaluate_or_save(state), state.global_step
        progress.close()
        runtime = time.perf_counter() - start
        if eval_step != state.global_step:  # the final weights are always evaluated
            eval_metrics = self._evaluate_or_save(state)
        results = self._results(state, eval_metrics, runtime, state.samples_seen - samples_at_start)
        self._save_final(results)
        accelerator.end_training()
        return results

    def _progress_bar(self, state: TrainingState):
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps, initial=state.global_step, desc="train", unit="step",
            disable=not self.accelerator.is_local_main_process,
        )  # fmt: skip

    def _resume_state(self) -> TrainingState:
        if self.resume_path is None:
            return TrainingState(ema_decay=self.options.ema_decay)
        path = self.resume_path
        state = checkpointing.load_checkpoint(self.accelerator, path, self.scheduler, self.ema)
        logger.info("resumed from %s at step %d (epoch %d)", path, state.global_step, state.epoch)
        return state

    def _epoch_loader(self, state: TrainingState):
        """This epoch's loader: same order as an uninterrupted run, skipping batches already consumed."""
        loader = self.train_loader
        if state.batches_in_epoch:
            # Gradient accumulation counts micro-batches within the epoch (Accelerate resets it at epoch end).
            self.accelerator.step = state.batches_in_epoch % self.options.gradient_accumulation_steps
            loader = self.accelerator.skip_first_batches(self.train_loader, state.batches_in_epoch)
        # Accelerate's loader re-sets the sampler epoch from its own iteration counter on every pass, so the
        # epoch goes through the loader; the dataset's epoch seeds the per-sample augmentation.
        loader.set_epoch(state.epoch)
        self.sampler.set_epoch(state.epoch)
        self.train_set.set_epoch(state.epoch)
        return loader

    def _train_epoch(self, state: TrainingState, progress) -> bool:
        """Train until the epoch ends (True) or the step budget is spent (False)."""
        options, accelerator = self.options, self.accelerator
        self.model.train()
        for batch in self._epoch_loader(state):
            loss = self._train_micro_batch(batch)
            state.batches_in_epoch += 1
            # `len`: labels are a tensor (classification, segmentation) or a list of per-image dicts (detection)
            state.samples_seen += len(batch["labels"]) * accelerator.num_processes
            state.loss_sum += loss
            state.loss_count += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            if self.ema is not None:
                self.ema.update(accelerator.unwrap_model(self.model))
                state.ema_num_updates = self.ema.num_updates
            if state.global_step % options.logging_steps == 0:
                self._log_train(state, loss, progress)
            if options.save_steps and state.global_step % options.save_steps == 0:
                sync_buffers_from_main(accelerator, self.model)
                checkpointing.save_checkpoint(
                    accelerator, options.output_dir, state, self.run_record, self.scheduler, self.ema,
                    options.save_total_limit,
                )  # fmt: skip
            if state.global_step >= self.total_steps:
                return False
        state.epoch += 1
        state.batches_in_epoch = 0
        return True

    def _train_micro_batch(self, batch) -> float:
        """Forward, backward and (on accumulation boundaries) clip, optimizer and scheduler step."""
        options, accelerator = self.options, self.accelerator
        with accelerator.accumulate(self.model):
            loss = self._compute_loss(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and options.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), options.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _log_train(self, state: TrainingState, loss: float, progress) -> None:
        metrics = {
            "train/loss": loss,
            "train/lr": self.scheduler.get_last_lr()[-1],
            "train/epoch": state.epoch + state.batches_in_epoch / max(self.batches_per_epoch, 1),
        }
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{metrics['train/lr']:.2e}")
        self.accelerator.log(metrics, step=state.global_step)

    def _evaluate_or_save(self, state: TrainingState) -> dict[str, float]:
        """`_evaluate_all`; an evaluation that fails first saves the weights trained so far as the run's model
        (without results), then raises: a bad evaluation set never costs the training."""
        try:
            return self._evaluate_all(state)
        except Exception:
            # With several processes the save's collectives would wait for processes that did not fail.
            if self.accelerator.num_processes == 1:
                logger.error(
                    "evaluation failed at step %d; saving the trained model to %s first",
                    state.global_step,
                    self.options.output_dir,
                )
                self._save_final(None)
            raise

    def _evaluate_all(self, state: TrainingState) -> dict[str, float]:
        """Evaluate the online model and, if kept, the EMA model; the saved model's metrics come first."""
        sync_buffers_from_main(self.accelerator, self.model)
        online = self._evaluate(self.model)
        metrics = {f"eval_online_{k}": v for k, v in online.items()} if self.ema is not None else {}
        main = self._evaluate(self.ema.module) if self.ema is not None else online
        metrics.update({f"eval_{k}": v for k, v in main.items()})
        self.accelerator.log({k.replace("eval_", "eval/", 1): v for k, v in metrics.items()}, step=state.global_step)
        if self.accelerator.is_main_process:
            summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            epoch = state.epoch + state.batches_in_epoch / max(self.batches_per_epoch, 1)
            self.accelerator.print(f"epoch {epoch:.2f} (step {state.global_step}): {summary}")
        return metrics

    def _results(self, state: TrainingState, eval_metrics: dict, runtime: float, samples: int) -> dict[str, float]:
        return {
            **eval_metrics,
            "train_loss": state.loss_sum / max(state.loss_count, 1),
            "train_runtime": runtime,
            "train_samples_per_second": samples / runtime if runtime > 0 else 0.0,
            "epoch": state.epoch + state.batches_in_epoch / max(self.batches_per_epoch, 1),
            "global_step": state.global_step,
            "eval_samples": len(self.data.eval),
            "train_samples": self.data.num_train_samples,
        }

    def _save_final(self, results: dict | None) -> None:
        """save_pretrained (EMA weights when kept; online weights then go to online_model/) + processor + results
        (none after a failed evaluation)."""
        options, accelerator = self.options, self.accelerator
        output_dir = Path(options.output_dir)
        accelerator.wait_for_everyone()
        sync_buffers_from_main(accelerator, self.model)
        unwrapped = accelerator.unwrap_model(self.model)
        online_dir = output_dir / ONLINE_MODEL_DIR if self.ema is not None else output_dir
        state_dict = accelerator.get_state_dict(self.model)  # collective under FSDP/DeepSpeed: all processes
        unwrapped.save_pretrained(
            online_dir, is_main_process=accelerator.is_main_process, state_dict=state_dict,
            save_function=accelerator.save,
        )  # fmt: skip
        output_dir.mkdir(parents=True, exist_ok=True)
        if options.write_replica_checksums:
            checksum = parameter_checksum(unwrapped)
            rank = accelerator.process_index
            (output_dir / f"replica_checksum_{rank}.txt").write_text(checksum)
        if accelerator.is_main_process:
            if self.ema is not None:
                self.ema.module.save_pretrained(output_dir)
            self.image_processor.save_pretrained(output_dir)
            if results is not None:
                (output_dir / RESULTS_FILE).write_text(results_json(results))
                self._push_to_hub(output_dir, results)
        accelerator.wait_for_everyone()


def batches_per_process(samples: int, batch_size: int, num_processes: int, drop_last: bool) -> int:
    """Training batches each process gets per epoch, as Accelerate shards the loader's batches (with `drop_last`,
    incomplete batches and an incomplete last round over the processes are dropped)."""
    if not drop_last:
        return math.ceil(math.ceil(samples / batch_size) / num_processes)
    batches = samples // batch_size // num_processes
    if batches == 0:
        raise ValueError(
            f"the training split has {samples} images, fewer than one full batch of {batch_size} on each of "
            f"{num_processes} process(es); lower --per_device_train_batch_size"
        )
    return batches


def train(options) -> dict[str, float]:
    """Run training for resolved `TrainingOptions`; returns the metrics written to all_results.json."""
    return Trainer(options).run()
