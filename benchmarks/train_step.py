"""Where a stage-2 training step goes, on this machine: forward, backward and optimiser time per step, and
the profiler's self time per kind of op (issue 15: the stage-2 fit in at most 4 min).

A fitted run (``--run``, a run folder or checkpoint of ``SubjectFitting``) is loaded and trained for a few more
steps on batches of the data that ``--config`` describes (its cached teacher clips): the loss terms, the
backward and an Adam step over every parameter, as ``SubjectFitting.training_step`` does without
densification and logging. Then ``torch.profiler`` records ``--profile-steps`` more steps, and the self CPU
time of every op is summed by kind: the compiled compositor, the compiled mesh binding and residual MLP, projection
and binning, the compiled D-SSIM, matrix products, convolutions (the D-SSIM's torch reference) and the remaining
torch ops, with their count per step.

Run:  python benchmarks/train_step.py --run outputs/fit_subject/astronaut [--config experiments/fit_subject.yaml]
Writes benchmarks/results/<date>-train_step.{md,csv,json}. Run it alone: it times the CPU.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KINDS = (  # (row, op-name prefixes), first match wins; everything else is "other torch ops"
    ("compositing forward", ("vasa3d_composite::forward", "vasa3d_composite::render_forward")),
    ("compositing backward", ("vasa3d_composite::backward",)),
    ("mesh binding (frames_* and bind_* ops)", ("vasa3d_composite::bind_", "vasa3d_composite::frames_")),
    ("residual MLP (residual_forward/backward)", ("vasa3d_composite::residual_",)),
    ("D-SSIM (ssim_forward/backward)", ("vasa3d_composite::ssim_",)),
    ("projection and binning", ("vasa3d_composite::",)),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
    ("convolutions", ("aten::convolution", "aten::mkldnn_convolution", "aten::_convolution")),
)


def kind_of(name: str) -> str:
    for row, prefixes in KINDS:
        if name.startswith(prefixes):
            return row
    return "other torch ops"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a fitted SubjectFitting run folder or checkpoint")
    parser.add_argument("--config", default=str(ROOT / "experiments" / "fit_subject.yaml"),
                        help="the job config whose data the steps train on")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--top", type=int, default=8, help="rows for the costliest of the other torch ops")
    parser.add_argument("--name", default="train_step", help="the result files' name")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from vasa3d.cli import datamodule_from_config
    from vasa3d.errors import UserInputError, one_line
    from vasa3d.metrics import MetricResult
    from vasa3d.metrics.table import write_table
    from vasa3d.runs import resolve_checkpoint
    from vasa3d.systems import SubjectFitting

    try:
        checkpoint = resolve_checkpoint(args.run)
    except UserInputError as error:
        print(f"train_step: {one_line(str(error))}", file=sys.stderr)
        return 2
    system = SubjectFitting.load_from_checkpoint(checkpoint, map_location="cpu").train()
    datamodule = datamodule_from_config(args.config)
    datamodule.setup("fit")
    needed = 2 + args.steps + args.profile_steps
    batches = []
    while len(batches) < needed:  # as many passes over the training frames as it takes
        batches += list(datamodule.train_dataloader())[: needed - len(batches)]
    optimizer = torch.optim.Adam([p for p in system.parameters() if p.requires_grad], lr=1e-5)

    def step(batch) -> tuple[float, float, float]:
        start = time.perf_counter()
        losses, _ = system.compute_losses(batch)
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        backward = time.perf_counter()
        optimizer.step()
        return forward - start, backward - forward, time.perf_counter() - backward

    for batch in batches[:2]:
        step(batch)
    timed = [step(batch) for batch in batches[2:2 + args.steps]]
    mean = [1e3 * sum(t[i] for t in timed) / len(timed) for i in range(3)]

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[2 + args.steps:]:
            step(batch)
    per_kind: dict[str, list[float]] = {}
    others: list[tuple[float, float, str]] = []  # (ms per step, calls per step, op)
    for event in prof.key_averages():
        cell = per_kind.setdefault(kind_of(event.key), [0.0, 0.0])
        ms, calls = event.self_cpu_time_total / 1e3 / args.profile_steps, event.count / args.profile_steps
        cell[0] += ms
        cell[1] += calls
        if kind_of(event.key) == "other torch ops":
            others.append((ms, calls, event.key))
    profiled = sum(ms for ms, _ in per_kind.values())

    size = int(batches[0]["image"].shape[-1])
    uncounted = MetricResult.not_measured("timed without the profiler; op calls are counted in the profiled rows")
    rows = {label: {"ms_per_step": MetricResult(ms), "share": MetricResult(ms / sum(mean)), "ops_per_step": uncounted}
            for label, ms in (("step (forward + backward + optimiser)", sum(mean)),
                              ("forward (loss terms and renders)", mean[0]), ("backward", mean[1]),
                              ("optimiser", mean[2]))}
    for kind in [row for row, _ in KINDS] + ["other torch ops"]:
        ms, calls = per_kind.get(kind, (0.0, 0.0))
        rows[f"profiled: {kind}"] = {"ms_per_step": MetricResult(ms), "share": MetricResult(ms / profiled),
                                     "ops_per_step": MetricResult(calls)}
    for ms, calls, name in sorted(others, reverse=True)[:args.top]:
        rows[f"other: {name}"] = {"ms_per_step": MetricResult(ms), "share": MetricResult(ms / profiled),
                                  "ops_per_step": MetricResult(calls)}
    binding = binding_ms(system, batches[0])
    for backend in ("torch", "auto"):
        label = "compiled (frames_* and bind_* ops)" if backend == "auto" else "torch reference"
        rows[f"mesh binding per frame, {label}"] = {"ms_per_step": MetricResult(binding[backend]), "share": uncounted,
                                                    "ops_per_step": uncounted}
    if system.avatar.residual is not None:
        residual = residual_ms(system, batches[0])
        for backend, label in (("torch", "torch layers"), ("compiled", "compiled (residual_forward/backward)")):
            rows[f"residual MLP per step, {label}"] = {"ms_per_step": MetricResult(residual[backend]),
                                                       "share": uncounted, "ops_per_step": uncounted}
    ssim = dssim_ms(batches[0])
    for backend, label in (("torch", "torch reference (convolutions)"), ("auto", "compiled (ssim_forward/backward)")):
        rows[f"D-SSIM per step, {label}"] = {"ms_per_step": MetricResult(ssim[backend]), "share": uncounted,
                                            "ops_per_step": uncounted}
    notes = (f"Run {checkpoint} ({system.head.num_gaussians} Gaussians), batches of {batches[0]['image'].shape[0]} "
             f"frames at {size} px from {args.config}; {torch.get_num_threads()} threads. Timed: mean of "
             f"{args.steps} steps after 2 warm-up steps. Profiled: self CPU time per kind of op over "
             f"{args.profile_steps} more steps (the profiler adds its own overhead); share: of the timed step, or of the "
             "profiled total; ops_per_step: op calls per step, views and allocations included. other: the costliest of "
             "the other torch ops, by self time. mesh binding per frame: triangle_frames + bind_to_world (with "
             "anchors) of one posed frame, forward and backward, median of 20, each backend in turn (ms per frame, "
             "not per step). residual MLP per step: ResidualDeformer on the batch's conditions, forward and backward, "
             "torch layers against the compiled tail, median of 20, interleaved. D-SSIM per step: the loss on the "
             "batch's frames against a noisy copy, weighted by their masks, forward and backward, the torch "
             "reference against the compiled kernel, median of 20, interleaved.")
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], "benchmarks/train_step.py", *(argv or sys.argv[1:])])
    paths = write_table(rows, args.name, out_dir=args.out_dir, reference=None, command=command, notes=notes,
                        directions={"ms_per_step": -1, "share": 0, "ops_per_step": 0})
    print(Path(paths["md"]).read_text())
    return 0


def interleaved_ms(runs: dict, repeats: int = 20) -> dict[str, float]:
    """Median ms of each ``runs[name] = (prepare, timed)``, interleaved: ``timed(prepare())`` is timed, ``prepare()``
    (fresh leaf tensors) is not; one round of warm-up, then ``repeats`` rounds of every run in turn."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, (prepare, timed) in runs.items():
            state = prepare()
            start = time.perf_counter()
            timed(state)
            times[name].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}


