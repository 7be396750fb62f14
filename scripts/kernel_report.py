"""Static performance report of the CUDA DCNv3 and DCNv4 kernels, without a GPU.

For each kernel instantiation and target (sm_80, sm_90): registers and spill bytes from ``ptxas -v``, and from
the PTX the instructions per sampling point of the per-point loop (the innermost loop that computes a sampling
location, i.e. holds the ``floor`` conversions; nested channel loops count once, loops holding several points,
unrolled, are divided by the points they hold) and the 64-bit float<->int conversions in it.

    python scripts/kernel_report.py                      # this checkout's kernel_src
    python scripts/kernel_report.py --before <git-rev>   # plus the same figures for a committed version
    python scripts/kernel_report.py --markdown           # the README table (forward and backward hot variants)
    python scripts/kernel_report.py --atomics            # backward atomics: floats per 32-byte sector operation
    python scripts/kernel_report.py --counters           # DCNv3 vs DCNv4 (ours, official) emulator counters

Needs nvcc (and c++filt for readable names); ``--atomics`` needs only a host C++ compiler: it runs the backward under
the CUDA emulation (scripts/cuda_emu) and counts, per warp-wide atomic instruction, the distinct 32-byte sectors.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL = Path("dcnv3_cuda") / "dcnv3_kernels.cu"
# Every kernel source of the report (a revision without one is reported without it); DCNv4 names get a prefix.
KERNELS = (KERNEL, Path("dcnv3_cuda") / "dcnv4_kernels.cu")
ARCHS = (80, 90)
FLOOR = re.compile(r"\bcvt\.rmi\.\S+\s+%\w+,\s*(%\w+);")
WIDE_CONVERSION = re.compile(r"\bcvt(\.\w+)*\.(s64|u64)\.(f32|f64)\b|\bcvt(\.\w+)*\.(f32|f64)\.(s64|u64)\b")
LABEL = re.compile(r"^\s*(\$L__\w+):")
BRANCH = re.compile(r"\bbra(\.uni)?\s+(\$L__\w+);")


@dataclasses.dataclass
class KernelStats:
    name: str
    registers: int = 0
    spill_bytes: int = 0
    per_point: float = float("nan")
    wide_conversions: float = float("nan")


def _has_nvcc() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


def _nvcc() -> str:
    if not _has_nvcc():
        sys.exit("kernel_report: nvcc not found")
    return shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"


def _demangle(names: list[str]) -> list[str]:
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return [_short_name(n) for n in out]


def _short_name(name: str) -> str:
    """``void dcnv3::cuda::(anonymous namespace)::forward_kernel<float, 4, int, 3, true>(...)`` -> the template-id
    with short type names: ``forward_kernel<fp32, 4, int32, 3, true>``."""
    name = name.replace("dcnv3::cuda::(anonymous namespace)::", "").removeprefix("void ")
    name = name.replace("dcnv4::cuda::(anonymous namespace)::", "dcnv4 ")
    name = name[: name.index(">") + 1] if ">" in name else name
    for long, short in (("__nv_bfloat16", "bf16"), ("__half", "fp16"), ("double", "fp64"), ("float", "fp32")):
        name = name.replace(long, short)
    return re.sub(r"\blong\b", "int64", re.sub(r"\bint\b", "int32", name))


def _std_flag(source_dir: Path) -> str:
    # Versions before the C++17 cleanup used template lambdas (C++20).
    text = (source_dir / KERNEL).read_text()
    return "-std=c++20" if "[&]<typename" in text else "-std=c++17"


def _compile(source_dir: Path, arch: int, work: Path) -> tuple[str, str]:
    """(ptxas -v output, PTX text) of the kernels of every source in `KERNELS` for sm_<arch>."""
    logs, ptxs = [], []
    for kernel in (k for k in KERNELS if (source_dir / k).exists()):
        base = [_nvcc(), _std_flag(source_dir), "-O3", f"-I{source_dir}", f"-arch=sm_{arch}", str(source_dir / kernel)]
        out = work / f"{kernel.stem}_{arch}"
        obj = subprocess.run([*base, "-Xptxas", "-v", "-c", "-o", f"{out}.o"], capture_output=True, text=True)
        if obj.returncode != 0:
            sys.exit(f"kernel_report: nvcc failed for {kernel} sm_{arch}:\n{obj.stderr[-4000:]}")
        subprocess.run([*base, "-ptx", "-o", f"{out}.ptx"], check=True, capture_output=True)
        logs.append(obj.stderr)
        ptxs.append(Path(f"{out}.ptx").read_text())
    return "\n".join(logs), "\n".join(ptxs)


def _ptxas_stats(log: str) -> dict[str, tuple[int, int]]:
    stats = {}
    pattern = re.compile(
        r"Compiling entry function '(\S+)'.*?(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers",
        re.S,
    )
    for name, stores, loads, registers in pattern.findall(log):
        stats[name] = (int(registers), int(stores) + int(loads))
    return stats


def _entries(ptx: str) -> dict[str, list[str]]:
    """Mangled entry name -> the lines of its body."""
    bodies, name, lines, depth = {}, None, [], 0
    for line in ptx.splitlines():
        if name is None:
            match = re.search(r"\.entry\s+(\S+)\(", line)
            if match:
                name, lines, depth = match.group(1), [], 0
            continue
        depth += line.count("{") - line.count("}")
        lines.append(line)
        if depth == 0 and "}" in line:
            bodies[name] = lines
            name = None
    return bodies


# A move between two registers only renames (PTX registers are typed, the hardware's are not); not counted.
REGISTER_MOVE = re.compile(r"^mov\.\w+\s+%\w+,\s*%\w+;$")


def _is_instruction(line: str) -> bool:
    """Whether a PTX line is an instruction that costs something: inline-asm statements (``{ mov.b32 %f1,
    {0,%rs2};}``, the bfloat16 conversion) count, register-to-register moves and directives do not."""
    text = line.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if not text.endswith(";") or text.startswith((".", "//")):
        return False
    return not REGISTER_MOVE.match(text)


@dataclasses.dataclass
class _Block:
    label: str | None
    lines: list[str]
    successors: list[int]


def _basic_blocks(lines: list[str]) -> list[_Block]:
    """Split a PTX body into basic blocks (labels start one; branches, ret and exit end one) with their edges."""
    blocks, current = [], _Block(None, [], [])
    for line in lines:
        label = LABEL.match(line)
        if label:
            if current.lines or current.label:
                blocks.append(current)
            current = _Block(label.group(1), [], [])
            continue
        current.lines.append(line)
        if BRANCH.search(line) or re.search(r"\b(ret|exit);", line):
            blocks.append(current)
            current = _Block(None, [], [])
    blocks.append(current)
    index = {b.label: i for i, b in enumerate(blocks) if b.label}
    for i, block in enumerate(blocks):
        last = next((x.strip() for x in reversed(block.lines) if _is_instruction(x)), "")
        branch = BRANCH.search(last)
        if branch:
            block.successors.append(index[branch.group(2)])
        unconditional = (branch and not last.startswith("@")) or re.search(r"\b(ret|exit);", last)
        if not unconditional and i + 1 < len(blocks):
            block.successors.append(i + 1)
    return blocks


def _natural_loops(blocks: list[_Block]) -> list[set[int]]:
    """Blocks of each loop: a back edge latch -> header (header earlier in the text), plus every block that reaches
    the latch without passing through the header."""
    predecessors = {i: [] for i in range(len(blocks))}
    for i, block in enumerate(blocks):
        for j in block.successors:
            predecessors[j].append(i)
    loops = []
    for latch, block in enumerate(blocks):
        for header in block.successors:
            if header > latch:
                continue
            body, stack = {header, latch}, [latch]
            while stack:
                for pred in predecessors[stack.pop()]:
                    if pred not in body:
                        body.add(pred)
                        stack.append(pred)
            loops.append(body)
    return loops


def per_point_loop(lines: list[str]) -> tuple[float, float]:
    """(instructions per sampling point, 64-bit float<->int conversions per point) of the per-point loop: the
    smallest loop holding the floor conversions of a sampling location (a fully unrolled tap loop leaves the
    enclosing channel loop, which then holds every point once)."""
    blocks = _basic_blocks(lines)
    body_lines = [[line for line in b.lines if _is_instruction(line)] for b in blocks]
    sampling = [loop for loop in _natural_loops(blocks) if any(FLOOR.search(x) for i in loop for x in body_lines[i])]
    if not sampling:
        return float("nan"), float("nan")
    loop = min(sampling, key=lambda body: sum(len(body_lines[i]) for i in body))
    instructions = [x for i in loop for x in body_lines[i]]
    # floor(x) and floor(y) per point; the compiler may repeat a conversion (rematerialise it) near each use, so
    # count the distinct coordinates converted.
    points = len({m.group(1) for x in instructions if (m := FLOOR.search(x))}) / 2
    wide = sum(1 for x in instructions if WIDE_CONVERSION.search(x))
    return len(instructions) / points, wide / points


def report(source_dir: Path, archs: tuple[int, ...] = ARCHS) -> dict[int, dict[str, KernelStats]]:
    """{arch: {short kernel name: KernelStats}} for a kernel source tree."""
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            log, ptx = _compile(source_dir, arch, Path(tmp))
            ptxas = _ptxas_stats(log)
            bodies = _entries(ptx)
            mangled = sorted(set(ptxas) | set(bodies))
            stats = {}
            for raw, short in zip(mangled, _demangle(mangled), strict=True):
                registers, spills = ptxas.get(raw, (0, 0))
                per_point, wide = per_point_loop(bodies.get(raw, []))
                stats[short] = KernelStats(short, registers, spills, per_point, wide)
            result[arch] = stats
    return result


def _checkout(rev: str, work: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "kernel_src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")
    return work / "kernel_src"


# The variants the model runs: (kernel, dtype, vec, mask logits) for InternImage's 16-channel groups, aligned.
# Before the fused softmax the mask-logits variants did not exist (a separate softmax ran first).
HOT = [
    ("forward", "fp32", 4, False),
    ("forward", "bf16", 8, False),
    ("forward", "fp32", 4, True),
    ("forward", "bf16", 8, True),
    ("backward", "fp32", None, False),
    ("backward", "bf16", None, False),
    ("backward", "fp32", None, True),
    ("backward", "bf16", None, True),
]


def _pick(stats: dict[str, KernelStats], kind: str, dtype: str, vec: int | None, logits: bool, arch: int, new: bool):
    """The instantiation the launch code picks for InternImage (3x3 kernel, 16-channel groups, aligned, plain mask)
    on sm_<arch>; the backward's width is its atomics layout."""
    if logits and not new:
        return None
    if vec is None:  # backward: old code used the widest vector; new code VEC 1 below sm_90, 4 from sm_90
        vec = (4 if arch >= 90 else 1) if new else (4 if dtype == "fp32" else 8)
    for name, s in stats.items():
        if not name.startswith(f"{kind}_kernel<{dtype},"):
            continue
        args = [a.strip() for a in name[name.index("<") + 1 : name.rindex(">")].split(",")]
        args = args[2:] if kind == "backward" else args[1:]  # drop the dtype (and the accumulator type)
        if int(args[0]) != vec:
            continue
        if new and args[1:] != ["int32", "3", "true" if logits else "false"]:
            continue
        return s
    return None


