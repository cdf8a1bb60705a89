"""Keys and values beyond Llama, end to end: for GPT-2 (Conv1D layers, c_proj in attention and feed-forward),
Pythia's GPT-NeoX (fused query_key_value), Phi-3 (fused qkv and gate_up) and Qwen2-MoE (experts as 3D parameters,
adapted through peft's target_parameters), a study of the keys arm against the values arm in role words: 2 training
steps each, an evaluation, and a report whose rows carry the right roles, with the adapters' norms."""

import json
import os

import pytest

from conftest import SAMPLE, STUDY, in_process_launcher, run
from tiny_models import tiny_model_folder

pytestmark = pytest.mark.slow

# model type -> (the keys setting's row, the values setting's row) in summary.md
ROWS = {"gpt2": ("c_attn (q,k,v)+c_fc (keys)", "c_attn (q,k,v)+mlp.c_proj (values)"),
        "gpt_neox": ("query_key_value (q,k,v)+dense_h_to_4h (keys)", "query_key_value (q,k,v)+dense_4h_to_h (values)"),
        "phi3": ("qkv (q,k,v)+gate_up (keys)", "qkv (q,k,v)+down (values)"),
        "qwen2_moe": (None, None)}


@pytest.mark.parametrize("model_type", list(ROWS))
def test_a_study_in_role_words_on_another_architecture(model_type, tmp_path, monkeypatch):
    """The study's commands run in this process (in_process_launcher): its plan, training, evaluation and report
    as they are, without a process per command."""
    in_process_launcher(monkeypatch)
    model = tiny_model_folder(tmp_path, model_type)
    out = str(tmp_path / "out")
    run(STUDY, "--pretrained_ckpt", model, "--data_root", SAMPLE, "--tasks", "CB", "--settings", "attention_qv keys",
        "attention_qv values", "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
        "1", "--max_seq_length", "64", "--dropout", "0", "--max_test_samples", "8", "--scoring", "rank",
        "--output_root", out)
    md = open(os.path.join(out, "CB", "summary.md")).read()
    rows = [line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ") and "[" in line]
    keys_row, values_row = ROWS[model_type]
    if keys_row:
        assert keys_row in rows and values_row in rows, rows
    else:
        assert any(r.endswith("(keys)") for r in rows) and any(r.endswith("(values)") for r in rows), rows
    assert " vs " in md and "(keys) vs " in md and "## What each adapter changed" in md
    records = [json.load(open(os.path.join(out, "CB", d, "experiment.json"))) for d in os.listdir(os.path.join(out, "CB"))
               if os.path.isfile(os.path.join(out, "CB", d, "assets", "adapter_config.json"))]
    roles = sorted(sorted({r for r in rec["module_roles"].values() if not r.startswith("attention")}) for rec in records)
    assert len(roles) == 2 and all(r.startswith("keys") for r in roles[0]) and roles[1] == ["values"], roles
    for rec in records:  # the adapted paths are those of the roles, layer by layer, in both layers
        layers = {p.split(".")[p.split(".").index("layers" if "layers" in p else "h") + 1] for p, _ in rec["adapted"]}
        assert layers == {"0", "1"}
    assert os.path.getsize(os.path.join(out, "CB", "summary.png")) > 10_000
