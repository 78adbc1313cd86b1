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


@pytest.fixture(scope="session")
def compiled_kernels() -> None:
    """Skips a test when the C++ kernels cannot be built here; under CI (which has a compiler) fails it."""
    import os

    from vasa3d.gaussians import composite_cpp

    if not composite_cpp.is_available():
        reason = f"the C++ compositor cannot be built here: {composite_cpp.unavailable_reason()}"
        if os.environ.get("CI"):  # CI has a compiler: a failed build is a failure, not a reason to skip
            pytest.fail(reason)
        pytest.skip(reason)
