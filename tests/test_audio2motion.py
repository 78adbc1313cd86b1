"""Audio2Motion: the diffusion transformer, its sampler, windowed generation, baselines and the system.

Data are synthetic and built here: the first audio channel is an energy whose affine image is the
mouth (dyn channel 0); the other motion channels are a per-utterance offset plus a slow drift that the
audio does not explain, so only the previous-window prefix can make consecutive windows agree.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vasa3d.audio.baselines import EnergyJaw, RegressionMotion
from vasa3d.audio.diffusion import MotionDiffusion, cosine_alphas_cumprod
from vasa3d.audio.evaluation import diversity, evaluate_generator, pearson
from vasa3d.motion.latent import MotionLatent
from vasa3d.systems.audio2motion import Audio2Motion

D, F, TW, P = 12, 4, 16, 4
TINY = dict(window=TW, prev_frames=P, d_model=32, num_layers=2, num_heads=2, dropout=0.0)


def _smooth(g: torch.Generator, n: int, c: int, width: float) -> torch.Tensor:
    k = int(2 * width)
    kernel = torch.exp(-0.5 * (torch.arange(-k, k + 1) / width) ** 2)
    noise = torch.randn(n + 2 * k, c, generator=g)
    out = torch.nn.functional.conv1d(noise.T[:, None], (kernel / kernel.sum())[None, None])[:, 0].T
    return out / out.std(0)


def utterance(seed: int, frames: int = 96) -> tuple[torch.Tensor, MotionLatent]:
    """``(audio [T, F], MotionLatent [T])`` with ``jaw_open = 0.8 * energy + 0.1``."""
    g = torch.Generator().manual_seed(seed)
    energy = torch.sigmoid(2 * _smooth(g, frames, 1, 3))[:, 0]
    audio = torch.cat([energy[:, None], _smooth(g, frames, F - 1, 3)], dim=1)
    other = torch.randn(1, D + 8, generator=g) + 0.3 * _smooth(g, frames, D + 8, 10)
    dyn = other[:, :D].clone()
    dyn[:, 0] = 0.8 * energy + 0.1
    return audio, MotionLatent(dyn, 0.1 * other[:, D:D + 6], 0.2 * other[:, D + 6:])


class Windows(Dataset):
    """Training windows in the speech-motion batch contract (start at 0 or with P frames of history)."""

    def __init__(self, seeds: range, count: int, seed: int = 0) -> None:
        self.utts = [utterance(s) for s in seeds]
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            u = int(torch.randint(len(self.utts), (1,), generator=g))
            s = 0 if torch.rand(1, generator=g) < 0.1 else int(torch.randint(P, 96 - TW + 1, (1,), generator=g))
            self.items.append((u, s))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        u, s = self.items[i]
        audio, lat = self.utts[u]
        item = {"audio": audio[s:s + TW], "has_prev": torch.tensor(s >= P), "utterance": torch.tensor(u),
                "mouth": lat.dyn[s:s + TW, 0]}
        for name in ("dyn", "pose", "gaze"):
            value = getattr(lat, name)
            item[name] = value[s:s + TW]
            item["prev_" + name] = value[s - P:s] if s >= P else torch.zeros(P, value.shape[-1])
        return item


def _batch(dataset: Windows, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    idx = torch.randint(len(dataset), (size,), generator=g).tolist()
    return torch.utils.data.default_collate([dataset[i] for i in idx])


def _fit_stats(model, dataset: Windows) -> None:
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    model.fit_stats(torch.cat([batch["dyn"], batch["pose"], batch["gaze"]], -1), batch["audio"])


def _train(model, steps: int, lr: float = 3e-3):
    torch.manual_seed(0)
    data, g = Windows(range(24), 512), torch.Generator().manual_seed(1)
    _fit_stats(model, data)
    opt = torch.optim.AdamW(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        loss = model.training_loss(_batch(data, 32, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds overhead (60x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_diffusion() -> MotionDiffusion:
    torch.manual_seed(0)
    return _train(MotionDiffusion(D, F, num_timesteps=50, sample_steps=10, **TINY), steps=400)


@pytest.fixture()
def untrained() -> MotionDiffusion:
    torch.manual_seed(0)
    model = MotionDiffusion(D, F, emotion_dim=3, num_timesteps=50, sample_steps=5, **TINY)
    _fit_stats(model, Windows(range(4), 64))
    return model.eval()


# ---------------------------------------------------------------------------- model and sampler
def test_schedule_is_monotone_from_signal_to_noise():
    abar = cosine_alphas_cumprod(50)
    assert abar.shape == (50,) and abar[0] > 0.99 and abar[-1] < 0.01 and (abar.diff() < 0).all()


def test_shapes_loss_and_streaming(untrained):
    batch = _batch(Windows(range(4), 16), 5, torch.Generator().manual_seed(0))
    batch["emotion"] = torch.randn(5, 3)
    losses = untrained.training_loss(batch)
    assert {"loss", "diffusion", "velocity"} <= set(losses) and torch.isfinite(losses["loss"])
    audio, _ = utterance(7, frames=37)
    out = untrained.generate(audio, fps=25.0, seed=3)
    assert out.dyn.shape == (37, D) and out.pose.shape == (37, 6) and out.gaze.shape == (37, 2)
    chunks = [audio[i:i + 5] for i in range(0, 37, 5)]  # features arriving in small pieces
    windows = list(untrained.stream(chunks, seed=3))
    assert [len(w) for w in windows] == [TW, TW, 37 - 2 * TW]
    assert torch.allclose(MotionLatent.cat(windows).dyn, out.dyn, atol=1e-5)
    with pytest.raises(ValueError, match="fps"):
        untrained.generate(audio, fps=30.0)


def test_sampler_is_deterministic_under_a_seed_and_seeds_differ(untrained):
    audio, _ = utterance(8, frames=40)
    a, b = untrained.generate(audio, seed=11), untrained.generate(audio, seed=11)
    c = untrained.generate(audio, seed=12)
    assert torch.equal(a.dyn, b.dyn) and torch.equal(a.pose, b.pose)
    assert (a.dyn - c.dyn).abs().mean() > 1e-3


def test_guidance_scales_change_the_output(untrained):
    audio, _ = utterance(9, frames=TW)
    gen = lambda **kw: untrained.generate(audio, seed=0, **kw).dyn  # noqa: E731
    assert (gen(cfg_audio=1.0) - gen(cfg_audio=3.0)).abs().mean() > 1e-3
    controls = dict(gaze=torch.tensor([0.1, -0.05]), distance=0.02, emotion=torch.tensor([1.0, 0.0, -1.0]))
    assert (gen(cfg_control=1.0, **controls) - gen(cfg_control=3.0, **controls)).abs().mean() > 1e-3
    assert torch.equal(gen(cfg_control=1.0), gen(cfg_control=3.0))  # no controls: nothing to guide
    assert (gen(**controls) - gen()).abs().mean() > 1e-4  # the controls reach the output


def test_dropped_conditions_use_the_null_embeddings(untrained):
    g = torch.Generator().manual_seed(0)
    B, C = 3, untrained.motion_dim
    x_t, t = torch.randn(B, TW, C, generator=g), torch.tensor([5, 20, 40])
    prev, prev_len = torch.randn(B, P, C, generator=g), torch.tensor([P, 2, 0])
    audio1, audio2 = torch.randn(B, TW, F, generator=g), torch.randn(B, TW, F, generator=g)
    ctrl1 = {"gaze": torch.randn(B, 2, generator=g), "distance": torch.randn(B, 1, generator=g)}
    ctrl2 = {k: v + 1 for k, v in ctrl1.items()}
    yes, no = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    net = lambda a, c, ka, kc, pv=prev: untrained.denoise(x_t, t, a, pv, prev_len, c, ka, kc)  # noqa: E731
    with torch.no_grad():
        assert torch.allclose(net(audio1, ctrl1, no, yes), net(audio2, ctrl1, no, yes))  # audio dropped
        assert not torch.allclose(net(audio1, ctrl1, yes, yes), net(audio2, ctrl1, yes, yes))
        assert torch.allclose(net(audio1, ctrl1, yes, no), net(audio1, ctrl2, yes, no))  # controls dropped
        assert torch.allclose(net(audio1, ctrl1, yes, no), net(audio1, {}, yes, yes))  # = controls absent
        assert not torch.allclose(net(audio1, ctrl1, yes, yes), net(audio1, ctrl2, yes, yes))
        # masked prefix frames do not matter: none for sample 2, the oldest two for sample 1
        other = prev.clone()
        other[2], other[1, :2] = 5.0, -5.0
        assert torch.allclose(net(audio1, ctrl1, yes, yes), net(audio1, ctrl1, yes, yes, other), atol=1e-5)
        other[0] += 1
        assert not torch.allclose(net(audio1, ctrl1, yes, yes)[0], net(audio1, ctrl1, yes, yes, other)[0])


# ---------------------------------------------------------------------------- trained behaviour
def _border_ratio(model, prev: int, crossfade: int) -> float:
    """Mean jump at window borders over the median frame-to-frame change inside windows (normalised units)."""
    borders, inner = [], []
    for k in range(4):
        audio, _ = utterance(100 + k, frames=4 * TW)
        out = model.generate(audio, seed=k, prev=prev, crossfade=crossfade)
        delta = model.pack(out.dyn, out.pose, out.gaze).diff(dim=0).norm(dim=-1)
        at = torch.arange(TW - 1, len(delta), TW)
        mask = torch.ones(len(delta), dtype=torch.bool)
        mask[at] = False
        borders.append(delta[at])
        inner.append(delta[mask])
    return float(torch.cat(borders).mean() / torch.cat(inner).median())


def test_windows_continue_seamlessly_through_the_prefix(trained_diffusion):
    raw = _border_ratio(trained_diffusion, prev=P, crossfade=0)  # the model alone (about 2.0 here)
    smoothed = _border_ratio(trained_diffusion, prev=P, crossfade=2)  # with the light border fade (about 0.8)
    independent = _border_ratio(trained_diffusion, prev=0, crossfade=2)  # what ignoring the prefix gives (about 15)
    assert raw < 3.0, f"border jump {raw:.2f}x the typical frame-to-frame change"
    assert smoothed < raw
    assert independent > 3.0 * raw


def test_trained_diffusion_follows_the_audio_and_varies_with_the_seed(trained_diffusion):
    utts = [{"audio": a, "latent": lat} for a, lat in (utterance(200 + k, frames=48) for k in range(2))]
    metrics = evaluate_generator(lambda a, s: trained_diffusion.generate(a, seed=s), utts, seeds=(0, 1, 2))
    assert metrics["lipsync_corr"] > 0.8, metrics
    assert metrics["diversity_dyn"] > 0.0


def test_regression_baseline_fits():
    torch.manual_seed(0)
    model = _train(RegressionMotion(D, F, loss="l1", **TINY), steps=400)
    audio, ref = utterance(300, frames=48)
    a, b = model.generate(audio, seed=0), model.generate(audio, seed=1)
    assert pearson(a.dyn[:, 0], ref.dyn[:, 0]) > 0.9
    assert torch.equal(a.dyn, b.dyn) and diversity([a, b])["diversity_dyn"] == 0.0


def test_energy_baseline_fits_an_affine_mouth():
    data = torch.utils.data.default_collate([Windows(range(8), 64)[i] for i in range(64)])
    model = EnergyJaw(D, F, energy_channel=0).fit(data["audio"], data["dyn"], data["pose"], data["gaze"])
    assert torch.allclose(model.coef, torch.tensor([0.8, 0.1]), atol=1e-4)
    audio, ref = utterance(301)
    out = model.generate(audio)
    assert pearson(out.dyn[:, 0], ref.dyn[:, 0]) > 0.9
    assert torch.allclose(out.dyn[:, 1:], data["dyn"].reshape(-1, D)[:, 1:].mean(0).expand(len(audio), -1))


def test_pearson():
    x = torch.linspace(0, 1, 20)
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0) and pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, torch.ones(20)) == 0.0


# ---------------------------------------------------------------------------- Lightning system
@pytest.mark.parametrize("model_type", ["diffusion", "regression"])
def test_lightning_fit_and_checkpoint_round_trip(tmp_path, model_type):
    torch.manual_seed(0)
    system = Audio2Motion(model_type=model_type, latent_dim=D, audio_dim=F, energy_channel=0, num_timesteps=20,
                          sample_steps=4, warmup_steps=2, **TINY)
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, DataLoader(Windows(range(6), 40), batch_size=8))
    assert bool(system.model.stats_ready) and system.energy.coef[0] > 0.5  # fitted from the first batch
    path = tmp_path / "a2m.ckpt"
    trainer.save_checkpoint(path)
    loaded = Audio2Motion.load_from_checkpoint(path)
    audio, ref = utterance(400, frames=40)
    a, b = system.generate(audio, fps=25.0, seed=5), loaded.generate(audio, fps=25.0, seed=5)
    assert torch.allclose(a.dyn, b.dyn, atol=1e-6) and torch.allclose(a.pose, b.pose, atol=1e-6)
    table = loaded.heldout_metrics([{"audio": audio, "latent": ref}], seeds=2)
    assert set(table) == {"model", "energy_baseline"}
    assert table["energy_baseline"]["lipsync_corr"] > 0.9


def test_the_energy_jaw_is_blended_into_the_jaw_alone_before_the_gate(tmp_path):
    """``energy_jaw`` w moves jaw_open to (1 - w) model + w baseline and leaves every other channel; 0 is the
    model alone; the silence gate comes after, so a silent frame is shut whatever the blend; checkpoints
    without the key (older ones) load with the default, and a weight outside [0, 1] is refused."""
    torch.manual_seed(0)
    system = Audio2Motion(latent_dim=D, audio_dim=F, energy_channel=0, num_timesteps=20, sample_steps=4, **TINY)
    system.fit_statistics([torch.utils.data.default_collate([Windows(range(6), 40)[i] for i in range(8)])])
    system.eval()
    audio, _ = utterance(500, frames=40)
    alone, half = system.generate(audio, seed=3, energy_jaw=0.0), system.generate(audio, seed=3)
    assert system.hparams.energy_jaw == 0.5
    baseline = system.energy.jaw(audio)
    torch.testing.assert_close(half.dyn[:, 0], 0.5 * alone.dyn[:, 0] + 0.5 * baseline)
    assert torch.equal(half.dyn[:, 1:], alone.dyn[:, 1:]) and torch.equal(half.pose, alone.pose)
    full = system.generate(audio, seed=3, energy_jaw=1.0)
    torch.testing.assert_close(full.dyn[:, 0], baseline)
    activity = np.r_[np.ones(20), np.zeros(20)]
    gated = system.generate(audio, seed=3, voice_activity=activity, energy_jaw=1.0)
    assert gated.dyn[30:, 0].abs().max() < 1e-6 < gated.dyn[:20, 0].abs().min()  # shut in the silence
    with pytest.raises(ValueError, match="energy_jaw"):
        Audio2Motion(latent_dim=D, audio_dim=F, energy_jaw=1.5)
    with pytest.raises(ValueError, match="weight"):
        system.generate(audio, energy_jaw=-0.1)
    old = {k: v for k, v in system.hparams.items() if k != "energy_jaw"}
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": old,
                "pytorch-lightning_version": L.__version__}, tmp_path / "old.ckpt")
    loaded = Audio2Motion.load_from_checkpoint(tmp_path / "old.ckpt").eval()
    torch.testing.assert_close(loaded.generate(audio, seed=3).dyn, half.dyn)


def test_a_one_frame_tail_window_is_generated(untrained):
    """Audio one frame longer than a whole number of windows ends in a one-frame window (with crossfade)."""
    audio = torch.randn(2 * untrained.window + 1, untrained.audio_dim)
    latent = untrained.generate(audio, seed=0, crossfade=2)
    assert latent.dyn.shape[0] == len(audio) and torch.isfinite(latent.dyn).all()
