"""Knowledge editing (keys_values/editing): the three formats of edit requests and their faults told in one line,
the metrics against numbers computed by hand, and the editor on tiny models of several architectures: only the
chosen weights change, the weights come back bit for bit, several edits at once equal edits one at a time, the
fast way equals the plain way, the objectives' losses, the bound, LoRA, sequential edits."""

import json
import math
import os

import pytest
import torch

from conftest import small_llama
from keys_values import environment, roles
from keys_values.editing import metrics, records
from keys_values.editing.config import editing_config
from keys_values.editing.editor import Editor
from keys_values.editing.plan import default_arms, default_layer, resolve_arm
from keys_values.editing.stack import encode
from tiny_models import meta_model, tiny_model, tokenizer
from utils import UserError

ROME = {"case_id": 7, "requested_rewrite": {"prompt": "The capital of {} is", "subject": "Zorbania",
                                            "target_new": {"str": "Quelmont"}, "target_true": {"str": "Varsk"}},
        "paraphrase_prompts": ["Zorbania's capital city is", "The seat of Zorbania's government is"],
        "neighborhood_prompts": ["The capital of Pelland is", "The capital of Drovia is"]}
FLAT = {"case_id": 3, "prompt": "The capital of Zorbania is", "subject": "Zorbania", "target_new": "Quelmont",
        "ground_truth": "Varsk", "rephrase_prompt": "Zorbania's capital city is",
        "locality_prompt": "The capital of Pelland is", "locality_ground_truth": "Varsk"}
ZSRE = {"subject": "Zorbania", "src": "What is the capital of Zorbania?", "alt": "Quelmont", "answers": ["Varsk"],
        "rephrase": "Which city is Zorbania's capital?", "loc": "nq question: who wrote the anthem of Pelland",
        "loc_ans": "Ira Holm", "pred": "Varsk"}


def write(tmp_path, rows, name="edits.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


# ---- formats -----------------------------------------------------------------------------------------------

def test_the_three_formats_are_read_into_one_shape(tmp_path):
    [rome], fmt, _ = records.load(write(tmp_path, [ROME]))
    assert fmt == "counterfact" and rome.prompt == "The capital of Zorbania is" and rome.case_id == 7
    assert (rome.target_new, rome.target_true) == ("Quelmont", "Varsk") and len(rome.paraphrases) == 2
    assert rome.neighbours == (("The capital of Pelland is", "Varsk"), ("The capital of Drovia is", "Varsk"))
    [flat], fmt, _ = records.load(write(tmp_path, [FLAT], "flat.jsonl"))
    assert fmt == "counterfact-flat" and flat.prompt == rome.prompt and flat.paraphrases == ("Zorbania's capital city is",)
    assert flat.neighbours == (("The capital of Pelland is", "Varsk"),) and flat.case_id == 3
    [z], fmt, _ = records.load(write(tmp_path, {"data": [ZSRE]}, "zsre.json"))
    assert fmt == "zsre" and z.prompt == ZSRE["src"] and (z.target_new, z.target_true) == ("Quelmont", "Varsk")
    assert z.neighbours == ((ZSRE["loc"], "Ira Holm"),) and z.case_id == 0  # its index, where it has no case_id


@pytest.mark.parametrize("record,message", [
    ({**FLAT, "target_new": 5}, "record 0: field 'target_new' is a number, not a text"),
    ({k: v for k, v in FLAT.items() if k != "ground_truth"}, "record 0: field 'ground_truth' is missing"),
    ({**FLAT, "prompt": "  "}, "record 0: field 'prompt' is a text"),
    ({**ROME, "requested_rewrite": {**ROME["requested_rewrite"], "prompt": "The capital is"}},
     "field 'requested_rewrite.prompt' has no {} where the subject goes"),
    ({**ROME, "requested_rewrite": {**ROME["requested_rewrite"], "target_new": {"id": "Q1"}}},
     "field 'requested_rewrite.target_new.str' is missing"),
    ({**ROME, "neighborhood_prompts": ["ok", 3]}, "field 'neighborhood_prompts[1]' is a number"),
    ({**ZSRE, "answers": []}, "field 'answers' is a list, not a text or a list of texts"),
    ({**FLAT, "locality_prompt": ["a", "b"], "locality_ground_truth": ["x", "y", "z"]},
     "field 'locality_ground_truth' has 3 answers for 2 locality prompts"),
    ({"question": "q", "answer": "a"}, "record 0 is in no format read here (its fields: question, answer)"),
])
def test_a_bad_record_is_one_line_naming_the_file_the_record_and_the_field(tmp_path, record, message):
    path = write(tmp_path, [record])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("{}", r"\{\}")) as e:
        records.load(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_files_and_sets_that_cannot_be_edits(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="record 1 is MEND's zsRE, record 0 ROME's CounterFact: one format a file"):
        records.load(write(tmp_path, [ROME, ZSRE]))
    with pytest.raises(UserError, match="case_id 7 names two records"):
        records.load(write(tmp_path, [ROME, ROME]))
    with pytest.raises(UserError, match="holds no edit records"):
        records.load(write(tmp_path, []))
    (tmp_path / "cut.json").write_text('[{"case_id": 1, "prompt": "x"')
    with pytest.raises(UserError, match="cut.json line 1: not valid JSON"):
        records.load(str(tmp_path / "cut.json"))
    with pytest.raises(UserError, match="give a .json or .jsonl file"):
        records.load(write(tmp_path, [ROME], "edits.csv"))
    monkeypatch.setattr(environment, "hub_reachable", lambda: False)
    with pytest.raises(UserError, match="--data azhx/counterfact: no such file here, and the hub cannot be reached"):
        records.load("azhx/counterfact")
    with pytest.raises(UserError, match="no such file"):
        records.load(str(tmp_path / "missing.json"))


def test_each_seed_draws_its_own_sample_in_file_order():
    edits = [records.EditRequest(i, f"p{i}", None, "a", "b", (), ()) for i in range(20)]
    a, b = records.sample(edits, 5, 1), records.sample(edits, 5, 2)
    assert len(a) == 5 and [e.case_id for e in a] == sorted(e.case_id for e in a) and a != b
    assert records.sample(edits, 5, 1) == a and records.sample(edits, None, 1) == edits


def test_the_bundled_edits_are_rome_format_with_paraphrases_and_neighbours():
    edits, fmt, _ = records.load(os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample_data", "edits",
                                              "counterfact.json"))
    assert fmt == "counterfact" and len(edits) == 100
    assert all(len(e.paraphrases) == 2 and 1 <= len(e.neighbours) <= 5 and e.target_new != e.target_true for e in edits)
    assert all(answer == e.target_true for e in edits for _, answer in e.neighbours)


