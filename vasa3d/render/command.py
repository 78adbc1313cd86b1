"""``vasa3d render``: a free-viewpoint talking video (mp4 with the audio) from an avatar and speech."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

USAGE = """examples:
  vasa3d render --avatar outputs/fit_subject/checkpoints/last.ckpt \\
                --motion outputs/audio2motion/checkpoints/last.ckpt --audio speech.wav --camera orbit --out talk.mp4
  vasa3d render --avatar outputs/fit_subject/checkpoints/last.ckpt --audio speech.wav --out talk.mp4
                                            # the motion model shipped with vasa3d (printed at the start)
  vasa3d render ... --camera path.json      # keyframes: [{"t": 0, "yaw": -20}, {"t": 2, "yaw": 20, "pitch": 5}]
  vasa3d render ... --online                # generate window by window as the audio arrives; prints latency/FPS
  vasa3d render --avatar A.ckpt --latents motion.npz --audio speech.wav --out talk.mp4   # given latents
"""


def render_command(argv: Sequence[str]) -> int:
    """Render a talking video; see ``vasa3d render --help``."""
    parser = argparse.ArgumentParser(prog="vasa3d render", description=__doc__, epilog=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", required=True, type=Path, help="SubjectFitting checkpoint (stage 2)")
    parser.add_argument("--audio", type=Path, help="speech: wav, flac, ogg, mp3 or a video's audio track")
    parser.add_argument("--motion", type=Path, help="Audio2Motion checkpoint that turns the speech into motion "
                        "(default: the model shipped with vasa3d)")
    parser.add_argument("--no-vad", action="store_true", help="do not close the mouth where voice activity "
                        "detection (silero-vad) finds no speech")
    parser.add_argument("--latents", type=Path, help="a MotionLatent .npz to render instead of generating motion")
    parser.add_argument("--camera", default="orbit", help="static | orbit | keyframe .json (default: orbit)")
    parser.add_argument("--out", required=True, type=Path, help="the .mp4 to write")
    parser.add_argument("--size", type=int, help="output side in px (default: the avatar's training size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the motion sampler")
    parser.add_argument("--cfg-audio", type=float, help="audio guidance scale (default: the model's)")
    parser.add_argument("--cfg-control", type=float, help="control guidance scale (default: the model's)")
    parser.add_argument("--energy-jaw", type=float, metavar="W", help="weight of the energy baseline's jaw blended "
                        "into the model's, in [0, 1] (default: the model's energy_jaw, 0.5; 0: the model alone)")
    parser.add_argument("--online", action="store_true", help="stream: audio in chunks, motion window by window")
    parser.add_argument("--chunk-ms", type=float, default=200.0, help="audio chunk length in online mode")
    parser.add_argument("--window", type=int, help="frames of motion generated at a time (default: the model's "
                        "training window); shorter windows start sooner online")
    parser.add_argument("--profile", action="store_true",
                        help="print ms per frame of each stage (deformation, projection, binning, compositing, "
                        "motion, video encoding)")
    args = parser.parse_args(list(argv))
    if args.latents is None and args.audio is None:
        parser.error("give --audio (speech-driven, with --motion or the shipped model), or --latents "
                     "(with optional --audio)")
    if args.energy_jaw is not None and not 0.0 <= args.energy_jaw <= 1.0:
        parser.error(f"--energy-jaw {args.energy_jaw}: give a weight in [0, 1]")
    if args.size is not None and (args.size < 16 or args.size % 2):
        parser.error(f"--size {args.size}: use an even size of at least 16 px")

    from vasa3d.audio.io import load_audio, stream_audio
    from vasa3d.motion.latent import MotionLatent
    from vasa3d.render.talking import TalkingHead
    from vasa3d.render.video import BackgroundWriter, Mp4Writer

    motion_path = None
    if args.latents is None:
        from vasa3d.audio.pretrained import describe_motion_model, shipped_motion_model

        try:
            motion_path = args.motion or shipped_motion_model()
        except FileNotFoundError as error:
            parser.error(str(error))
        if not Path(motion_path).is_file():
            parser.error(f"{motion_path}: no such motion checkpoint")
        print(f"using the {describe_motion_model(motion_path)}")
    head = TalkingHead.from_checkpoints(args.avatar, motion_path)
    if head.motion is not None and args.energy_jaw is not None:
        head.motion.hparams.energy_jaw = args.energy_jaw  # read by generate, offline and online
    size = args.size or head.native_size
    writer = BackgroundWriter(Mp4Writer(args.out, head.fps))  # encodes while the next frames render
    guidance = {k: v for k, v in (("cfg_audio", args.cfg_audio), ("cfg_control", args.cfg_control)) if v is not None}
    sample_rate = head.features.sample_rate if head.features is not None else 16000
    waveform = None
    if args.audio is not None:
        waveform, _ = load_audio(args.audio, sample_rate=sample_rate)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
               TimeRemainingColumn())
    with Progress(*columns) as progress:
        if args.latents is not None:
            latents = MotionLatent.load(args.latents)
            task = progress.add_task("rendering", total=len(latents))
            stats = head.render_latents(latents, args.camera, size, writer, lambda: progress.advance(task))
        elif args.online:
            frames = int(round(len(waveform) / sample_rate * head.fps))
            task = progress.add_task("streaming", total=frames)
            chunks = stream_audio(args.audio, window_s=args.chunk_ms / 1000, sample_rate=sample_rate)
            stats = None
            for frame, stats in head.stream(chunks, frames, args.camera, size, seed=args.seed, window=args.window,
                                            vad=not args.no_vad, **guidance):
                writer.write(frame)
                progress.advance(task)
        else:
            from vasa3d.render.speak import speak_into

            task = progress.add_task("motion", total=None)
            stats = speak_into(head, waveform, sample_rate, writer, args.camera, size, args.seed, not args.no_vad,
                               args.window, lambda: progress.advance(task),
                               lambda frames: progress.update(task, description="rendering", total=frames,
                                                              completed=0), **guidance)
    path = writer.close(waveform, sample_rate)
    print(f"wrote {path}: {writer.frames} frames at {head.fps:g} FPS, {size}x{size}, "
          f"{'with' if waveform is not None else 'without'} audio")
    if stats is not None:
        print(stats.summary())
        if args.profile:
            stats.stage_ms["encoding"] = 1000 * writer.encode_s
            print(stats.stage_table())
    return 0

