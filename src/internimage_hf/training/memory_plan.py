"""Per-device peak memory of a training step, predicted before launching it.

The prediction adds up

* model states, from parameter counts taken on the meta device (no weights are allocated): weights, gradients,
  AdamW's two fp32 moments, fp32 master weights where the engine keeps low-precision weights, each divided by the
  number of devices as far as the sharding strategy shards it;
* activations, measured on CPU at small scale: one forward of the model with one block per stage at two small
  image sizes, recording the bytes of every tensor autograd saves for backward (`saved_tensors_hooks`), per block
  and for the rest of the model. Convolutional activations grow linearly with the pixel count and the batch, so
  a line through the two sizes extrapolates to any image size and batch; blocks are multiplied by the depths;
* the backward pass, simulated block by block in reverse: a block's gradients appear while the activations of all
  earlier blocks are still held. With activation checkpointing only each block's input is held, and the block
  being recomputed holds its full activations once more.

What it does not know about: allocator fragmentation and caching (CUDA's caching allocator typically adds 5-15%),
cuDNN/cuBLAS workspaces, NCCL buffers, the CUDA context (~0.5 GiB) and the data loader. Under mixed precision the
CPU calibration follows CUDA autocast's choice of float32 ops (LayerNorm, softmax, losses), which CPU autocast would
otherwise run in 16 bits; the GPU run's DCNv3 op must save what this package's op saves (input, offset, mask).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models.internimage.configuration_internimage import InternImageConfig

PRECISIONS = ("fp32", "bf16", "fp16")
SHARDINGS = ("ddp", "fsdp", "zero1", "zero2", "zero3")
GIB = 1024**3
# Image sizes of the two calibration forwards (multiples of 32 so every stage has whole feature maps).
CALIBRATION_SIZES = (64, 96)


@dataclass
class ParameterCounts:
    """Parameter counts of a model: total, per block (in forward order) and the largest block."""

    total: int
    blocks: list[int]  # one entry per InternImageLayer, stage by stage
    rest: int  # stem, downsamples, norms, head: everything outside the blocks

    @property
    def largest_block(self) -> int:
        return max(self.blocks) if self.blocks else 0


def count_parameters(config: InternImageConfig) -> ParameterCounts:
    """Counts parameters of the classification model on the meta device (nothing is allocated)."""
    from ..models.internimage.modeling_internimage import InternImageForImageClassification, InternImageLayer

    with torch.device("meta"):
        model = InternImageForImageClassification(config)
    blocks = [
        sum(p.numel() for p in module.parameters())
        for module in model.modules()
        if isinstance(module, InternImageLayer)
    ]
    total = sum(p.numel() for p in model.parameters())
    return ParameterCounts(total=total, blocks=blocks, rest=total - sum(blocks))


@dataclass
class ActivationProfile:
    """Saved-for-backward bytes per image as a line in the pixel count: ``bytes = intercept + slope * pixels``.

    ``block`` holds one line per stage (one block of that stage), ``post_norm`` one for the stage-3 post-norms of
    the H/G models and ``rest`` one for everything else (stem, downsamples, stage norms, head, loss).
    """

    block: list[tuple[float, float]]
    post_norm: tuple[float, float]
    rest: tuple[float, float]
    block_input: list[tuple[float, float]]  # bytes of a block's input (kept by activation checkpointing)

    @staticmethod
    def _at(line: tuple[float, float], pixels: int) -> float:
        return max(line[0] + line[1] * pixels, 0.0)

    def block_bytes(self, stage: int, pixels: int) -> float:
        return self._at(self.block[stage], pixels)

    def block_input_bytes(self, stage: int, pixels: int) -> float:
        return self._at(self.block_input[stage], pixels)

    def post_norm_bytes(self, pixels: int) -> float:
        return self._at(self.post_norm, pixels)

    def rest_bytes(self, pixels: int) -> float:
        return self._at(self.rest, pixels)


def _calibration_config(config: InternImageConfig) -> InternImageConfig:
    """The same widths and block variant with one block per stage (and one stage-3 post-norm where there are any)."""
    post_norm_ids = (0,) if config.level2_post_norm and config.level2_post_norm_block_ids else ()
    return InternImageConfig(
        **{
            **config.to_dict(),
            "depths": [1] * len(config.depths),
            "level2_post_norm_block_ids": post_norm_ids,
            # Dropout and stochastic depth change what is saved only by masks; keep the measurement deterministic.
            "drop_path_rate": 0.0,
            "with_cp": False,
        }
    )


_VIEW_OR_CAST_NODES = {
    "ToCopyBackward0", "TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0",
    "ReshapeAliasBackward0", "UnsqueezeBackward0", "ExpandBackward0", "AliasBackward0",
}  # fmt: skip


class _SavedTensorRecorder:
    """Attributes the bytes of tensors saved for backward to the innermost block / post-norm running."""

    def __init__(self, model: nn.Module) -> None:
        self.owner_stack = ["rest"]
        self.bytes: dict[str, int] = {}
        self.block_inputs: dict[str, int] = {}
        self.seen_storages: set[int] = set()
        self.parameter_ids = {id(p) for p in model.parameters()}
        self.handles = []
        for stage_index, stage in enumerate(model.internimage.encoder.stages):
            for module in stage.layers:
                self._track(module, f"block{stage_index}")
            for module in getattr(stage, "post_norms", []):
                self._track(module, "post_norm")

    def _track(self, module: nn.Module, name: str) -> None:
        def enter(_module, args):
            self.owner_stack.append(name)
            if name.startswith("block"):
                self.block_inputs[name] = args[0].numel() * args[0].element_size()

        def leave(_module, _args, _output):
            self.owner_stack.pop()

        self.handles.append(module.register_forward_pre_hook(enter))
        self.handles.append(module.register_forward_hook(leave))

    def _is_weight_view(self, tensor: torch.Tensor) -> bool:
        # A weight, a view of it (`linear` saves `weight.t()`) or autocast's low-precision copy of it: model state
        # (counted with the weights), not an activation. Follows single-input view/cast nodes down to the leaf.
        node = tensor.grad_fn
        for _ in range(4):
            if node is None:
                return False
            if type(node).__name__ == "AccumulateGrad":
                return True
            if type(node).__name__ not in _VIEW_OR_CAST_NODES:
                return False
            node = node.next_functions[0][0]
        return False

    def pack(self, tensor: torch.Tensor):
        if id(tensor) in self.parameter_ids or self._is_weight_view(tensor):
            return tensor
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen_storages:
            self.seen_storages.add(key)
            owner = self.owner_stack[-1]
            self.bytes[owner] = self.bytes.get(owner, 0) + storage.nbytes()
        return tensor

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _saved_bytes(
    model: nn.Module, image_size: int, precision: str, autocast_policy: str = "cuda"
) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes saved for backward by one forward of one image, per owner (block<i>, post_norm, rest)."""
    recorder = _SavedTensorRecorder(model)
    pixel_values = torch.randn(1, model.config.num_channels, image_size, image_size)
    labels = torch.zeros(1, dtype=torch.long)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    try:
        with torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda tensor: tensor):
            policy = _CudaAutocastPolicy() if dtype is not None and autocast_policy == "cuda" else nullcontext()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None), policy:
                loss = model(pixel_values=pixel_values, labels=labels).loss
        del loss
    finally:
        recorder.close()
    return recorder.bytes, recorder.block_inputs


