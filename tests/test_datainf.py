"""DataInf (estimators/datainf.py) against its closed form written out per example and per
test point, and against dattri 0.3.0's IFAttributorDataInf, whose formula it takes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from malleability.estimators import make_estimator
from malleability.estimators.datainf import module_layers
from malleability.losses import training_loss

DAMPING = 0.05


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _data(n: int = 40, n_test: int = 6):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g),
            torch.randn(n_test, 5, generator=g), torch.randint(0, 3, (n_test,), generator=g))


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    loss = training_loss(model(x[None]), y[None]).sum()
    return dict(zip(names, torch.autograd.grad(loss, [params[k] for k in names]), strict=True))


def test_module_layers_group_consecutive_parameters_of_one_module():
    assert module_layers(["0.weight", "0.bias", "2.weight", "2.bias", "w"]) == [
        ["0.weight", "0.bias"], ["2.weight", "2.bias"], ["w"]]


def test_datainf_equals_its_closed_form_per_example_and_test_point():
    """q_l(v) = (1/n) Σ_i (v_l − (v_l·g_i,l)/(λ + ‖g_i,l‖²) g_i,l)/λ for each test gradient v,
    I(i, t) = Σ_l g_i,l · q_l(v), averaged over t; float64 autograd, one example at a time."""
    model = _mlp().double()
    x, y, xt, yt = (t.double() if t.is_floating_point() else t for t in _data())
    names = [k for k, _ in model.named_parameters()]
    layers = [names[0:2], names[2:4]]

    def by_layer(g):
        return [torch.cat([g[k].reshape(-1) for k in layer]) for layer in layers]

    train = [by_layer(_gradient(model, x[i], y[i], names)) for i in range(len(x))]
    want = torch.zeros(len(x), dtype=torch.float64)
    for t in range(len(xt)):
        v = by_layer(_gradient(model, xt[t], yt[t], names))
        q = [sum((v[j] - (v[j] @ g[j]) / (DAMPING + g[j] @ g[j]) * g[j]) / DAMPING
                 for g in train) / len(train) for j in range(len(layers))]
        want += torch.stack([sum(g[j] @ q[j] for j in range(len(layers))) for g in train])
    want /= len(xt)
    got = make_estimator("if-datainf", damping=DAMPING, chunk=7).scores(model, x, y, xt, yt)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_datainf_equals_dattris_datainf():
    """dattri's IFAttributorDataInf (float32) on the same model, loss and damping, its
    (n × n_test) scores averaged over the test points; also on a subset of parameters."""
    dif = pytest.importorskip("dattri.algorithm.influence_function")
    from dattri.task import AttributionTask
    from torch.func import functional_call
    from torch.utils.data import DataLoader, TensorDataset

    model = _mlp()
    x, y, xt, yt = _data()
    for parameters in (None, ["2"]):
        copied = copy.deepcopy(model)

        def loss(params, data, copied=copied):
            xb, yb = data
            return training_loss(functional_call(copied, params, (xb,)), yb).mean()

        task = AttributionTask(loss_func=loss, model=copied, checkpoints=copied.state_dict())
        layer = None if parameters is None else ["2.weight", "2.bias"]
        attributor = dif.IFAttributorDataInf(task, layer_name=layer, regularization=DAMPING)
        train = DataLoader(TensorDataset(x, y), batch_size=len(x))
        attributor.cache(train)
        want = attributor.attribute(train, DataLoader(TensorDataset(xt, yt), batch_size=6))
        want = want.mean(1).detach().double()
        got = make_estimator("if-datainf", damping=DAMPING).scores(model, x, y, xt, yt,
                                                                    parameters=parameters)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
