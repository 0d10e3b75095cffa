"""Width pruning (compress/pruning.py) on tiny in-process BERTs: pruning nothing changes nothing, kept sizes,
and a pruned, vocabulary-trimmed student that distills, exports and passes the parity check."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_bert
from rich.console import Console

from compress import pruning, runner
from compress.errors import StageError
from compress.recipe import parse_recipe
from compress.report import model_card


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny4"), layers=3, hidden=32)


def _batches(folder, texts):
    import torch
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    return [{k: torch.as_tensor(encoded[k]) for k in ("input_ids", "attention_mask")}]


TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate", "fine", "dull and flat"]


def test_pruning_nothing_leaves_outputs_identical(tiny4):
    import torch
    from transformers import AutoModel

    model, batch = AutoModel.from_pretrained(tiny4).eval(), _batches(tiny4, TEXTS)

    same, record = pruning.prune(model, batch, heads=1.0, ffn=1.0)

    with torch.no_grad():
        assert torch.equal(model(**batch[0]).last_hidden_state, same.eval()(**batch[0]).last_hidden_state)
    assert record["params_after"] == record["params_before"] and not same.config.pruned_heads


@pytest.mark.parametrize("heads, ffn, kept_heads, kept_ffn", [
    (0.5, 0.5, 1, 32),
    (1.0, 0.25, 2, 16),
    (0.01, 1.0, 1, 64),  # at least one unit stays
])
def test_pruning_keeps_the_requested_share(tiny4, tmp_path, heads, ffn, kept_heads, kept_ffn):
    import torch
    from transformers import AutoModel

    model, batch = AutoModel.from_pretrained(tiny4).eval(), _batches(tiny4, TEXTS)

    small, record = pruning.prune(model, batch, heads=heads, ffn=ffn)

    assert small.config.intermediate_size == kept_ffn and record["ffn"]["kept_per_layer"] == kept_ffn
    assert record["heads"]["kept_per_layer"] == kept_heads
    assert all(layer.attention.self.num_attention_heads == kept_heads for layer in small.encoder.layer)
    small.save_pretrained(tmp_path)  # a normal HF model: reloads with the same outputs
    with torch.no_grad():
        again = AutoModel.from_pretrained(tmp_path).eval()(**batch[0]).last_hidden_state
        assert torch.allclose(small.eval()(**batch[0]).last_hidden_state, again, atol=1e-6)


def test_pruning_ranks_the_most_active_neurons_first(tiny4):
    import torch
    from transformers import AutoModel

    model, batch = AutoModel.from_pretrained(tiny4).eval(), _batches(tiny4, TEXTS)
    with torch.no_grad():  # neuron 5 of layer 0 made loud: it must survive a 1/64 cut
        model.encoder.layer[0].intermediate.dense.weight[5] *= 50

    small, _ = pruning.prune(model, batch, ffn=1 / 64)

    kept = small.encoder.layer[0].intermediate.dense.weight[0]
    assert torch.equal(kept, model.encoder.layer[0].intermediate.dense.weight[5])


def _tiny_mpnet():
    import torch
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
    ids = torch.randint(3, 100, (3, 12))
    return MPNetModel(config).eval(), [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def test_pruning_mpnet_ffn_works_and_its_heads_are_one_sentence():
    import torch

    model, batch = _tiny_mpnet()

    same, _ = pruning.prune(model, batch, heads=1.0, ffn=1.0)
    small, record = pruning.prune(model, batch, heads=1.0, ffn=0.5)

    with torch.no_grad():
        assert torch.equal(model(**batch[0]).last_hidden_state, same.eval()(**batch[0]).last_hidden_state)
    assert small.config.intermediate_size == 32 and record["ffn"]["kept_per_layer"] == 32
    # MPNet's relative position bias is computed for every head of the unpruned model.
    with pytest.raises(StageError, match=r"^width pruning: the pruned MPNetModel does not run .*heads: 1\.0"):
        pruning.prune(model, batch, heads=0.5, ffn=1.0)


def test_pruning_refuses_models_that_are_not_bert_style():
    import torch

    with pytest.raises(StageError, match="BERT-style encoders"):
        pruning.encoder_layers(torch.nn.Linear(2, 2))


def test_pruned_trimmed_student_exports_with_parity(tmp_path, tiny4, tiny_texts):
    student = "{from_teacher: {layers: [0, 2], ffn: 0.5, heads: 0.5}, vocab: {trim: true, extra: [zebra]}}"
    recipe = parse_recipe(
        f"version: 1\nname: t\ntask: sentence-embedding\nteacher: {{source: '{tiny4}'}}\n"
        f"data: {{source: '{tiny_texts}', text_field: text, eval_size: 20, max_length: 32}}\nstages:\n"
        f"  - {{kind: distill, student: {student}, losses: {{cosine: 1.0, hidden-mse: 1.0, attention: 0.5}}, "
        f"max_steps: 2, batch_size: 16}}\n  - {{kind: export, parity_texts: 8}}\n")

    manifest = runner.run(recipe, tmp_path / "run", console=Console(stderr=True, quiet=True))

    stages = manifest["stages"]
    shaped = stages["distill"]["metrics"]
    assert shaped["pruning"]["ffn"] == {"kept_per_layer": 32, "of": 64}
    assert shaped["pruning"]["heads"]["kept_per_layer"] == 1
    assert shaped["vocab"]["vocab_size"] < 5000 and shaped["vocab"]["heldout_tokens"] > 0
    student = tmp_path / "run" / "artifacts" / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["intermediate_size"] == 32 and config["vocab_size"] == shaped["vocab"]["vocab_size"]
    assert len((student / "vocab.txt").read_text().splitlines()) == config["vocab_size"]
    export = manifest["artifacts"]["student.onnx"]["metadata"]
    assert export["parity_max_abs"] <= 1e-4
    assert manifest["artifacts"]["student"]["metadata"]["pruning"]["ffn"]["kept_per_layer"] == 32
    card = "\n".join(model_card.student_shape_lines(manifest))  # the model card says what was kept
    assert "1 of 2 attention heads and 32 of 64 FFN neurons" in card and "word pieces kept" in card