# ---- metrics, by hand ----------------------------------------------------------------------------------------

def scored(nll, argmax=None):
    return {"nll": nll, "correct": [1.0] if nll < 1 else [0.0], "argmax": argmax or [1]}


def test_metrics_of_one_edit_computed_by_hand():
    edit = records.EditRequest(0, "P", None, "new", "true", ("Q1", "Q2"), (("N1", "n1"), ("N2", "n2")))
    probes = metrics.probes(edit)
    assert [(g, i, role) for g, i, _, _, role in probes] == [
        ("rewrite", 0, "new"), ("rewrite", 0, "true"), ("paraphrase", 0, "new"), ("paraphrase", 0, "true"),
        ("paraphrase", 1, "new"), ("paraphrase", 1, "true"), ("neighbour", 0, "new"), ("neighbour", 0, "true"),
        ("neighbour", 1, "new"), ("neighbour", 1, "true")]
    # before: the true target likelier everywhere; after: new wins the rewrite and one paraphrase, one neighbour flips
    pre = [scored(3.0), scored(0.5), scored(3.0), scored(0.5), scored(3.0), scored(0.5), scored(4.0),
           scored(0.2, [5, 6]), scored(4.0), scored(0.3, [7, 8])]
    post = [scored(0.1), scored(2.0), scored(0.4), scored(1.5), scored(2.0), scored(1.0), scored(0.1),
            scored(0.9, [5, 9]), scored(3.0), scored(0.3, [7, 8])]
    m = metrics.per_edit(probes, pre, post)
    assert m["known"] is True
    assert m["pre"]["efficacy_success"] == 0.0 and m["pre"]["neighborhood_success"] == 1.0
    p = m["post"]
    assert p["efficacy_success"] == 1.0 and p["paraphrase_success"] == 0.5 and p["neighborhood_success"] == 0.5
    assert p["efficacy_magnitude"] == pytest.approx(math.exp(-0.1) - math.exp(-2.0))
    assert p["paraphrase_magnitude"] == pytest.approx(((math.exp(-0.4) - math.exp(-1.5)) +
                                                       (math.exp(-2.0) - math.exp(-1.0))) / 2)
    assert p["neighborhood_magnitude"] == pytest.approx(((math.exp(-0.9) - math.exp(-0.1)) +
                                                         (math.exp(-0.3) - math.exp(-3.0))) / 2)
    assert p["rewrite_acc"] == 1.0 and p["rephrase_acc"] == 0.5  # nll < 1 made the token right here
    assert p["locality"] == pytest.approx((0.5 + 1.0) / 2)  # neighbour 0: one of two argmax tokens changed
    assert p["neighborhood_acc"] == pytest.approx((1.0 + 1.0) / 2)
    agg = metrics.aggregate([m, m])
    assert agg["n"] == 2 and agg["score"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / 0.5))