AUTOCAST_POLICIES = ("cuda", "cpu")


class _CudaAutocastPolicy(TorchFunctionMode):
    """Runs the ops that CUDA autocast keeps in float32 (normalisations, softmax, losses) in float32 on CPU.

    CPU autocast lets LayerNorm and softmax return bfloat16 for bfloat16 inputs, CUDA autocast returns float32:
    without this the CPU calibration would under-count what a GPU saves for backward.
    """

    FLOAT32_FUNCTIONS = {
        torch.nn.functional.layer_norm, torch.nn.functional.group_norm, torch.nn.functional.softmax,
        torch.nn.functional.log_softmax, torch.nn.functional.cross_entropy, torch.softmax, torch.log_softmax,
        torch.Tensor.softmax, torch.Tensor.log_softmax,
    }  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FLOAT32_FUNCTIONS:

            def upcast(value):
                is_low = isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16)
                return value.float() if is_low else value

            args = tuple(upcast(value) for value in args)
            kwargs = {key: upcast(value) for key, value in kwargs.items()}
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _line(x0: int, y0: float, x1: int, y1: float) -> tuple[float, float]:
    slope = (y1 - y0) / (x1 - x0)
    return (y0 - slope * x0, slope)


def default_autocast_policy(sharding: str) -> str:
    """DDP and FSDP run under torch autocast (CUDA's float32 op list); DeepSpeed casts the whole model to 16 bits
    instead, so norms and softmax also return 16 bits there, as they do under CPU autocast."""
    return "cpu" if sharding.startswith("zero") else "cuda"


