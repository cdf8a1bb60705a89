"""keys_values/loss.py: the chunked loss with the output layer inside it equals the model's own loss and gradients,
and divides by the Trainer's token count."""

import pytest
import torch

from conftest import small_llama
from keys_values import config, lora, memory, models, precision
from keys_values.loss import OutputLayerInTheLoss


@pytest.fixture
def model(tmp_path):
    folder = small_llama(tmp_path, layers=2)
    prec = precision.precision("fp32", False, "train", bf16_cpu=False)
    args = config.training_config(["--tasks", "CB", "--target_modules", "q_proj", "v_proj", "up_proj", "--dropout", "0"])
    m = lora.add_lora(models.load_base(folder, prec, precision.placement(0, False)), args, prec)
    for name, p in m.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; give it weight so that its gradients are not trivial
            torch.nn.init.normal_(p, std=0.05)
    return m


def grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("completion", [False, True])
def test_chunked_loss_equals_the_models_own(model, monkeypatch, completion):
    monkeypatch.setattr(memory, "LOSS_CHUNK", 7)  # several chunks, the last one short
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 24))
    labels = ids.clone()
    if completion:  # a few counted positions per row, as --loss_on completion
        labels[:, :-4] = -100
        labels[1, 5:9] = ids[1, 5:9]
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    expected = grads(model)
    model.zero_grad()
    head = model.get_base_model().get_output_embeddings()
    with OutputLayerInTheLoss(model) as loss:
        hidden = model(input_ids=ids).logits
        assert hidden.shape[-1] == model.config.hidden_size  # the model now returns its final hidden states
        assert model.get_base_model().get_output_embeddings() is head  # the layer stays in the model (FSDP shards it)
        ours = loss(model(input_ids=ids), labels)
        ours.backward()
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    for name, g in grads(model).items():
        assert torch.allclose(g, expected[name], atol=1e-6), name


def test_chunked_loss_normalises_by_the_trainers_token_count(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with OutputLayerInTheLoss(model) as loss:
        out = model(input_ids=ids)
        mean = loss(out, ids)
        total = loss(out, ids, num_items_in_batch=torch.tensor(2 * 15 * 4))  # e.g. 4 accumulated batches
    assert total.item() == pytest.approx(mean.item() / 4, rel=1e-6)
