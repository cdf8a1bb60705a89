"""The GPU check (`make gpu-check`): does the paper's setting work on this GPU, how fast, and does the memory
plan hold? One command, at most about 8 minutes on one H200, one table at the end.

1. Training: a Llama-2-7B-shaped model (random weights built from its configuration on the GPU, the embedded
   tokenizer: no download) trained with --bnb through the training script's own code, at the paper's
   per-device batch (32 blocks of 512 tokens, gradient checkpointing, LoRA r=8 on q_proj v_proj up_proj) for 20
   optimizer steps: tokens/s over the steps after the first, peak GPU memory against the --dry_run estimate.
2. Evaluation: 64 prompts of the sample data, batched greedy decoding against one prompt at a time, both on
   the 4-bit base with a fresh adapter: how many of the 64 generations are equal.
3. Knowledge editing: 32 of the bundled edits on layer 21's values of the same model in bf16 (FT-L, 25 steps, 16
   edits at once): edits/s and the peak GPU memory against the editing plan's estimate.
4. FSDP2 with 4-bit weights: the embedded model trained with --bnb for 4 steps on one process under
   `accelerate launch` with accelerate_configs/fsdp2.yaml and without it: the losses and adapters must be equal
   (FSDP2 stores the packed weights in bf16; the byte check after sharding runs in the FSDP2 one).

    python scripts/gpu_check.py [--steps 20] [--prompts 64]
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps timed (after one warm-up step)")
    p.add_argument("--prompts", type=int, default=64, help="evaluation prompts compared")
    p.add_argument("--batch", type=int, default=32, help="blocks per step (the paper's per-device batch)")
    p.add_argument("--edits", type=int, default=32, help="knowledge edits timed")
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False); nothing to check")
        sys.exit(1)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback

    import prompts
    from keys_values import config as flags
    from keys_values import data, lora, memory, models
    from keys_values.evaluation.generate import generate, generate_task
    from keys_values.training.dry_run import memory_plan
    from keys_values.training.plan import plan_run
    from keys_values.training.trainer import fit

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(os.path.join(HERE, flags.EMBEDDED_MODEL))
    config = LlamaConfig(**{**memory.LLAMA2_7B, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
                            "pad_token_id": tok.pad_token_id, "torch_dtype": "float16"})
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.float16)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        print(f"Llama-2-7B-shaped model written in {time.time() - t0:.0f} s", flush=True)

        # 1. training, through the training script's own steps
        argv = ["--pretrained_ckpt", folder, "--bnb", "--target_modules", "q_proj", "v_proj", "up_proj", "--tasks",
                "boolq", "COPA", "CB", "RTE", "--data_root", os.path.join(HERE, "sample_data"), "--epochs", "100",
                "--max_steps", str(a.steps + 1), "--per_device_train_batch_size", str(a.batch),
                "--gradient_accumulation_steps", "1", "--save_steps", "100000"]
        run = plan_run(flags.training_config(argv))
        args, prec, place = run.config, run.precision, run.placement
        blocks = run.blocks(tok)
        plan = memory_plan(run, blocks)
        torch.cuda.reset_peak_memory_stats()
        model = lora.add_lora(models.load_base(folder, prec, place), args, prec, run.targets)

        class Clock(TrainerCallback):
            stamps = []

            def on_step_end(self, *args, **kwargs):
                torch.cuda.synchronize()
                self.stamps.append(time.perf_counter())

        clock = Clock()
        with tempfile.TemporaryDirectory() as out:
            fit(model, tok, blocks, args, out, None, prec, place, callbacks=[clock])
        per_step = (clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1)
        peak = torch.cuda.max_memory_allocated()
        est = plan["memory_estimate_bytes"]["total"]
        rows.append(("training tokens/s (--bnb, batch %d x 512, checkpointing)" % a.batch,
                     f"{a.batch * 512 / per_step:,.0f}"))
        rows.append(("seconds per optimizer step", f"{per_step:.2f}"))
        rows.append(("peak GPU memory (GiB)", f"{peak / 2**30:.1f}"))
        rows.append(("--dry_run estimate (GiB)", f"{est / 2**30:.1f} ({est / peak:.2f}x the peak)"))
        print(f"training done in {time.time() - t0:.0f} s", flush=True)

        # 2. batched greedy against one at a time, 4-bit
        model.eval()
        task = prompts.TASKS["boolq"]
        examples, _ = data.load(task, os.path.join(HERE, "sample_data"), task.eval_split)
        examples = (examples * (a.prompts // len(examples) + 1))[: a.prompts]
        ids = [tok(prompts.prompt_text(task, e.fields))["input_ids"] for e in examples]
        t = time.perf_counter()
        batched = generate_task(model, tok, task, ids, prompts.choices(task), argparse.Namespace(
            batch_size=64, max_new_tokens=20))
        t_batched = time.perf_counter() - t
        t = time.perf_counter()
        alone = [generate(model, tok, [i], 20)[0] for i in ids]
        t_alone = time.perf_counter() - t
        equal = sum(b is not None and b[0] == x[0] for b, x in zip(batched, alone))
        rows.append((f"evaluation: batched greedy equal to one at a time (4-bit, {len(ids)} prompts)",
                     f"{equal}/{len(ids)}"))
        rows.append(("evaluation: batched speed-up", f"{t_alone / t_batched:.1f}x ({t_batched:.1f} s vs {t_alone:.1f} s)"))
        del model
        torch.cuda.empty_cache()

        # 3. knowledge editing: the bundled edits on layer 21's values, FT-L's 25 steps, in bf16 (random weights: the
        # speed and memory of editing a 7B model, not its metrics)
        rows += editing_rows(folder, tok, a.edits)
    rows += fsdp_4bit_rows()
    print(f"\ngpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__}), {time.time() - t0:.0f} s in all")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def editing_rows(folder, tok, n):
    import torch

    from keys_values import models
    from keys_values.editing import metrics, records
    from keys_values.editing.config import editing_config
    from keys_values.editing.editor import Editor
    from keys_values.editing.plan import edit_memory, resolve_arm
    from keys_values.memory import weight_counts
    from keys_values.precision import Precision, placement

    cfg = editing_config(["--dtype", "bf16", "--edits_at_once", "16"])
    edits = records.load(os.path.join(HERE, "sample_data", "edits", "counterfact.json"))[0][:n]
    torch.cuda.reset_peak_memory_stats()
    model = models.load_base(folder, Precision("bf16", "bf16", False, False, False, ""), placement(1, False)).eval()
    paths, _ = resolve_arm(["values"], model, 21)
    ed = Editor(model, tok, 21, paths, cfg, batch=16)
    t = time.perf_counter()
    steps = 0
    for k in range(0, len(edits), 16):
        ed.reset()
        chunk = edits[k:k + 16]
        measured = [ed.first_scores(ed.encode(metrics.probes(e))) for e in chunk]
        steps += sum(i["steps"] for i in ed.edit_batch(chunk))
        for b, e in enumerate(chunk):
            ed.scores(ed.encode(metrics.probes(e)), measured[b][1], b)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated()
    estimate = edit_memory(weight_counts(model), ed.updated_parameters, "bf16", False)
    ed.reset()
    ed.remove()
    return [(f"knowledge editing: edits/s (layer 21's values, FT-L, bf16, 16 at once, {len(edits)} edits, {steps} steps)",
             f"{len(edits) / seconds:.2f}"),
            ("knowledge editing: peak GPU memory (GiB) / the plan's estimate", f"{peak / 2**30:.1f} / "
                                                                             f"{estimate / 2**30:.1f}")]


if __name__ == "__main__":
    main()


def fsdp_4bit_rows():
    """4. The same --bnb run plain and under FSDP2 on one process: largest loss and adapter differences."""
    import glob
    import json
    import subprocess

    import torch
    from safetensors.torch import load_file

    from keys_values import config as flags

    train = os.path.join(HERE, "llama2_classification_multi_tasks.py")
    common = ["--pretrained_ckpt", os.path.join(HERE, flags.EMBEDDED_MODEL), "--bnb", "--dtype", "bf16", "--tasks",
              "CB", "--data_root", os.path.join(HERE, "sample_data"), "--max_steps", "4", "--dropout", "0",
              "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
              "--save_steps", "4", "--target_modules", "q_proj", "v_proj", "up_proj"]
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for name, prefix in (("plain", [sys.executable, train]),
                             ("fsdp2", [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                        os.path.join(HERE, "accelerate_configs", "fsdp2.yaml"), "--num_processes",
                                        "1", train])):
            p = subprocess.run([*prefix, *common, "--output_root", os.path.join(root, name)], capture_output=True,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if p.returncode:
                return [(f"FSDP2 --bnb check: the {name} run failed", p.stderr.strip().splitlines()[-1][:200])]
            [exp] = glob.glob(os.path.join(root, name, "*", "*"))
            state = json.load(open(os.path.join(exp, "checkpoint-4", "trainer_state.json")))
            out[name] = ([e["loss"] for e in state["log_history"] if "loss" in e],
                         load_file(os.path.join(exp, "assets", "adapter_model.safetensors")), p.stdout)
    (la, aa, _), (lb, ab, said) = out["plain"], out["fsdp2"]
    loss = max(abs(x - y) for x, y in zip(la, lb))
    adapter = max((aa[k].float() - ab[k].float()).abs().max().item() for k in aa) if aa.keys() == ab.keys() else \
        float("inf")
    checked = "byte for byte as loaded" in said
    return [("FSDP2 --bnb (1 process) vs plain: largest loss difference", f"{loss:.2e} over {len(la)} steps"),
            ("FSDP2 --bnb (1 process) vs plain: largest adapter difference", f"{adapter:.2e}"),
            ("FSDP2 --bnb: packed weights checked after sharding", "yes" if checked else "NO"),
            ("  (torch)", torch.__version__)]
