"""Benchmark: training and evaluation speed against this machine's limits, against the original's way of
evaluating, against this project's previous implementation (A/B), and against the tools a user would pick
instead (trl's SFTTrainer, lm-evaluation-harness). Every number comes from one run on one machine; each
measurement runs in its own child process (for a clean peak memory), one after another. Prints a table and
writes BENCHMARKS.md. The peers come from bench/requirements.txt (`make bench` installs them).

    python bench/bench.py --study    # make bench (about 50 minutes on 2 cores, the small study included)
    python bench/bench.py --quick    # fewer steps and prompts (a smoke test)

Model FLOPs per trained token (LoRA: frozen weights need input gradients but no weight gradients):
    4 * N_linear + 12 * n_layers * seq_len * d_model
N_linear counts the weights of every Linear layer the tokens pass through (the output layer only at the
positions whose loss counts), the second term is attention's two products (forward 4*L*s*d, backward
8*L*s*d). LoRA's own matrices are under 1% and left out. Utilisation = measured FLOP/s over the matmul
ceiling of the dtype the run computes in.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")
SAMPLE = os.path.join(ROOT, "sample_data")
TRAIN_TASKS = ["boolq", "COPA", "CB", "RTE"]
EVAL_TASKS = ["boolq", "COPA", "CB", "RTE", "QNLI"]  # 40 evaluation rows each: 200 prompts
MODULES = ["q_proj", "v_proj", "up_proj"]
SEQ, BATCH, STEPS, WARM = 512, 4, 5, 2  # the loss is compared after STEPS steps; timing skips WARM of them


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _matmul_rate(m, k, n, dtype, device, repeats):
    import torch

    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


def part_matmul(quick, device="cpu"):
    """Square-matmul ceilings, and (on the CPU) the rate of the model's own largest shapes. Without native bf16
    units a bf16 product is a slow fallback: measured at 512 only, to keep the run short."""
    import torch

    from keys_values import precision

    speedup = None if device != "cpu" else precision.cpu_bf16_speedup(cache=False)
    native = device != "cpu" or speedup >= precision.BF16_FASTER
    out = {"threads": torch.get_num_threads(), "bf16_native": native, "bf16_speedup": speedup}
    repeats = 3 if quick else 10
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = (2048 if device == "cpu" else 8192) if name == "fp32" or native else 512
        out[name] = _matmul_rate(n, n, n, dtype, device, repeats if n > 512 or name == "fp32" else 2)
        out[name + "_size"] = n
        if device == "cpu" and (name == "fp32" or native):
            out[name + "_mlp"] = _matmul_rate(2048, 576, 1536, dtype, device, repeats)
            out[name + "_head"] = _matmul_rate(2048, 576, 49152, dtype, device, max(2, repeats // 3))
    return out


def linear_params(config):
    """(weights of every Linear layer, those of the output layer), counted on the meta device."""
    import torch

    from keys_values import models

    model = models.meta_model(config)
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return total, model.get_output_embeddings().weight.numel()


def training_setup(dtype, loss_on, bnb=False, model_path=MODEL, batch=BATCH, steps=STEPS, checkpointing=None):
    """The training script's own pieces for a benchmark run: args, blocks, precision and the model with LoRA
    (gradient checkpointing as the script's default unless `checkpointing` says)."""
    from transformers import set_seed

    from keys_values import config, lora, models, precision
    from keys_values.training.plan import plan_run

    set_seed(42)  # as the training script does: the same LoRA initialisation in every run
    argv = ["--pretrained_ckpt", model_path, "--data_root", SAMPLE, "--tasks", *TRAIN_TASKS, "--target_modules",
            *MODULES, "--max_seq_length", str(SEQ), "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", "1", "--max_steps", str(steps), "--logging_steps", "1",
            "--save_steps", "100000", "--dtype", dtype, "--loss_on", loss_on, *(["--bnb"] if bnb else []),
            *([] if checkpointing is None else ["--gradient_checkpointing" if checkpointing else "--no-gradient_checkpointing"])]
    plan = plan_run(config.training_config(argv), quiet=True)
    set_seed(42)  # after planning, as the training script does
    tok = models.load_tokenizer(model_path)
    blocks = plan.blocks(tok)
    model = lora.add_lora(models.load_base(model_path, plan.precision, precision.this_placement()), plan.config,
                          plan.precision, plan.targets)
    return plan, tok, blocks, model


def clocked():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.stamps, self.losses = [], {}

        def on_step_end(self, *a, **k):
            self.stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

    return Clock()


def part_train(dtype, loss_on, impl, quick, bnb=False):
    """Trained tokens per second through the training script's own functions (add_lora, training_blocks, fit).
    impl 'previous': the model's own output layer and loss (what this project ran before the chunked loss)."""
    import torch

    from keys_values import precision
    from keys_values.training.trainer import fit

    steps = 3 if quick else STEPS
    plan, tok, blocks, model = training_setup(dtype, loss_on, bnb, steps=steps)
    prec = plan.precision
    clock = clocked()
    with tempfile.TemporaryDirectory() as out:
        fit(model, tok, blocks, plan.config, out, None, prec, precision.placement(0, False), callbacks=[clock],
            chunked_loss=impl == "ours")
    dt = (clock.stamps[-1] - clock.stamps[WARM - 1]) / (steps - WARM)
    cfg = model.config
    n_linear, n_head = linear_params(cfg)
    counted = (sum(y != -100 for b in blocks for y in b["labels"]) / sum(len(b["labels"]) for b in blocks)
               if loss_on == "completion" else 1.0)
    flops = 4 * (n_linear - n_head) + 4 * n_head * counted + 12 * cfg.num_hidden_layers * SEQ * cfg.hidden_size
    tokens = BATCH * SEQ
    return {"dtype": prec.dtype, "bnb": bnb, "loss_on": loss_on, "impl": impl, "steps": steps, "seconds_per_step": dt,
            "tokens_per_second": tokens / dt, "flops_per_token": flops, "model_flops_per_second": tokens * flops / dt,
            "losses": clock.losses, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}


def part_trl(dtype, quick):
    """trl's SFTTrainer (the original's trainer) on the same model, texts, LoRA, batch, block length and steps:
    packing by cutting the stream of texts into blocks ('wrapped', as the original's ConstantLengthDataset)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import prompts
    from keys_values import config, models, precision
    from keys_values.training.plan import training_examples

    steps = 3 if quick else STEPS
    cfg = config.training_config(["--data_root", SAMPLE, "--tasks", *TRAIN_TASKS])
    per_task, _ = training_examples(cfg.check(), cfg, quiet=True)
    texts = [prompts.training_text(prompts.TASKS[n], e.fields, e.label) for n, es in per_task.items() for e in es]
    prec = precision.precision(dtype, False, "train")
    model = models.load_base(MODEL, prec, precision.placement(0, False))
    tok = models.load_tokenizer(MODEL)
    clock = clocked()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, max_length=SEQ, packing=True, packing_strategy="wrapped",
                           dataset_text_field="text", per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                           learning_rate=2e-4, lr_scheduler_type="constant", max_grad_norm=0.3, max_steps=steps,
                           logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                           bf16=prec.autocast, seed=42)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                          target_modules=MODULES)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"text": texts}),
                             peft_config=lora, processing_class=tok, callbacks=[clock])
        trainer.train()
    dt = (clock.stamps[-1] - clock.stamps[WARM - 1]) / (steps - WARM)
    return {"dtype": prec.dtype, "steps": steps, "seconds_per_step": dt, "tokens_per_second": BATCH * SEQ / dt,
            "losses": clock.losses,
            "peak_rss_mib": peak_rss_mib()}


def eval_items(tok, per_task):
    import prompts
    from keys_values import data, packing

    items = []
    for name in EVAL_TASKS:
        task = prompts.TASKS[name]
        examples, _ = data.load(task, SAMPLE, task.eval_split, per_task)
        for e in examples:
            fields, ids = packing.fit_prompt(tok, task, e.fields, 8192 - 20)
            items.append((task, prompts.prompt_text(task, fields), ids))
    return items


def rank_per_candidate(model, tok, items, batch_size=64):
    """This project's previous ranking, the A of the A/B: task by task, every candidate its own sequence
    (prompt tokens, then the label tokenised alone and EOS), right padded, batch_size prompts at a time."""
    import torch

    import prompts

    out = []
    for name in EVAL_TASKS:
        group = [(t, ids) for t, _, ids in items if t.name == name]
        options = prompts.choices(group[0][0])
        answers = [tok(y, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for y in options]
        for s in range(0, len(group), batch_size):
            pairs = [(ids, a) for _, ids in group[s:s + batch_size] for a in answers]
            width = max(len(p) + len(a) for p, a in pairs)
            ids = torch.tensor([p + a + [tok.pad_token_id] * (width - len(p) - len(a)) for p, a in pairs])
            mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in pairs])
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for k in range(0, len(pairs), len(answers)):
                scores = [sum(logp[k + j, len(p) - 1 + i, t].item() for i, t in enumerate(a))
                          for j, (p, a) in enumerate(pairs[k:k + len(answers)])]
                out.append(options[max(range(len(options)), key=scores.__getitem__)])
    return out


def rank_ours(model, tok, items, batch_size=64, eos=True):
    """The evaluation script's ranking over all prompts at once; eos=False scores each label without the EOS
    after it (lm-evaluation-harness's definition), for a like-with-like comparison."""
    import prompts
    from keys_values.evaluation.rank import candidates, rank_tasks

    jobs = {}
    for task, prompt, ids in items:
        job = jobs.setdefault(task.name, {"options": prompts.choices(task), "items": []})
        shared, conts = candidates(tok, prompt, ids, job["options"])
        job["items"].append((shared, conts if eos else [c[:-1] for c in conts]))
    predicted = rank_tasks(model, tok, jobs, argparse.Namespace(batch_size=batch_size))
    return [p for name in EVAL_TASKS for _, p, _ in predicted[name]]


def rank_lm_eval(model, tok, items, batch_size=64):
    """lm-evaluation-harness (HF backend) scoring the same prompts and label strings as a local-file
    multiple_choice task (label right after the prompt: target_delimiter ""), the model already loaded."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import prompts

    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "prompts.jsonl")
        with open(data, "w") as f:
            for task, prompt, _ in items:
                f.write(json.dumps({"prompt": prompt, "choices": prompts.choices(task), "target": 0}) + "\n")
        with open(os.path.join(folder, "kv_lora_rank.yaml"), "w") as f:
            f.write(f"task: kv_lora_rank\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
                    "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{target}}'\ntarget_delimiter: ''\n"
                    "metric_list:\n  - metric: acc\n")
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
        result = simple_evaluate(model=lm, tasks=["kv_lora_rank"], task_manager=TaskManager(include_path=folder),
                                 log_samples=True, verbosity="ERROR")
    samples = sorted(result["samples"]["kv_lora_rank"], key=lambda s: s["doc_id"])
    out = []
    for s in samples:
        scores = [r[0] for r in s["filtered_resps"]]
        out.append(s["doc"]["choices"][max(range(len(scores)), key=scores.__getitem__)])
    return out


def profile_rank(model, tok, items, batch_size=64):
    """Where ranking's time goes: torch.profiler over one pass of the script's ranking; the matrix products'
    share of the operators' time, their FLOPs and the rate they ran at."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        rank_ours(model, tok, items, batch_size)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    mm = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")]
    mm_s = sum(e.self_cpu_time_total for e in mm) / 1e6
    flops = sum(e.flops for e in mm)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:5]
    return {"ops_s": total, "matmul_s": mm_s, "matmul_flops": flops, "matmul_share": mm_s / total,
            "top": [(e.key, e.self_cpu_time_total / 1e6 / total) for e in top]}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def same(a, b):
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


def part_eval(quick, batch_size=64):
    """200 prompts: the original's way (one at a time, sampling, adapter unmerged, as the original loaded it)
    against this project's batched greedy generation and its ranking (A/B with the previous ranking), and
    lm-evaluation-harness ranking the same prompts."""
    import torch
    from peft import LoraConfig, get_peft_model

    import prompts
    from keys_values import models, precision
    from keys_values.evaluation.generate import generate, generate_task

    model = models.load_base(MODEL, precision.precision("auto", False, "generate"), precision.placement(0, False))
    tok = models.load_tokenizer(MODEL)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=MODULES, task_type="CAUSAL_LM")).eval()
    items = eval_items(tok, 10 if quick else 40)
    n = len(items)
    res = {"prompts": n}

    def original():
        for _, _, ids in items:
            with torch.no_grad():
                model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               do_sample=True, top_p=0.95, temperature=1e-3, max_new_tokens=20,
                               pad_token_id=tok.pad_token_id)

    res["original_s"], _ = timed(original)
    model = model.merge_and_unload()  # as the evaluation script does for a 16-bit base

    def greedy(bs):
        args = argparse.Namespace(batch_size=bs, max_new_tokens=20)
        out = []
        for name in EVAL_TASKS:
            group = [(t, ids) for t, _, ids in items if t.name == name]
            task = group[0][0]
            out += generate_task(model, tok, task, [ids for _, ids in group], prompts.choices(task), args)
        return [o[0] for o in out]

    res["generate_s"], batched = timed(lambda: greedy(batch_size))
    res["one_at_a_time_s"], alone = timed(lambda: [generate(model, tok, [ids], 20)[0][0] for _, _, ids in items])
    res["generate_equal"] = same(batched, alone)
    res["rank_previous_s"], previous = timed(lambda: rank_per_candidate(model, tok, items, batch_size))
    res["rank_s"], ours = timed(lambda: rank_ours(model, tok, items, batch_size))
    res["rank_equal_previous"] = same(ours, previous)
    res["rank_label_only_s"], ours_label = timed(lambda: rank_ours(model, tok, items, batch_size, eos=False))
    res["rank_profile"] = profile_rank(model, tok, items, batch_size)
    res["original_tokens"] = sum(len(ids) for _, _, ids in items) + 20 * n  # prompt + at most 20 new, one at a time
    res["forward_flops_per_token"] = 2 * linear_params(model.config)[0]
    try:
        res["lm_eval_s"], harness = timed(lambda: rank_lm_eval(model, tok, items, batch_size))
        res["lm_eval_equal_label_only"] = same(ours_label, harness)
        res["lm_eval_equal_label_eos"] = same(ours, harness)
    except ImportError as e:
        res["lm_eval_error"] = f"not installed ({e.name}): `make bench` installs bench/requirements.txt"
    if torch.cuda.is_available() or precision.cpu_bf16_speedup() >= precision.BF16_FASTER:  # bf16 ranking, where bf16 is fast
        res["rank_bf16_s"], ours_bf16 = timed(lambda: rank_ours(model.to(torch.bfloat16), tok, items, batch_size))
        res["rank_bf16_equal_fp32"] = same(ours_bf16, ours)
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def part_gpu(quick):
    """On a GPU: a Llama-2-7B-shaped model with random weights (built from its configuration, no download),
    trained with --bnb through the same code at the paper's per-device batch of 32 x 512 (halved until it
    fits), with and without gradient checkpointing, next to the --dry_run estimate of the same run."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from keys_values import memory
    from keys_values.training.dry_run import memory_plan
    from keys_values.training.trainer import fit

    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    ceiling = part_matmul(quick, "cuda")
    tok = AutoTokenizer.from_pretrained(MODEL)  # the embedded tokenizer: no download
    config = LlamaConfig(**{**memory.LLAMA2_7B, "vocab_size": len(tok)})
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        tok.save_pretrained(folder)
        for checkpointing in (True, False):
            batch, row = 32, None
            while batch >= 1 and row is None:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                try:
                    run, tk, blocks, model = training_setup("auto", "all", True, folder, batch, 3 if quick else 4,
                                                            checkpointing)
                    clock = clocked()
                    with tempfile.TemporaryDirectory() as out:
                        fit(model, tk, blocks, run.config, out, None, run.precision, run.placement, callbacks=[clock])
                        plan = memory_plan(run, blocks)
                    dt = (clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1)
                    row = {"checkpointing": checkpointing, "batch": batch, "tokens_per_second": batch * SEQ / dt,
                           "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                           "estimate_gib": plan["memory_estimate_bytes"]["total"] / memory.GIB}
                except torch.OutOfMemoryError:
                    batch //= 2
                finally:
                    model = None
            rows.append(row or {"checkpointing": checkpointing, "batch": 0, "error": "out of memory at batch 1"})
    return {"device": torch.cuda.get_device_name(), "bf16_ceiling": ceiling["bf16"], "rows": rows}


def part_launch(quick):
    """The local launcher (issue 18): the same two short trainings one after another (serial), then at once on
    this machine's cores (local, --parallel 2: each process gets half of the cores), wall times compared."""
    import shutil

    from keys_values import launch

    steps = "2" if quick else "6"
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        def runs(tag):
            return [launch.Run(f"{tag} {m}", [[sys.executable, os.path.join(ROOT, "llama2_classification_multi_tasks.py"),
                                               "--pretrained_ckpt", MODEL, "--data_root", SAMPLE, "--tasks", "CB",
                                               "--target_modules", "q_proj", "v_proj", m, "--max_steps", steps,
                                               "--per_device_train_batch_size", "4", "--gradient_accumulation_steps",
                                               "1", "--max_seq_length", "256", "--output_root",
                                               os.path.join(folder, tag)]], os.path.join(folder, f"{tag}-{m}.log"))
                    for m in ("up_proj", "down_proj")]

        for tag, kw in (("serial", {"launcher": "serial"}), ("local", {"launcher": "local", "parallel": 2, "gpus": 0})):
            t = time.perf_counter()
            outcomes = launch.run_all(runs(tag), progress=lambda line: None, **kw)
            out[tag] = {"wall_s": time.perf_counter() - t, "ok": all(o.ok for o in outcomes),
                        "runs_s": [o.ended - o.started for o in outcomes]}
            shutil.rmtree(os.path.join(folder, tag), ignore_errors=True)
    out["steps"] = int(steps)
    return out


