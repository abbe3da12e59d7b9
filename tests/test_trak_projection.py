"""TRAK's projection dimension is checked against n: at k ≥ n its kernel is singular."""

from __future__ import annotations

import pytest
import torch

from malleability.trak_projection import check_trak_projection

projection = pytest.importorskip("dattri.func.projection")


@pytest.mark.parametrize("proj_dim, singular", [(16, False), (39, False), (41, True),
                                                (512, True)])
def test_the_trak_kernel_of_dattris_projection_is_singular_above_n(proj_dim, singular):
    """Ground truth for the check: rank(ΦᵀΦ) = min(n, k), so ΦᵀΦ (k × k) is singular for k > n."""
    n, p = 40, 131
    grads = torch.randn(n, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    phi = projection.random_project(grads, n, proj_dim=proj_dim, proj_max_batch_size=32,
                                    proj_seed=0, device="cpu")(grads, ensemble_id=0)
    assert phi.shape == (n, proj_dim)
    rank = int(torch.linalg.matrix_rank(phi.double().T @ phi.double()))
    assert rank == min(n, proj_dim)
    assert (rank < proj_dim) == singular


def test_check_trak_projection_refuses_a_dimension_at_or_above_n():
    assert check_trak_projection(39, 40) == 39
    for k in (40, 512):
        with pytest.raises(ValueError, match=rf"^proj_dim: TRAK's kernel has rank at most n = "
                                             rf"40 .* to {k} ≥ n dimensions .*fewer than 40$"):
            check_trak_projection(k, 40)
    with pytest.raises(ValueError, match=r"^proj_dim: expected a positive integer, got 0$"):
        check_trak_projection(0, 40)
