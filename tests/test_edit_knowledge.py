"""edit_knowledge.py end to end on a tiny Llama (in this process): the folders, records, metrics and comparison it
writes; a finished run reused, an interrupted one resumed edit by edit; sequential edits; the launchers' one-run
commands; every bad flag one line before anything loads. And one edit of the embedded model that takes and keeps
its neighbours, its numbers computed by hand."""

import json
import os

import pytest
import torch
from test_editing import ROME

from conftest import EDIT, MODEL, in_process_launcher, run, small_llama
from keys_values import models
from keys_values.editing import metrics, records
from keys_values.editing.config import editing_config
from keys_values.editing.editor import Editor
from keys_values.editing.plan import resolve_arm
from keys_values.editing.stack import encode
from keys_values.precision import Precision, placement


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_llama(tmp_path_factory.mktemp("m"), layers=3)


@pytest.fixture
def data(tmp_path):
    subjects = ["Zorbania", "Drovia", "Kelmar", "Pelland", "Tessa", "Brunn"]
    rows = []
    for i, s in enumerate(subjects):
        rw = {**ROME["requested_rewrite"], "subject": s}
        rows.append({**ROME, "case_id": i, "requested_rewrite": rw,
                     "paraphrase_prompts": [f"{s}'s capital city is"],
                     "neighborhood_prompts": [f"The capital of {o} is" for o in subjects if o != s][:2]})
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(rows))
    return str(path)


def base(model, data, out, *extra):
    return ["--pretrained_ckpt", model, "--data", data, "--output_root", out, "--steps", "3", "--learning_rate", "1e-2",
            *extra]


def runs_of(out):
    [folder] = [os.path.join(r, d) for r, ds, _ in os.walk(os.path.join(out, "knowledge_editing")) for d in ds
                if d.startswith("edits-")]
    return folder, sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and d.startswith("ft-"))


def test_a_command_writes_every_arm_and_the_comparison_and_reruns_reuse_it(model, data, tmp_path):
    out = str(tmp_path / "out")
    p = run(EDIT, *base(model, data, out))
    folder, arms = runs_of(out)
    # the folder names the method, objective, layer and arm; a hash the settings not the defaults (3 steps, lr 1e-2)
    assert [a.rsplit("-h", 1)[0] for a in arms] == ["ft-last-layer2-keys_gate", "ft-last-layer2-keys_up",
                                                    "ft-last-layer2-values"] and len({a[-8:] for a in arms}) == 1
    for arm in arms:
        m = json.load(open(os.path.join(folder, arm, "metrics.json")))
        assert m["n"] == 6 and {"efficacy_success", "paraphrase_success", "neighborhood_success", "score"} <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("efficacy_success", "paraphrase_success", "neighborhood_success"))
        assert m["updated_parameters"] == 64 * 160 and m["all"]["pre"]["n"] == 6
        rows = [json.loads(line) for line in open(os.path.join(folder, arm, "edits.jsonl"))]
        assert [r["case_id"] for r in rows] == list(range(6)) and all(r["steps"] <= 3 for r in rows)
        assert all(len(r["probes"]) == 2 * (1 + 1 + 2) and "nll_pre" in r["probes"][0] for r in rows)
    md = open(os.path.join(folder, "summary.md")).read()
    assert "| keys_up vs values | 6 |" in md and "| keys_gate vs values | 6 |" in md and "McNemar" in md
    assert "| unedited |" in md and os.path.getsize(os.path.join(folder, "summary.png")) > 10_000
    assert "layers edited: 2 (about two-thirds down" in p.stdout
    before = {a: open(os.path.join(folder, a, "edits.jsonl")).read() for a in arms}
    p = run(EDIT, *base(model, data, out))
    assert "0 runs to do (3 finished already)" in p.stdout
    assert {a: open(os.path.join(folder, a, "edits.jsonl")).read() for a in arms} == before


def test_an_interrupted_run_resumes_edit_by_edit(model, data, tmp_path):
    out = str(tmp_path / "out")
    argv = base(model, data, out, "--target_modules", "values")
    run(EDIT, *argv)
    folder, [arm] = runs_of(out)
    path = os.path.join(folder, arm, "edits.jsonl")
    whole = [json.loads(line) for line in open(path)]
    lines = open(path).read().split("\n")
    open(path, "w").write("\n".join(lines[:3]) + "\n" + lines[3][:40])  # three whole records, a fourth cut off
    os.unlink(os.path.join(folder, arm, "metrics.json"))
    p = run(EDIT, *argv)
    assert "its last record was cut off" in p.stdout and "3 edits made before, 3 to make" in p.stdout
    resumed = [json.loads(line) for line in open(path)]
    assert [r["case_id"] for r in resumed] == list(range(6))
    for a, b in zip(whole, resumed):  # the edits made again give the same numbers
        assert a["post"]["efficacy_success"] == b["post"]["efficacy_success"]
        assert a["probes"][0]["nll_post"] == pytest.approx(b["probes"][0]["nll_post"], abs=1e-4)