def part_study(quick):
    """`make study` (python study.py: the base model and 4 settings on boolq COPA CB, trained and evaluated)
    timed from nothing, in a fresh output folder; its summary's accuracy rows."""
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), "--output_root", folder,
                            *(["--max_steps", "2", "--max_test_samples", "8"] if quick else [])],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - t
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
        md = open(os.path.join(folder, "boolq,COPA,CB", "summary.md")).read()
    table = md.split("| setting |", 1)[1].split("\n\n", 1)[0]  # the first table: accuracy per setting
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return {"seconds": seconds, "rows": rows, "precision": next((line for line in p.stdout.splitlines()
                                                               if "trainable parameters" in line), "")}


def part_editing(quick):
    """Knowledge editing (issue 27): the same edits of the bundled set, the same hyperparameters (FT-L, 25 steps at
    most, learning rate 5e-4, the values of layer 20), made this project's way (the layers below the edited one run
    once, only the target positions' logits, 16 edits optimised at once, each probe batch once) and the plain way of
    the editing baselines (the whole model forward and backward every step, all logits, one edit and one probe at a
    time); the per-edit metrics of the two compared."""
    import dataclasses

    import torch

    from keys_values import models
    from keys_values.editing.config import editing_config
    from keys_values.editing.metrics import PER_EDIT
    from keys_values.editing.plan import EditPlan
    from keys_values.editing.run import run_edits
    from keys_values.precision import Precision, placement
    from utils import read_jsonl

    n = 8 if quick else 32
    with tempfile.TemporaryDirectory() as out:
        cfg = editing_config(["--max_edits", str(n), "--target_modules", "values", "--output_root", out,
                              "--data", os.path.join(SAMPLE, "edits", "counterfact.json")])
        run = EditPlan(cfg).runs[0]
        model = models.load_base(MODEL, Precision("fp32", "fp32", False, False, False, ""), placement(0, False)).eval()
        tok = models.load_tokenizer(MODEL)
        times, records = {}, {}
        for way in ("ours", "plain"):
            r = dataclasses.replace(run, folder=os.path.join(out, way))
            t = time.perf_counter()
            run_edits(model, tok, r, cfg, plain=way == "plain", progress=lambda line: None)
            times[way] = time.perf_counter() - t
            records[way] = read_jsonl(os.path.join(r.folder, "edits.jsonl"))
    diff = nll = 0.0
    for a, b in zip(records["ours"], records["plain"]):
        for when in ("pre", "post"):
            for k in PER_EDIT:
                if a[when].get(k) is not None:
                    diff = max(diff, abs(a[when][k] - b[when][k]))
        for pa, pb in zip(a["probes"], b["probes"]):
            nll = max(nll, abs(pa["nll_pre"] - pb["nll_pre"]), abs(pa["nll_post"] - pb["nll_post"]))
    return {"edits": n, "ours_s": times["ours"], "plain_s": times["plain"], "ratio": times["plain"] / times["ours"],
            "max_metric_difference": diff, "max_nll_difference": nll, "threads": torch.get_num_threads(),
            "steps_ours": sum(r["steps"] for r in records["ours"]), "steps_plain": sum(r["steps"] for r in records["plain"]),
            "peak_rss_mib": peak_rss_mib()}