def measure_activation_profile(
    config: InternImageConfig, precision: str = "bf16", autocast_policy: str = "cuda"
) -> ActivationProfile:
    """Runs two small CPU forwards of a one-block-per-stage copy of `config` and fits the per-image bytes.

    `autocast_policy="cuda"` (for planning GPU runs) keeps in float32 what CUDA autocast keeps in float32;
    `"cpu"` measures CPU autocast as it is (for checking the plan against CPU runs).
    """
    from ..models.internimage.modeling_internimage import InternImageForImageClassification

    _check_choice("precision", precision, PRECISIONS)
    _check_choice("autocast_policy", autocast_policy, AUTOCAST_POLICIES)
    torch.manual_seed(0)
    model = InternImageForImageClassification(_calibration_config(config)).train()
    stages = len(config.depths)
    samples = []
    for size in CALIBRATION_SIZES:
        samples.append((size * size, *_saved_bytes(model, size, precision, autocast_policy)))
    (p0, saved0, inputs0), (p1, saved1, inputs1) = samples

    def fit(owner: str, table0: dict, table1: dict) -> tuple[float, float]:
        return _line(p0, table0.get(owner, 0), p1, table1.get(owner, 0))

    return ActivationProfile(
        block=[fit(f"block{i}", saved0, saved1) for i in range(stages)],
        post_norm=fit("post_norm", saved0, saved1),
        rest=fit("rest", saved0, saved1),
        block_input=[fit(f"block{i}", inputs0, inputs1) for i in range(stages)],
    )


@dataclass
class MemoryPlan:
    """Predicted per-device bytes of a training step; `peak` is what must fit on the device."""

    parameters: int
    weights: float
    gradients: float
    optimizer_states: float
    gathered_weights: float  # weights unsharded / cast for the forward (FSDP/ZeRO-3 units, autocast copies)
    activations: float  # held at the end of the forward
    backward_peak: float  # activations + gradients + transients, maximum over the backward pass
    optimizer_step_peak: float
    peak: float

    def gib(self) -> dict[str, float]:
        return {
            field.name: getattr(self, field.name) / GIB
            for field in dataclasses.fields(self)
            if field.name != "parameters"
        }

    def fits(self, device_gib: float) -> bool:
        return self.peak <= device_gib * GIB


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not supported; choose one of {', '.join(choices)}")


@dataclass
class _StateBytes:
    """Bytes per parameter of the model states one device holds."""

    weights: float
    gradients: float
    optimizer: float  # AdamW moments plus fp32 master weights where the weights are low precision
    gathered: float  # extra weights materialised during forward/backward, per parameter of the gathered set
    sharded_weights: bool  # whether weights outside the running unit are sharded (FSDP, ZeRO-3)


def _state_bytes(precision: str, sharding: str, devices: int) -> _StateBytes:
    low = precision != "fp32"
    if sharding == "ddp":
        # Accelerate's mixed precision is autocast on fp32 weights: weights, gradients and AdamW stay fp32, and
        # autocast caches a 16-bit copy of each weight for the forward. DDP's gradient buckets copy every gradient.
        buckets = 4 if devices > 1 else 0  # a single process is not wrapped in DDP
        return _StateBytes(4, 4 + buckets, 8, gathered=2 if low else 0, sharded_weights=False)
    if sharding == "fsdp":
        # FSDP2: fp32 sharded weights/gradients/moments; a unit's weights are all-gathered (in bf16/fp16 under
        # mixed precision) for its forward and backward, and its full gradient exists until the reduce-scatter.
        return _StateBytes(
            weights=4 / devices, gradients=4 / devices, optimizer=8 / devices,
            gathered=2 if low else 4, sharded_weights=True,
        )  # fmt: skip
    # DeepSpeed ZeRO: low-precision weights and gradients on the device, fp32 master weights (+ an fp32 gradient
    # partition for bf16) with the moments, all sharded.
    weight = 2 if low else 4
    master = (4 + (4 if precision == "bf16" else 0)) if low else 0
    if sharding == "zero1":
        return _StateBytes(weight, weight, (8 + master) / devices, 0, False)
    if sharding == "zero2":
        return _StateBytes(weight, weight / devices, (8 + master) / devices, 0, False)
    return _StateBytes(weight / devices, weight / devices, (8 + master) / devices, weight, True)


