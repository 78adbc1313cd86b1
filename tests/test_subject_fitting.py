"""SubjectFitting on a synthetic portrait whose truth is known: losses fall, densification and resume work."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vasa3d.face.template import load_template
from vasa3d.gaussians.head import GaussianHead
from vasa3d.losses import project_points
from vasa3d.systems import SubjectFitting

SIZE = 64


class SyntheticPortrait(L.LightningDataModule):
    """A portrait rendered from a coloured head on the template: the fit's ground truth is known."""

    def __init__(self, steps: int = 10):
        super().__init__()
        template = load_template()
        truth = GaussianHead(template.vertices, template.faces, num_gaussians=6000, seed=7)
        g = truth.world_gaussians()
        truth.set_colors(torch.stack([0.5 + 0.4 * torch.tanh(g["means"][:, 0] * 20), 0.4 + 0 * g["means"][:, 0],
                                      0.5 + 0.4 * torch.tanh(g["means"][:, 1] * 20)], -1).detach())
        viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])
        K = torch.tensor([[170.0, 0, SIZE / 2], [0, 170.0, SIZE / 2], [0, 0, 1]])
        with torch.no_grad():
            out = truth.render(viewmat[None], K[None], SIZE, SIZE, background=torch.ones(3), backend="torch")
        self.sample = {
            "image": out.rgb[0].permute(2, 0, 1).contiguous(),
            "mask": out.alpha[0].permute(2, 0, 1).contiguous(),
            "region": torch.ones(1, SIZE, SIZE),
            "landmarks": project_points(truth.vertices()[:468], viewmat, K).detach(),
            "viewmat": viewmat,
            "K": K,
        }
        self.steps = steps

    def train_dataloader(self):
        return DataLoader([self.sample] * self.steps, batch_size=1)

    def val_dataloader(self):
        return DataLoader([self.sample], batch_size=1)


def _system(**overrides):
    args = dict(num_gaussians=5000, max_gaussians=5200, densify_start=4, densify_every=4, densify_stop=100,
                densify_grad_threshold=1e-7, seed=0, identity_steps=0, residual=False)
    args.update(overrides)
    return SubjectFitting(**args)


def _trainer(tmp_path, steps, **kwargs):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                     limit_val_batches=1, **kwargs)


def test_losses_fall(tmp_path):
    data = SyntheticPortrait(steps=12)
    system = _system(densify=False)
    batch = {k: v[None] for k, v in data.sample.items()}
    system.initialize_colors(data.sample)
    with torch.no_grad():
        before = system.compute_losses(batch)[0]
    _trainer(tmp_path, 12).fit(system, datamodule=data)
    with torch.no_grad():
        after = system.compute_losses(batch)[0]
    assert after["l1"] < before["l1"] and after["total"] < before["total"]
    assert system.global_step == 12  # one step per iteration despite one optimiser per attribute


def test_densification_grows_within_the_cap_and_keeps_the_binding(tmp_path):
    data = SyntheticPortrait(steps=9)
    system = _system()
    _trainer(tmp_path, 9).fit(system, datamodule=data)
    n_faces = system.head.faces.shape[0]
    assert n_faces < system.head.num_gaussians <= 5200  # grew, then the cap pruned
    assert system.head.binding.shape[0] == system.head.num_gaussians


def test_colour_initialisation_reads_the_portrait():
    data = SyntheticPortrait()
    system = _system()
    system.initialize_colors(data.sample)
    colors = torch.sigmoid(system.head.splats["colors"]).detach()
    means = system.head.world_gaussians()["means"].detach()
    truth_red = 0.5 + 0.4 * torch.tanh(means[:, 0] * 20)  # the synthetic portrait's colour law
    front = means[:, 2] > 0.05
    corr = torch.corrcoef(torch.stack([colors[front, 0], truth_red[front]]))[0, 1]
    assert corr > 0.9


def test_resume_restores_a_densified_model(tmp_path):
    data = SyntheticPortrait(steps=8)
    system = _system(densify_start=1, densify_every=3)
    trainer = _trainer(tmp_path, 8)
    trainer.fit(system, datamodule=data)
    ckpt = tmp_path / "state.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _system(densify_start=1, densify_every=3)
    assert resumed.head.num_gaussians != system.head.num_gaussians
    trainer2 = _trainer(tmp_path, 10)
    trainer2.fit(resumed, datamodule=data, ckpt_path=ckpt)
    assert trainer2.global_step == 10
    loaded = SubjectFitting.load_from_checkpoint(ckpt)
    assert loaded.head.num_gaussians == system.head.num_gaussians
    torch.testing.assert_close(loaded.head.splats["colors"], system.head.splats["colors"])


def test_divergence_raises_a_clear_error(tmp_path):
    data = SyntheticPortrait(steps=3)
    system = _system(densify=False)
    with torch.no_grad():
        system.head.shape_offsets[0] = float("nan")  # a landmark vertex: the landmark loss turns NaN
    with pytest.raises(Exception, match="not finite"):
        _trainer(tmp_path, 3).fit(system, datamodule=data)
