"""Model outputs: the logits of tensors, Hugging Face outputs and tuples, and four tiny models
(HF ViT, HF BERT, timm ViT, a ResNet control), each built from a config and trained briefly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from malleability.model_outputs import Classifier, as_classifier, logits_of

CLASSES = 3


def test_logits_of_takes_the_tensor_the_logits_attribute_or_the_first_element():
    t = torch.randn(4, 3)
    assert logits_of(t) is t
    assert logits_of(SimpleNamespace(logits=t, loss=torch.tensor(1.0))) is t
    assert logits_of((t, torch.randn(4, 8))) is t
    assert logits_of([t]) is t


@pytest.mark.parametrize("output", [{"logits": torch.randn(2, 3)}, "logits", None, (),
                                    ("x", torch.randn(2, 3)), SimpleNamespace(logits=[1.0])])
def test_logits_of_names_the_output_type_it_cannot_read(output):
    with pytest.raises(ValueError, match=rf"^model: .*got {type(output).__name__}$"):
        logits_of(output)


def test_as_classifier_is_idempotent_and_refuses_a_non_module():
    clf = as_classifier(nn.Linear(2, 3))
    assert as_classifier(clf) is clf
    with pytest.raises(ValueError, match="^model: expected a torch.nn.Module, got function$"):
        as_classifier(lambda x: x)


def _images(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0, 1] whose class is the colour channel that is brightest."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.3 + 0.2 * torch.rand(n, 3, 16, 16, generator=g)
    x[torch.arange(n), y] += 0.4
    return x, y


def _tokens(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids whose class is the first token modulo 3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 30, (n, 8), generator=g)
    return x, x[:, 0] % CLASSES


def hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, num_labels=CLASSES)
    return transformers.ViTForImageClassification(config)


def hf_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=8, num_labels=CLASSES)
    return transformers.BertForSequenceClassification(config)


def hf_resnet() -> nn.Module:
    """A ResNet without attention (the control). transformers' port, since torchvision cannot
    be imported beside torch 2.13.0+cpu (its PyPI wheel links CUDA torch)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], layer_type="basic", num_labels=CLASSES)
    return transformers.ResNetForImageClassification(config)


def timm_vit() -> nn.Module:
    pytest.importorskip("timm", reason="timm imports only in .venv-vision: `make test-vision`")
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=4, num_classes=CLASSES, embed_dim=16,
                             depth=1, num_heads=2, mlp_ratio=2.0)


MODELS = {"hf-vit": (hf_vit, _images), "hf-bert": (hf_bert, _tokens),
          "timm-vit": (timm_vit, _images), "hf-resnet": (hf_resnet, _images)}


@pytest.mark.parametrize("name", [pytest.param(k, marks=pytest.mark.vision) if k == "timm-vit"
                                  else k for k in MODELS])
def test_as_classifier_returns_the_models_logits_and_trains_it(name):
    build, data = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x, y = data()
    clf = as_classifier(model).eval()
    raw = model(x)
    expected = raw if isinstance(raw, torch.Tensor) else raw.logits
    assert torch.equal(clf(x), expected)
    if hasattr(model, "config"):  # Hugging Face: the tuple form gives the same logits
        assert torch.equal(logits_of(model(x, return_dict=False)), expected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf.train()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training the wrapper left the wrapped model unchanged"
    assert set(dict(clf.named_parameters())) == {f"model.{k}" for k, _ in
                                                 model.named_parameters()}


def test_the_resnet_control_has_no_attention():
    model = hf_resnet()
    assert isinstance(as_classifier(model), Classifier)
    assert not [n for n, m in model.named_modules() if "attention" in type(m).__name__.lower()]
    assert [n for n, m in hf_vit().named_modules() if "attention" in type(m).__name__.lower()]