def test_ngram_entropy_by_hand():
    assert metrics.ngram_entropy("a a a a") == 0.0  # one 2-gram, one 3-gram
    # "a b a b": 2-grams ab, ba, ab (entropy of 2/3, 1/3), 3-grams aba, bab (1 bit)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert metrics.ngram_entropy("a b a b") == pytest.approx((h2 * 2 / 3 + 1.0 * 4 / 3) / 2)


# ---- the editor on tiny models --------------------------------------------------------------------------------

def settings(*argv):
    return editing_config(["--steps", "6", "--learning_rate", "1e-2", "--early_stop_loss", "1e-6", *argv])


EDITS = [records.EditRequest(i, f"The capital of {s} is", s, new, "Varsk", (f"{s}'s capital city is",),
                             ((f"The capital of {o} is", "Varsk"),))
         for i, (s, new, o) in enumerate([("Zorbania", "Quelmont", "Pelland"), ("Drovia", "Amberlight", "Tessa"),
                                          ("Kelmar", "Ostrava", "Brunn")])]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return tiny_model("llama", layers=3)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def scores_by_hand(model, tok, edit):
    """Each probe's NLL and argmax from plain forwards of the whole model, one sequence at a time."""
    out = []
    for _, _, p, t, _ in metrics.probes(edit):
        seq, start = encode(tok, p, t)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        rows = logp[start - 1:len(seq) - 1]
        target = torch.tensor(seq[start:])
        out.append((-rows.gather(1, target[:, None]).mean().item(), rows.argmax(-1).tolist()))
    return out


def test_only_the_chosen_weights_change_and_come_back_bit_for_bit(llama):
    tok = tokenizer()
    before = state(llama)
    paths, _ = resolve_arm(["values"], llama, 1)
    assert paths == ["model.layers.1.mlp.down_proj"]
    ed = Editor(llama, tok, 1, paths, settings(), batch=2)
    infos = ed.edit_batch(EDITS[:2])
    assert all(i["steps"] == 6 and i["losses"][0] > i["losses"][-1] for i in infos)  # the edits take
    changed = ed.edited_weight(paths[0], 0)
    assert not torch.equal(changed, before["model.layers.1.mlp.down_proj.weight"])
    assert not torch.equal(ed.edited_weight(paths[0], 0), ed.edited_weight(paths[0], 1))  # each edit its own change
    after = {k: v for k, v in llama.state_dict().items() if not k.endswith((".D", ".A", ".B"))}
    assert {k.replace(".base.", ".") for k in after} == set(before)
    assert all(torch.equal(after[k], v if k in before else v) for k, v in after.items() if k in before)
    assert infos[0]["delta"][paths[0]] == pytest.approx(
        ((changed - before["model.layers.1.mlp.down_proj.weight"]).norm() /
         before["model.layers.1.mlp.down_proj.weight"].norm()).item(), rel=1e-5)
    ed.reset()
    ed.remove()
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())
    ed = Editor(llama, tok, 1, paths, settings())
    w = ed.weights()[paths[0]]
    kept = w[0, 0].item()
    with torch.no_grad():
        w[0, 0] = kept + 1.0  # a weight that did not come back is caught
    with pytest.raises(UserError, match="restoring the model failed"):
        ed.check_restored()
    with torch.no_grad():
        w[0, 0] = kept
    ed.remove()
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())