def child(part, *extra, python=sys.executable):
    cmd = [python, os.path.abspath(__file__), "--part", part, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                  "HF_DATASETS_OFFLINE": "1"})
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def loss_at(r, step=None):
    """The loss logged at `step` (default: the run's last step)."""
    step = r.get("steps") if step is None else step
    return r.get("losses", {}).get(str(step), r.get("losses", {}).get(step))


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def report(r, quick, flags=""):
    import platform

    import torch

    mm = r["matmul"]
    lines = ["# Benchmarks", "",
             f"Measured by `python bench/bench.py{flags}` on {time.strftime('%Y-%m-%d')}: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{mm['threads']} threads; model SmolLM2-135M-Instruct (the embedded default). Peers: "
             f"{r.get('peers', 'not installed')}. Absolute numbers move by up to 2x between machines and days: read the "
             "ratios, each measured within this one run.", "",
             "## Ceilings (matmul, median of repeats)", "",
             "| dtype | square GFLOP/s (the ceiling) | 2048x576 @ 576x1536 (MLP shape) | 2048x576 @ 576x49152 (output layer) |",
             "|---|---|---|---|"]
    for d in ("fp32", "bf16"):
        extra = (f"{mm[d + '_mlp'] / 1e9:.1f} | {mm[d + '_head'] / 1e9:.1f}" if d + "_mlp" in mm else
                 "– | – (no native bf16 units: torch's bf16 matmul is a slow fallback here)")
        lines.append(f"| {d} | {mm[d] / 1e9:.1f} (at {mm[d + '_size']}) | {extra} |")
    t = r["train"]
    dtype = t["ours_all"].get("dtype", "?")  # the A/B runs in fp32, where the two losses are the same function
    ceiling = mm[dtype] if dtype in mm else mm["fp32"]
    lines += ["", f"## Training (LoRA r=8 on q_proj v_proj up_proj, batch {BATCH} x {SEQ} tokens of the sample data)", "",
              f"The A/B of the loss (previous against this project) runs in {dtype}, where the two losses are the same "
              "function; the rows below it in the precision `--dtype auto` picks here. FLOPs per token = 4 * N_linear "
              "+ 12 * layers * seq * d_model, the output layer counted only at the positions whose loss counts (see "
              "bench/bench.py); utilisation against the ceiling of the row's own dtype. Loss: the loss logged at the "
              "last step. The runs with the loss on every token ran twice, interleaved (A B A B): their s/step is the "
              "mean of the two.", "",
              "| run | dtype | tokens/s | s/step | model GFLOP/s | of the ceiling | loss at the last step | peak RSS MiB | "
              "ratio |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [("previous: the model's own output layer and loss, `--loss_on all`", "previous_all", None),
            ("this project: the loss's chunked output layer, `--loss_on all`", "ours_all", "previous_all"),
            ("previous, `--loss_on completion`", "previous_completion", None),
            ("this project, `--loss_on completion` (output layer at the counted positions only)", "ours_completion",
             "previous_completion"),
            ("this project, `--loss_on all`, `--dtype auto` (bf16 where this CPU is faster in it)", "ours_auto",
             "ours_all"),
            ("this project, `--bnb` (4-bit base, gradient checkpointing on, as the original), `--dtype auto`",
             "ours_bnb", "ours_auto"),
            ("trl 1.16 SFTTrainer, packing 'wrapped', the same texts, LoRA, batch and steps, `--dtype auto`'s "
             "precision", "trl", "ours_auto")]
    for label, key, against in rows:
        x = t.get(key, {"error": "not run"})
        if "error" in x:
            lines.append(f"| {label} | | failed: {x['error']} | | | | | | |")
            continue
        own = mm.get(x.get("dtype"), ceiling)
        util = f"{100 * x['model_flops_per_second'] / own:.1f}%" if "model_flops_per_second" in x else "–"
        gflops = f"{x['model_flops_per_second'] / 1e9:.1f}" if "model_flops_per_second" in x else "–"
        loss = loss_at(x)
        versus = ("–" if against is None or "error" in t.get(against, {"error": 1}) else
                  f"{ratio(x['tokens_per_second'], t[against]['tokens_per_second'])} of {against.replace('_', ' ')}")
        if key == "trl" and "tokens_per_second" in t.get("ours_auto", {}):
            versus = f"this project is {ratio(t['ours_auto']['tokens_per_second'], x['tokens_per_second'])} trl"
        runs = x.get("runs_seconds_per_step")
        sps = f"{x['seconds_per_step']:.2f}" + (f" ({', '.join(f'{v:.2f}' for v in runs)})" if runs else "")
        lines.append(f"| {label} | {x.get('dtype', '?')} | {x['tokens_per_second']:.0f} | {sps} | {gflops} | {util} | "
                     f"{'–' if loss is None else f'{loss:.4f}'} | {x['peak_rss_mib']:.0f} | {versus} |")
    for a, b in (("previous_all", "ours_all"), ("previous_completion", "ours_completion")):
        la, lb = loss_at(t.get(a, {})), loss_at(t.get(b, {}))
        if la is not None and lb is not None:
            lines.append(f"\nLoss equality, `--loss_on {b.split('_')[1]}`: |{la:.6f} - {lb:.6f}| = {abs(la - lb):.1e} after "
                         f"{t[b]['steps']} steps ({'within' if abs(la - lb) <= 1e-4 else 'NOT within'} 1e-4).")
    e = r["eval"]
    lines += ["", f"## Evaluation ({e.get('prompts', '?')} sample-data prompts of {', '.join(EVAL_TASKS)}; fp32; "
                  "untrained LoRA on q,v,up; up to 20 new tokens; batch 64)", ""]
    if "error" in e:
        lines.append(f"failed: {e['error']}")
    else:
        n = e["prompts"]
        a = n / e["original_s"]
        ways = [("(a) the original: one at a time, do_sample, top_p 0.95, temperature 1e-3, adapter unmerged",
                 e["original_s"], "–"),
                ("(b) batched greedy generation, merged adapter (the script's default)", e["generate_s"],
                 f"{e['generate_equal']} equal to one-at-a-time greedy"),
                ("one-at-a-time greedy (the reference for (b))", e["one_at_a_time_s"], "–"),
                ("(c0) previous ranking: every candidate its own sequence, task by task", e["rank_previous_s"], "–"),
                ("(c) `--scoring rank`: each prompt once, its candidates packed after it, tasks batched together; "
                 "label + EOS", e["rank_s"], f"{e['rank_equal_previous']} argmax equal to (c0)"),
                ("(c) the same, label alone (no EOS: lm-evaluation-harness's definition)", e["rank_label_only_s"], "–")]
        if "lm_eval_s" in e:
            ways.append(("lm-evaluation-harness 0.4.13, HF backend, the same model object, a local multiple_choice "
                         "task (label alone)", e["lm_eval_s"], f"{e['lm_eval_equal_label_only']} argmax equal to (c) "
                         f"label alone; {e['lm_eval_equal_label_eos']} to (c) label + EOS"))
        if "rank_bf16_s" in e:
            ways.append(("(c) in bf16", e["rank_bf16_s"], f"{e['rank_bf16_equal_fp32']} argmax equal to (c) in fp32"))
        lines += ["| way | examples/s | ratio to (a) | predictions |", "|---|---|---|---|"]
        lines += [f"| {w} | {n / s:.2f} | {n / s / a:.1f} | {same_} |" for w, s, same_ in ways]
        lines.append("")
        if "lm_eval_s" in e:
            lines.append(f"Ranking, like with like (label alone): this project "
                         f"{ratio(e['lm_eval_s'], e['rank_label_only_s'])} lm-evaluation-harness's examples/s; "
                         f"with EOS (the script's definition) {ratio(e['lm_eval_s'], e['rank_s'])}.")
        else:
            lines.append(f"lm-evaluation-harness: {e.get('lm_eval_error', 'not run')}.")
        lines.append(f"Ranking, this project's A/B: {ratio(e['rank_previous_s'], e['rank_s'])} the previous ranking's "
                     f"examples/s. bf16 ranking: "
                     + ("measured above." if "rank_bf16_s" in e else "not measured (no native bf16 units here); "
                        "`--dtype auto` keeps ranking in fp32 on a CPU.") + f" Peak RSS {e['peak_rss_mib']:.0f} MiB.")
    lines += editing_text(r.get("editing"))
    lines += launch_text(r.get("launch"), r.get("study"), t)
    lines += ["", "## Targets (issue 13)", ""] + targets(r)
    lines += ["", "## GPU", "", r["gpu"]]
    return "\n".join(lines) + "\n"