def plan_memory(
    config: InternImageConfig,
    image_size: int,
    batch_size: int,
    precision: str = "bf16",
    sharding: str = "ddp",
    gradient_checkpointing: bool = False,
    num_devices: int = 1,
    profile: ActivationProfile | None = None,
    foreach_optimizer: bool = True,
) -> MemoryPlan:
    """Predicts the per-device peak memory of one training step (AdamW, classification head).

    `profile` is measured with `measure_activation_profile(config, precision)` when not given.
    `foreach_optimizer` (the default on GPUs) adds AdamW's full-size temporary of the multi-tensor update.
    Not modelled: allocator fragmentation, CUDA context, library workspaces, DeepSpeed's communication buckets.
    """
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("sharding", sharding, SHARDINGS)
    if num_devices < 1 or batch_size < 1 or image_size < 32:
        raise ValueError("num_devices and batch_size must be >= 1 and image_size >= 32")
    counts = count_parameters(config)
    profile = profile or measure_activation_profile(config, precision, default_autocast_policy(sharding))
    states = _state_bytes(precision, sharding, num_devices)
    pixels = image_size * image_size
    total = counts.total

    weights = states.weights * total
    optimizer = states.optimizer * total
    if states.sharded_weights:
        # The root unit (everything outside the blocks) stays gathered; blocks are gathered one at a time, with
        # the next one prefetched.
        gathered = states.gathered * (counts.rest + 2 * counts.largest_block)
    else:
        gathered = states.gathered * total

    # Activations per block in forward order (per image), then the rest of the model.
    block_acts, block_inputs, block_params = [], [], []
    index = 0
    post_norm_ids = set(config.level2_post_norm_block_ids or ()) if config.level2_post_norm else set()
    for stage, depth in enumerate(config.depths):
        for block_id in range(depth):
            extra = profile.post_norm_bytes(pixels) if stage == 2 and block_id in post_norm_ids else 0.0
            block_acts.append((profile.block_bytes(stage, pixels) + extra) * batch_size)
            block_inputs.append(profile.block_input_bytes(stage, pixels) * batch_size)
            block_params.append(counts.blocks[index])
            index += 1
    rest_acts = profile.rest_bytes(pixels) * batch_size
    held = block_inputs if gradient_checkpointing else block_acts
    activations = rest_acts + sum(held)

    # Backward, last block first: gradients of the blocks done so far plus the rest's (computed first) exist
    # while the activations of the running block and of the blocks not yet done are held. Gradients of a block's
    # intermediates are freed as its backward proceeds, so they add little on top (checked against CPU peaks).
    grad_per_param = states.gradients
    shards_gradients = sharding in ("fsdp", "zero2", "zero3")
    full_grad = (2 if precision != "fp32" else 4) if shards_gradients else 0
    grads_done = grad_per_param * counts.rest
    backward_peak = 0.0
    for position in reversed(range(len(block_acts))):
        still_held = rest_acts + sum(held[:position])
        # Checkpointing recomputes the running block's activations; without it they are the ones still held.
        running = block_acts[position]
        # Sharded engines materialise the running unit's full gradient before reducing it.
        unit_grad = full_grad * block_params[position]
        grads_done += grad_per_param * block_params[position]
        backward_peak = max(backward_peak, still_held + running + unit_grad + grads_done)

    gradients = grad_per_param * total
    largest_local = max(counts.largest_block / (num_devices if states.sharded_weights else 1), 1)
    step_temporary = (4 * total / (num_devices if sharding != "ddp" else 1)) if foreach_optimizer else 4 * largest_local
    optimizer_step_peak = weights + gradients + optimizer + step_temporary
    forward_backward = weights + optimizer + gathered + backward_peak
    peak = max(forward_backward, optimizer_step_peak, weights + optimizer + gathered + activations)
    return MemoryPlan(
        parameters=total,
        weights=weights,
        gradients=gradients,
        optimizer_states=optimizer,
        gathered_weights=gathered,
        activations=activations,
        backward_peak=backward_peak,
        optimizer_step_peak=optimizer_step_peak,
        peak=peak,
    )