@pytest.mark.parametrize("objective", ["last", "target"])
def test_edits_at_once_equal_edits_alone_and_fast_equals_plain(llama, objective):
    tok = tokenizer()
    paths, _ = resolve_arm(["keys_up"], llama, 2)
    cfg = settings("--objective", objective)
    together = Editor(llama, tok, 2, paths, cfg, batch=3)
    spans = [together.encode(metrics.probes(e)) for e in EDITS]
    firsts = [together.first_scores(s) for s in spans]
    infos = together.edit_batch(EDITS)
    batch = [together.scores(s, kept, b) for b, (s, (_, kept)) in enumerate(zip(spans, firsts))]
    together.reset()
    together.remove()
    for way in ("alone", "plain"):
        ed = Editor(llama, tok, 2, paths, cfg, plain=way == "plain", batch=1)
        for b, e in enumerate(EDITS):
            ed.reset()
            pre, kept = ed.first_scores(spans[b])
            for x, y in zip(pre, firsts[b][0]):
                assert x["nll"] == pytest.approx(y["nll"], abs=1e-5) and x["argmax"] == y["argmax"]
            [info] = ed.edit_batch([e])
            assert info["losses"] == pytest.approx(infos[b]["losses"], abs=1e-5), (way, b)
            for x, y in zip(ed.scores(spans[b], kept), batch[b]):
                assert x["nll"] == pytest.approx(y["nll"], abs=1e-4) and x["argmax"] == y["argmax"]
        ed.reset()
        ed.remove()