def editing_text(k):
    """Knowledge editing: this project's way against the editing baselines' plain way (issue 27)."""
    out = ["", "## Knowledge editing (the values of layer 20, FT-L, 25 steps at most, the bundled edits)", ""]
    if not k or "error" in k:
        return out + [f"failed: {(k or {}).get('error', 'not run')}"]
    out += ["| way | seconds | edits/s | steps | ratio |", "|---|---|---|---|---|",
            f"| plain (the editing baselines: the whole model forward and backward every step, all logits, one edit and "
            f"one probe at a time) | {k['plain_s']:.1f} | {k['edits'] / k['plain_s']:.2f} | {k['steps_plain']} | 1.00x |",
            f"| this project (the layers below the edited one once, the logits at the target positions, 16 edits at "
            f"once, each probe batch once) | {k['ours_s']:.1f} | {k['edits'] / k['ours_s']:.2f} | {k['steps_ours']} | "
            f"{k['ratio']:.2f}x |", "",
            f"{k['edits']} edits; the per-edit metrics of the two ways differ by at most {k['max_metric_difference']:.1e}, "
            f"the probes' NLLs by at most {k['max_nll_difference']:.1e}; peak RSS {k['peak_rss_mib']:.0f} MiB."]
    return out


def launch_text(launch, study, t):
    """The bf16 rows against fp32 (issue 21), the local launcher against serial runs (issue 18), the small
    study's wall time."""
    out = ["", "## bf16 where this CPU is faster in it; the local launcher; the small study", ""]
    a, b = t.get("ours_auto", {}), t.get("ours_all", {})
    if "tokens_per_second" in a and "tokens_per_second" in b:
        out.append(f"- Training, `--loss_on all`: {a['tokens_per_second']:.0f} tokens/s in {a['dtype']} (`--dtype auto` "
                   f"here) against {b['tokens_per_second']:.0f} in {b['dtype']}: "
                   f"{ratio(a['tokens_per_second'], b['tokens_per_second'])}; loss at the last step "
                   f"{loss_at(a):.4f} against {loss_at(b):.4f}.")
    if launch and "serial" in launch:
        s, l = launch["serial"], launch["local"]
        out.append(f"- Two trainings ({launch['steps']} steps of LoRA on CB each): serial {s['wall_s']:.0f} s (the sum "
                   f"of the runs), `--launcher local --parallel 2` {l['wall_s']:.0f} s wall "
                   f"({ratio(s['wall_s'], l['wall_s'])} faster; every run ok: {s['ok'] and l['ok']}). Each of the two "
                   "parallel runs has one of the two cores.")
    elif launch:
        out.append(f"- local launcher: {launch.get('error', 'not run')}")
    if study and "seconds" in study:
        out.append(f"- `python study.py` (what `make study` runs once set up): {study['seconds'] / 60:.1f} min, training "
                   f"in {study['precision'].split('; ')[1] if '; ' in study['precision'] else '?'}; its report:")
        out += ["", "| setting | boolq | COPA | CB | mean | trainable params |", "|---|---|---|---|---|---|"]
        out += study["rows"]
    elif study:
        out.append(f"- study: {study.get('error')}")
    return out


