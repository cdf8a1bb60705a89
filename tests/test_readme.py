"""The README's commands: every one parses with the scripts' current flags, every study command resolves to the
training flags the README says, and the first-ten-minutes block runs on the sample data (slow). No README line
names a folder outside the repository."""

import os
import re
import shlex
import subprocess
import sys

import pytest

import get_eval_tasks
import study
from conftest import ROOT
from keys_values import config
from keys_values.editing.config import editing_config
from keys_values.study import recipe

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
TASKS_T = "20_Newsgroups_Fixed boolq COPA CB race_high QNLI"


def blocks(text):
    """The README's ```sh blocks, each as (the comment line before it, its text)."""
    return [(m.group(1) or "", m.group(2)) for m in
            re.finditer(r"(?:(<!--[^>]*-->)\n)?```sh\n(.*?)```", text, flags=re.S)]


def commands():
    """Every command line of the README's shell blocks, continuation lines joined, shell variables filled in as
    the block sets them, comments dropped."""
    out = []
    for _, block in blocks(README):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            line = line.replace("$T", TASKS_T).replace("$m", "up_proj").replace('"$e"', "experiments/CB/x")
            out.append(line)
    return out


def argv_of(line, script):
    words = shlex.split(line)
    return words[words.index(script) + 1:]


def test_every_readme_command_parses_with_the_current_flags():
    checked = set()
    for line in commands():
        for script, parse in (("llama2_classification_multi_tasks.py", lambda a: config.training_config(a).check()),
                              ("llama2_classification_multi_tasks_inference.py", config.evaluation_config),
                              ("study.py", lambda a: recipe.parse(study.build_parser(), a)),
                              ("get_eval_tasks.py", get_eval_tasks.build_parser().parse_args),
                              ("edit_knowledge.py", lambda a: editing_config(a).check())):
            if re.search(rf"(^|[ /]){re.escape(script)}( |$)", line):
                parse(argv_of(line, script))
                checked.add(script)
        if line.startswith("make "):
            targets = re.findall(r"^([a-z-]+):", open(os.path.join(ROOT, "Makefile")).read(), flags=re.M)
            assert line.split()[1] in targets, line
    assert len(checked) == 5  # the README shows all five scripts


def test_every_readme_study_command_runs_the_flags_it_says():
    """With any model but the embedded one, the training script's defaults (the original's); the small recipe
    only for the embedded model."""
    found = 0
    for line in commands():
        if not re.search(r"(^| )study\.py", line):
            continue
        own, argv, why = recipe.parse(study.build_parser(), argv_of(line, "study.py"))
        t = config.training_config(argv)
        if t.pretrained_ckpt.endswith("SmolLM2-135M-Instruct"):
            assert "small study" in why and (t.epochs, t.loss_on) == (3, "completion")
            continue
        found += 1  # any other model: the original's recipe, but for the flags the line gives
        assert (t.epochs, t.learning_rate, t.loss_on, t.max_seq_length, t.lora_r, t.dropout) == (5, 2e-4, "all", 512,
                                                                                              8, 0.1), line
        assert t.bnb and t.gradient_checkpointing and "original" in why and t.tasks == TASKS_T.split(), line
        batch = (t.per_device_train_batch_size, t.gradient_accumulation_steps)
        assert batch == ((32, 1) if "--gradient_accumulation_steps 1" in line else (32, 2)), line
    assert found >= 4


def test_no_readme_line_names_a_folder_outside_the_repository():
    for path in ["README.md", *(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))]:
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        assert "../" not in text and "shared/" not in text and "session" not in text, path


@pytest.mark.slow
def test_the_first_ten_minutes_run_on_the_sample_data(tmp_path):
    [block] = [b for comment, b in blocks(README) if "first ten minutes" in comment]
    for name in os.listdir(ROOT):  # a checkout of our own, so that experiments/ is written there
        if name.endswith(".py") or name in ("models", "sample_data"):
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.pathsep.join([os.path.dirname(sys.executable),
                                                                         os.environ["PATH"]])}
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("python ", f"{sys.executable} ")],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("'loss': ") >= 10  # the loss, step by step
    md = open(tmp_path / "experiments" / "CB" / "summary.md").read()
    assert "| q,v+up (keys) vs q,v+down (values) |" in md and "(n=40)" in md
    # both adapters learned: above the majority class, their intervals clear of it, not a constant predictor
    import glob
    import json

    found = glob.glob(str(tmp_path / "experiments" / "CB" / "*" / "metrics-new5" / "CB_metrics_update.json"))
    assert len(found) == 2
    for path in found:
        m = json.load(open(path))
        assert m["accuracy_ci95"][0] > m["majority_baseline"] and len(m["prediction_counts"]) > 1, (path, m)
    rows = [line for line in md.splitlines() if line.startswith(("| q,v+up", "| q,v+down"))][:2]
    assert len(rows) == 2 and not any("†" in r or "‡" in r for r in rows), rows


def test_the_readmes_task_of_your_own_is_a_task_that_loads(tmp_path, monkeypatch):
    """The README's entry for a task of one's own, evaluated as prompts.py would, loads its files and prompts."""
    import json as json_

    import prompts
    from keys_values import data

    [code] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    entry = [line for line in code.splitlines() if line.strip() and not line.startswith("#")][0].rstrip(",")
    task = eval(entry, vars(prompts))
    monkeypatch.setitem(prompts.TASKS, task.name, task)
    folder = tmp_path / task.name
    folder.mkdir()
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2} for i in range(4)]
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json_.dumps(r) + "\n" for r in rows))
    examples, _ = data.load(task, str(tmp_path), "train")
    assert [e.label for e in examples] == ["entailment", "not_entailment"] * 2
    assert prompts.prompt_text(task, examples[0].fields).startswith("### Premise:p0")
