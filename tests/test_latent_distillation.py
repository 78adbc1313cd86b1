"""Stage 1 on a tiny synthetic video: the landmark error falls and beats the zero-deformation baseline."""

import lightning as L
import pytest
import torch

from datamodules.synthetic_video import SyntheticVideoDataModule
from vasa3d.systems import LatentDistillation
from vasa3d.teachers import MeshLiftTeacher


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    teacher = MeshLiftTeacher(num_gaussians=6000, identity_steps=40, refine_steps=5)
    dm = SyntheticVideoDataModule(teacher=teacher, crop_size=128, num_clips=3, frames_per_clip=8, heldout_clips=1,
                                  heldout_pose_clips=1, cache_dir=str(tmp_path_factory.mktemp("cache")),
                                  batch_size=8)
    dm.prepare_data()
    dm.setup()
    return dm


def _val_error(system, dm, deform=True):
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        return float(system.landmark_errors(batch, deform).mean())


def test_short_distillation_lowers_the_landmark_error(data, tmp_path):
    torch.manual_seed(0)  # the networks' initialisation; otherwise it depends on the tests run before
    system = LatentDistillation(latent_dim=16, identity_steps=60, lr=3e-3)
    system.identities = system.fit_identities(data.cameras)
    before = _val_error(system, data)
    trainer = L.Trainer(max_epochs=40, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path, check_val_every_n_epoch=100)
    trainer.fit(system, datamodule=data)
    after = _val_error(system, data)
    baseline = _val_error(system, data, deform=False)
    assert after < before
    assert after < baseline, (before, after, baseline)  # the learnt expression explains more than pose alone


def test_rig_initialisation_starts_near_the_teacher(data):
    system = LatentDistillation(latent_dim=16, identity_steps=60, init_from_rig=True)
    system.identities = system.fit_identities(data.cameras)
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        intended = (system.landmarks(batch) - batch["intended_landmarks"]).norm(dim=-1).mean()
    assert intended < 0.5  # px at 128: the rig-initialised M_e/M_p reproduce what the teacher rendered
