import pytest
import torch

from ett_lightning.models import MLPProjector


def test_projector_depth_and_shape():
    projector = MLPProjector(8, 32, depth=2)
    linears = [m for m in projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and isinstance(projector[1], torch.nn.GELU)
    assert projector(torch.randn(2, 5, 8)).shape == (2, 5, 32)


def test_projector_rejects_wrong_input_dim_with_fix():
    with pytest.raises(ValueError, match="set projector.in_dim"):
        MLPProjector(8, 32)(torch.randn(2, 5, 7))