def targets(r):
    """Each speed target of the benchmark: met or not, from this run's numbers; where not, what the profile says."""
    mm, t, e = r["matmul"], r["train"], r["eval"]
    ok = lambda x: "met" if x else "**not met**"  # noqa: E731
    out = []
    native = mm["bf16_native"]
    out.append(f"- bf16 where the CPU is faster in it: the probe behind `--dtype auto` measured bf16 matrix products "
               f"at {mm.get('bf16_speedup')}x fp32 here, so auto trains in {'bf16' if native else 'fp32'} "
               f"(bf16 from {utils_threshold()}x).")
    pairs = [("all", "previous_all", "ours_all"), ("completion", "previous_completion", "ours_completion")]
    for loss_on, a, b in pairs:
        if "error" in t.get(a, {"error": 1}) or "error" in t.get(b, {"error": 1}):
            continue
        x = t[b]["tokens_per_second"] / t[a]["tokens_per_second"]
        la, lb = loss_at(t[a]), loss_at(t[b])
        out.append(f"- training ≥ 1.3x the previous tokens/s, `--loss_on {loss_on}`: {x:.2f}x, {ok(x >= 1.3)}; the "
                   f"same loss to 1e-4 after {t[b]['steps']} steps: |Δ| = {abs(la - lb):.1e}, {ok(abs(la - lb) <= 1e-4)}.")
    if "error" not in t.get("ours_all", {"error": 1}):
        dtype = t["ours_all"].get("dtype", "fp32")
        util = t["ours_all"]["model_flops_per_second"] / mm.get(dtype, mm["fp32"])
        out.append(f"- training ≥ 25% of the {dtype} ceiling: {100 * util:.0f}%, {ok(util >= 0.25)}.")
        if "error" not in t.get("trl", {"error": 1}) and "error" not in t.get("ours_auto", {"error": 1}):
            x = t["ours_auto"]["tokens_per_second"] / t["trl"]["tokens_per_second"]
            out.append(f"- training ≥ 2x trl's SFTTrainer: {x:.2f}x, {ok(x >= 2)}.")
    k = r.get("editing") or {}
    if "ratio" in k:
        out.append(f"- knowledge editing ≥ 3x the plain way (issue 27): {k['ratio']:.2f}x, {ok(k['ratio'] >= 3)}; the same "
                   f"metrics to 1e-4: the largest difference {k['max_metric_difference']:.1e}, "
                   f"{ok(k['max_metric_difference'] <= 1e-4)}.")
    if "error" in e:
        return out
    x = e["original_s"] / e["rank_s"]
    out.append(f"- ranking ≥ 20x the original loop: {x:.1f}x, {ok(x >= 20)}; the same argmax as the previous "
               f"ranking: {e['rank_equal_previous']}.")
    if "lm_eval_s" in e:
        y, z = e["lm_eval_s"] / e["rank_label_only_s"], e["lm_eval_s"] / e["rank_s"]
        out.append(f"- ranking ≥ 2x lm-evaluation-harness: {y:.2f}x like with like (label alone), {z:.2f}x with EOS; "
                   f"{ok(min(y, z) >= 2)}.")
    prof = e.get("rank_profile")
    if prof:
        rate = prof["matmul_flops"] / prof["matmul_s"]
        floor = prof["matmul_flops"] / mm["fp32"]  # the matrix products alone at the square-matmul ceiling
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["top"])
        rate_original = e["original_tokens"] * e["forward_flops_per_token"] / e["original_s"]
        original = (f" The original loop passes about {e['original_tokens']} tokens one sequence at a time, at "
                    f"{rate_original / 1e9:.1f} GFLOP/s ({100 * rate_original / mm['fp32']:.0f}% of the ceiling): "
                    "bound by the latency of its decoding steps, not by arithmetic.")
        out.append(f"- profile of ranking (torch.profiler, one pass): matrix products {100 * prof['matmul_share']:.0f}% "
                   f"of the operators' time, at {rate / 1e9:.0f} GFLOP/s = {100 * rate / mm['fp32']:.0f}% of the fp32 "
                   f"ceiling; top operators: {top}. Ranking is compute-bound: even at 100% of the ceiling its "
                   f"{prof['matmul_flops'] / 1e9:.0f} GFLOP of products take {floor:.1f} s, at most "
                   f"{e['original_s'] / floor:.0f}x the original loop on this machine.{original}")
    return out


