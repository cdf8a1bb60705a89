"""The study: its recipe (recipe: the training flags every run gets, the small study's for the embedded model,
the settings in role words), its plan (plan.StudyPlan: a training.RunPlan for each setting and seed, what is
left to do, the commands launch runs) and its dry run (dry_run: one table of every run)."""