def test_the_losses_of_the_two_objectives_by_hand(llama):
    tok = tokenizer()
    e = EDITS[0]
    paths, _ = resolve_arm(["values"], llama, 0)
    prompt = tok(e.prompt)["input_ids"]
    target = tok(" " + e.target_new, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(llama(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
    by_hand_last = -logp[target].mean().item()  # FT-L: the last prompt position predicts every target token
    seq, start = encode(tok, e.prompt, e.target_new)
    with torch.no_grad():
        rows = torch.log_softmax(llama(input_ids=torch.tensor([seq])).logits[0], -1)[start - 1:len(seq) - 1]
    by_hand_target = -rows.gather(1, torch.tensor(seq[start:])[:, None]).mean().item()  # FT-M: teacher forcing
    for objective, expected in (("last", by_hand_last), ("target", by_hand_target)):
        ed = Editor(llama, tok, 0, paths, settings("--objective", objective, "--steps", "1"))
        [info] = ed.edit_batch([e])
        assert info["losses"][0] == pytest.approx(expected, abs=1e-5), objective
        ed.reset()
        ed.remove()


def test_early_stop_and_the_bound(llama):
    tok = tokenizer()
    paths, _ = resolve_arm(["values"], llama, 1)
    ed = Editor(llama, tok, 1, paths, settings("--early_stop_loss", "1000"))
    [info] = ed.edit_batch([EDITS[0]])
    assert info["steps"] == 0 and info["stopped_early"] and len(info["losses"]) == 1  # no step below the threshold
    ed.remove()
    w0 = llama.model.layers[1].mlp.down_proj.weight.detach().clone()
    c = 0.05
    ed = Editor(llama, tok, 1, paths, settings("--norm_constraint", str(c), "--learning_rate", "1"))
    ed.edit_batch([EDITS[0]])
    change = (ed.edited_weight(paths[0]) - w0).abs().max().item()
    bound = c * w0.pow(2).mean().sqrt().item()
    assert bound * 0.99 < change <= bound * (1 + 1e-5)  # the bound was reached and held
    ed.reset()
    ed.remove()


def test_lora_edits_and_sequential_edits(llama):
    tok = tokenizer()
    before = state(llama)
    paths, _ = resolve_arm(["keys_gate"], llama, 1)
    ed = Editor(llama, tok, 1, paths, settings("--method", "lora", "--lora_r", "2"), batch=2)
    assert ed.updated_parameters == 2 * (32 + 56)  # rank 2 x (in + out) of the tiny gate_proj
    infos = ed.edit_batch(EDITS[:2])
    assert all(i["steps"] == 6 for i in infos) and infos[0]["delta"][paths[0]] > 0
    ed.reset()
    ed.remove()
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())
    ed = Editor(llama, tok, 1, paths, settings("--sequential"))
    first = ed.edit_batch([EDITS[0]])[0]
    ed.fold()
    w1 = ed.weights()[paths[0]].detach().clone()
    ed.edit_batch([EDITS[1]])
    ed.fold()
    assert not torch.equal(ed.weights()[paths[0]], w1) and first["steps"] == 6  # the second on top of the first
    ed.restore()
    ed.remove()
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())


@pytest.mark.parametrize("model_type,arms", [("gpt2", [["keys"], ["values"]]), ("qwen3_moe", [["keys"], ["values"]]),
                                             ("llama", [["keys_up"], ["keys_gate"], ["values"]])])
def test_the_roles_resolve_and_edit_on_gpt2_and_a_mixture_of_experts(model_type, arms):
    meta = meta_model(model_type, layers=1 if model_type == "qwen3_moe" else 2)
    assert default_arms(meta) == arms and default_layer(30) == 20 and default_layer(32) == 21
    torch.manual_seed(0)
    model = tiny_model(model_type, layers=1 if model_type == "qwen3_moe" else 2)
    tok = tokenizer()
    for words in arms:
        paths, path_roles = resolve_arm(words, model, 0)
        expected = {"gpt2": {"keys": ["transformer.h.0.mlp.c_fc"], "values": ["transformer.h.0.mlp.c_proj"]},
                    "qwen3_moe": {"keys": ["model.layers.0.mlp.experts.gate_up_proj"],
                                  "values": ["model.layers.0.mlp.experts.down_proj"]}}.get(model_type, {})
        if expected:
            assert paths == expected[words[0]] and set(path_roles.values()) <= {"keys", "values"}
        before = state(model)
        ed = Editor(model, tok, 0, paths, settings())
        spans = ed.encode(metrics.probes(EDITS[0]))
        pre, kept = ed.first_scores(spans)
        [info] = ed.edit_batch([EDITS[0]])
        post = ed.scores(spans, kept)
        assert info["steps"] == 6 and post[0]["nll"] < pre[0]["nll"], (model_type, words)  # the new target likelier
        ed.reset()
        ed.remove()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_scores_equal_those_computed_by_hand(llama):
    tok = tokenizer()
    paths, _ = resolve_arm(["values"], llama, 2)
    ed = Editor(llama, tok, 2, paths, settings())
    spans = ed.encode(metrics.probes(EDITS[1]))
    pre, _ = ed.first_scores(spans)
    for (nll, argmax), s in zip(scores_by_hand(llama, tok, EDITS[1]), pre):
        assert s["nll"] == pytest.approx(nll, abs=1e-5) and s["argmax"] == argmax
    ed.remove()


def test_an_arm_missing_from_a_layer_or_the_model_is_one_line():
    meta = meta_model("gpt2")
    with pytest.raises(UserError, match="role word keys_gate"):
        resolve_arm(["keys_gate"], meta, 0)
    with pytest.raises(UserError, match="nothing of it in layer 5"):
        resolve_arm(["values"], meta, 5)
    assert roles.resolve(["values"], meta).target_modules == ["mlp.c_proj"]


def test_small_llama_folder_is_editable(tmp_path):
    """A saved model folder (what --pretrained_ckpt reads) plans its layers and arms."""
    from keys_values.editing.plan import EditPlan

    folder = small_llama(tmp_path, layers=3)
    data = write(tmp_path, [ROME, {**ROME, "case_id": 8}])
    plan = EditPlan(editing_config(["--pretrained_ckpt", folder, "--data", data, "--output_root", str(tmp_path / "o")]))
    assert plan.layers == [2] and [r.arm for r in plan.runs] == ["keys_up", "keys_gate", "values"]
    assert all(r.updated == 64 * 160 and r.state == "new" for r in plan.runs)
    assert plan.runs[0].folder.endswith(os.path.join("knowledge_editing", "small-llama", os.path.basename(plan.folder),
                                                     "ft-last-layer2-keys_up"))


def test_an_edit_stopped_early_in_a_batch_is_left_as_it_is_while_the_others_go_on(llama):
    """Each edit of a batch has its own early stop: one whose loss is below the threshold takes no step (and its
    change stays none) while the other keeps stepping, as each would alone."""
    tok = tokenizer()
    paths, _ = resolve_arm(["values"], llama, 1)
    probe = Editor(llama, tok, 1, paths, settings("--steps", "1"), batch=2)
    first = [i["losses"][0] for i in probe.edit_batch(EDITS[:2])]
    probe.reset()
    probe.remove()
    threshold = sum(first) / 2  # between the two edits' first losses
    ed = Editor(llama, tok, 1, paths, settings("--early_stop_loss", str(threshold)), batch=2)
    infos = ed.edit_batch(EDITS[:2])
    low = 0 if first[0] < first[1] else 1
    assert infos[low]["steps"] == 0 and infos[1 - low]["steps"] > 0
    assert torch.count_nonzero(ed.edited_weight(paths[0], low) - ed.weights()[paths[0]]) == 0
    assert infos[low]["delta"][paths[0]] == 0.0 and infos[1 - low]["delta"][paths[0]] > 0
    ed.reset()
    ed.remove()
