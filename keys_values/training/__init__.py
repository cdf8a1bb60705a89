"""One training run: its plan (plan.RunPlan, built once from the flags, the model's config and the machine), the
folder it may write (folder: new, resumed, finished), the dry run's plan and memory estimate (dry_run), the
Trainer (trainer) and what a finished run leaves (save)."""