def markdown(before: dict | None, after: dict) -> str:
    head = "| kernel (16-channel groups) | arch | registers | spill bytes | instructions / point | 64-bit cvt / point |"
    rows = [head, "|---|---|---|---|---|---|"]
    for kind, dtype, vec, logits in HOT:
        for arch in ARCHS:
            cells = []
            for version, data in (("before", before), ("after", after)):
                if data is None:
                    continue
                s = _pick(data[arch], kind, dtype, vec, logits, arch, new=version == "after")
                cells.append((version, s))
            label = f"{kind} {dtype}" + (" (mask logits)" if logits else "")

            def col(attr, fmt="{:.0f}", cells=cells):
                values = [fmt.format(getattr(s, attr)) if s else "-" for _, s in cells]
                return " → ".join(values)

            rows.append(
                f"| {label} | sm_{arch} | {col('registers')} | {col('spill_bytes')} | {col('per_point', '{:.1f}')} "
                f"| {col('wide_conversions', '{:.1f}')} |"
            )
    return "\n".join(rows)


def atomics_report(kernel_src: Path) -> list[str]:
    """Floats per 32-byte sector operation of the backward's grad_value atomics, InternImage-T stage shapes (batch
    2), for the sm_80 (scalar atomics, one thread per channel) and sm_90 (float4 atomics) builds."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emu"))
    from emulator import CudaEmulator, build_emulator

    lines = [
        "| dtype | build | T stage (C, G, size) | floats per sector operation | atomic instructions |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in (800, 900):
            emu = CudaEmulator(build_emulator(kernel_src, Path(tmp), arch))
            emu.configure(sm_count=132, compute_capability=(arch // 100, 0))
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                for channels, groups, size in ((64, 4, 56), (128, 8, 28), (256, 16, 14), (512, 32, 7)):
                    params = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                                  dilation_w=1, group=groups, group_channels=channels // groups, offset_scale=1.0,
                                  remove_center=False)  # fmt: skip
                    gen = torch.Generator().manual_seed(0)
                    value = torch.randn(2, size, size, channels, generator=gen).to(dtype)
                    offset = torch.randn(2, size, size, groups * 18, generator=gen).to(dtype)
                    logits = torch.randn(2, size, size, groups * 9, generator=gen).to(dtype)
                    emu.reset_atomic_stats()
                    emu.backward(torch.randn_like(value), value, offset, logits, params, mask_logits=True)
                    stats = emu.atomic_stats()
                    lines.append(
                        f"| {str(dtype).removeprefix('torch.')} | sm_{arch // 10} | ({channels}, {groups}, {size}) "
                        f"| {stats['floats'] / stats['sector_ops']:.2f} | {stats['instructions']:.0f} |"
                    )
    return lines


# InternImage-T / FlashInternImage-T stages (channels, groups, size), 16-channel groups, 3x3 kernel, batch 1.
T_STAGES = ((64, 4, 56), (128, 8, 28), (256, 16, 14), (512, 32, 7))
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16"}


def _stage_inputs(channels: int, groups: int, size: int, dtype=None):
    """(params, value, offset, mask, offset_mask, grad) of one stage (float32 unless `dtype`), DCNv4 layout with
    padding columns."""
    import torch

    params = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                  group=groups, group_channels=channels // groups, offset_scale=1.0, remove_center=False)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(1, size, size, channels, generator=gen)
    offset = torch.randn(1, size, size, groups, 18, generator=gen)
    mask = torch.rand(1, size, size, groups, 9, generator=gen)
    columns = -(-groups * 27 // 8) * 8
    fused = torch.cat([offset, mask], dim=-1).flatten(-2)
    offset_mask = torch.cat([fused, torch.zeros(1, size, size, columns - fused.shape[-1])], dim=-1).contiguous()
    grad = torch.randn(1, size, size, channels, generator=gen)
    tensors = (value, offset.flatten(-2), mask.flatten(-2), offset_mask, grad)
    return (params, *(t.to(dtype or torch.float32).contiguous() for t in tensors))


def _counting_ops(kernel_src: Path, official_source: Path | None, build_dir: Path) -> dict:
    """The counting builds (sm_80, a 108-SM device as an A100's) of our DCNv3 and DCNv4 kernels and, with a DCNv4
    source, the official DCNv4 kernel."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emu"))
    from emulator import CudaEmulator, Dcnv4Emulator, build_dcnv4_emulator, build_emulator

    ops = {
        "DCNv3 ours": CudaEmulator(build_emulator(kernel_src, build_dir, 800, counting=True)),
        "DCNv4 ours": Dcnv4Emulator(build_dcnv4_emulator(kernel_src, build_dir, 800, counting=True)),
    }
    for emu in ops.values():
        emu.configure(sm_count=108, compute_capability=(8, 0))
    if official_source is not None:
        sys.path.insert(0, str(REPO / "tools"))
        import dcnv4_official

        ops["DCNv4 official"] = dcnv4_official.OfficialDcnv4(official_source, build_dir, sm_count=108, counting=True)
    return ops