def utils_threshold():
    from keys_values import precision

    return precision.BF16_FASTER


def gpu_text(g):
    if "error" in g:
        return f"failed: {g['error']}"
    rows = ["| gradient checkpointing | batch x 512 | tokens/s | peak GPU memory GiB | --dry_run estimate GiB |",
            "|---|---|---|---|---|"]
    rows += [f"| {'on' if x['checkpointing'] else 'off'} | {x['batch']} | " + (
             f"{x['tokens_per_second']:.0f} | {x['peak_gib']:.1f} | {x['estimate_gib']:.1f} |" if "error" not in x
             else f"{x['error']} | | |") for x in g["rows"]]
    return (f"{g['device']}: a Llama-2-7B-shaped model (random weights; the embedded tokenizer's vocabulary), `--bnb`, "
            f"LoRA q,v,up; bf16 matmul ceiling {g['bf16_ceiling'] / 1e12:.0f} TFLOP/s.\n\n" + "\n".join(rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--part", choices=["matmul", "train", "trl", "eval", "gpu", "launch", "study", "editing"],
                   help=argparse.SUPPRESS)
    p.add_argument("--study", action="store_true", help="also time the whole small study (python study.py), ~10 min")
    p.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--loss_on", default="all", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--bnb", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    a = p.parse_args()
    if a.part:
        res = {"matmul": lambda: part_matmul(a.quick), "train": lambda: part_train(a.dtype, a.loss_on, a.impl, a.quick, a.bnb),
               "trl": lambda: part_trl(a.dtype, a.quick), "eval": lambda: part_eval(a.quick),
               "gpu": lambda: part_gpu(a.quick), "launch": lambda: part_launch(a.quick),
               "study": lambda: part_study(a.quick), "editing": lambda: part_editing(a.quick)}[a.part]()
        print(json.dumps(res))
        return
    import importlib.metadata as md

    import torch

    q = ["--quick"] if a.quick else []
    r = {"matmul": child("matmul", *q), "train": {}}
    try:
        r["peers"] = f"trl {md.version('trl')}, lm-eval {md.version('lm-eval')}"
    except md.PackageNotFoundError:
        r["peers"] = "not installed (`make bench` installs bench/requirements.txt)"
    print(f"matmul: {r['matmul']}", flush=True)
    # A/B, interleaved: with the loss on every token the two differ little, so that pair runs twice (A B A B)
    for loss_on, repeats in (("all", 2), ("completion", 1)):
        for rep in range(repeats):
            for impl in ("previous", "ours"):
                res = child("train", "--loss_on", loss_on, "--impl", impl, "--dtype", "fp32", *q)
                print(f"train {impl} {loss_on} ({rep + 1}): {res}", flush=True)
                key = f"{impl}_{loss_on}"
                if key in r["train"] and "error" not in res and "error" not in r["train"][key]:
                    first = r["train"][key]
                    res["runs_seconds_per_step"] = [first["seconds_per_step"], res["seconds_per_step"]]
                    res["seconds_per_step"] = sum(res["runs_seconds_per_step"]) / 2
                    res["tokens_per_second"] = BATCH * SEQ / res["seconds_per_step"]
                    res["model_flops_per_second"] = res["flops_per_token"] * res["tokens_per_second"]
                    res["losses"] = first["losses"]
                r["train"][key] = res
    r["train"]["ours_auto"] = child("train", "--dtype", "auto", *q)
    print(f"train auto: {r['train']['ours_auto']}", flush=True)
    r["train"]["ours_bnb"] = child("train", "--bnb", *q)
    print(f"train bnb: {r['train']['ours_bnb']}", flush=True)
    r["train"]["trl"] = child("trl", *q)
    print(f"trl: {r['train']['trl']}", flush=True)
    r["eval"] = child("eval", *q)
    print(f"eval: {r['eval']}", flush=True)
    r["editing"] = child("editing", *q)
    print(f"editing: {r['editing']}", flush=True)
    r["launch"] = child("launch", *q)
    print(f"launch: {r['launch']}", flush=True)
    if a.study:
        r["study"] = child("study", *q)
        print(f"study: {r['study']}", flush=True)
    if torch.cuda.is_available():
        g = child("gpu", *q)
        print(f"gpu: {g}", flush=True)
        r["gpu"] = gpu_text(g)
    else:
        r["gpu"] = ("No GPU on this machine: the GPU rows wait for one. `make gpu-check` (scripts/gpu_check.py: 20 "
                    "`--bnb` steps of a Llama-2-7B-shaped model at the paper's per-device batch, tokens/s and peak "
                    "memory against the `--dry_run` estimate, and batched 4-bit evaluation against one prompt at a "
                    "time) has not been run on a GPU yet; `part_gpu` here (the same model with and without gradient "
                    "checkpointing) runs by itself when `make bench` finds a GPU.")
    text = report(r, a.quick, (" --quick" if a.quick else "") + (" --study" if a.study else ""))
    from utils import atomic_write

    atomic_write(a.out, text)
    print("\n" + text)


if __name__ == "__main__":
    main()
