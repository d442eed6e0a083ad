"""Per-sample gradients: both backends against a loop of single-example backward passes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpbook import models, persample


def loop_reference(model, x, y):
    out = {name: [] for name, _ in model.named_parameters()}
    for i in range(len(x)):  # the slow, obviously correct version
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        for name, p in model.named_parameters():
            out[name].append(p.grad.detach().clone())
    model.zero_grad()
    return {name: torch.stack(g) for name, g in out.items()}


def groupnorm_net(affine=False):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8, affine=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(4, 8, affine=affine), nn.Tanh(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


CASES = [("func", lambda: models.SmallCNN(1, 10, 8)), ("func", lambda: groupnorm_net(affine=True)),
         ("backpack", lambda: models.SmallCNN(1, 10, 8)), ("backpack", groupnorm_net)]


@pytest.mark.parametrize("backend,make", CASES, ids=["func-cnn", "func-groupnorm", "backpack-cnn", "backpack-groupnorm"])
def test_backends_equal_a_per_example_loop(backend, make):
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    reference = loop_reference(model, x, y)
    grads = persample.per_sample_gradients(model, x, y, backend=backend)
    assert list(grads) == list(reference)  # shapes then values, in parameter order
    for name in reference:
        assert grads[name].shape == (6, *dict(model.named_parameters())[name].shape)
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_sum_of_per_sample_gradients_is_the_batch_gradient():
    torch.manual_seed(1)
    model = models.SmallCNN(1, 10, 8)
    x, y = torch.randn(9, 1, 8, 8), torch.randint(0, 10, (9,))
    flat = persample.flatten(persample.per_sample_gradients(model, x, y))
    F.cross_entropy(model(x), y, reduction="sum").backward()
    batch = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(flat.sum(0), batch, rtol=1e-4, atol=1e-5)
    back = persample.unflatten(flat[0], persample.trainable(model))
    assert [v.shape for v in back.values()] == [p.shape for p in model.parameters()]


def test_backends_can_alternate_on_one_model_that_keeps_training():
    torch.manual_seed(2)
    model = models.SmallCNN(1, 10, 8)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    first = persample.per_sample_gradients(model, x, y, backend="backpack")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # an optimiser step: the BackPACK copy must follow
    for backend in ("func", "backpack", "func"):
        again = persample.per_sample_gradients(model, x, y, backend=backend)
        torch.testing.assert_close(again, loop_reference(model, x, y), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(first["0.weight"], again["0.weight"])


def test_backpack_names_layers_it_cannot_handle():
    with pytest.raises(ValueError, match="backend='func'"):
        persample.per_sample_gradients(groupnorm_net(affine=True), torch.randn(2, 1, 8, 8), torch.tensor([0, 1]),
                                       backend="backpack")


def test_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(ValueError, match="GroupNorm"):
        persample.per_sample_gradients(model, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="backend"):
        persample.per_sample_gradients(models.SmallCNN(1, 2, 8), torch.randn(2, 1, 8, 8), torch.tensor([0, 1]),
                                       backend="opacus")


def test_resnet20_gn_matches_the_spec_and_both_backends_agree():
    torch.manual_seed(0)
    model = models.build("resnet20-gn", in_channels=3, image_size=32, n_classes=10)
    assert models.n_parameters(model) == 268_346 and len(list(model.parameters())) == 21
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules() if list(m.parameters(recurse=False)))
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,))
    reference = loop_reference(model, x, y)
    for backend in persample.BACKENDS:
        grads = persample.per_sample_gradients(model, x, y, backend=backend)
        for name in reference:
            torch.testing.assert_close(grads[name], reference[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 5, -1, "auto"])
def test_flat_gradients_fill_the_buffer_rows_with_the_per_sample_gradients(chunk_size):
    torch.manual_seed(0)
    model = groupnorm_net()
    x, y = torch.randn(13, 1, 8, 8), torch.randint(0, 5, (13,))
    expected = persample.flatten(loop_reference(model, x, y))
    buffer = torch.full((20, expected.shape[1]), 7.0)
    got = persample.flat_per_sample_gradients(model, x, y, chunk_size=chunk_size, out=buffer)
    assert got.data_ptr() == buffer.data_ptr() and got.shape == expected.shape  # written in place, no copy
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(buffer[13:] == 7.0)  # rows beyond the batch untouched
    with pytest.raises(ValueError, match="buffer"):
        persample.flat_per_sample_gradients(model, x, y, out=torch.empty(12, expected.shape[1]))


def test_auto_chunks_halve_after_out_of_memory_and_are_remembered(monkeypatch):
    torch.manual_seed(0)
    model = groupnorm_net()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 5, (40,))
    expected = persample.flatten(loop_reference(model, x, y))
    real, seen = persample.per_sample_gradients, []

    def small_memory(model, x, y, **kw):  # a device that holds 8 examples' gradients at most
        seen.append(len(x))
        if len(x) > 8:
            raise torch.OutOfMemoryError("pretend")
        return real(model, x, y, **kw)

    monkeypatch.setattr(persample, "per_sample_gradients", small_memory)
    got = persample.flat_per_sample_gradients(model, x, y, chunk_size="auto")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert seen[:3] == [40, 20, 10] and set(seen[3:]) == {5}
    seen.clear()
    persample.flat_per_sample_gradients(model, x, y, chunk_size="auto")
    assert set(seen) == {5}  # the size that fitted is remembered for the model
    fresh = groupnorm_net()  # a small first batch (or an empty one) caps nothing: only an error does
    for batch in (0, 3, 8):
        seen.clear()
        persample.flat_per_sample_gradients(fresh, x[:batch], y[:batch], chunk_size="auto")
        assert seen == ([batch] if batch else [])
    seen.clear()
    got = persample.flat_per_sample_gradients(fresh, x[:20], y[:20], chunk_size="auto")  # fails at 20, 10
    assert seen == [20, 10, 5, 5, 5, 5]  # the failed chunk again, halved, until it fits
    torch.testing.assert_close(got, persample.flatten(loop_reference(fresh, x[:20], y[:20])), rtol=1e-5, atol=1e-6)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed chunk size is not changed behind the caller's back
        persample.flat_per_sample_gradients(model, x, y, chunk_size=10)