def test_sequential_edits_and_layers_and_seeds_through_a_launcher(model, data, tmp_path, monkeypatch):
    ran = in_process_launcher(monkeypatch)
    out = str(tmp_path / "out")
    p = run(EDIT, *base(model, data, out, "--target_modules", "keys_up", "values", "--layers", "0", "2", "--seeds",
                        "1", "2", "--max_edits", "4", "--sequential", "--launcher", "local"))
    assert len(ran) == 8 and all("--sequential" in c and c[c.index("--layers") + 1] in ("0", "2") for c in ran)
    folder, arms = runs_of(out)
    assert len(arms) == 8 and all("-sequential" in a for a in arms) and any("-seed2-" in a for a in arms)
    for arm in arms:
        m = json.load(open(os.path.join(folder, arm, "metrics.json")))
        assert m["n"] == 4 and m["identity"]["sequential"] is True
    md = open(os.path.join(folder, "summary.md")).read()
    assert "## Layer sweep" in md and "## Layer 0:" in md and "## Layer 2:" in md and "sequential" in md
    assert "report:" in p.stdout


def test_a_dry_run_writes_nothing_and_loads_no_weights(model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("weights loaded"))
    before = sorted(tmp_path.rglob("*"))
    p = run(EDIT, *base(model, data, str(tmp_path / "out"), "--dry_run"))
    assert sorted(tmp_path.rglob("*")) == before
    assert "keys_up" in p.stdout and "model.layers.2.mlp.down_proj (values)" in p.stdout and "GiB" in p.stdout


@pytest.mark.parametrize("extra,message", [
    (["--layers", "9"], "--layers 9: the model has layers 0 to 2"),
    (["--layers", "-1"], "argument --layers: '-1': layer indices start at 0"),
    (["--method", "lora", "--norm_constraint", "0.1"], "--norm_constraint bounds the edited weights themselves"),
    (["--seeds", "1", "2"], "every seed would take all 6 records: give --max_edits below 6"),
    (["--target_modules", "values", "values"], "names the arm 'values' twice"),
    (["--target_modules", "up_prj"], "unknown target module 'up_prj'"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--learning_rate", "nan"], "--learning_rate must be positive"),
    (["--objective", "first"], "argument --objective: invalid choice: 'first'"),
    (["--data", "nowhere.json"], "--data nowhere.json: no such file"),
])
def test_every_bad_flag_is_one_line_before_anything_loads(model, data, tmp_path, extra, message, monkeypatch):
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("weights loaded"))
    p = run(EDIT, *base(model, data, str(tmp_path / "out"), *extra), check=False)
    assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_of_other_settings_in_the_folder_is_refused_unless_overwritten(model, data, tmp_path):
    out = str(tmp_path / "out")
    argv = base(model, data, out, "--target_modules", "values")
    run(EDIT, *argv)
    folder, [arm] = runs_of(out)
    ident = json.load(open(os.path.join(folder, arm, "identity.json")))
    ident["identity"]["data"] = "another"
    json.dump(ident, open(os.path.join(folder, arm, "identity.json"), "w"))
    p = run(EDIT, *argv, check=False)
    assert p.returncode == 2 and "holds a run made with other settings: --overwrite replaces it" in p.stderr
    run(EDIT, *argv, "--overwrite")
    assert json.load(open(os.path.join(folder, arm, "identity.json")))["identity"]["data"] != "another"


@pytest.mark.slow
def test_one_edit_of_the_embedded_model_takes_and_keeps_its_neighbours_by_hand():
    """FT-M on the keys (up_proj) of layer 20: the new capital becomes the likeliest answer after the prompt and
    its paraphrase, and the neighbours' capitals stay as they were; every number the editor reports equals one
    computed by hand from plain forwards of the whole edited model."""
    model = models.load_base(MODEL, Precision("fp32", "fp32", False, False, False, ""), placement(0, False)).eval()
    tok = models.load_tokenizer(MODEL)
    e = records.EditRequest(0, "The capital of Zorbania is", "Zorbania", "Quelmont", "Varsk",
                            ("Zorbania's capital city is",), (("The capital of France is", "Paris"),
                                                              ("The capital of Italy is", "Rome")))
    paths, _ = resolve_arm(["keys_up"], model, 20)
    ed = Editor(model, tok, 20, paths, editing_config(["--objective", "target"]))
    probes = metrics.probes(e)
    spans = ed.encode(probes)
    pre, kept = ed.first_scores(spans)
    [info] = ed.edit_batch([e])
    post = ed.scores(spans, kept)
    m = metrics.per_edit(probes, pre, post)
    ed.rows(0)  # by hand: the whole edited model, one sequence at a time
    for (_, _, p, t, _), ours in zip(probes, post):
        seq, start = encode(tok, p, t)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        rows = logp[start - 1:len(seq) - 1]
        assert ours["nll"] == pytest.approx(-rows.gather(1, torch.tensor(seq[start:])[:, None]).mean().item(), abs=1e-4)
        assert ours["argmax"] == rows.argmax(-1).tolist()
    ed.rows(None)
    assert m["pre"]["efficacy_success"] == 0.0 and m["post"]["efficacy_success"] == 1.0  # the edit takes
    assert m["post"]["paraphrase_success"] == 1.0 and m["post"]["rewrite_acc"] == 1.0
    assert m["pre"]["neighborhood_success"] == 1.0 and m["post"]["neighborhood_success"] == 1.0  # neighbours kept
    assert m["post"]["locality"] == 1.0 and info["steps"] <= 25
    ed.reset()
    ed.remove()
