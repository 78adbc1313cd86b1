"""Test-wide settings: GPU tests skip, with the reason, where CUDA is absent."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here); runs where torch.cuda.is_available()")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def code_module(tmp_path, monkeypatch):
    """``(name, edit)``: a fresh importable module whose source ``edit(text)`` rewrites, for cache-key tests
    (add ``name`` to a datamodule's ``SOURCES``; an edit must change the key)."""
    package = tmp_path / "src" / "fake_code_module"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return "fake_code_module", lambda text: (package / "__init__.py").write_text(text)