def binding_ms(system, batch, repeats: int = 20) -> dict[str, float]:
    """ms of ``triangle_frames`` + ``bind_to_world`` (anchors too), forward and backward, on one posed frame of
    ``batch``, for the torch reference and the compiled path, interleaved (median of ``repeats``)."""
    from vasa3d.gaussians.binding import bind_to_world, triangle_frames

    head = system.avatar.head
    with torch.no_grad():
        posed = system.avatar.frame(system.batch_latent(batch)).posed[0]
    splats = head.splats

    def leaves():
        return [t.detach().clone().requires_grad_() for t in (posed, splats["means"], splats["quats"], splats["scales"])]

    def bind(backend):
        def timed(leaf):
            frames = triangle_frames(leaf[0], head.faces, backend=backend)
            out = bind_to_world(leaf[1], leaf[2], torch.exp(leaf[3]), head.binding, frames, anchors=True,
                                backend=backend)
            sum(o.sum() for o in out).backward()
        return leaves, timed

    return interleaved_ms({backend: bind(backend) for backend in ("torch", "auto")}, repeats)


def residual_ms(system, batch, repeats: int = 20) -> dict[str, float]:
    """ms of the residual MLP (``ResidualDeformer``) on ``batch``'s conditions, forward and backward: the torch
    layers and the compiled tail (``residual_forward``/``residual_backward``), interleaved (median of ``repeats``)."""
    avatar = system.avatar
    residual, head = avatar.residual, avatar.head
    cond = avatar.condition(system.batch_latent(batch)).detach()
    with torch.no_grad():
        canonical = head.world_gaussians(head.vertices())["means"]

    def mlp(compiled):
        def timed(_):
            per_gaussian = residual.per_gaussian(head.splats["features"], canonical)
            if compiled:
                out = residual.packed(cond, per_gaussian)
            else:
                out = residual.out(residual.body(residual.cond_in(cond)[:, None, :] + per_gaussian[None]))
            out.square().sum().backward()
        return (lambda: None), timed

    times = interleaved_ms({"torch": mlp(False), "compiled": mlp(True)}, repeats)
    system.zero_grad(set_to_none=True)
    return times


def dssim_ms(batch, repeats: int = 20) -> dict[str, float]:
    """ms of the D-SSIM loss on ``batch``'s frames against a noisy copy of them, weighted by their masks, forward and
    backward: the torch reference (depthwise convolutions) and the compiled kernel, interleaved (median of ``repeats``)."""
    from vasa3d.losses.rendering import dssim

    target, mask = batch["image"].float(), batch["mask"].float()
    noisy = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)

    def loss(backend):
        return (lambda: noisy.clone().requires_grad_()), (lambda render: dssim(render, target, mask,
                                                                                backend=backend).backward())

    return interleaved_ms({backend: loss(backend) for backend in ("torch", "auto")}, repeats)


if __name__ == "__main__":
    sys.exit(main())