def _run_pass(name: str, op, backward: bool, channels: int, groups: int, size: int, dtype) -> tuple[int, str | None]:
    """Run one kernel's pass on a stage; (lanes per (query, group), the static report's name of the instantiation
    the launch chose, None for the official kernel)."""
    params, value, offset, mask, offset_mask, grad = _stage_inputs(channels, groups, size, dtype)
    if name == "DCNv4 official":
        import dcnv4_official

        spec = dcnv4_official.find_spec_bwd if backward else dcnv4_official.findspec
        d_stride = spec(op.tables, 1, size, size, groups, channels // groups)[0]
        arguments = (value, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, groups, channels // groups, 1.0, 64)
        if backward:
            op.backward(*arguments, grad, False)
        else:
            op.forward(*arguments, False)
        return channels // groups // d_stride, None
    inputs = (value, offset, mask) if name == "DCNv3 ours" else (value, offset_mask)
    _, launch = op.backward(grad, *inputs, params) if backward else op.forward(*inputs, params)
    return launch.lanes, _static_name(name, backward, dtype, launch)


def _static_name(name: str, backward: bool, dtype, launch) -> str:
    """`report`'s short name of the instantiation a launch of our kernels chose (3x3, plain mask for DCNv3; the
    backward's second type is its float32 gradient accumulator)."""
    types = SHORT_DTYPE[str(dtype).removeprefix("torch.")] + (", fp32" if backward else "")
    index = "int64" if launch.wide_index else "int32"
    template = f"{'backward' if backward else 'forward'}_kernel<{types}, {launch.vec}, {index}, 3"
    return f"{template}, false>" if name == "DCNv3 ours" else f"dcnv4 {template}>"


# Load sectors split by what is read: the sampled values, the sampling offsets and weights (DCNv3's offset and mask
# tensors, DCNv4's fused offset_mask), the output gradient.
LOAD_GROUPS = (("value",), ("offset", "mask", "offset_mask"), ("grad_output",))


def _counter_row(name, backward, dtype, stage, lanes, op, points, static) -> str:
    from emulator import total_memory_stats  # on sys.path from _counting_ops

    by_buffer, atomics = op.memory_stats(), op.atomic_stats()
    memory = total_memory_stats(by_buffer)
    split = [sum(by_buffer[b]["load_sectors"] for b in group if b in by_buffer) / points for group in LOAD_GROUPS]
    instructions = memory["load_instructions"] + memory["store_instructions"] + atomics["instructions"]
    cells = [memory["store_sectors"], atomics["sector_ops"], memory["load_instructions"],
             memory["store_instructions"], atomics["instructions"], instructions]  # fmt: skip
    loads = f"{memory['load_sectors'] / points:.2f} = " + " + ".join(f"{x:.2f}" for x in split[: 3 if backward else 2])
    per_point = " | ".join([loads, *(f"{c / points:.2f}" for c in cells)])
    ptx = f"{static.per_point:.1f} / {static.per_point * lanes / 32:.2f}" if static else "-"
    pass_name = "backward" if backward else "forward"
    dtype_name = str(dtype).removeprefix("torch.")
    return f"| {name} | {pass_name} | {dtype_name} | {stage} | {lanes} | {per_point} | {ptx} |"


def counters_report(kernel_src: Path, official_source: Path | None, dtypes=None, stages=T_STAGES) -> list[str]:
    """Emulator counters per sampling point (query * group * point) at InternImage-T / FlashInternImage-T stage
    shapes, batch 1, sm_80 launch choices: our DCNv3 and DCNv4 kernels and, with a DCNv4 source, the official
    DCNv4 kernel (float32 only; its findspec launch shapes), forward and backward.

    Columns per point: lanes per (query, group); 32-byte sectors of global loads (total = value + offsets and
    weights [+ grad_output]) and of plain global stores (distinct sectors per warp-wide instruction, summed: the L1
    sector requests, a sector requested by two instructions counting twice; shared memory not counted); sector
    operations of the atomics; warp-wide load / store / atomic instructions and their sum (dynamic, from the counting
    build); with nvcc, the static PTX instructions of the per-point loop of the chosen instantiation per thread and,
    times lanes / 32, per point as warp instructions (an estimate: it assumes the loop runs once per point)."""
    import torch

    dtypes = dtypes or (torch.float32, torch.float16)
    static = report(kernel_src, archs=(80,))[80] if _has_nvcc() else {}
    lines = [
        "| kernel | pass | dtype | T stage (C, G, size) | lanes | load sectors = value + offset/mask [+ grad_out] "
        "| store sectors | atomic sector ops "
        "| load instr | store instr | atomic instr | memory instr | static PTX / point: thread / warp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ops = _counting_ops(kernel_src, official_source, Path(tmp))
        for channels, groups, size in stages:
            for backward in (False, True):
                for dtype in dtypes:
                    for name, op in ops.items():
                        if name == "DCNv4 official" and dtype != torch.float32:
                            continue  # the official harness wires float32 only
                        op.reset_atomic_stats()
                        lanes, static_name = _run_pass(name, op, backward, channels, groups, size, dtype)
                        points = size * size * groups * 9
                        stage = f"({channels}, {groups}, {size})"
                        row = _counter_row(name, backward, dtype, stage, lanes, op, points, static.get(static_name))
                        lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "kernel_src", help="kernel source tree")
    parser.add_argument("--before", default=None, help="git revision to compare with")
    parser.add_argument("--markdown", action="store_true", help="print the before/after table of the hot variants")
    parser.add_argument("--atomics", action="store_true", help="count the backward's atomics under the emulation")
    parser.add_argument(
        "--counters", action="store_true", help="DCNv3 vs DCNv4 (ours, official) memory counters per point"
    )
    parser.add_argument("--dcnv4-source", type=Path, default=None, help="DCNv4 checkout / mirror for --counters")
    args = parser.parse_args(argv)
    if args.counters:
        sys.path.insert(0, str(REPO / "tools"))
        import dcnv4_official

        print("\n".join(counters_report(args.src, args.dcnv4_source or dcnv4_official.find_source())))
        return 0
    if args.atomics:
        print("\n".join(atomics_report(args.src)))
        return 0
    after = report(args.src)
    before = None
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            before = report(_checkout(args.before, Path(tmp)))
    if args.markdown:
        print(markdown(before, after))
        return 0
    for label, data in (("before", before), ("after", after)):
        if data is None:
            continue
        print(f"== {label}")
        for arch in ARCHS:
            for name, s in sorted(data[arch].items()):
                print(
                    f"sm_{arch} {name:48s} regs {s.registers:3d} spill {s.spill_bytes:3d} B  "
                    f"{s.per_point:6.1f} instr/point  {s.wide_conversions:.1f} cvt64/point"
                )
    spilling = [f"sm_{a} {n}" for a in ARCHS for n, s in after[a].items() if s.spill_bytes]
    if spilling:
        print("spills: " + ", ".join(spilling))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
